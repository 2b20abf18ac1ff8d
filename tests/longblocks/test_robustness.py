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
    # refused at once, by the run folder's lock, before it walks a stage or loads anything
    one_line_error(second, str(tmp_path / "run"), "is being written by another run", f"pid {first.pid}")
    manifest = json.loads((tmp_path / "run" / "dedup" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["outputs"]["kept"] == 40


def test_an_unreadable_file_in_a_local_folder_is_a_rejection_and_the_rest_is_sampled(tmp_path: Path) -> None:
    """A damaged parquet file is one `unreadable` rejection naming it; a jsonl file is read a line at a
    time: each bad line (a lone surrogate, not JSON, not UTF-8) is an `unreadable_line` rejection
    naming the file and line, and the file's good lines are kept."""
    folder = tmp_path / "corpus"
    good = documents(8, seed=1)
    shard(folder / "good.parquet", [{**d, "id": d["id"]} for d in good[:3]])
    (folder / "good.jsonl").write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in good[3:6]))
    truncated = shard(folder / "truncated.parquet", documents(20, seed=2))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (folder / "mixed.jsonl").write_bytes(
        (json.dumps({"text": good[6]["text"]}) + "\n" + '{"text": "a lone \\ud800"}\n' + '{"text": "cut off\n').encode()
        + b'{"text": "latin-1 \xe9t\xe9"}\n' + (json.dumps({"text": good[7]["text"]}) + "\n").encode())
    result = cli("longblocks", "sample", "--source", f"local:{folder}", "--out", str(tmp_path / "s"), check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    kept = {r["text"] for r in pq.read_table(tmp_path / "s" / "data").to_pylist()}
    assert kept == {d["text"] for d in good}, "the good lines of a file with bad ones are kept"
    rejected = pq.read_table(tmp_path / "s" / "rejected").to_pylist()
    unreadable = {Path(r["detail"].split(":")[0]).name: r["detail"] for r in rejected if r["reason"] == "unreadable"}
    assert set(unreadable) == {"truncated.parquet"} and "Parquet" in unreadable["truncated.parquet"]
    lines = sorted(r["detail"] for r in rejected if r["reason"] == "unreadable_line")
    assert [d.split(":")[1] for d in lines] == ["line 2", "line 3", "line 4"], lines
    assert all(d.startswith(str(folder / "mixed.jsonl")) for d in lines)
    assert "surrogate" in lines[0] and "not JSON" in lines[1] and "not UTF-8" in lines[2]


def test_a_damaged_committed_part_or_manifest_is_one_line_naming_the_file(tmp_path: Path) -> None:
    corpus = shard(tmp_path / "in" / "docs.parquet", documents(12))
    out = tmp_path / "select"
    cli("longblocks", "select", str(corpus), str(out), *SELECT)
    # the next stage reads a damaged data part
    data = out / "data" / "part-00001.parquet"
    intact = data.read_bytes()
    data.write_bytes(intact[:100])
    result = cli("longblocks", "dedup", str(out), str(tmp_path / "dedup"), check=False)
    one_line_error(result, str(data), "where 6", "were committed", f"longblocks repair {out}")
    assert not (tmp_path / "dedup").exists(), "nothing is created before the inputs are valid"
    data.write_bytes(intact)
    # a resumed stage reads a damaged consumed part
    consumed = out / "consumed" / "part-00000.parquet"
    consumed.write_bytes(b"")
    one_line_error(cli("longblocks", "select", str(corpus), str(out), *SELECT, check=False), str(consumed),
                   f"longblocks repair {out}")
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


def test_a_part_lost_after_it_was_committed_is_found_and_redone_alone(tmp_path: Path) -> None:
    """The manifest keeps every committed part's rows, bytes and checksum: a part deleted or damaged
    between runs is one line naming it and `longblocks repair`, for the next stage, for a rerun of
    its own stage and for publish; repair drops just that part, and the rerun redoes its inputs."""
    corpus = shard(tmp_path / "in" / "docs.parquet", documents(12))
    out, reference = tmp_path / "out", tmp_path / "reference"
    cli("longblocks", "select", str(corpus), str(out), *SELECT)
    cli("longblocks", "select", str(corpus), str(reference), *SELECT)
    lost = out / "data" / "part-00001.parquet"
    lost.unlink()
    one_line_error(cli("longblocks", "dedup", str(out), str(tmp_path / "dedup"), check=False), str(lost), "is missing",
                   "(3 rows)", f"longblocks repair {out}")
    one_line_error(cli("longblocks", "select", str(corpus), str(out), *SELECT, check=False), str(lost), "is missing")
    assert not (tmp_path / "dedup").exists()
    repaired = cli("longblocks", "repair", str(out))
    assert "1 repaired" in repaired.stderr and "part-00001" in repaired.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["consumed"] == 9 and manifest["status"] == "incomplete"
    cli("longblocks", "select", str(corpus), str(out), *SELECT)  # redoes the 3 inputs of the dropped part only
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["consumed"] == 12 and [p["name"] for p in manifest["outputs"]["parts"]] == \
        ["part-00000", "part-00002", "part-00003", "part-00004"]
    assert sorted(pq.read_table(out / "data")["id"].to_pylist()) == sorted(pq.read_table(reference / "data")["id"].to_pylist())
    assert "every committed part is intact" in cli("longblocks", "repair", str(out)).stderr


def test_publish_refuses_a_stage_that_is_incomplete_or_not_as_committed(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "publish"))
    from run_fixture import build_run

    run_dir = build_run(tmp_path / "run", n_docs=12)
    part = run_dir / "judge" / "data" / "part-00000.parquet"
    intact = part.read_bytes()
    part.write_bytes(intact[:-9] + bytes([intact[-9] ^ 1]) + intact[-8:])  # same size, one bit flipped
    one_line_error(cli("longblocks", "publish", str(run_dir), str(tmp_path / "pub"), check=False), str(part),
                   "does not match its committed checksum")
    part.write_bytes(intact)
    manifest_path = run_dir / "judge" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "status": "running"}))
    one_line_error(cli("longblocks", "publish", str(run_dir), str(tmp_path / "pub"), check=False), "is incomplete")
    manifest_path.write_text(json.dumps(manifest))
    cli("longblocks", "publish", str(run_dir), str(tmp_path / "pub"))
    assert pq.read_table(tmp_path / "pub" / "data").num_rows == manifest["outputs"]["kept"]


def test_a_source_that_cannot_open_leaves_nothing_behind(tmp_path: Path) -> None:
    """`generate --source arxiv` without network: one line, exit 2, and no run folder, stage folder
    or lock left (nothing was committed)."""
    result = cli("longblocks", "-q", "generate", "--source", "arxiv", "--out", str(tmp_path / "a" / "run"), "--model", "m",
                 "--base-url", "http://127.0.0.1:9/v1", check=False,
                 env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    one_line_error(result, "common-pile/arxiv_papers")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_a_rerun_of_a_finished_stage_changes_nothing_not_even_its_manifest(tmp_path: Path) -> None:
    corpus = shard(tmp_path / "in" / "docs.parquet", documents(6))
    out = tmp_path / "select"
    cli("longblocks", "select", str(corpus), str(out), *SELECT)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    time.sleep(1.1)  # a rewritten updated_at would differ
    cli("longblocks", "select", str(corpus), str(out), *SELECT)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
