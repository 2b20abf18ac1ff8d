"""Progress shows wherever the output goes: with stderr to a file (a log, nohup, CI), each stage
writes plain lines at its start, every LONGBLOCKS_PROGRESS_EVERY seconds and at its end, while it
runs, not once it is over; on a terminal the bars are rich's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT
from longblocks.progress import PlainProgress


def test_plain_lines_at_start_every_interval_and_at_the_end() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=10, clock=lambda: now[0])
    progress("generate", 0, 100)
    for t in range(1, 26):
        now[0] = float(t)
        progress("generate", 2, None, kept=t, rejected=0)
    progress("generate", 0, None, done=1)
    assert lines[0] == "generate: started, 100 to do"
    assert lines[1] == "generate: 20/100 (20%) 2.00/s ETA 0:00:40 [0:00:10] kept 10 rejected 0"
    assert lines[2].startswith("generate: 40/100 (40%)") and "[0:00:20]" in lines[2]
    assert lines[3] == "generate: done: 50/100 (50%) 2.00/s [0:00:25] kept 25 rejected 0"
    assert len(lines) == 4


def test_a_resumed_phase_counts_earlier_work_but_rates_only_this_runs() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=10, clock=lambda: now[0])
    progress("dgrpo", 40, 100, resumed=1)  # a run restarted at step 40 of 100
    for t in range(1, 11):
        now[0] = float(t)
        progress("dgrpo", 1, None, reward=0.5)
    assert lines[0] == "dgrpo: started, 100 to do, 40 done before"
    # one step a second since the restart: 50 left take 50 s (counting the 40 old steps: 5/s, ETA 0:00:10)
    assert lines[1] == "dgrpo: 50/100 (50%) 1.00/s ETA 0:00:50 [0:00:10] reward 0.5"


def test_a_phase_that_does_not_move_still_gets_a_line_every_interval() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=0.05, heartbeat=True)
    progress("generate", 0, 5)  # a batch of five long generations: nothing finishes for a while
    time.sleep(0.3)
    progress.close()
    beats = [line for line in lines if line.startswith("generate: 0/5 (0%)")]
    assert lines[0] == "generate: started, 5 to do" and len(beats) >= 2, lines


def test_the_quickstarts_first_stage_logs_progress_to_a_file_while_it_runs(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    out = tmp_path / "qs"
    exe = str(Path(sys.executable).parent / "longblocks")
    with log.open("w") as stderr:  # not a terminal: plain lines
        proc = subprocess.Popen([exe, "run", str(ROOT / "pipelines" / "quickstart.toml"), f"--run.out={out}",
                                 '--generate.model=""'], stdout=subprocess.DEVNULL, stderr=stderr,
                                env={**__import__("os").environ, "LONGBLOCKS_PROGRESS_EVERY": "0"})
        seen_while_running = False
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not seen_while_running:
            progress_lines = [l for l in log.read_text().splitlines() if l.startswith("sample: ") and "/" in l
                              and "done:" not in l]
            if progress_lines:
                manifest = out / "sample" / "manifest.json"
                status = json.loads(manifest.read_text())["status"] if manifest.exists() else "running"
                seen_while_running = status == "running"
            time.sleep(0.005)
        proc.wait(timeout=120)
    text = log.read_text()
    assert seen_while_running, text
    assert proc.returncode == 0, text
    for stage in ("sample", "select", "dedup"):
        assert f"{stage}: started" in text and f"{stage}: done:" in text
    assert text.index("sample: done:") < text.index("sample: 168 documents in")  # the summary comes after


def test_an_in_process_llm_stage_shows_tokens_rising_while_its_first_batch_runs(tiny_model_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """One `generate` call holds the whole batch (the transformers backend): the log still shows the
    tokens generated rising, line after line, before the first document is done, so slow is not stuck."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longblocks.records import DOCUMENT_SCHEMA, make_document

    docs = [make_document(source="local", language="en", text=f"Document {i}: the key is {i}.") for i in range(3)]
    pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), tmp_path / "docs.parquet")
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        subprocess.run([str(Path(sys.executable).parent / "longblocks"), "generate", str(tmp_path / "docs.parquet"),
                        str(tmp_path / "gen"), "--backend", "transformers", "--model", str(tiny_model_dir),
                        "--max-tokens", "1500", "--temperature", "0", "--batch-size", "8", "--seed", "none"],
                       stderr=stderr, env={**__import__("os").environ, "LONGBLOCKS_PROGRESS_EVERY": "0.2"},
                       check=True, timeout=300)
    text = log.read_text()
    before_first = [line for line in text.splitlines() if line.startswith("generate: 0/3")]
    tokens = [int(line.split(" tokens ")[1].split()[0]) for line in before_first if " tokens " in line]
    assert len(tokens) >= 2 and tokens[-1] > tokens[0] > 0 and tokens == sorted(tokens), text
    assert all(" in flight 3" in line for line in before_first if " tokens " in line), text


def test_verbose_means_plain_lines_every_five_seconds_and_the_eta_comes_from_answered_requests() -> None:
    import click

    from longblocks import cli as lb_cli

    with click.Context(lb_cli.app, obj={"verbose": True, "quiet": False}):
        with lb_cli.progress_bars() as progress:
            assert isinstance(progress, PlainProgress) and progress.interval == 5.0
    # 10 documents; the first is slow, so no outcome is out after 50 s, but 8 requests are answered:
    # the ETA is 2 left at 8 per 50 s (12 s), not "unknown" or growing with the slow head
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=10, clock=lambda: now[0])
    progress("generate", 0, 10)
    now[0] = 50.0
    progress("generate", 0, None, answered=8, in_flight=2)
    assert "ETA 0:00:12" in lines[-1] and "answered 8" in lines[-1], lines
