"""The README's commands in order, as a new user runs them from a checkout, offline: the
quickstart (`longblocks run pipelines/quickstart.toml` samples the standard library, selects,
dedups, generates QA pairs with SmolLM2-135M-Instruct in-process, judges them by calibrated yes/no
choices, adds its responses and publishes a folder that `datasets.load_dataset` loads like
LongBlocks; a second run resumes), then "Train on what you made" (`dgrpo-train sft`, `rl` and `eval`
on that folder through the shipped quickstart configs), the trainer at tiny scale (a few steps)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
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


# What each README trainer command gets appended to run at tiny scale (the README's own values stand
# otherwise): a few steps, a 2-layer student, short rollouts, one eval sample.
TINY = {"sft": ["--optim.steps=2", "--model.keep_layers=2", "--run.save_every=2"],
        "rl": ["--optim.steps=1", "--rollout.prompts_per_step=1", "--rollout.group_size=2",
               "--rollout.max_new_tokens=8", "--optim.micro_batch_rollouts=2", "--run.save_every=1"],
        "eval": ["--samples=1"]}


def readme_commands(heading: str) -> list[list[str]]:
    """The commands of the README section `## heading...`, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def run(cwd: Path, command: list[str]) -> str:
    # the README's command as it is (six documents, about three minutes on 2 cores): with fewer, a
    # 135M generator often writes no usable pair at all
    return cli(*command, env={"COLUMNS": "500"}, timeout=900, cwd=cwd).stderr


@pytest.mark.timeout(3600)  # longer than every command's own cap (900 s each): the command fails first, and says why
def test_the_readmes_commands_in_order(smollm2: Path, tmp_path: Path) -> None:
    for folder in ("pipelines", "configs"):  # a checkout: the commands' relative paths, runs/ created here
        shutil.copytree(ROOT / folder, tmp_path / folder)
    quickstart = readme_commands("Quickstart")
    training = readme_commands("Train on what you made")
    assert quickstart == [["longblocks", "run", "pipelines/quickstart.toml"]]
    assert [c[:2] for c in training] == [["dgrpo-train", "sft"], ["dgrpo-train", "rl"], ["dgrpo-train", "eval"]]
    out = tmp_path / "runs" / "quickstart"
    summary = run(tmp_path, quickstart[0])
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
    assert "-> runs/quickstart/publish" in summary
    card = (publish / "README.md").read_text()
    assert card.startswith("---\n") and "SmolLM2-135M-Instruct" in card
    # the card says what this run did: a 135M model wrote and judged the pairs, the stdlib is PSF-licensed,
    # and the folder (no Hub repo was named) is what the loading snippet reads
    meta = yaml.safe_load(card.split("---")[1])
    assert (meta["license"], meta["license_name"]) == ("other", "psf-2.0")
    assert "(135M parameters)" in card and "strong LLM" not in card and "ORG/NAME" not in card
    assert 'data_files="runs/quickstart/publish/data/train-*.parquet"' in card
    ds = datasets.load_dataset(str(publish), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == judge["outputs"]["kept"] >= 1
    assert ds.column_names == ["id", "document", "source", "language", "question", "answer", RESPONSE]
    assert all(row["question"] and row["answer"] for row in ds)
    # each row's response is there or its failure is recorded with a reason (SmolLM2 rarely stops in 256 tokens)
    failed = {r["detail"].split()[0] for r in pq.read_table(out / "respond" / "rejected").to_pylist()}
    assert all(row[RESPONSE] or row["id"] in failed for row in ds)
    empty = sum(1 for row in ds if not row[RESPONSE])
    if empty:  # the card says so, and why
        assert f"**`{RESPONSE}` is empty in {empty} of {ds.num_rows} row" in card

    # a second run resumes every stage: nothing is generated again and the counts are unchanged
    again = run(tmp_path, quickstart[0])
    assert [l for l in again.splitlines() if " in, kept " in l] == [l for l in summary.splitlines() if " in, kept " in l] != []
    assert datasets.load_dataset(str(publish), split="train", cache_dir=str(tmp_path / "cache2")).num_rows == ds.num_rows

    # then the trainer on what was published, as the README says, at tiny scale
    for command in training:
        run(tmp_path, [*command, *TINY[command[1]]])
    trained = tmp_path / "runs" / "train-quickstart"
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(trained / "sft" / "final").num_hidden_layers == 2
    rl = [json.loads(line) for line in (trained / "dgrpo" / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rl) == 1 and rl[0]["teacher_kl"] > 0
    results = json.loads((trained / "eval" / "results.json").read_text())
    assert set(results["scores"]) == {"niah_single_1", "short_recall"}
