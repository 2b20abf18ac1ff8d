"""Shared fixtures: tiny tokenizers and corpora built locally (no downloads)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter; must be set before triton loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import datasets  # noqa: E402

# datasets sleeps 5 s after each interleaved-shards stream ends (a guard against an Arrow shutdown
# race in long-lived readers); the test streams are tiny and short-lived.
datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0.05

WORDS = (
    "the model reads long documents and answers questions about distant parts of each text while "
    "researchers measure evidence recall across sections chapters tables figures appendix results "
    "method training data language context window attention memory tokens vocabulary"
).split()

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def random_text(rng: random.Random, n_words: int) -> str:
    sentences = []
    while n_words > 0:
        k = min(n_words, rng.randint(6, 18))
        sentence = " ".join(rng.choice(WORDS) for _ in range(k))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        n_words -= k
    return " ".join(sentences)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (vocab 1024) trained here and saved as a transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [random_text(rng, 200) for _ in range(200)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(out)
    return out


def cli(*args: str, check: bool = True, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts (from the same environment as the tests)."""
    exe = Path(sys.executable).parent / args[0]
    cmd = [str(exe) if exe.exists() else shutil.which(args[0]) or args[0], *args[1:]]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
