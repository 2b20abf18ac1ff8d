"""Trainer numerics as they are on the GPU: every accepted teacher term follows the gradient of its
divergence and every other one is refused; a student equal to its teacher gets zero KL and zero
gradient at every temperature; fp32 master weights under bf16 compute move like fp32 training (one
process with autocast, and FSDP2's mixed precision under torchrun); behaviour log-probs mean what
they say; the RL prompt mixture; replayed rollouts at another temperature are refused."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

import copy_task
from openai_double import _free_port
from trainer.config import (COMBINES, DIRECTIONS, ESTIMATORS, TEACHER_TERMS, ConfigError, ObjectiveConfig, RLConfig,
                            RLDataConfig, RolloutConfig, SFTConfig, load_config)
from trainer.kernels import bucket_kl
from trainer.objectives import TokenBatch, dgrpo_loss

V = 7


def divergence(theta: torch.Tensor, w: torch.Tensor, temperature: float, estimator: str, direction: str,
               ids: torch.Tensor) -> torch.Tensor:
    """The divergence a teacher term is meant to follow: the full KL, or the K+1-bucket KL (topk)."""
    s, t = torch.log_softmax(theta / temperature, -1), torch.log_softmax(w / temperature, -1)
    if estimator == "topk":
        rest = torch.ones(V, dtype=torch.bool)
        rest[ids] = False
        return bucket_kl(s[ids][None], torch.logsumexp(s[rest], -1)[None], t[ids][None],
                         torch.logsumexp(t[rest], -1)[None], direction)[0]
    return (s.exp() * (s - t)).sum() if direction == "reverse" else (t.exp() * (t - s)).sum()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(("estimator", "combine", "direction"), sorted(TEACHER_TERMS))
def test_each_accepted_teacher_term_follows_its_divergence_in_expectation(estimator: str, combine: str, direction: str,
                                                                          temperature: float) -> None:
    """E_{y ~ pi_theta}[gradient of the objective's teacher term at sampled token y], summed exactly
    over a 7-token vocabulary, equals the gradient of the divergence the configuration names."""
    gen = torch.Generator().manual_seed(0)
    theta = (torch.randn(V, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    w = torch.randn(V, generator=gen, dtype=torch.float64) * 1.5
    cfg = ObjectiveConfig(beta=1.0, estimator=estimator, combine=combine, direction=direction, top_k=3)
    ids = torch.log_softmax(w, -1).topk(3).indices
    p = torch.softmax(theta / temperature, -1).detach()
    expected = torch.zeros(V, dtype=torch.float64)
    for y in range(V):
        logprobs = torch.log_softmax(theta / temperature, -1)[y].reshape(1, 1)
        teacher_logprobs = torch.log_softmax(w / temperature, -1)[y].reshape(1, 1)
        kl = divergence(theta, w, temperature, estimator, direction, ids).reshape(1, 1) \
            if estimator in ("full", "topk") else None
        loss, _ = dgrpo_loss(TokenBatch(logprobs, logprobs.detach(), torch.zeros(1, dtype=torch.float64),
                                        torch.ones(1, 1, dtype=torch.bool), kl=kl, teacher_logprobs=teacher_logprobs), cfg)
        expected += p[y] * torch.autograd.grad(loss, theta)[0]
    target = torch.autograd.grad(divergence(theta, w, temperature, estimator, direction, ids), theta)[0]
    assert target.abs().max() > 1e-2  # a real gradient to match
    assert (expected - target).abs().max() < 1e-6, (expected, target)


REFUSED = sorted(set(itertools.product(ESTIMATORS, COMBINES, DIRECTIONS)) - TEACHER_TERMS)


@pytest.mark.parametrize(("estimator", "combine", "direction"), REFUSED)
def test_every_other_teacher_term_is_a_one_line_cli_error(estimator: str, combine: str, direction: str) -> None:
    from trainer.cli import app

    with pytest.raises(ConfigError, match="valid: full or topk"):
        ObjectiveConfig(beta=1.0, estimator=estimator, combine=combine, direction=direction)
    result = CliRunner().invoke(app, ["rl", "--model.path=m", "--data.long=[{path='x'}]", f"--objective.estimator={estimator}",
                                      f"--objective.combine={combine}", f"--objective.direction={direction}"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not follow" in lines[0] and "Traceback" not in result.output


def test_the_refused_terms_are_the_ones_with_the_wrong_gradient() -> None:
    """k1 as a loss (zero expected gradient), the exact KL in the advantage (zero), k3 as a
    reverse loss (forward gradient), k2/k3 in the advantage: all refused."""
    for term in (("k1", "loss", "reverse"), ("full", "advantage", "reverse"), ("topk", "advantage", "reverse"),
                 ("k3", "loss", "reverse"), ("k2", "advantage", "reverse"), ("k3", "advantage", "forward")):
        assert term in REFUSED


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("numerics")
    tok = copy_task.tokenizer_dir(root / "tokenizer")
    return SimpleNamespace(root=root, tokenizer=tok, model=copy_task.model_dir(root / "model", tok, seed=4),
                           prompts=copy_task.write_parquet(root / "rl.parquet", 200, seed=5),
                           sft=copy_task.write_parquet(root / "sft.parquet", 200, seed=6))


def rl_config_args(task: SimpleNamespace, out: Path, *extra: str) -> list[str]:
    return [f"--model.path={task.model}", f"--data.long=[{{path='{task.prompts}'}}]", "--rollout.max_new_tokens=3",
            f"--run.out={out}", "--run.tensorboard=false", "--model.gradient_checkpointing=false", "--run.save_every=1000",
            "--optim.micro_batch_rollouts=4", "--rollout.save=false", *extra]


def rl_config(task: SimpleNamespace, out: Path, *extra: str) -> RLConfig:
    return load_config(RLConfig, None, rl_config_args(task, out, *extra))


ACCEPTED_WITH_A_LOCAL_TEACHER = [
    ("full", "loss", "reverse"), ("full", "loss", "forward"), ("topk", "loss", "reverse"),
    ("k2", "loss", "reverse"), ("k1", "advantage", "reverse"), ("k3", "loss", "forward"),
]


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
@pytest.mark.parametrize(("estimator", "combine", "direction"), ACCEPTED_WITH_A_LOCAL_TEACHER)
def test_a_student_equal_to_its_teacher_gets_zero_kl_and_zero_gradient(task: SimpleNamespace, tmp_path: Path,
                                                                       estimator: str, combine: str, direction: str,
                                                                       temperature: float) -> None:
    """The teacher is scored at the temperature the student samples at: with the same weights the
    KL is 0 and so is the update, whatever the temperature and estimator."""
    from trainer.rl import train

    summary = train(rl_config(task, tmp_path / "same", "--teacher.source=local", f"--teacher.path={task.model}",
                              "--objective.beta=1.0", f"--objective.estimator={estimator}",
                              f"--objective.combine={combine}", f"--objective.direction={direction}",
                              f"--rollout.temperature={temperature}", "--rewards=[{name='exact_match', weight=0.0}]",
                              "--rollout.prompts_per_step=4", "--rollout.group_size=2", "--optim.steps=1"))
    [record] = summary["history"]
    assert abs(record["teacher_kl"]) < 1e-6, record["teacher_kl"]
    assert record["grad_norm"] < 1e-5, record["grad_norm"]


def master_weights(run_dir: Path, model_dir: Path) -> dict[str, torch.Tensor]:
    """The fp32 parameters of the run's last checkpoint (what the optimizer stepped)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers import AutoModelForCausalLM

    from trainer import checkpoint
    from trainer.model import FusedLogprobLM

    model = FusedLogprobLM(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(checkpoint.latest(run_dir / "checkpoints") / "dcp"))
    return state["model"]


def changed_fraction(run_dir: Path, model_dir: Path) -> tuple[float, float]:
    """(fraction of all weights that moved, of the RMSNorm weights that moved)."""
    from transformers import AutoModelForCausalLM

    start = {f"lm.{k}": v for k, v in AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict().items()}
    end = master_weights(run_dir, model_dir)
    moved = {k: (end[k].float() != start[k]).float() for k in end}
    total = sum(m.sum() for m in moved.values()) / sum(m.numel() for m in moved.values())
    norms = [m for k, m in moved.items() if "norm" in k]
    return float(total), float(sum(m.sum() for m in norms) / sum(m.numel() for m in norms))


def metric(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def sft_args(task: SimpleNamespace, out: Path, dtype: str) -> list[str]:
    return [f"--model.path={task.model}", f"--data.long=[{{path='{task.sft}'}}]", "--data.short_fraction=0.0",
            "--data.max_seq_len=256", "--optim.lr=1e-5", "--optim.warmup_steps=0", "--optim.steps=10",
            "--optim.tokens_per_step=512", "--optim.packs_multiple_of=2", f"--run.out={out}", "--run.save_every=1000",
            "--run.tensorboard=false", "--model.gradient_checkpointing=false", f"--model.dtype={dtype}"]


def test_bf16_compute_with_fp32_master_weights_moves_the_weights_like_fp32(task: SimpleNamespace, tmp_path: Path) -> None:
    """lr 1e-5 updates are far below half a bf16 step of these weights: stepped in bf16 they round
    away (15% of weights moved, no norm weight); with fp32 master weights under bf16 autocast the
    weights move as in fp32 training, and the losses agree to the bf16 compute error (2%)."""
    from transformers import AutoModelForCausalLM

    from trainer.sft import train as sft_train

    sft_train(load_config(SFTConfig, None, sft_args(task, tmp_path / "fp32", "float32")))
    sft_train(load_config(SFTConfig, None, sft_args(task, tmp_path / "bf16", "bfloat16")))
    fp32, fp32_norms = changed_fraction(tmp_path / "fp32", task.model)
    bf16, bf16_norms = changed_fraction(tmp_path / "bf16", task.model)
    assert fp32 > 0.9 and bf16 >= 0.8 * fp32 and bf16_norms >= 0.8 * fp32_norms, (fp32, bf16, fp32_norms, bf16_norms)
    assert metric(tmp_path / "bf16", "loss") == pytest.approx(metric(tmp_path / "fp32", "loss"), rel=2e-2)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / "final", dtype="auto")
    assert exported.dtype == torch.bfloat16  # the export is in the compute dtype

    # one RL run the same way (on-policy distillation from a differently seeded model)
    teacher = copy_task.model_dir(tmp_path / "teacher", task.tokenizer, seed=9)
    from trainer.rl import train as rl_train

    for dtype in ("float32", "bfloat16"):
        rl_train(rl_config(task, tmp_path / f"rl-{dtype}", "--teacher.source=local", f"--teacher.path={teacher}",
                           "--objective.beta=1.0", "--rewards=[{name='exact_match', weight=0.0}]", "--optim.lr=1e-5",
                           "--rollout.prompts_per_step=4", "--rollout.group_size=1", "--optim.steps=3",
                           f"--model.dtype={dtype}", f"--teacher.dtype={dtype}"))
    rl_fp32, _ = changed_fraction(tmp_path / "rl-float32", task.model)
    rl_bf16, _ = changed_fraction(tmp_path / "rl-bfloat16", task.model)
    assert rl_fp32 > 0.9 and rl_bf16 >= 0.8 * rl_fp32, (rl_fp32, rl_bf16)
    assert metric(tmp_path / "rl-bfloat16", "teacher_kl") == pytest.approx(metric(tmp_path / "rl-float32", "teacher_kl"),
                                                                          rel=5e-2)


@pytest.mark.slow
def test_fsdp2_mixed_precision_keeps_fp32_master_weights(task: SimpleNamespace, tmp_path: Path) -> None:
    """torchrun, 2 gloo processes, FSDP2 with param_dtype=bf16 and fp32 reduction: the sharded fp32
    master weights move like the single-process fp32 run's."""
    from trainer.sft import train as sft_train

    sft_train(load_config(SFTConfig, None, sft_args(task, tmp_path / "one", "float32")))
    exe = str(Path(sys.executable).parent / "dgrpo-train")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "--no-python", exe, "sft", *sft_args(task, tmp_path / "two", "bfloat16")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one, _ = changed_fraction(tmp_path / "one", task.model)
    two, _ = changed_fraction(tmp_path / "two", task.model)
    assert one > 0.9 and two >= 0.8 * one, (one, two)
    assert metric(tmp_path / "two", "loss") == pytest.approx(metric(tmp_path / "one", "loss"), rel=2e-2)

    # and one RL run (on-policy distillation, rollouts through the sharded root) the same way
    teacher = copy_task.model_dir(tmp_path / "teacher", task.tokenizer, seed=9)
    from trainer.rl import train as rl_train

    rl = ["--teacher.source=local", f"--teacher.path={teacher}", "--objective.beta=1.0", "--optim.lr=1e-5",
          "--rewards=[{name='exact_match', weight=0.0}]", "--rollout.prompts_per_step=4", "--rollout.group_size=1",
          "--optim.steps=3", "--optim.micro_batch_rollouts=2"]
    rl_train(rl_config(task, tmp_path / "rl-one", *rl, "--model.dtype=float32"))
    args = [a for a in rl_config_args(task, tmp_path / "rl-two", *rl, "--model.dtype=bfloat16")]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "--no-python", exe, "rl", *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rl_one, _ = changed_fraction(tmp_path / "rl-one", task.model)
    rl_two, _ = changed_fraction(tmp_path / "rl-two", task.model)
    assert rl_one > 0.9 and rl_two >= 0.8 * rl_one, (rl_one, rl_two)


def test_hf_engine_behaviour_logprobs_ignore_the_models_generation_config(task: SimpleNamespace, tmp_path: Path) -> None:
    """A model whose generation_config sets repetition_penalty=1.3 (transformers' generate would
    apply it): the engine samples with the config's settings only, so the behaviour log-probs are
    the trainer's own log-probs of the same tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.batch import pack_rollouts
    from trainer.data import template_ids
    from trainer.model import FusedLogprobLM
    from trainer.rollout import HFEngine

    lm = AutoModelForCausalLM.from_pretrained(task.model)
    lm.generation_config.repetition_penalty = 1.3
    lm.generation_config.no_repeat_ngram_size = 2
    tok = AutoTokenizer.from_pretrained(task.model)
    prompts = [template_ids(tok, [{"role": "user", "content": r["document"]}], add_generation_prompt=True)
               for r in copy_task.rows(6, seed=7)]
    engine = HFEngine(lm, tok, RolloutConfig(group_size=3, max_new_tokens=8, temperature=0.8))
    rollouts = [r for group in engine.generate(prompts, list(range(6))) for r in group]
    packed = pack_rollouts(rollouts)
    with torch.no_grad():
        out = FusedLogprobLM(lm)(torch.tensor([packed.input_ids]), torch.tensor([packed.position_ids]), temperature=0.8)
    for (start, end), rollout in zip(packed.spans, rollouts):
        assert out.logprobs[0, start:end].tolist() == pytest.approx(rollout.behaviour_logprobs, abs=1e-4)


def test_batched_sampling_equals_transformers_generate_per_prompt(task: SimpleNamespace) -> None:
    """16 prompts of different lengths x G=4 in one sampling loop give exactly the tokens that
    transformers' generate gives for each prompt's group alone with the same seed (and explicit,
    identical sampling settings): batching and padding do not change any sample."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from trainer.data import template_ids
    from trainer.rollout import HFEngine

    lm = AutoModelForCausalLM.from_pretrained(task.model)
    tok = AutoTokenizer.from_pretrained(task.model)
    rows = copy_task.rows(16, seed=8, min_words=4, max_words=60)
    prompts = [template_ids(tok, [{"role": "user", "content": r["document"]}], add_generation_prompt=True) for r in rows]
    assert len({len(p) for p in prompts}) > 8  # ragged: left padding matters
    seeds = [1000 + i for i in range(16)]
    sampling = RolloutConfig(group_size=4, max_new_tokens=10, temperature=0.9, top_p=0.9, top_k=30)
    batched = HFEngine(lm, tok, sampling).generate(prompts, seeds)
    settings = GenerationConfig(do_sample=True, temperature=0.9, top_p=0.9, top_k=30, max_new_tokens=10,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for prompt, seed, group in zip(prompts, seeds, batched):
        ids = torch.tensor([prompt] * 4)
        torch.manual_seed(seed)
        reference = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings)
        for rollout, tokens in zip(group, reference[:, len(prompt):].tolist()):
            assert rollout.completion_ids == tokens[: len(rollout.completion_ids)]
            assert rollout.finished or len(rollout.completion_ids) == 10


def test_rl_prompts_keep_the_short_long_token_mixture(task: SimpleNamespace, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.prompts import PromptData

    short = tmp_path / "short.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": f"what is the key ? f{i % 40}", "answer": "v1"} for i in range(50)]),
                   short)
    cfg = load_config(RLDataConfig, None, [f"--long=[{{path='{task.prompts}'}}]", f"--short=[{{path='{short}'}}]",
                                           "--short_fraction=0.25"])
    data = PromptData(cfg, AutoTokenizer.from_pretrained(task.model))
    prompts = data.next_prompts(200)
    assert data.realized_short_fraction() == pytest.approx(0.25, abs=0.03)
    assert sum("f" in p.row.get("question", "f") for p in prompts) > 0
    from trainer.rl import train

    summary = train(rl_config(task, tmp_path / "mix", f"--data.short=[{{path='{short}'}}]", "--data.short_fraction=0.25",
                              "--rollout.prompts_per_step=8", "--rollout.group_size=2", "--optim.steps=2"))
    assert all("data/short_fraction" in h for h in summary["history"])
    assert 0 < summary["history"][-1]["data/short_fraction"] < 0.6


def test_replayed_rollouts_sampled_at_another_temperature_are_refused(task: SimpleNamespace, tmp_path: Path) -> None:
    from trainer.rl import train

    train(rl_config(task, tmp_path / "first", "--rollout.prompts_per_step=2", "--rollout.group_size=2",
                    "--optim.steps=1", "--rollout.save=true", "--rollout.temperature=0.7"))
    with pytest.raises(ConfigError, match="temperature"):
        train(rl_config(task, tmp_path / "second", f"--data.replay={tmp_path / 'first' / 'rollouts'}",
                        "--rollout.prompts_per_step=2", "--rollout.group_size=2", "--optim.steps=1"))


def test_behaviour_logprobs_under_truncated_sampling_are_refused() -> None:
    with pytest.raises(ConfigError, match="untruncated"):
        RolloutConfig(old_logprobs="behaviour", top_p=0.9)
    with pytest.raises(ConfigError, match="untruncated"):
        RolloutConfig(old_logprobs="behaviour", top_k=20)
    with pytest.raises(ConfigError, match="temperature"):
        load_config(RLConfig, None, ["--model.path=m", "--data.long=[{path='x'}]", "--objective.beta=1",
                                     "--teacher.source=served", "--teacher.served.base_url=http://127.0.0.1:1/v1",
                                     "--teacher.served.model=m", "--objective.estimator=k2", "--rollout.temperature=0.7"])


def test_cpu_offload_trains_like_one_process(task: SimpleNamespace, tmp_path: Path) -> None:
    """`model.cpu_offload`: FSDP2's CPUOffloadPolicy (a one-process group without torchrun) keeps
    parameters, gradients and AdamW state in host memory and trains the same steps."""
    from trainer.sft import train as sft_train

    args = [a.replace("--optim.lr=1e-5", "--optim.lr=1e-3") for a in sft_args(task, tmp_path / "plain", "float32")]
    plain = sft_train(load_config(SFTConfig, None, args))
    offloaded = sft_train(load_config(SFTConfig, None, [a.replace(str(tmp_path / "plain"), str(tmp_path / "offload"))
                                                        for a in args] + ["--model.cpu_offload=true"]))
    assert offloaded["losses"] == pytest.approx(plain["losses"], rel=1e-5)
    from torch.distributed.fsdp import CPUOffloadPolicy
    from torch.distributed.tensor import DTensor

    from trainer import distributed
    from trainer.recipe import setup

    run = setup(load_config(SFTConfig, None, args + ["--model.cpu_offload=true", f"--run.out={tmp_path / 'probe'}"]),
                optimizer_steps=1)
    try:
        assert run.sharded and all(isinstance(p, DTensor) for p in run.model.parameters())
        assert isinstance(run.model._get_fsdp_state()._fsdp_param_group.offload_policy, CPUOffloadPolicy)
    finally:
        distributed.shutdown()
    a, b = master_weights(tmp_path / "plain", task.model), master_weights(tmp_path / "offload", task.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
