"""Kill a stage part-way and restart it: the output equals an uninterrupted run's."""

from __future__ import annotations

import dataclasses

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import random_text
from longblocks.errors import LongBlocksError
from longblocks.records import DOCUMENT_SCHEMA, make_document
from longblocks.config import SelectConfig
from longblocks.pipeline import run
from longblocks.store import Outcome, StageWriter


def write_corpus(path: Path, n_docs: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        n_words = rng.choice([20, 300, 600, 900])  # the 20-word ones fall below min_tokens
        docs.append(make_document(source="local", language="en", text=f"Document {i}. " + random_text(rng, n_words)))
    path.mkdir(parents=True)
    for shard in range(4):
        chunk = docs[shard::4]
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(chunk, schema=DOCUMENT_SCHEMA), path / f"shard-{shard}.parquet")
    return path


def stage_files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for sub in ("data", "rejected", "consumed")
        for p in sorted((out / sub).glob("*.parquet"))
    }


@pytest.mark.slow
def test_select_killed_with_sigkill_resumes_to_identical_output(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", 2000)
    args = ["--tokenizer", str(tiny_tokenizer_dir), "--min-tokens", "100", "--max-tokens", "2500",
            "--part-size", "50", "--batch-size", "8"]
    exe = str(Path(sys.executable).parent / "longblocks")

    reference = tmp_path / "reference"
    subprocess.run([exe, "select", str(corpus), str(reference), *args], check=True, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen([exe, "select", str(corpus), str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    parts = 0
    while time.monotonic() < deadline:
        try:
            parts = len(json.loads((out / "manifest.json").read_text())["outputs"]["parts"])
        except (FileNotFoundError, json.JSONDecodeError):
            parts = 0
        if parts >= 5:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running", "the stage finished before it could be killed"
    assert 5 <= len(manifest["outputs"]["parts"]) < 40

    subprocess.run([exe, "select", str(corpus), str(out), *args], check=True, capture_output=True)
    final = json.loads((out / "manifest.json").read_text())
    expected = json.loads((reference / "manifest.json").read_text())
    assert final["status"] == "complete"
    assert final["outputs"] == expected["outputs"] and final["rejected"] == expected["rejected"]
    assert final["inputs"]["consumed"] == 2000
    assert stage_files(out) == stage_files(reference)
    kept = pq.read_table(out / "data").column("id").to_pylist()
    rejected = pq.read_table(out / "rejected").column("id").to_pylist()
    assert len(kept) == len(set(kept)) and not set(kept) & set(rejected)
    assert len(kept) + len(rejected) == 2000
    assert final["rejected"]["too_few_tokens"] > 0


def test_uncommitted_files_are_removed_on_restart(tmp_path: Path) -> None:
    writer = StageWriter(tmp_path, stage="s", schema=DOCUMENT_SCHEMA, params={"a": 1}, part_size=2)
    docs = [make_document(source="x", language="en", text=f"t{i}") for i in range(5)]
    for doc in docs[:3]:
        writer.add(Outcome(doc["id"], kept=[doc]))
    # Simulate a crash mid-commit of the second part: a data file exists but the manifest lacks it.
    (tmp_path / "data" / "part-00001.parquet").write_bytes(b"partial")
    resumed = StageWriter(tmp_path, stage="s", schema=DOCUMENT_SCHEMA, params={"a": 1}, part_size=2)
    assert not (tmp_path / "data" / "part-00001.parquet").exists()
    assert [resumed.is_consumed(d["id"]) for d in docs] == [True, True, False, False, False]


def test_restart_with_other_parameters_is_refused(tmp_path: Path) -> None:
    StageWriter(tmp_path, stage="s", schema=DOCUMENT_SCHEMA, params={"min_tokens": 1}).finish()
    with pytest.raises(LongBlocksError, match="different parameters \\(min_tokens\\)"):
        StageWriter(tmp_path, stage="s", schema=DOCUMENT_SCHEMA, params={"min_tokens": 2})
    fresh = StageWriter(tmp_path, stage="s", schema=DOCUMENT_SCHEMA, params={"min_tokens": 2}, overwrite=True)
    assert fresh.manifest["outputs"]["parts"] == []


def test_select_in_process_interrupt_then_resume(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", 300, seed=1)
    cfg = SelectConfig(tokenizer="approx", min_tokens=100, max_tokens=5000)
    run("select", cfg, [corpus], tmp_path / "ref", part_size=20)
    seen = 0

    def crash(phase: str, n: int, total: int | None, **stats: int) -> None:
        nonlocal seen
        seen += n
        if seen > 130:
            raise KeyboardInterrupt

    small_batches = dataclasses.replace(cfg, batch_size=16)  # batching is not a parameter of the output
    with pytest.raises(KeyboardInterrupt):
        run("select", small_batches, [corpus], tmp_path / "out", part_size=20, progress=crash)
    run("select", small_batches, [corpus], tmp_path / "out", part_size=20)
    assert stage_files(tmp_path / "out") == stage_files(tmp_path / "ref")
