"""One dGRPO step on a Qwen3-1.7B-shaped student with a local (Qwen3-4B-shaped) teacher at 16k and
32k tokens per sequence: seconds per step with rollouts and without (the update alone: student
forward/backward with the fused full-vocabulary teacher KL, teacher forward), peak GPU memory and
tokens/s, beside TRL's GRPOTrainer (beta > 0 against a reference model, the nearest it offers) on
the same shapes in the same run. Random weights and a word-level tokenizer built here: no
downloads. One command on the GPU machine:

    python benchmarks/bench_dgrpo_step.py                 # 16k and 32k, G=4, 512 new tokens
    python benchmarks/bench_dgrpo_step.py --smoke         # tiny shapes on CPU: checks the script runs

Both trainers run 2 steps; the second is reported (the first pays for compilation and warm-up).
TRL is optional (`pip install trl`); when missing, its column prints "n/a".
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from _common import SHAPES, build_model, build_tokenizer, runtime, step_timer

def prompts_parquet(out: Path, n: int, words: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": " ".join(f"w{(i * 7919 + j) % 5000}" for j in range(words)), "answer": "w1"} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out


def ours(student: Path, teacher: Path, prompts: Path, out: Path, args: argparse.Namespace, length: int) -> dict[str, Any]:
    from trainer.config import RLConfig, load_config
    from trainer.rl import train

    cfg = load_config(RLConfig, None, [
        f"--model.path={student}", "--teacher.source=local", f"--teacher.path={teacher}", "--objective.beta=1.0",
        f"--data.long=[{{path='{prompts}', target='answer'}}]", f"--data.max_prompt_len={length}",
        "--rollout.prompts_per_step=1", f"--rollout.group_size={args.group}", f"--rollout.max_new_tokens={args.new_tokens}",
        "--optim.micro_batch_rollouts=1", "--optim.steps=2", f"--run.out={out}", "--run.save_every=1000",
        "--run.tensorboard=false", "--rollout.save=false", f"--model.attn_implementation={args.attn}",
    ])
    summary = train(cfg)
    last = summary["history"][-1]
    tokens = args.group * (length - args.new_tokens + last["response/length_mean"])
    step_s = last["rollout/seconds"] + last["teacher/seconds"] + last["train/seconds"]
    return {"step_s": step_s, "update_s": last["train/seconds"] + last["teacher/seconds"], "tokens": tokens,
            "peak_gib": last.get("memory/peak_gib", float("nan")), "tokens_per_s": tokens / step_s,
            "update_tokens_per_s": tokens / (last["train/seconds"] + last["teacher/seconds"])}


def trl(student: Path, prompts: Path, out: Path, args: argparse.Namespace, length: int) -> dict[str, Any] | str:
    try:
        import datasets
        from transformers import AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        return "n/a (trl not installed)"
    times: list[float] = []
    peaks: list[float] = []

    wanted = {"output_dir": str(out), "per_device_train_batch_size": args.group, "num_generations": args.group,
              "max_completion_length": args.new_tokens, "max_prompt_length": length, "beta": 0.04,
              "bf16": torch.cuda.is_available(), "gradient_checkpointing": True, "max_steps": 2, "logging_steps": 1,
              "report_to": "none", "learning_rate": 1e-6, "use_vllm": False, "save_strategy": "no",
              "use_cpu": not torch.cuda.is_available()}
    fields = set(GRPOConfig.__dataclass_fields__)
    config = GRPOConfig(**{k: v for k, v in wanted.items() if k in fields})
    tokenizer = AutoTokenizer.from_pretrained(student)
    dataset = datasets.load_dataset("parquet", data_files=str(prompts), split="train")
    dataset = dataset.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]}, remove_columns=["answer"])
    try:
        trainer = GRPOTrainer(model=str(student), reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                              args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[step_timer(times, peaks)])
        trainer.train()
    except torch.OutOfMemoryError:
        return "OOM"
    except Exception as exc:  # noqa: BLE001 - a baseline that breaks is reported, not fatal
        return f"error: {type(exc).__name__}: {str(exc)[:120]}"
    tokens = args.group * (length + args.new_tokens)
    return {"step_s": times[-1], "peak_gib": peaks[-1] if peaks else float("nan"), "tokens_per_s": tokens / times[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16384,32768", help="prompt + completion tokens per sequence")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--student", default="qwen3-1.7b", choices=sorted(SHAPES))
    parser.add_argument("--teacher", default="qwen3-4b", choices=sorted(SHAPES))
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--attn", default="flash_attention_2" if torch.cuda.is_available() else "sdpa")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
    parser.add_argument("--with-trl-on-cpu", action="store_true", help="with --smoke: run the TRL baseline too")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.lengths, args.group, args.new_tokens, args.student, args.teacher, args.vocab = "128", 2, 8, "tiny", "tiny", 1000
        args.skip_trl = args.skip_trl or not args.with_trl_on_cpu
    args.attn, device, dtype = runtime(args.attn)
    root = Path(tempfile.mkdtemp(prefix="bench_dgrpo_"))
    results = []
    try:
        tok = build_tokenizer(root / "tok", args.vocab)
        student = build_model(root / "student", args.student, args.vocab, tok, dtype)
        teacher = build_model(root / "teacher", args.teacher, args.vocab, tok, dtype)
        for length in [int(x) for x in args.lengths.split(",")]:
            prompts = prompts_parquet(root / f"prompts-{length}.parquet", 4, length - args.new_tokens - 8)
            row = {"length": length, "ours": ours(student, teacher, prompts, root / f"ours-{length}", args, length)}
            row["trl"] = "skipped" if args.skip_trl else trl(student, prompts, root / f"trl-{length}", args, length)
            results.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ndevice: {device}; student {args.student}, teacher {args.teacher}, G={args.group}, "
          f"{args.new_tokens} new tokens, attention {args.attn}, torch {torch.__version__}")
    print("| tokens/seq | ours: step (s) | ours: update only (s) | ours: peak GiB | ours: tok/s | TRL GRPO (beta=0.04): step (s) | TRL peak GiB | step ratio TRL/ours |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        o, t = row["ours"], row["trl"]
        trl_cells = (f"{t['step_s']:.2f} | {t['peak_gib']:.1f} | {t['step_s'] / o['step_s']:.2f}x" if isinstance(t, dict)
                     else f"{t} | n/a | n/a")
        print(f"| {row['length']:,} | {o['step_s']:.2f} | {o['update_s']:.2f} | {o['peak_gib']:.1f} | "
              f"{o['tokens_per_s']:,.0f} | {trl_cells} |")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
