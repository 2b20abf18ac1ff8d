"""The README's main job end to end, offline: `longblocks run
pipelines/quickstart.toml` samples the standard library, selects, dedups, generates QA pairs with
SmolLM2-135M-Instruct in-process, judges them by calibrated yes/no choices, adds its responses and
publishes a folder that `datasets.load_dataset` loads like LongBlocks; a second run resumes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml

from longblocks.manifest import stage_stats

from conftest import ROOT, cli

RESPONSE = "response_SmolLM2-135M-Instruct"
STAGES = ("sample", "select", "dedup", "generate", "judge", "respond")

pytestmark = pytest.mark.slow


def run(out: Path) -> str:
    # the README's command as it is (six documents, about three minutes on 2 cores): with fewer, a
    # 135M generator often writes no usable pair at all
    return cli("longblocks", "run", str(ROOT / "pipelines" / "quickstart.toml"), "--set", f'run.out="{out}"',
               env={"COLUMNS": "500"}, timeout=900).stderr


def test_quickstart_publishes_a_dataset_that_loads_like_longblocks(smollm2: Path, tmp_path: Path) -> None:
    out = tmp_path / "qs"
    summary = run(out)
    manifests = {stage: json.loads((out / stage / "manifest.json").read_text()) for stage in STAGES}
    # every stage accounts for its input: kept + rejected per reason, and the summary says so
    for stage, manifest in manifests.items():
        consumed, kept = manifest["inputs"]["consumed"], manifest["outputs"]["kept"]
        assert re.search(rf"{stage}: {consumed} \w+ in, kept {kept} \w+, rejected {sum(manifest['rejected'].values())} ", summary), stage
        assert isinstance(manifest["rejected"], dict)
    assert manifests["sample"]["rejected"], "the 1k-2k quota and the token bounds reject modules"
    judge = manifests["judge"]
    assert stage_stats(judge).settings["mode"] == "choice" and set(stage_stats(judge).settings["content_free_p_yes"]) == {
        "well_formed", "complete", "supported", "multi_span", "self_contained"}
    assert manifests["generate"]["outputs"]["kept"] == judge["outputs"]["kept"] + sum(judge["rejected"].values())
    rejections = [row for stage in ("generate", "judge") for row in pq.read_table(out / stage / "rejected").to_pylist()]
    assert rejections, "a 135M model's pairs are not all good"
    assert all(row["reason"] and row["detail"] for row in rejections)
    assert all("p(yes)=" in row["detail"] for row in pq.read_table(out / "judge" / "rejected").to_pylist())

    publish = out / "publish"
    assert f"-> {publish}" in summary
    card = (publish / "README.md").read_text()
    assert card.startswith("---\n") and "SmolLM2-135M-Instruct" in card
    # the card says what this run did: a 135M model wrote and judged the pairs, the stdlib is PSF-licensed,
    # and the folder (no Hub repo was named) is what the loading snippet reads
    meta = yaml.safe_load(card.split("---")[1])
    assert (meta["license"], meta["license_name"]) == ("other", "psf-2.0")
    assert "(135M parameters)" in card and "strong LLM" not in card and "ORG/NAME" not in card
    assert f'data_files="{publish}/data/train-*.parquet"' in card
    ds = datasets.load_dataset(str(publish), split="train")
    assert ds.num_rows == judge["outputs"]["kept"] >= 1
    assert ds.column_names == ["id", "document", "source", "language", "question", "answer", RESPONSE]
    assert all(row["question"] and row["answer"] for row in ds)
    # each row's response is there or its failure is recorded with a reason (SmolLM2 rarely stops in 256 tokens)
    failed = {r["detail"].split()[0] for r in pq.read_table(out / "respond" / "rejected").to_pylist()}
    assert all(row[RESPONSE] or row["id"] in failed for row in ds)

    # a second run resumes every stage: nothing is generated again and the counts are unchanged
    again = run(out)
    assert [l for l in again.splitlines() if " in, kept " in l] == [l for l in summary.splitlines() if " in, kept " in l] != []
    assert datasets.load_dataset(str(publish), split="train").num_rows == ds.num_rows
