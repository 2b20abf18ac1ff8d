"""Shared by the step benchmarks: Qwen3-shaped random-weight models and a word-level tokenizer
with the full Qwen3 vocabulary size, built locally (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SHAPES = {  # (hidden, layers, heads, kv heads, intermediate)
    "qwen3-0.6b": (1024, 28, 16, 8, 3072),
    "qwen3-1.7b": (2048, 28, 16, 8, 6144),
    "qwen3-4b": (2560, 36, 32, 8, 9728),
    "small": (256, 4, 4, 2, 512),
    "tiny": (64, 2, 4, 2, 128),
}


def build_tokenizer(out: Path, vocab: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "user", "assistant", "[UNK]"]
    words = specials + [f"w{i}" for i in range(vocab - len(specials))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
    fast.save_pretrained(out)
    return out


def build_model(out: Path, shape: str, vocab: int, tokenizer: Path, dtype: torch.dtype) -> Path:
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    hidden, layers, heads, kv, inter = SHAPES[shape]
    config = Qwen3Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, head_dim=max(32, hidden // heads),
                         max_position_embeddings=131072, tie_word_embeddings=True, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).to(dtype).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(out)
    return out


def step_timer(times: list[float], peaks: list[float]) -> Any:
    """A transformers TrainerCallback recording each optimizer step's seconds and peak GPU GiB."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            times.append(time.perf_counter() - self.t0)

    return StepTimer()


def runtime(attn: str) -> tuple[str, str, torch.dtype]:
    """(attention implementation, device name, dtype): flash-attention only when installed, bf16 on CUDA."""
    import platform

    if attn == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            attn = "sdpa"
    if torch.cuda.is_available():
        return attn, torch.cuda.get_device_name(), torch.bfloat16
    return attn, platform.processor() or "cpu", torch.float32
