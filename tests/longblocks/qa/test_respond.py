"""The respond stage: every responder answers every judged question over its document, requests
spread over a responder's replicas (a dead one's requests move on), a killed run re-sends nothing
that completed, and the published shards load with LongBlocks' nine columns and train SFT.
Endpoints are the scripted test-double server over real HTTP; the trainer is the tiny Qwen3."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import cli, cli_killed_at, random_text
from longblocks.manifest import stage_stats
from longblocks.backends import RequestCache, sampling_of
from longblocks.config import ResponderConfig
from longblocks.respond import respond_messages
from openai_double import ScriptedServer, _free_port

# LongBlocks' responders, as its columns name them
NAMES = ("Qwen3-Next-80B-A3B", "Qwen3.5-27B", "Nemotron-3-Nano-30B-A3B")
LONGBLOCKS_COLUMNS = ["id", "document", "source", "language", "question", "answer",
                      *(f"response_{n}" for n in NAMES)]


def corpus(root: Path, n: int, modes: tuple[str, ...] = ("good",)) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"{i:02d}.md").write_text(f"[[mode:{modes[i % len(modes)]}]] " + random_text(rng, 150))
    return root


def pipeline_file(path: Path, docs: Path, out: Path, url: str, dead_url: str, part_size: int = 50) -> Path:
    responders = "".join(
        f'[[respond.responders]]\nname = "{name}"\nmodel = "served-{i}"\nbase_url = {urls}\n'
        for i, (name, urls) in enumerate([(NAMES[0], f'["{dead_url}", "{url}"]'), (NAMES[1], f'"{url}"'),
                                          (NAMES[2], f'"{url}"')]))
    path.write_text(f'[run]\nout = "{out}"\npart_size = {part_size}\n[source]\nname = "local:{docs}"\n'
                    f'[select]\nmin_tokens = 10\n[generate]\nmodel = "scripted-gen"\nbase_url = "{url}"\n'
                    f'max_retries = 2\n[judge]\nmodel = "scripted-judge"\nbase_url = "{url}"\n{responders}')
    return path


@pytest.mark.slow
def test_responses_of_every_responder_publish_as_longblocks_and_train(tmp_path: Path, tiny_model_dir: Path) -> None:
    docs = corpus(tmp_path / "docs", 4)
    dead = f"http://127.0.0.1:{_free_port()}/v1"  # a replica that is down for the whole run
    with ScriptedServer() as server:
        cli("longblocks", "run", str(pipeline_file(tmp_path / "p.toml", docs, tmp_path / "run", server.base_url, dead)))
    rows = pq.read_table(tmp_path / "run" / "respond" / "data").to_pylist()
    judged = pq.read_table(tmp_path / "run" / "judge" / "data").num_rows
    assert len(rows) == judged > 0
    for row in rows:  # none without its responses, though one replica of the first responder was down
        assert all(row[f"response_{n}"] for n in NAMES), row
        assert row[f"reasoning_{NAMES[0]}"] == "separate reasoning field"  # reasoning kept apart
        assert "Question:" in row[f"response_{NAMES[1]}"]
    manifest = json.loads((tmp_path / "run" / "respond" / "manifest.json").read_text())
    assert stage_stats(manifest).responders[NAMES[0]].settings["base_url"][1] == server.base_url and not manifest.get("rejected")

    cli("longblocks", "publish", str(tmp_path / "run"), str(tmp_path / "pub"))
    import datasets

    published = datasets.load_dataset("parquet", data_files=str(tmp_path / "pub" / "data" / "*.parquet"), split="train")
    assert list(published.features) == LONGBLOCKS_COLUMNS
    assert all(f == datasets.Value("string") for f in published.features.values())

    config = tmp_path / "sft.toml"
    config.write_text(f'[model]\npath = "{tiny_model_dir}"\ngradient_checkpointing = false\n'
                      f'[data]\nmax_seq_len = 1024\nshort_fraction = 0.0\n[[data.long]]\n'
                      f'path = "{tmp_path / "pub" / "data"}"\ntarget = "response_{NAMES[1]}"\n'
                      f'[optim]\nsteps = 2\ntokens_per_step = 1024\nwarmup_steps = 1\n'
                      f'[run]\nout = "{tmp_path / "sft"}"\ntensorboard = false\n')
    cli("dgrpo-train", "sft", "--config", str(config), timeout=600)
    assert (tmp_path / "sft" / "final" / "config.json").exists()


def test_failed_responses_are_recorded_and_the_row_is_kept(tmp_path: Path) -> None:
    docs = corpus(tmp_path / "docs", 3, modes=("good", "truncated"))
    with ScriptedServer() as server:
        gen = tmp_path / "run"
        cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(gen), "--select.min-tokens", "10",
            "--model", "scripted-gen", "--base-url", server.base_url)
        cli("longblocks", "respond", str(gen / "generate"), str(tmp_path / "resp"),
            "--responders", f'{{name="{NAMES[1]}", model="served", base_url="{server.base_url}"}}')
    rows = pq.read_table(tmp_path / "resp" / "data").to_pylist()
    rejected = pq.read_table(tmp_path / "resp" / "rejected").to_pylist()
    assert len(rows) == pq.read_table(gen / "generate" / "data").num_rows
    truncated = [r for r in rows if "[[mode:truncated]]" in r["document"]]
    assert truncated and all(r[f"response_{NAMES[1]}"] is None for r in truncated)
    assert {r["reason"] for r in rejected} == {"response_truncated"} and len(rejected) == len(truncated)
    # the card says which response column is empty, in how many rows, and why
    cli("longblocks", "publish", str(tmp_path / "resp"), str(tmp_path / "pub"), "--license", "cc-by-4.0")
    card = (tmp_path / "pub" / "README.md").read_text()
    assert f"**`response_{NAMES[1]}` is empty in {len(truncated)} of {len(rows)} rows**: the responder's answer was " \
           f"rejected (truncated {len(truncated)})" in card, card


def test_killed_respond_resends_nothing_that_completed(tmp_path: Path) -> None:
    docs = corpus(tmp_path / "docs", 12)
    with ScriptedServer() as server:
        gen = tmp_path / "run"
        cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(gen), "--select.min-tokens", "10",
            "--model", "scripted-gen", "--base-url", server.base_url)
        server.delay = 0.05
        args = ("longblocks", "respond", str(gen / "generate"), str(tmp_path / "resp"), "--part-size", "3",
                "--responders", f'{{name="{NAMES[1]}", model="served", base_url="{server.base_url}", concurrency=2}}')
        before = len(server.prompts)
        cli_killed_at(tmp_path / "resp" / "consumed" / "part-00001.parquet", *args)
        first = server.prompts[before:]
        cache = tmp_path / f"resp.{NAMES[1]}.requests.sqlite"
        with sqlite3.connect(cache) as db:
            completed = {k for (k,) in db.execute("SELECT key FROM completions")}
        assert 0 < len(completed) < 36
        cli(*args)
        second = server.prompts[before + len(first):]
    sampling = sampling_of(ResponderConfig(model="served"))
    keys = [RequestCache.key("served", sampling, [{"role": "user", "content": p}]) for p in second]
    assert not set(keys) & completed  # nothing that completed before the kill is sent again
    rows = pq.read_table(tmp_path / "resp" / "data").to_pylist()
    assert len(rows) == len({r["id"] for r in rows}) == pq.read_table(gen / "generate" / "data").num_rows
    assert all(r[f"response_{NAMES[1]}"] for r in rows)
    assert respond_messages(rows[0])[0]["content"] == f"{rows[0]['document']}\n\n{rows[0]['question']}"


@pytest.mark.parametrize("bad", ['name = "x"', 'model = "a/b c"'])
def test_bad_responder_config_is_one_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'[run]\nout = "o"\n[source]\nname = "local:."\n[[respond.responders]]\n{bad}\n')
    result = cli("longblocks", "run", str(path), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_respond_and_publish_follow_the_judge_unless_told_otherwise(tmp_path: Path) -> None:
    """A run with a judge stage: responding to (or publishing) the generate stage beside it is refused in
    one line saying how to go on; with --skip-judge it is done, and the card does not claim a judge
    checked the pairs."""
    docs = corpus(tmp_path / "docs", 3)
    run = tmp_path / "run"
    responder = "--responders", f'{{name="{NAMES[1]}", model="served", base_url="URL"}}'
    with ScriptedServer() as server:
        cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(run), "--select.min-tokens", "10",
            "--model", "scripted-gen", "--base-url", server.base_url, "--judge.model", "scripted-judge")
        args = ["longblocks", "respond", str(run / "generate"), str(run / "respond"), responder[0],
                responder[1].replace("URL", server.base_url)]
        refused = cli(*args, check=False)
        assert refused.returncode == 2 and "holds pairs the judge never saw" in refused.stderr
        assert f"longblocks respond {run / 'judge'} OUT" in refused.stderr and "--skip-judge" in refused.stderr
        assert not (run / "respond").exists()
        cli(*args, "--skip-judge")
    refused = cli("longblocks", "publish", str(run), str(tmp_path / "pub"), check=False)
    assert refused.returncode == 2 and "--skip-judge" in refused.stderr and not (tmp_path / "pub").exists()
    cli("longblocks", "publish", str(run), str(tmp_path / "pub"), "--skip-judge", "--license", "cc-by-4.0")
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "LLM judge" not in card and "**Judge.**" not in card
    cli("longblocks", "publish", str(run / "judge"), str(tmp_path / "judged"), "--license", "cc-by-4.0")
    assert "LLM judge" in (tmp_path / "judged" / "README.md").read_text()


def test_responders_read_the_records_side_by_side_not_one_after_another() -> None:
    # The first responder's answer to the fourth record takes 3 s. Chained (each responder reading
    # what the one before handed over, in order), the second could not send the fourth to sixth
    # records until then; side by side it sends them at once (bench_fleet.py: respond at 2.3x the
    # ideal time instead of 3.5x).
    import time

    from starlette.applications import Starlette
    from starlette.routing import Route

    from longblocks.backends import OpenAIBackend, Sampling
    from longblocks.config import RespondSection
    from longblocks.respond import stage

    class Timed(ScriptedServer):
        """The scripted server, noting when each request arrives."""

        def serve(self, app: Starlette) -> None:
            self.arrivals: list[float] = []
            super().serve(Starlette(routes=[Route("/v1/chat/completions", self.timed, methods=["POST"])]))

        async def timed(self, request):  # noqa: ANN001, ANN202
            self.arrivals.append(time.monotonic())
            return await self.chat(request)

    records = [{"id": f"r{i}", "document": f"[[mode:{'slow' if i == 3 else 'good'}]] document {i}",
                "question": f"question {i}?", "answer": "a"} for i in range(6)]
    with Timed(slow_first=3.0) as first, Timed() as second:
        backends = {name: OpenAIBackend("m", base_url=server.base_url, concurrency=4, max_retries=0, timeout=30,
                                        sampling=Sampling(max_tokens=32))
                    for name, server in (("first", first), ("second", second))}
        outcomes = list(stage(RespondSection(), backends=backends).process(iter(records), writer=None))
        for backend in backends.values():
            backend.close()
    assert [o.input_id for o in outcomes] == [r["id"] for r in records]  # input order, each answered by both
    assert all(o.kept and o.kept[0]["response_first"] and o.kept[0]["response_second"] for o in outcomes)
    assert len(second.arrivals) == len(records)
    assert max(second.arrivals) < min(first.arrivals) + 3.0  # all sent while the first waited on its slow one
