"""The on-policy distillation family side by side at toy scale on CPU: every variant of
`trainer/recipes/family.py` beside plain OPD (exact reverse KL as a loss), on the copy-the-key task
of `copy_task_runs.py` (same teacher, same SFT warm starts, same seeds), each with the same rollout
budget (32 prompts x 2 samples per step, 3 new tokens) and the same number of steps. Then the
horizon's saving: pure OPD from the untrained student (which rarely stops early) with 64 new
tokens, full horizon vs TOPD (10%) vs POPD (10% -> 100% over the steps), in rollout tokens and
seconds per step measured in the same run.

    python benchmarks/opd_family_cpu.py --out runs/opd_family          # 3 seeds, ~35 min on 2 cores
    python benchmarks/opd_family_cpu.py --out /tmp/f --smoke           # checks the script

Prints two markdown tables (RESULTS.md holds them) and writes `family.json`. "Own divergence" is
the `teacher_kl` metric of each arm: its own estimator's value (exact reverse KL for opd, tip,
topd, popd; the sampled log-ratio for the k1 arms; forward KL; JSD), comparable along a row, not
across rows. Accuracy and the sampled exact match are comparable across rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "trainer"))

import copy_task_runs  # noqa: E402  (its teacher, warm starts, RL runner and evaluation)
import copy_task  # noqa: E402

from trainer.recipes.family import FAMILY, family_args  # noqa: E402

ARMS = ("opd", *FAMILY)
SEQUENCES = 64  # copy_task_runs.rl: 32 prompts x 2 samples per step


def spread(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values) if len(values) > 1 else 0.0:.3f}"


def tail_mean(history: list[dict], key: str, last: int = 5) -> float:
    values = [h[key] for h in history[-last:]]
    return statistics.fmean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=40, help="RL steps per arm")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    parser.add_argument("--horizon-steps", type=int, default=4, help="steps per run of the horizon measurement")
    parser.add_argument("--horizon-tokens", type=int, default=64, help="max new tokens of the horizon measurement")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    teacher_steps, warm_steps, eval_n = (90, 15, 128) if not args.smoke else (2, 1, 4)
    steps = 1 if args.smoke else args.steps
    horizon_steps = 2 if args.smoke else args.horizon_steps
    new_tokens = 8 if args.smoke else args.horizon_tokens
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tok = copy_task.tokenizer_dir(out / "tokenizer")
    teacher_rows = copy_task.write_parquet(out / "teacher.parquet", 2000, seed=1)
    rl_rows = copy_task.write_parquet(out / "rl.parquet", 2000, seed=2)
    teacher = copy_task_runs.sft(copy_task.model_dir(out / "teacher_init", tok, seed=0), teacher_rows, out / "teacher",
                             teacher_steps, 0)
    report = {"device": f"CPU ({platform.processor() or platform.machine()})", "steps": steps,
              "teacher_accuracy": copy_task_runs.accuracy(teacher, eval_n), "warm": [], "arms": {a: [] for a in arms},
              "horizon": {}}
    seeds = [int(s) for s in args.seeds.split(",")]
    students = {}
    for seed in seeds:
        students[seed] = copy_task.model_dir(out / f"student-{seed}", tok, seed=100 + seed)
        warm = copy_task_runs.sft(students[seed], rl_rows, out / f"warm-{seed}", warm_steps, seed)
        report["warm"].append(copy_task_runs.accuracy(warm, eval_n))
        for arm in arms:
            run = out / f"{arm}-{seed}"
            started = time.perf_counter()
            extra = family_args(arm, steps) if arm in FAMILY else []
            history = copy_task_runs.rl(warm, teacher, rl_rows, run, "opd", steps, seed, extra=extra)
            report["arms"][arm].append({
                "seed": seed, "accuracy": copy_task_runs.accuracy(run / "final", eval_n),
                "reward_end": tail_mean(history, "reward/exact_match/mean"),
                "teacher_kl_end": tail_mean(history, "teacher_kl"), "teacher_kl_start": history[0]["teacher_kl"],
                "trained_fraction": statistics.fmean(h["teacher/trained_fraction"] for h in history),
                "seconds": time.perf_counter() - started})

    # the horizon's saving, from the untrained student (it samples to the token limit)
    for name, extra in (("full", []), ("topd", family_args("topd", horizon_steps)),
                        ("popd", family_args("popd", horizon_steps))):
        history = copy_task_runs.rl(students[seeds[0]], teacher, rl_rows, out / f"horizon-{name}", "opd", horizon_steps,
                                seeds[0], extra=extra, max_new_tokens=new_tokens)
        report["horizon"][name] = {
            "rollout_tokens": [h["response/length_mean"] * SEQUENCES for h in history],
            "rollout_seconds": [h["rollout/seconds"] for h in history],
            "step_seconds": [h["rollout/seconds"] + h["teacher/seconds"] + h["train/seconds"] for h in history]}
    (out / "family.json").write_text(json.dumps(report, indent=2))

    print(f"\n{report['device']}; teacher accuracy {report['teacher_accuracy']:.3f}; warm start "
          f"{spread(report['warm'])}; {len(seeds)} seed(s), {steps} steps per arm, {SEQUENCES} sampled sequences per step")
    print("| arm | final greedy accuracy | sampled exact match, last 5 steps | own divergence, first step | "
          "own divergence, last 5 steps | tokens with the teacher term | seconds per run |")
    print("|---|---|---|---|---|---|---|")
    for arm, runs in report["arms"].items():
        print(f"| {arm} | {spread([r['accuracy'] for r in runs])} | {spread([r['reward_end'] for r in runs])} | "
              f"{spread([r['teacher_kl_start'] for r in runs])} | "
              f"{spread([r['teacher_kl_end'] for r in runs])} | {spread([r['trained_fraction'] for r in runs])} | "
              f"{spread([r['seconds'] for r in runs])} |")
    full = report["horizon"]["full"]
    print(f"\nhorizon ({horizon_steps} steps, {new_tokens} max new tokens, {SEQUENCES} sequences per step; "
          "ratios against the full horizon)")
    print("| run | rollout tokens per step | rollout s per step | step s | step time vs full |")
    print("|---|---|---|---|---|")
    for name, h in report["horizon"].items():
        ratio = statistics.fmean(h["step_seconds"]) / statistics.fmean(full["step_seconds"])
        print(f"| {name} | {statistics.fmean(h['rollout_tokens']):.0f} | {statistics.fmean(h['rollout_seconds']):.2f} | "
              f"{statistics.fmean(h['step_seconds']):.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
