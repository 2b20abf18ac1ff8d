"""Rollout throughput of the `hf` engine: our batched sampling loop (every prompt of a step in one
loop, each prompt's KV cache repeated for its group) against what the engine did before it, one
`transformers.generate` call per prompt's group, on the same model, prompts and seeds, measured in
the same run. Prints completion tokens/s of each and the ratio, plus the device.

    python benchmarks/bench_rollout.py                  # 16 prompts x G=4, a small Qwen3, 64 new tokens
    python benchmarks/bench_rollout.py --smoke          # tiny model, checks the script runs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_model, build_tokenizer  # noqa: E402

from trainer.config import RolloutConfig  # noqa: E402
from trainer.rollout import HFEngine  # noqa: E402


def per_prompt_generate(lm, tokenizer, prompts, seeds, sampling: RolloutConfig) -> int:  # noqa: ANN001
    """The previous engine: one `generate` call per prompt's group, seeded per prompt."""
    from transformers import GenerationConfig

    settings = GenerationConfig(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                top_k=sampling.top_k or None, max_new_tokens=sampling.max_new_tokens,
                                eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    tokens = 0
    for prompt, seed in zip(prompts, seeds):
        ids = torch.tensor([prompt] * sampling.group_size, device=lm.device)
        torch.manual_seed(seed)
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=settings)
        tokens += int(out[:, ids.shape[1]:].numel())
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--shape", default="small", help="tiny | small (a 4-layer, 256-wide Qwen3) | qwen3-1.7b")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.group, args.new_tokens, args.prompt_tokens, args.shape, args.repeats = 4, 2, 4, 32, "tiny", 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = build_tokenizer(Path(tmp) / "tok", 4096)
        model_dir = build_model(Path(tmp) / "model", args.shape, 4096, tok_dir, dtype)
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)
    # ragged prompts around the requested length, as a step's prompts are
    prompts = [torch.randint(10, 4000, (int(args.prompt_tokens * (0.5 + i / args.prompts)),), generator=gen).tolist()
               for i in range(args.prompts)]
    seeds = [1000 + i for i in range(args.prompts)]
    # ignore_eos: random weights would end some rows at once; count a fixed number of new tokens
    sampling = RolloutConfig(group_size=args.group, max_new_tokens=args.new_tokens, temperature=1.0)
    engine = HFEngine(lm, tokenizer, sampling)
    engine.eos_ids = [-1]
    lm.generation_config.eos_token_id = None

    def best(fn) -> tuple[float, int]:  # noqa: ANN001
        times, tokens = [], 0
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tokens = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times), tokens

    ours_s, ours_tokens = best(lambda: sum(len(r.completion_ids) for g in engine.generate(prompts, seeds) for r in g))
    old_s, old_tokens = best(lambda: per_prompt_generate(lm, tokenizer, prompts, seeds, sampling))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    result = {"device": name, "shape": args.shape, "prompts": args.prompts, "group": args.group,
              "new_tokens": args.new_tokens, "ours_tokens_per_s": ours_tokens / ours_s,
              "per_prompt_tokens_per_s": old_tokens / old_s, "ratio": (ours_tokens / ours_s) / (old_tokens / old_s)}
    print(f"device: {name}; torch {torch.__version__}; model {args.shape}; {args.prompts} prompts x G={args.group}, "
          f"{args.new_tokens} new tokens, prompts ~{args.prompt_tokens} tokens")
    print("| engine | completion tokens/s | x per-prompt generate |\n|---|---|---|")
    print(f"| per-prompt `generate` (before) | {result['per_prompt_tokens_per_s']:.0f} | 1.00x |")
    print(f"| batched sampling loop (ours) | {result['ours_tokens_per_s']:.0f} | {result['ratio']:.2f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
