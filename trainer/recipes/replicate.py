"""Small-scale replication of the paper's three claims on a synthetic verifiable long-context task
from the eval suite (default: multi-key needle retrieval at 2k-8k tokens), with Qwen3-shaped
models trained from scratch:

  teacher   trained with `dgrpo-train sft` to high accuracy;
  student   a smaller model with a short SFT warm start; then, from that warm start and with the
            same rollout budget: SFT continued, GRPO (beta=0), on-policy distillation (reward
            weight 0) and dGRPO; plus dGRPO from the untrained student (no warm start).

Every arm runs for each seed. Outputs under --out: every run's folder, `replication.json`
(learning curves and the final eval table), `curves.png` (accuracy vs optimizer steps and vs
rollout tokens, mean and spread over seeds), `final.png` and `replication.md` (the table by
context length). One command on a GPU machine:

    python -m trainer.recipes.replicate --out runs/replicate
    python -m trainer.recipes.replicate --out runs/replicate --plot-only   # redraw from the JSON
    python -m trainer.recipes.replicate --out /tmp/r --smoke               # minutes on CPU
    python -m trainer.recipes.replicate --out runs/claims --scale claims --seeds 0-9
        # the task and plan of benchmarks/claims_cpu.py (trainer/recipes/claims.py), larger

Must not change any recipe: it only calls `trainer.sft.train`, `trainer.rl.train` and
`trainer.eval.run.evaluate` with configurations.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.eval.tasks import RULER_TASKS
from trainer.recipes import claims
from trainer.recipes.claims import SCALES as CLAIM_SCALES

ARMS = ("sft_continued", "grpo", "opd", "dgrpo", "dgrpo_cold")


@dataclass
class Scale:
    lengths: list[int]
    teacher: tuple[int, int]  # hidden, layers
    student: tuple[int, int]
    teacher_steps: int
    warm_steps: int
    rl_steps: int
    prompts_per_step: int
    group_size: int
    train_rows: int
    eval_samples: int
    vocab: int


FULL = Scale([2048, 4096, 8192], (512, 6), (256, 4), 1500, 60, 300, 16, 8, 20000, 50, 4096)
# One 15-minute GPU window leaves this step ~2-3 minutes for every arm and one seed. Sized from
# the smoke scale's CPU cost (tokens x parameters, with the arms' steps counted): about 40x the
# smoke's model FLOPs, which a GPU runs faster than the CPU runs the smoke (the small models are
# launch-bound there), so the whole window scale should end within its cap.
WINDOW = Scale([512, 1024], (256, 4), (128, 2), 200, 10, 30, 8, 8, 2000, 20, 2048)
SMOKE = Scale([192, 256], (64, 2), (64, 2), 6, 2, 3, 2, 2, 60, 2, 600)
SCALES = {"full": FULL, "window": WINDOW, "smoke": SMOKE}


class _WordCounter:
    """Sizes the bootstrap corpus before our tokenizer exists (one token per word)."""

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        return [0] * (len(messages[0]["content"].split()) + 4)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * len(text.split())


def build_tokenizer(out: Path, task: str, vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.eval.tasks import generate, ruler_tasks

    corpus = [f"{s.prompt} {s.answer_prefix} {' '.join(s.references)}" for s in generate(task, ruler_tasks()[task], _WordCounter(), 400, 200, seed=999)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=[
        "<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(out)
    return out


def build_model(out: Path, tokenizer: Path, hidden: int, layers: int, max_len: int, seed: int) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    heads = max(2, hidden // 64)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=max(32, hidden // heads),
                         max_position_embeddings=2 * max_len, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_rows(path: Path, task: str, tokenizer: Path, lengths: list[int], n: int, seed: int) -> Path:
    """Chat rows (`messages`: the task prompt, then the answer) at lengths spread over `lengths`."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from trainer.eval.tasks import generate, ruler_tasks

    tok = AutoTokenizer.from_pretrained(tokenizer)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = rng.randint(lengths[0] * 3 // 4, lengths[-1])
        [sample] = generate(task, ruler_tasks()[task], tok, length, 1, seed=seed * 1_000_003 + i)
        rows.append({"messages": [{"role": "user", "content": sample.prompt},
                                  {"role": "assistant", "content": f"{sample.answer_prefix} {' '.join(sample.references)}".strip()}]})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run_sft(model: Path, data: Path, out: Path, steps: int, lr: float, max_len: int, seed: int, tokens_per_step: int) -> Path:
    from trainer.config import SFTConfig, load_config
    from trainer.sft import train

    if not (out / "final" / "config.json").exists():
        train(load_config(SFTConfig, None, [
            f"--model.path={model}", f"--data.long=[{{path='{data}'}}]", "--data.short_fraction=0.0",
            f"--data.max_seq_len={max_len + 256}", f"--optim.lr={lr}", f"--optim.warmup_steps={max(1, steps // 20)}",
            f"--optim.steps={steps}", f"--optim.tokens_per_step={tokens_per_step}", f"--run.out={out}",
            f"--run.seed={seed}", f"--data.seed={seed}", f"--run.save_every={max(steps, 1)}",
            "--model.gradient_checkpointing=false"]))
    return out / "final"


def run_rl(model: Path, teacher: Path, data: Path, out: Path, arm: str, scale: Scale, seed: int, max_len: int) -> Path:
    from trainer.config import RLConfig, load_config
    from trainer.rl import train

    from trainer.recipes.family import FAMILY, PAPER_ARMS, family_args

    beta, reward_weight = PAPER_ARMS.get(arm, (1.0, 0.0))  # the family's arms are pure on-policy distillation
    if not (out / "final" / "config.json").exists():
        train(load_config(RLConfig, None, [
            f"--model.path={model}", f"--data.long=[{{path='{data}'}}]", f"--data.max_prompt_len={max_len}",
            f"--data.seed={seed}", f"--run.seed={seed}", f"--run.out={out}", f"--run.save_every={max(scale.rl_steps, 1)}",
            f"--teacher.source={'local' if beta > 0 else 'none'}", f"--teacher.path={teacher}",
            f"--objective.beta={beta}", f"--rewards=[{{name='string_match_all', weight={reward_weight}}}]",
            f"--rollout.prompts_per_step={scale.prompts_per_step}", f"--rollout.group_size={scale.group_size}",
            "--rollout.max_new_tokens=32", "--rollout.save=false", "--optim.lr=1e-4", "--optim.warmup_steps=5",
            f"--optim.steps={scale.rl_steps}", f"--optim.micro_batch_rollouts={scale.group_size}",
            "--model.gradient_checkpointing=false", *(family_args(arm, scale.rl_steps) if arm in FAMILY else [])]))
    return out / "final"


def curves(run: Path) -> dict[str, list[float]]:
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l]
    if "reward/string_match_all/mean" not in rows[0]:
        return {}
    return {"step": [r["step"] for r in rows], "accuracy": [r["reward/string_match_all/mean"] for r in rows],
            "rollout_tokens": [r["rollout/tokens_per_s"] * r["rollout/seconds"] for r in rows]}


def evaluate_final(model: Path, task: str, scale: Scale, out: Path) -> dict[str, float]:
    from trainer.eval.run import EvalConfig, evaluate

    results = evaluate(EvalConfig(model=str(model), tasks=task, lengths=",".join(map(str, scale.lengths)),
                                  samples=scale.eval_samples, out=str(out), seed=12345))
    return results["scores"][task]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task", choices=[t for t in RULER_TASKS if not t.startswith("qa")],
                        help="a RULER task (essay haystacks fall back to noise); default niah_multikey_1, "
                             "niah_single_1 with --smoke (one needle fits its 192-256 tokens)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--smoke", action="store_true", help="tiny models and a few steps (CPU, minutes)")
    parser.add_argument("--scale", choices=sorted(SCALES) + sorted(f"claims{'' if k == 'gpu' else '-' + k}" for k in CLAIM_SCALES),
                        default=None, help="full (the GPU replication), window (every arm inside one 15-minute GPU "
                        "window), smoke; claims, claims-cpu, claims-smoke: the claims task and plan of "
                        "trainer/recipes/claims.py at the GPU's, the CPU's or a smoke scale")
    parser.add_argument("--jobs", type=int, default=1, help="claims scales: seeds run at once")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--extra-arms", default="", help="comma-separated arms of the on-policy distillation family "
                        "(trainer/recipes/family.py) run after the paper's five, e.g. vopd,topd,reopold")
    args = parser.parse_args()
    from trainer.recipes.family import FAMILY

    if args.scale and args.scale.startswith("claims"):
        run_claims(args)
        return

    extra = [a for a in args.extra_arms.split(",") if a]
    if set(extra) - set(FAMILY):
        parser.error(f"unknown --extra-arms {sorted(set(extra) - set(FAMILY))}; the family: {', '.join(FAMILY)}")
    scale = SCALES[args.scale or ("smoke" if args.smoke else "full")]
    small = scale is not FULL
    args.task = args.task or ("niah_single_1" if small else "niah_multikey_1")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        max_len = scale.lengths[-1]
        tok = out / "tokenizer"
        if not (tok / "tokenizer.json").exists():
            build_tokenizer(tok, args.task, scale.vocab)
        data = out / "data"
        data.mkdir(exist_ok=True)
        for name, n, seed in (("teacher", scale.train_rows, 1), ("warm", scale.train_rows // 10, 2), ("rl", scale.train_rows // 4, 3)):
            if not (data / f"{name}.parquet").exists():
                write_rows(data / f"{name}.parquet", args.task, tok, scale.lengths, n, seed)
        teacher = run_sft(build_model(out / "teacher_init", tok, *scale.teacher, max_len, 0), data / "teacher.parquet",
                          out / "teacher", scale.teacher_steps, 1e-3, max_len, 0, 8 * max_len)
        report: dict[str, Any] = {"task": args.task, "scale": scale.__dict__, "seeds": seeds,
                                  "teacher": evaluate_final(teacher, args.task, scale, out / "eval" / "teacher"), "arms": {}}
        for seed in seeds:
            student = build_model(out / f"student_init-{seed}", tok, *scale.student, max_len, 100 + seed)
            warm = run_sft(student, data / "warm.parquet", out / f"warm-{seed}", scale.warm_steps, 1e-3, max_len, seed,
                           4 * max_len)
            for arm in (*ARMS, *extra):
                run = out / f"{arm}-{seed}"
                if arm == "sft_continued":  # the same number of trained sequences as an RL arm's rollouts
                    final = run_sft(warm, data / "rl.parquet", run, scale.rl_steps, 1e-4, max_len, seed,
                                    scale.prompts_per_step * scale.group_size * max_len // 2)
                else:
                    final = run_rl(student if arm == "dgrpo_cold" else warm, teacher, data / "rl.parquet", run, arm,
                                   scale, seed, max_len)
                entry = report["arms"].setdefault(arm, {"curves": [], "final": []})
                entry["curves"].append(curves(run))
                entry["final"].append(evaluate_final(final, args.task, scale, out / "eval" / f"{arm}-{seed}"))
            report.setdefault("warm_start", []).append(evaluate_final(warm, args.task, scale, out / "eval" / f"warm-{seed}"))
        (out / "replication.json").write_text(json.dumps(report, indent=2))
    plot(json.loads((out / "replication.json").read_text()), out)


def run_claims(args: argparse.Namespace) -> None:
    """The claims task and its pre-registered plan (trainer/recipes/claims.py) at a larger scale."""
    scale = CLAIM_SCALES[args.scale.removeprefix("claims").removeprefix("-") or "gpu"]
    report = claims.run(args.out, scale, claims.seed_list(args.seeds), args.jobs)
    claims.plot(report, args.out)
    (args.out / "claims.md").write_text(claims.table(report) + "\n")
    print(claims.table(report))


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for arm, entry in report["arms"].items():
        runs = [c for c in entry["curves"] if c]
        if not runs:
            continue
        n = min(len(c["accuracy"]) for c in runs)
        mean = [statistics.fmean(c["accuracy"][i] for c in runs) for i in range(n)]
        std = [statistics.pstdev([c["accuracy"][i] for c in runs]) if len(runs) > 1 else 0.0 for i in range(n)]
        steps = runs[0]["step"][:n]
        tokens = [statistics.fmean(c["rollout_tokens"][i] for c in runs) for i in range(n)]
        cumulative = [sum(tokens[: i + 1]) for i in range(n)]
        for ax, x in ((axes[0], steps), (axes[1], cumulative)):
            ax.plot(x, mean, label=arm)
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("rollout tokens")
    for ax in axes:
        ax.set_ylabel("training accuracy (string match, on-policy samples)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)

    lengths = sorted({int(l) for entry in report["arms"].values() for final in entry["final"] for l in final})
    lines = [f"# Replication on `{report['task']}` ({len(report['seeds'])} seeds; mean ± std of eval accuracy)", "",
             "| arm | " + " | ".join(f"{l:,}" for l in lengths) + " |", "|---|" + "---|" * len(lengths)]
    rows = {"teacher": [report["teacher"]], "warm start": report.get("warm_start", []),
            **{arm: entry["final"] for arm, entry in report["arms"].items()}}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, finals in rows.items():
        cells = []
        means = []
        for l in lengths:
            mean, std = _spread([f[str(l)] for f in finals if str(l) in f])
            cells.append(f"{mean:.3f} ± {std:.3f}")
            means.append(mean)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        ax.plot(lengths, means, marker="o", label=name)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("eval accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "final.png", dpi=100)
    plt.close(fig)
    (out / "replication.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
