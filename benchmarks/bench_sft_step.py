"""SFT cold start at long context: tokens/s and peak GPU memory of `dgrpo-train sft` (fused
log-prob loss from hidden states, no logits) on a Qwen3-1.7B-shaped model at 16k and 32k tokens
per sequence, beside TRL's SFTTrainer on the same model and shapes in the same run, and the
longest sequence each fits on the GPU. Random weights, locally built tokenizer: no downloads.
One command on the GPU machine:

    python benchmarks/bench_sft_step.py                        # 16k, 32k; longest up to 128k
    python benchmarks/bench_sft_step.py --smoke                # tiny shapes on CPU: the script runs

Each side runs 3 optimizer steps of one sequence; the last is reported. TRL is optional
(`pip install trl`); missing, its columns print "n/a".
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from _common import build_model, build_tokenizer, runtime, step_timer


def rows_parquet(out: Path, words: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"document": " ".join(f"w{(i * 7919 + j) % 5000}" for j in range(words)), "question": "w7",
             "answer": " ".join(f"w{j}" for j in range(64))} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out


def ours(model: Path, data: Path, out: Path, length: int, attn: str) -> dict[str, Any] | str:
    from trainer.config import SFTConfig, load_config
    from trainer.sft import train

    try:
        summary = train(load_config(SFTConfig, None, [
            f"--model.path={model}", f"--data.long=[{{path='{data}'}}]", "--data.short_fraction=0.0",
            f"--data.max_seq_len={length}", f"--optim.tokens_per_step={length // 2}", "--optim.steps=3",
            f"--run.out={out}", "--run.save_every=1000", "--run.tensorboard=false", f"--model.attn_implementation={attn}"]))
    except torch.OutOfMemoryError:
        return "OOM"
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["steps"] == 3
    return {"tokens_per_s": last["tokens_per_s"], "peak_gib": last.get("memory/peak_gib", float("nan")), "tokens": last["tokens"]}


def trl(model: Path, data: Path, out: Path, length: int, attn: str) -> dict[str, Any] | str:
    try:
        import datasets
        from transformers import AutoTokenizer
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        return "n/a (trl not installed)"
    times, peaks = [], []

    dataset = datasets.load_dataset("parquet", data_files=str(data), split="train").map(
        lambda r: {"messages": [{"role": "user", "content": f"{r['document']}\n\n{r['question']}"},
                                {"role": "assistant", "content": r["answer"]}]}, remove_columns=["document", "question", "answer"])
    wanted = {"output_dir": str(out), "per_device_train_batch_size": 1, "max_length": length, "max_steps": 3,
              "gradient_checkpointing": True, "bf16": torch.cuda.is_available(), "logging_steps": 1, "report_to": "none",
              "save_strategy": "no", "learning_rate": 1e-5, "use_cpu": not torch.cuda.is_available(),
              "model_init_kwargs": {"attn_implementation": attn,
                                    "dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}}
    config = SFTConfig(**{k: v for k, v in wanted.items() if k in SFTConfig.__dataclass_fields__})
    try:
        trainer = SFTTrainer(model=str(model), args=config, train_dataset=dataset,
                             processing_class=AutoTokenizer.from_pretrained(model), callbacks=[step_timer(times, peaks)])
        trainer.train()
    except torch.OutOfMemoryError:
        return "OOM"
    except Exception as exc:  # noqa: BLE001 - a baseline that breaks is reported, not fatal
        return f"error: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"tokens_per_s": length / times[-1], "peak_gib": peaks[-1] if peaks else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16384,32768")
    parser.add_argument("--longest", default="65536,98304,131072", help="lengths tried for the longest sequence that fits")
    parser.add_argument("--model", default="qwen3-1.7b")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--attn", default="flash_attention_2" if torch.cuda.is_available() else "sdpa")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
    parser.add_argument("--with-trl-on-cpu", action="store_true", help="with --smoke: run the TRL baseline too")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.lengths, args.longest, args.model, args.vocab = "256", "512", "tiny", 1000
        args.skip_trl = args.skip_trl or not args.with_trl_on_cpu
    args.attn, device, dtype = runtime(args.attn)
    root = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    rows, longest = [], {"ours": 0, "trl": 0}
    try:
        model = build_model(root / "model", args.model, args.vocab, build_tokenizer(root / "tok", args.vocab), dtype)
        for length in [int(x) for x in args.lengths.split(",")]:
            data = rows_parquet(root / f"rows-{length}.parquet", length - 200)
            row = {"length": length, "ours": ours(model, data, root / f"ours-{length}", length, args.attn)}
            row["trl"] = "skipped" if args.skip_trl else trl(model, data, root / f"trl-{length}", length, args.attn)
            rows.append(row)
        for length in [int(x) for x in args.longest.split(",")]:
            data = rows_parquet(root / f"long-{length}.parquet", length - 200)
            if isinstance(ours(model, data, root / f"ours-long-{length}", length, args.attn), dict):
                longest["ours"] = length
            if not args.skip_trl and isinstance(trl(model, data, root / f"trl-long-{length}", length, args.attn), dict):
                longest["trl"] = length
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ndevice: {device}; model {args.model}, attention {args.attn}, torch {torch.__version__}")
    print("| tokens/seq | ours tok/s | ours peak GiB | TRL SFTTrainer tok/s | TRL peak GiB | speed ours/TRL |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        o, t = row["ours"], row["trl"]
        ours_cells = f"{o['tokens_per_s']:,.0f} | {o['peak_gib']:.1f}" if isinstance(o, dict) else f"{o} | n/a"
        trl_cells = f"{t['tokens_per_s']:,.0f} | {t['peak_gib']:.1f}" if isinstance(t, dict) else f"{t} | n/a"
        ratio = f"{o['tokens_per_s'] / t['tokens_per_s']:.2f}x" if isinstance(o, dict) and isinstance(t, dict) else "n/a"
        print(f"| {row['length']:,} | {ours_cells} | {trl_cells} | {ratio} |")
    print(f"longest sequence trained (of {args.longest}): ours {longest['ours'] or 'none'}, "
          f"TRL {longest['trl'] or ('skipped' if args.skip_trl else 'none')}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "model": args.model, "attention": args.attn,
                                         "rows": rows, "longest": longest}, indent=2, default=str))


if __name__ == "__main__":
    main()
