"""What a long run meets and must survive: a second run in the same directory (two real processes,
the real lock), a damaged input file among good ones, a committed part or manifest damaged
between runs, a stage that keeps nothing, and the same row twice. Each ends in a recorded
rejection or in one line that names the file and what to do, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import cli, random_text
from longblocks.records import DOCUMENT_SCHEMA, make_document

SELECT = ("--tokenizer", "approx", "--min-tokens", "50", "--max-tokens", "5000", "--part-size", "3")


def documents(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    return [make_document(source="local", language="en", text=f"Document {i}. " + random_text(rng, 120))
            for i in range(n)]


def shard(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), path)
    return path


def markdown_folder(path: Path, docs: list[dict]) -> Path:
    path.mkdir()
    for i, doc in enumerate(docs):
        (path / f"{i:03d}.md").write_text(doc["text"])
    return path


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr
    return lines[0]


def test_a_second_run_in_the_same_directory_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(
        tmp_path: Path) -> None:
    corpus = shard(tmp_path / "in" / "docs.parquet", documents(12))
    out = tmp_path / "out"
    holder = subprocess.Popen(  # a run holding the directory's lock, as `longblocks select` holds it while it works
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from longblocks.store import directory_lock\n"
         "with directory_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = cli("longblocks", "select", str(corpus), str(out), *SELECT, check=False)
        one_line_error(second, str(out), f"pid {holder.pid}", "another run")
        assert not (out / "manifest.json").exists(), "the refused run wrote nothing"
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a run that dies holding the lock
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # its pid is still written there
    cli("longblocks", "select", str(corpus), str(out), *SELECT)  # taken over
    reference = tmp_path / "reference"
    cli("longblocks", "select", str(corpus), str(reference), *SELECT)
    assert pq.read_table(out / "data").equals(pq.read_table(reference / "data"))


def test_two_concurrent_pipeline_runs_one_refused_one_complete(tmp_path: Path) -> None:
    docs = markdown_folder(tmp_path / "docs", documents(40))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[run]\nout = "{tmp_path / "run"}"\npart_size = 1\n[source]\nname = "local:{docs}"\n'
                        f'[select]\nmin_tokens = 50\n')
    exe = str(Path(sys.executable).parent / "longblocks")
    first = subprocess.Popen([exe, "run", str(pipeline)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "run" / "sample" / ".lock").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run([exe, "run", str(pipeline)], capture_output=True, text=True)
    first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    if second.returncode != 0:  # it met the first run at one of the stages
        one_line_error(second, "is being written by another run", f"pid {first.pid}")
    manifest = json.loads((tmp_path / "run" / "dedup" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["outputs"]["kept"] == 40


def test_an_unreadable_file_in_a_local_folder_is_a_rejection_and_the_rest_is_sampled(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    good = documents(6, seed=1)
    shard(folder / "good.parquet", [{**d, "id": d["id"]} for d in good[:3]])
    (folder / "good.jsonl").write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in good[3:]))
    truncated = shard(folder / "truncated.parquet", documents(20, seed=2))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (folder / "surrogate.jsonl").write_text(json.dumps({"text": good[0]["text"]}) + "\n" + '{"text": "a lone \\ud800"}\n')
    result = cli("longblocks", "sample", "--source", f"local:{folder}", "--out", str(tmp_path / "s"), check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    kept = {r["text"] for r in pq.read_table(tmp_path / "s" / "data").to_pylist()}
    assert kept == {d["text"] for d in good}
    rejected = pq.read_table(tmp_path / "s" / "rejected").to_pylist()
    unreadable = {Path(r["detail"].split(":")[0]).name: r["detail"] for r in rejected if r["reason"] == "unreadable"}
    assert set(unreadable) == {"truncated.parquet", "surrogate.jsonl"}
    assert "Parquet" in unreadable["truncated.parquet"] and "surrogate" in unreadable["surrogate.jsonl"]


def test_a_damaged_committed_part_or_manifest_is_one_line_naming_the_file(tmp_path: Path) -> None:
    corpus = shard(tmp_path / "in" / "docs.parquet", documents(12))
    out = tmp_path / "select"
    cli("longblocks", "select", str(corpus), str(out), *SELECT)
    # the next stage reads a damaged data part
    data = out / "data" / "part-00001.parquet"
    intact = data.read_bytes()
    data.write_bytes(intact[:100])
    result = cli("longblocks", "dedup", str(out), str(tmp_path / "dedup"), check=False)
    one_line_error(result, str(data), "cannot be read", "--overwrite")
    assert not (tmp_path / "dedup").exists(), "nothing is created before the inputs are valid"
    data.write_bytes(intact)
    # a resumed stage reads a damaged consumed part
    consumed = out / "consumed" / "part-00000.parquet"
    consumed.write_bytes(b"")
    one_line_error(cli("longblocks", "select", str(corpus), str(out), *SELECT, check=False), str(consumed), "--overwrite")
    # a damaged manifest
    (out / "manifest.json").write_text('{"stage": "select", "outp')
    one_line_error(cli("longblocks", "select", str(corpus), str(out), *SELECT, check=False),
                   str(out / "manifest.json"), "corrupted", "--overwrite")
    one_line_error(cli("longblocks", "inspect", str(out), check=False), "manifest.json", "corrupted")
    # a 0-byte input file
    empty = tmp_path / "empty" / "x.parquet"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    one_line_error(cli("longblocks", "select", str(empty.parent), str(tmp_path / "o"), *SELECT, check=False),
                   str(empty), "cannot be read")
    assert not (tmp_path / "o").exists()


def test_a_stage_that_keeps_nothing_ends_the_run_with_its_rejection_summary(tmp_path: Path) -> None:
    docs = markdown_folder(tmp_path / "docs", documents(4))
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[source]\nname = "local:{docs}"\n'
                        f'[select]\nmin_tokens = 100000\nmax_tokens = 200000\n')
    result = cli("longblocks", "run", str(pipeline), env={"COLUMNS": "300"})
    assert "select: 4 documents in, kept 0 documents, rejected 4 documents" in result.stderr
    assert "rejected too_few_tokens: 4" in result.stderr
    assert "stopped after select: it kept nothing" in result.stderr and "no parquet shards" not in result.stderr
    assert not (tmp_path / "run" / "dedup").exists()


def test_the_same_row_twice_is_recorded_not_dropped(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    text = documents(1)[0]["text"]
    for name in ("a.md", "b.md"):  # one text in two files: one document id
        (docs / name).write_text(text)
    cli("longblocks", "sample", "--source", f"local:{docs}", "--out", str(tmp_path / "s"))
    rows = pq.read_table(tmp_path / "s" / "rejected").to_pylist()
    assert [r["reason"] for r in rows] == ["duplicate_row"] and pq.read_table(tmp_path / "s" / "data").num_rows == 1
    # the same document in two input shards of a later stage
    doc = make_document(source="local", language="en", text=text)
    shard(tmp_path / "twice" / "a.parquet", [doc])
    shard(tmp_path / "twice" / "b.parquet", [doc])
    cli("longblocks", "select", str(tmp_path / "twice"), str(tmp_path / "sel"), *SELECT)
    rows = pq.read_table(tmp_path / "sel" / "rejected").to_pylist()
    assert [r["reason"] for r in rows] == ["duplicate_input"] and doc["id"] in rows[0]["detail"]
