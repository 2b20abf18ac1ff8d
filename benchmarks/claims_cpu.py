"""The paper's three claims at toy scale on CPU, while the GPU replication
(`python -m trainer.recipes.replicate`) waits for a GPU machine. Task: the copy-the-key task of the
test suite (a word-level vocabulary, documents of 16-40 filler words with one `key vN`; 8 values,
chance = 1/8). A 64x2 Qwen3 teacher is trained with `dgrpo-train sft`; each seed's student (random
64x2 Qwen3) gets a short SFT warm start (it learns the answer format, not the retrieval); then, from
that warm start with the same budget of 64 sampled sequences per step (8 prompts x 8 samples: a
group large enough that its rewards vary, so GRPO gets an outcome signal): SFT continued, GRPO
(beta=0), on-policy distillation (reward weight 0), dGRPO; plus dGRPO from the untrained student.

    python benchmarks/claims_cpu.py --out runs/claims_cpu            # 5 seeds, ~30 min on 2 cores
    python benchmarks/claims_cpu.py --out /tmp/c --smoke             # seconds: checks the script

Prints the final greedy accuracy (held-out prompts) per arm as the mean over seeds with a 95%
t-interval, the fraction of GRPO groups whose rewards did not vary, and the training reward at a
few steps; writes `claims.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "trainer"))

import copy_task  # noqa: E402  (the test suite's task helpers)

ARMS = ("sft_continued", "grpo", "opd", "dgrpo", "dgrpo_cold")


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
    beta, weight = {"grpo": (0.0, 1.0), "opd": (1.0, 0.0), "dgrpo": (1.0, 1.0), "dgrpo_cold": (1.0, 1.0)}[arm]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--group-size", type=int, default=8, help="samples per prompt (prompts per step = 64 / this)")
    parser.add_argument("--steps", type=int, default=60, help="RL steps per arm (SFT-continued: the same count)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    teacher_steps, warm_steps, eval_n = (90, 15, 128) if not args.smoke else (2, 1, 4)
    steps = 2 if args.smoke else args.steps
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tok = copy_task.tokenizer_dir(out / "tokenizer")
    teacher_rows = copy_task.write_parquet(out / "teacher.parquet", 2000, seed=1)
    rl_rows = copy_task.write_parquet(out / "rl.parquet", 2000, seed=2)
    teacher = sft(copy_task.model_dir(out / "teacher_init", tok, seed=0), teacher_rows, out / "teacher", teacher_steps, 0)
    report = {"teacher_accuracy": accuracy(teacher, eval_n), "steps": steps, "arms": {a: [] for a in ARMS}, "warm": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        student = copy_task.model_dir(out / f"student-{seed}", tok, seed=100 + seed)
        warm = sft(student, rl_rows, out / f"warm-{seed}", warm_steps, seed)
        report["warm"].append(accuracy(warm, eval_n))
        for arm in ARMS:
            run = out / f"{arm}-{seed}"
            if arm == "sft_continued":  # 2048 tokens per step ~ the 64 sequences an RL step samples
                final, curve = sft(warm, rl_rows, run, steps, seed), []
            else:
                history = rl(student if arm == "dgrpo_cold" else warm, teacher, rl_rows, run, arm, steps, seed,
                             group_size=args.group_size)
                curve = [h["reward/exact_match/mean"] for h in history]
                flat = statistics.fmean(h["groups/zero_variance_fraction"] for h in history)
                final = run / "final"
            report["arms"][arm].append({"seed": seed, "accuracy": accuracy(final, eval_n), "train_reward": curve,
                                        "zero_variance_groups": None if arm == "sft_continued" else flat})
    (out / "claims.json").write_text(json.dumps(report, indent=2))

    marks = sorted({0, steps // 4, steps // 2, steps - 1})
    print(f"\nteacher accuracy {report['teacher_accuracy']:.3f}; warm start {interval(report['warm'])}; "
          f"{len(report['warm'])} seed(s), {steps} steps per arm, {SEQUENCES // args.group_size} prompts x "
          f"{args.group_size} samples per step; mean [95% t-interval over seeds]")
    print("| arm | final greedy accuracy | groups without reward variance | "
          + " | ".join(f"train reward @ step {m + 1}" for m in marks) + " |")
    print("|---|---|---|" + "---|" * len(marks))
    for arm, runs in report["arms"].items():
        curves = [r["train_reward"] for r in runs if r["train_reward"]]
        cells = [interval([c[m] for c in curves]) if curves else "n/a (SFT)" for m in marks]
        flat = [r["zero_variance_groups"] for r in runs if r["zero_variance_groups"] is not None]
        print(f"| {arm} | {interval([r['accuracy'] for r in runs])} | "
              f"{f'{statistics.fmean(flat):.2f}' if flat else 'n/a'} | " + " | ".join(cells) + " |")


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values: list[float]) -> str:
    """mean [low, high]: the 95% t-interval of the mean over seeds (just the mean for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


if __name__ == "__main__":
    main()
