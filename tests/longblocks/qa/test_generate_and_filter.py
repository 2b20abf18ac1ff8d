"""QA generation and judging over real HTTP against the scripted server (a test double for the
model): malformed, truncated, thinking-wrapped and multilingual completions, 429s, 500s, slow
responses; every document ends as records or recorded rejections; the cache prevents re-sending."""

from __future__ import annotations

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

from conftest import cli, random_text
from longblocks.manifest import stage_stats
from longblocks.backends import Completion, OpenAIBackend, RequestCache, Sampling
from longblocks.text import split_reasoning
from longblocks.judge import parse_verdicts
from longblocks.qa import completion_outcome, parse_pairs
from openai_double import ScriptedServer

MODES = ["good", "malformed", "truncated", "thinking", "overthinking", "german", "referential",
         "rate_limited", "flaky", "broken", "slow"]
SECRET = "sk-test-DO-NOT-LEAK-9f8e7d6c"


def corpus(root: Path, modes: list[str], words: int = 120) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True)
    for i, mode in enumerate(modes):
        (root / f"{i:02d}-{mode}.md").write_text(f"[[mode:{mode}]] " + random_text(rng, words))
    return root


def run_generate(src: Path, out: Path, server: ScriptedServer, *extra: str, env: dict | None = None):
    return cli("longblocks", "generate", "--source", f"local:{src}", "--out", str(out), "--select.min-tokens", "10",
               "--model", "scripted-gen", "--base-url", server.base_url, "--judge.model", "scripted-judge",
               "--timeout", "1.5", "--max-retries", "2", "--concurrency", "4", "--max-tokens", "512",
               "--part-size", "3", *extra, env={"OPENAI_API_KEY": SECRET, **(env or {})})


def rejections(stage: Path) -> list[dict]:
    return pq.read_table(stage / "rejected").to_pylist()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("gen")
    src = corpus(tmp / "docs", MODES)
    server = ScriptedServer(slow_first=4.0)
    with server:
        result = run_generate(src, tmp / "run", server)
        first = dict(server.requests)
        again = run_generate(src, tmp / "run2", server, "--cache", str(tmp / "run" / "generate.requests.sqlite"))
        second = {k: v - first.get(k, 0) for k, v in server.requests.items()}
    return tmp, result, first, second, again


def test_every_document_ends_as_records_or_rejections(generated) -> None:
    tmp, result, *_ = generated
    gen = tmp / "run" / "generate"
    kept = pq.read_table(gen / "data").to_pylist()
    rejected = rejections(gen)
    consumed = set(pq.read_table(gen / "consumed")["id"].to_pylist())
    docs = pq.read_table(tmp / "run" / "dedup" / "data").to_pylist()
    assert consumed == {d["id"] for d in docs} and len(docs) == len(MODES)
    by_mode = {d["text"].split("]]")[0][len("[[mode:"):]: d["id"] for d in docs}
    kept_docs = {r["doc_id"] for r in kept}
    reasons: dict[str, set[str]] = {}
    for r in rejected:
        doc = next(d for d in by_mode.values() if d in r["detail"])
        reasons.setdefault(doc, set()).add(r["reason"])
    for mode, doc in by_mode.items():
        assert doc in kept_docs or doc in reasons, f"{mode} lost"
    assert reasons[by_mode["malformed"]] == {"no_pairs"}
    assert reasons[by_mode["overthinking"]] == {"truncated"}
    assert reasons[by_mode["referential"]] == {"not_self_contained"}
    assert reasons[by_mode["broken"]] == {"request_failed"}
    assert "truncated" in reasons[by_mode["truncated"]]
    questions = {r["question"] for r in kept}
    assert "What links the opening and the end?" in questions and "fake?" not in questions
    assert "Wie hängen Anfang und Ende zusammen?" in questions
    assert all(r["generator"] == "scripted-gen" and r["document"] for r in kept)
    for mode in ("rate_limited", "flaky", "slow", "good"):
        assert by_mode[mode] in kept_docs, mode


def test_retries_happen_and_failures_are_bounded(generated) -> None:
    _, _, first, *_ = generated
    assert first["rate_limited"] == 3  # two 429s, then success
    assert first["flaky"] == 2  # one 500
    assert first["slow"] == 2  # one timeout
    assert first["broken"] == 1  # a 400 is not retried: recorded as request_failed


def test_second_run_hits_the_cache(generated) -> None:
    _, _, _, second, again = generated
    sent = {k: v for k, v in second.items() if v and not k.startswith("judge:")}
    assert sent == {"broken": 1}, sent  # only the failure (never cached) is tried again
    assert "Traceback" not in again.stderr


def test_judge_keeps_passes_and_records_reasons(generated) -> None:
    tmp, *_ = generated
    filt = tmp / "run" / "judge"
    kept = pq.read_table(filt / "data").to_pylist()
    rejected = rejections(filt)
    assert kept and all(r["judge_verdict"] == "pass" for r in kept)
    assert {r["reason"] for r in rejected} == {"unsupported"}
    assert all("method change" in r["question"] for r in pq.read_table(tmp / "run" / "generate" / "data").to_pylist()
               if r["id"] in {x["id"] for x in rejected})
    manifest = json.loads((filt / "manifest.json").read_text())
    assert stage_stats(manifest).model == "scripted-judge" and "judge" in stage_stats(manifest).prompt_sha256


def test_api_key_is_not_written_anywhere(generated) -> None:
    tmp, result, *_ = generated
    assert SECRET not in result.stdout + result.stderr
    for path in (tmp / "run").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_killed_generate_resumes_without_resending_finished_requests(tmp_path: Path) -> None:
    modes = ["good"] * 24
    src = tmp_path / "docs"
    src.mkdir()
    rng = random.Random(1)
    for i in range(24):
        (src / f"{i:02d}.md").write_text(f"[[mode:good]] doc {i} " + random_text(rng, 80))
    server = ScriptedServer(delay=0.3)
    with server:
        args = ["generate", "--source", f"local:{src}", "--out", str(tmp_path / "run"), "--select.min-tokens", "10",
                "--model", "m", "--base-url", server.base_url, "--concurrency", "2", "--part-size", "4"]
        proc = subprocess.Popen([str(Path(sys.executable).parent / "longblocks"), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.requests["good"] < 9 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = list(server.prompts)
        cli("longblocks", *args)
        after = server.prompts[len(before):]
    assert len(before) >= 9
    # the last two were in flight, and one the server answered as the kill came may not have been recorded
    assert not set(after) & set(before[:-3]), "finished requests were sent again"
    assert len(set(before) | set(after)) == 24
    kept = pq.read_table(tmp_path / "run" / "generate" / "data").to_pylist()
    assert len({r["id"] for r in kept}) == len(kept) == 24 * 2
    assert len({r["doc_id"] for r in kept}) == 24
    del modes


def test_parser_handles_numbering_bold_and_multiline_answers() -> None:
    pairs, problems = parse_pairs(
        "Here are the pairs.\n\n**Question 1:** What are A and B?\n**Answer 1:** A is one.\nB is two.\n\n"
        "Q: Why?\nA: Because.\n\nQuestion: Left open?\n"
    )
    assert pairs == [("What are A and B?", "A is one.\nB is two."), ("Why?", "Because.")]
    assert problems == [("unanswered_question", "Left open?")]


def test_split_reasoning() -> None:
    assert split_reasoning("<think>plan</think>\nQuestion: x") == ("Question: x", "plan")
    assert split_reasoning("<think>never ends") == ("", "never ends")
    assert split_reasoning("plain", "field") == ("plain", "field")


def test_verdict_parser_is_robust() -> None:
    text = ("Pair 1: well_formed: yes; complete: yes; supported: yes; multi_span: yes; self_contained: yes; "
            "verdict: pass; reason: fine\n\n**Pair 2:**\n- **Supported**: No\n- Verdict: FAIL\n- reason: invented date\n"
            "Pair 3:\nverdict: pass\nmulti_span: no\n")
    verdicts = parse_verdicts(text, 4)
    assert verdicts[1].passed and verdicts[1].reasons == ["judge: fine"]
    assert not verdicts[2].passed and verdicts[2].reasons[0] == "unsupported"
    assert not verdicts[3].passed and verdicts[3].reasons == ["local_span"]
    assert 4 not in verdicts


def test_backend_cache_is_keyed_by_model_sampling_and_messages(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    msgs = [{"role": "user", "content": "x"}]
    keys = {RequestCache.key("a", Sampling(), msgs), RequestCache.key("b", Sampling(), msgs),
            RequestCache.key("a", Sampling(temperature=0.1), msgs), RequestCache.key("a", Sampling(), msgs + msgs)}
    assert len(keys) == 4
    with ScriptedServer() as server:
        backend = OpenAIBackend("m", base_url=server.base_url, cache=cache, concurrency=2)
        out = list(backend.map_ordered(["[[mode:good]] a", "[[mode:german]] b"], lambda s: [{"role": "user", "content": s}]))
        assert [o[0] for o in out] == ["[[mode:good]] a", "[[mode:german]] b"]
        assert out[0][1].reasoning == "separate reasoning field"
        again = list(backend.map_ordered(["[[mode:good]] a"], lambda s: [{"role": "user", "content": s}]))
        backend.close()
    assert again[0][1].cached and server.requests["good"] == 1


def test_choice_checks_are_calibrated_against_the_content_free_pair() -> None:
    """Mode "choice": a check passes when the pair makes "yes" likelier than the content-free pair
    does (a 135M judge says yes 20-40% of the time whatever it reads), not when P(yes) > 1/2."""
    from longblocks.judge import CHECKS, _choice_verdicts

    baselines = {check: 0.2 for check in CHECKS}
    answers = {1: {check: {"yes": 0.35, "no": 0.65} for check in CHECKS},
               2: {**{check: {"yes": 0.35, "no": 0.65} for check in CHECKS}, "supported": {"yes": 0.15, "no": 0.85}},
               3: {**{check: {"yes": 0.9, "no": 0.1} for check in CHECKS}, "complete": "prompt does not fit"}}
    verdicts = _choice_verdicts(answers, baselines)
    assert verdicts[1].passed and "supported p(yes)=0.35 vs 0.20" in verdicts[1].reasons[-1]
    assert not verdicts[2].passed and verdicts[2].reasons[0] == "unsupported"
    assert not verdicts[3].passed and verdicts[3].reasons[:2] == ["judge_request_failed", "complete: prompt does not fit"]


def test_choice_mode_needs_a_backend_that_scores_choices(tmp_path: Path) -> None:
    from longblocks.errors import LongBlocksError
    from longblocks.config import JudgeSection
    from longblocks.pipeline import run

    backend = OpenAIBackend("m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(LongBlocksError, match='mode "choice" needs a backend that scores choices'):
        run("judge", JudgeSection(mode="choice"), [tmp_path / "in"], tmp_path / "out", backend=backend)


def test_the_format_placeholders_copied_back_are_rejected() -> None:
    doc = {"id": "d1", "text": "x", "source": "local", "language": "en"}
    text = "Question: <the question>\nAnswer: <the answer>\n\nQuestion: What is x?\nAnswer: x is a letter."
    outcome = completion_outcome(doc, Completion(text=text, finish_reason="stop"), question_type="summary", generator="g")
    assert [r["question"] for r in outcome.kept] == ["What is x?"]
    assert [r.reason for r in outcome.rejected] == ["template_echo"]


def test_rule_failures_no_judge_should_pass() -> None:
    from longblocks.judge import rule_failure

    assert rule_failure("How to create a new file in Python?", "How to create a new file in Python?")[0] == "malformed"
    assert rule_failure("How to create a list?", "The answer to this question is:")[0] == "incomplete"
    assert rule_failure("What does os.path.join do?", "It joins path parts with the separator: / or \\\\.") is None
    assert rule_failure("Which two steps?", "There are two steps: first X, then Y.") is None


def test_a_damaged_request_cache_is_one_line_and_repair_sets_it_aside(tmp_path: Path) -> None:
    src = corpus(tmp_path / "docs", ["good"] * 6)
    server = ScriptedServer()
    args = ["generate", "--source", f"local:{src}", "--out", str(tmp_path / "run"), "--select.min-tokens", "10",
            "--model", "m", "--base-url", server.base_url, "--part-size", "2"]
    with server:
        cli("longblocks", *args)
        cache = tmp_path / "run" / "generate.requests.sqlite"
        for suffix in ("-wal", "-shm"):
            Path(f"{cache}{suffix}").unlink(missing_ok=True)
        cache.write_bytes(b"this is not an sqlite database" * 100)
        result = cli("longblocks", *args, check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert str(cache) in lines[-1] and "not a readable request cache" in lines[-1]
        assert f"longblocks repair {tmp_path / 'run' / 'generate'}" in lines[-1]
        repaired = cli("longblocks", "repair", str(tmp_path / "run" / "generate"))
        assert "set aside" in repaired.stderr and Path(f"{cache}.damaged").exists()
        sent = sum(server.requests.values())
        cli("longblocks", *args)  # committed parts are kept: nothing is sent again
        assert sum(server.requests.values()) == sent


def generate_args(src: Path, out: Path, server: ScriptedServer, *extra: str) -> list[str]:
    return ["generate", "--source", f"local:{src}", "--out", str(out), "--select.min-tokens", "10", "--model", "m",
            "--base-url", server.base_url, "--max-retries", "2", "--part-size", "2", *extra]


def test_the_seed_is_sent_only_when_set(tmp_path: Path) -> None:
    src = corpus(tmp_path / "docs", ["good"] * 2)
    with ScriptedServer() as server:
        cli("longblocks", *generate_args(src, tmp_path / "a", server))
        assert server.bodies and all("seed" not in body for body in server.bodies)
        sent = len(server.bodies)
        cli("longblocks", *generate_args(src, tmp_path / "b", server, "--seed", "7"))
        assert server.bodies[sent:] and all(body["seed"] == 7 for body in server.bodies[sent:])


def test_an_outage_is_retried_by_the_next_run_not_recorded_for_good(tmp_path: Path) -> None:
    """Requests that meet an outage (500s through every retry) leave their documents for the next run:
    the stage ends non-zero with one line naming the first error and how to go on, the rest is
    committed; after the server is back, the same command sends only those and completes."""
    src = corpus(tmp_path / "docs", ["good", "down", "good", "down", "good"])
    with ScriptedServer() as server:
        first = cli("longblocks", *generate_args(src, tmp_path / "run", server), check=False)
        lines = [line for line in first.stderr.splitlines() if line.startswith("error:")]
        assert first.returncode == 2 and len(lines) == 1, first.stderr
        assert "2 input(s) met a failure that may pass" in lines[0] and "HTTP 500" in lines[0]
        assert "run the same command again" in lines[0]
        manifest = json.loads((tmp_path / "run" / "generate" / "manifest.json").read_text())
        assert manifest["status"] == "incomplete" and manifest["inputs"]["consumed"] == 3
        assert "request_failed" not in manifest["rejected"]
        server.fail_first["down"] = (0, 500)  # the server is back
        before = dict(server.requests)
        cli("longblocks", *generate_args(src, tmp_path / "run", server))
        again = {k: v - before.get(k, 0) for k, v in server.requests.items() if v - before.get(k, 0)}
    assert again == {"down": 2}, again  # only the two that met the outage
    manifest = json.loads((tmp_path / "run" / "generate" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["inputs"]["consumed"] == 5


def test_a_stage_whose_every_request_failed_is_an_error(tmp_path: Path) -> None:
    src = corpus(tmp_path / "docs", ["broken"] * 3)
    with ScriptedServer() as server:
        result = cli("longblocks", *generate_args(src, tmp_path / "run", server), check=False)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and "every one of the 3 request(s) it sent failed" in lines[0]
    assert "request_failed" in lines[0] and "Traceback" not in result.stderr


def test_the_servers_limits_are_checked_before_the_first_request(tmp_path: Path) -> None:
    """/v1/models names the served models and their max_model_len (vLLM's field): a max_tokens it
    cannot hold, or a model name it does not serve, is one line before anything is sent or created."""
    src = corpus(tmp_path / "docs", ["good"] * 2)
    with ScriptedServer(models=["m"], max_model_len=4096) as server:
        too_long = cli("longblocks", *generate_args(src, tmp_path / "run", server), check=False)
        assert too_long.returncode == 2 and "max_tokens = 16384 leaves no room for a prompt in the max_model_len = 4096" \
            in too_long.stderr, too_long.stderr
        typo = cli("longblocks", *generate_args(src, tmp_path / "run", server, "--max-tokens", "512",
                                                "--model", "mm"), check=False)
        assert typo.returncode == 2 and "serves ['m'], not 'mm'" in typo.stderr
        assert not server.bodies
        cli("longblocks", *generate_args(src, tmp_path / "ok", server, "--max-tokens", "512"))
    assert not (tmp_path / "run" / "generate").exists()


def test_a_failure_keeps_the_servers_first_answer_beside_its_last(tmp_path: Path) -> None:
    src = corpus(tmp_path / "docs", ["dying"])
    with ScriptedServer() as server:
        result = cli("longblocks", *generate_args(src, tmp_path / "run", server), check=False)
    line = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "first: HTTP 500" in line and "EngineDeadError" in line and "last: HTTP 503" in line, line


def test_a_pair_that_repeats_the_prompts_instructions_is_rejected() -> None:
    doc = {"id": "d" * 64, "text": "x", "source": "local", "language": "en"}
    echo = ("Question: What must every answer be?\nAnswer: Every answer must be complete, correct, and supported only "
            "by the document.\nQuestion: Which two results are compared?\nAnswer: The early and the late one.")
    outcome = completion_outcome(doc, Completion(text=echo, finish_reason="stop"), question_type="summary", generator="g")
    assert [r["question"] for r in outcome.kept] == ["Which two results are compared?"]
    assert [r.reason for r in outcome.rejected] == ["template_echo"]
    assert "every answer must be complete correct and supported" in outcome.rejected[0].detail
