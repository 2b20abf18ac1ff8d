"""The copy-the-key runs `opd_family_cpu.py` compares on (the task of tests/trainer/copy_task.py):
the teacher's and the warm starts' SFT, one RL arm, and greedy accuracy. The claims experiment has
its own task (trainer/recipes/claims.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "trainer"))

import copy_task  # noqa: E402  (the test suite's task helpers)


def sft(model: Path, data: Path, out: Path, steps: int, seed: int) -> Path:
    from trainer.config import SFTConfig, load_config
    from trainer.sft import train

    if not (out / "final" / "config.json").exists():
        train(load_config(SFTConfig, None, [
            f"--model.path={model}", f"--data.long=[{{path='{data}'}}]", "--data.short_fraction=0.0",
            "--data.max_seq_len=1024", "--optim.lr=1e-2", f"--optim.warmup_steps={min(10, steps)}",
            f"--optim.steps={steps}", "--optim.tokens_per_step=2048", f"--run.out={out}", f"--run.seed={seed}",
            f"--data.seed={seed}", "--run.save_every=100000", "--run.tensorboard=false",
            "--model.gradient_checkpointing=false"]))
    return out / "final"


SEQUENCES = 64  # sampled sequences per RL step, whatever the group size


def rl(model: Path, teacher: Path, data: Path, out: Path, arm: str, steps: int, seed: int, *,
       extra: tuple[str, ...] | list[str] = (), max_new_tokens: int = 3, group_size: int = 2) -> list[dict]:
    """One RL arm (grpo, opd, dgrpo, dgrpo_cold; `extra` CLI overrides after them): its metrics history."""
    from trainer.config import RLConfig, load_config
    from trainer.rl import train

    if (out / "final" / "config.json").exists():  # finished by an earlier (interrupted) run of this script
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    from trainer.recipes.family import PAPER_ARMS

    beta, weight = PAPER_ARMS[arm]
    summary = train(load_config(RLConfig, None, [
        f"--model.path={model}", f"--data.long=[{{path='{data}'}}]", f"--data.seed={seed}", f"--run.seed={seed}",
        f"--teacher.source={'local' if beta else 'none'}", f"--teacher.path={teacher}", f"--objective.beta={beta}",
        f"--rewards=[{{name='exact_match', weight={weight}}}]", f"--rollout.prompts_per_step={SEQUENCES // group_size}",
        f"--rollout.group_size={group_size}", f"--rollout.max_new_tokens={max_new_tokens}", "--rollout.save=false", "--optim.lr=1e-2",
        "--optim.warmup_steps=10", f"--optim.steps={steps}", "--optim.micro_batch_rollouts=64", f"--run.out={out}",
        "--run.save_every=100000", "--run.tensorboard=false", "--model.gradient_checkpointing=false", *extra]))
    return summary["history"]


def accuracy(model: Path, n: int) -> float:
    """Greedy exact-match accuracy on held-out prompts."""
    return copy_task.greedy_accuracy(model, n, seed=4242)
