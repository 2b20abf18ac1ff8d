"""Quickstart, the trainer half: on the shards `longblocks run pipelines/quickstart.toml` published,
SFT a small student, then dGRPO with SmolLM2-135M-Instruct as the local teacher, then `eval` at a
short length, and plot the curves. Offline, on CPU, in minutes:

    python -m trainer.recipes.quickstart --data runs/quickstart/publish --out runs/train-quickstart

The student is the teacher made smaller, never a download: SmolLM2-135M-Instruct's embeddings,
first `--student-layers` decoder layers, final norm and head (so it shares the teacher's tokenizer
and chat template). SFT trains it on the dataset's answers (the `answer` column: LongBlocks' rows as
they are); dGRPO samples its own answers to the questions, rewards them by token F1 against the
reference answer and pulls them toward the teacher with the exact per-token KL. Outputs under
--out: `student-init/`, `sft/` and `dgrpo/` (each run's folder with `metrics.jsonl` and
`metrics.png`), `eval/` (the table and JSON of `dgrpo-train eval`) and `curves.png` (SFT loss,
dGRPO reward and teacher KL per step).

Must not change any recipe: it only calls `trainer.sft.train`, `trainer.rl.train` and
`trainer.eval.run.evaluate` with configurations.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scale:
    student_layers: int
    sft_steps: int
    rl_steps: int
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    eval_length: int
    eval_samples: int


DEFAULT = Scale(student_layers=6, sft_steps=20, rl_steps=12, prompts_per_step=2, group_size=4, max_new_tokens=48,
                eval_length=512, eval_samples=8)
SMOKE = Scale(student_layers=2, sft_steps=4, rl_steps=6, prompts_per_step=1, group_size=2, max_new_tokens=16,
              eval_length=256, eval_samples=2)


def build_student(teacher: Path, out: Path, layers: int) -> Path:
    """The teacher's embeddings, first `layers` decoder layers, final norm and head, saved with
    its tokenizer (and chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    if not 0 < layers <= model.config.num_hidden_layers:
        raise SystemExit(f"--student-layers must be in [1, {model.config.num_hidden_layers}], got {layers}")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out)
    return out


def run_sft(model: Path, data: str, out: Path, scale: Scale, max_len: int) -> Path:
    from trainer.config import SFTConfig, load_config
    from trainer.sft import train

    if not (out / "final" / "config.json").exists():
        train(load_config(SFTConfig, None, [
            f"--model.path={model}", f"--data.long=[{{path='{data}', target='answer'}}]", "--data.short_fraction=0.0",
            f"--data.max_seq_len={max_len}", "--optim.lr=3e-4", "--optim.warmup_steps=2", f"--optim.steps={scale.sft_steps}",
            f"--optim.tokens_per_step={2 * max_len}", f"--run.out={out}", f"--run.save_every={scale.sft_steps}",
            "--run.tensorboard=false", "--model.gradient_checkpointing=false"]))
    return out / "final"


def run_dgrpo(model: Path, teacher: Path, data: str, out: Path, scale: Scale, max_len: int) -> Path:
    from trainer.config import RLConfig, load_config
    from trainer.rl import train

    if not (out / "final" / "config.json").exists():
        train(load_config(RLConfig, None, [
            f"--model.path={model}", f"--data.long=[{{path='{data}', target='answer'}}]", f"--data.max_prompt_len={max_len}",
            f"--run.out={out}", f"--run.save_every={scale.rl_steps}", "--run.tensorboard=false",
            "--teacher.source=local", f"--teacher.path={teacher}", "--objective.beta=1.0",
            "--rewards=[{name='token_f1', weight=1.0}]", f"--rollout.prompts_per_step={scale.prompts_per_step}",
            f"--rollout.group_size={scale.group_size}", f"--rollout.max_new_tokens={scale.max_new_tokens}",
            "--rollout.save=false", "--optim.lr=1e-3", "--optim.warmup_steps=1", f"--optim.steps={scale.rl_steps}",
            f"--optim.micro_batch_rollouts={scale.group_size}", "--model.gradient_checkpointing=false"]))
    return out / "final"


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def plot(sft: list[dict[str, Any]], rl: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    panels = ((axes[0], sft, "loss", "SFT loss"), (axes[1], rl, "reward_mean", "dGRPO reward (token F1)"),
              (axes[2], rl, "teacher_kl", "dGRPO teacher KL (per token)"))
    for ax, rows, key, title in panels:
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    return out / "curves.png"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/quickstart/publish", help="the quickstart's published folder (or any LongBlocks parquet)")
    parser.add_argument("--out", type=Path, default=Path("runs/train-quickstart"))
    parser.add_argument("--teacher", default="{smollm2}", help="teacher model path ({smollm2}: SmolLM2-135M-Instruct from its wheel)")
    parser.add_argument("--student-layers", type=int, default=None, help="decoder layers the student keeps")
    parser.add_argument("--max-len", type=int, default=2560, help="SFT sequence / RL prompt length in tokens")
    parser.add_argument("--smoke", action="store_true", help="2 layers and a few steps (the test suite's size)")
    args = parser.parse_args(argv)
    from longblocks.local_models import resolve_model
    from trainer.eval.run import EvalConfig, evaluate

    scale = SMOKE if args.smoke else DEFAULT
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = str(Path(args.data) / "data") if (Path(args.data) / "data").is_dir() else args.data
    teacher = Path(resolve_model(args.teacher))
    layers = args.student_layers or scale.student_layers
    student = build_student(teacher, out / "student-init", layers)
    sft = run_sft(student, data, out / "sft", scale, args.max_len)
    final = run_dgrpo(sft, teacher, data, out / "dgrpo", scale, args.max_len)
    results = evaluate(EvalConfig(model=str(final), tasks="niah_single_1,short_recall", lengths=str(scale.eval_length),
                                  samples=scale.eval_samples, out=str(out / "eval"), seed=0))
    rl = metrics(out / "dgrpo")
    curves = plot(metrics(out / "sft"), rl, out)
    print(f"student: {out / 'student-init'} ({layers} layers of {teacher.name})")
    print(f"dGRPO teacher KL {rl[0]['teacher_kl']:.3f} -> {rl[-1]['teacher_kl']:.3f} over {len(rl)} steps; "
          f"reward {rl[0]['reward_mean']:.3f} -> {rl[-1]['reward_mean']:.3f}")
    print(f"eval: {json.dumps(results['scores'])} -> {out / 'eval'}")
    print(f"curves: {curves}")


if __name__ == "__main__":
    main()
