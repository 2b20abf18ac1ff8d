"""Every pipeline file in `pipelines/` runs end to end offline at tiny scale: its source as a
Hub-shaped dataset built locally with the source's real layout (config / split / plain folder, its
text and id columns, Institutional Books' 3-letter language labels and page lists, Stack-Edu's blob
ids with contents from `local:PATH`), generate, judge and the three responders against the
scripted OpenAI-compatible server (TEST DOUBLE, tests/openai_double.py), and publish; the
published folder loads with `datasets` with LongBlocks' columns in order. The file's own settings
are kept except the scale: two of its languages, two documents each, the approximate tokenizer,
short documents, and every endpoint pointed at the double. Quickstart has its own test with a
real model (tests/longblocks/qa/test_quickstart.py)."""

from __future__ import annotations

import dataclasses
import gzip
import random
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, random_text
from longblocks.config import load_pipeline
from longblocks.pipeline import run_pipeline, run_publish
from longblocks.sources import _ISO639_3, REGISTRY

from openai_double import ScriptedServer

PIPELINES = sorted(p for p in (ROOT / "pipelines").glob("*.toml") if p.stem != "quickstart")
THREE_LETTER = {two: three for three, two in _ISO639_3.items()}


def document(rng: random.Random, code: bool, i: int) -> str:
    if code:  # a source file: functions with comments, as Stack-Edu holds
        return "\n".join(f"def step_{i}_{k}(value):\n    # {random_text(rng, 12)}\n    return value * {k} + {i}\n"
                         for k in range(40))
    return "\n\n".join(f"Section {k}. " + random_text(rng, 60) for k in range(8))


def hub_dataset(source: str, languages: list[str], root: Path, blobs: Path, per_language: int = 3) -> None:
    """`root` laid out as the source's Hub repo serves the given languages."""
    spec = REGISTRY[source]
    rng = random.Random(7)
    configs, splits = [], []
    plain: list[dict] = []
    for lang in languages:
        rows = []
        for i in range(per_language):
            text = document(rng, spec.kind == "code", i)
            row: dict = {spec.id_field or "id": f"{lang}-{i}-{rng.getrandbits(64):016x}"}
            if source == "stack-edu":  # blob ids only; the contents live elsewhere
                blob_id = f"{rng.getrandbits(160):040x}"
                row = {"blob_id": blob_id, "repo_name": f"org/r{i}", "path": f"src/m{i}.py", "language": lang,
                       "score": 4.2, "int_score": 4, "src_encoding": "UTF-8"}
                (blobs / f"{blob_id}.gz").write_bytes(gzip.compress(text.encode()))
            elif source == "institutional-books":  # pages, and the language as an ISO 639-3 code
                row.update({spec.text_field: [text[: len(text) // 2], text[len(text) // 2:]],
                            "language_gen": THREE_LETTER[lang], "title_src": f"Book {i}"})
            else:
                row[spec.text_field] = text
            rows.append(row)
        data_slice = spec.languages[lang]
        if data_slice.config:
            (root / data_slice.config).mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(rows), root / data_slice.config / "train-00000-of-00001.parquet")
            configs.append(f"- config_name: {data_slice.config}\n  data_files:\n  - split: train\n"
                           f"    path: {data_slice.config}/train-*")
        elif data_slice.split != "train":
            (root / "data").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"{data_slice.split}-00000-of-00001.parquet")
            splits.append(f"  - split: {data_slice.split}\n    path: data/{data_slice.split}-*")
        else:
            plain += rows
    if plain:
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(plain), root / "data" / "train-00000-of-00001.parquet")
    if configs:
        (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    if splits:
        (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n" + "\n".join(splits) + "\n---\n")


@pytest.fixture(scope="module")
def server():  # noqa: ANN201
    with ScriptedServer() as s:
        yield s


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_pipeline_file_runs_end_to_end_offline(path: Path, tmp_path: Path, server: ScriptedServer) -> None:
    cfg = load_pipeline(path)
    languages = list(cfg.source.languages or cfg.source.quotas or REGISTRY[cfg.source.name].languages)[:2]
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    hub_dataset(cfg.source.name, languages, tmp_path / "hub", blobs)
    cfg.out = tmp_path / "run"
    cfg.source = dataclasses.replace(cfg.source, hub_id=str(tmp_path / "hub"), languages=languages, per_language=2,
                                     quotas=None, bin_quotas=None, stack_edu_contents=f"local:{blobs}")
    cfg.select = dataclasses.replace(cfg.select, tokenizer="approx", min_tokens=200, max_tokens=20000, bins=(200, 20000))
    cfg.dedup.workers = 1
    for section in (cfg.generate, cfg.judge, *cfg.respond.responders):
        assert section.model, f"{path.name}: every LLM stage names its model"
        section.base_url = server.base_url
    assert cfg.publish.repo_id and len(cfg.respond.responders) == 3
    cfg.publish = dataclasses.replace(cfg.publish, push=False)

    manifests = run_pipeline(cfg)
    run_publish(cfg)  # as `longblocks run` does after the stages

    assert manifests["sample"]["outputs"]["kept"] == 2 * len(languages), manifests["sample"]
    assert manifests["select"]["outputs"]["kept"] >= 1, manifests["select"]
    # its own cache: `datasets` keys a local folder's cache by the folder's name and layout, so another
    # test's `publish` folder (quickstart's) would otherwise be read back from ~/.cache instead of this one
    ds = datasets.load_dataset(str(tmp_path / "run" / "publish"), split="train", cache_dir=str(tmp_path / "hf-cache"))
    responses = [f"response_{r.name}" for r in cfg.respond.responders]
    assert ds.column_names == ["id", "document", "source", "language", "question", "answer", *responses]
    assert ds.num_rows >= 1 and all(row["question"] and row["answer"] and row[responses[0]] for row in ds)
    assert set(ds["source"]) == {cfg.source.name} and set(ds["language"]) <= set(languages) | {"en"}
