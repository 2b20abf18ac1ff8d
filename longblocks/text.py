"""Text utilities every stage shares: the prompts shipped with the package and their hashes, the
normalization MinHash and the judge's span check compare words under, and the split of a thinking
model's output into answer and reasoning. Must not know about records, stages or backends.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from importlib import resources

_PUNCT_RE = re.compile(r"[^\w\s]|_", re.UNICODE)
_DIGITS_RE = re.compile(r"\d+")


@functools.lru_cache(maxsize=None)
def prompt_text(name: str) -> str:
    """A prompt template shipped in `longblocks/prompts/<name>.txt` (read once per process)."""
    return resources.files("longblocks.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")


def prompt_hashes(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Short sha256 of each named prompt (and the shared answer format), for manifests."""
    return {n: hashlib.sha256(prompt_text(n).encode()).hexdigest()[:16] for n in (*names, "_format")}


def normalize_text(text: str) -> str:
    """Web-scale normalization: unicode NFKD without accents, lowercase, digits to 0,
    punctuation removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = _DIGITS_RE.sub("0", text)
    return " ".join(_PUNCT_RE.sub(" ", text).split())


def split_reasoning(content: str, reasoning: str | None = None) -> tuple[str, str]:
    """(answer, reasoning): `<think>...</think>` blocks and a separate reasoning field are removed;
    an unterminated `<think>` (thinking cut off by max_tokens) leaves no answer."""
    content = content or ""
    thought = [reasoning] if reasoning else []
    if "</think>" in content:
        head, _, content = content.rpartition("</think>")
        thought.append(head.replace("<think>", "", 1))
    elif content.lstrip().startswith("<think>"):
        thought.append(content.lstrip()[len("<think>") :])
        content = ""
    return content.strip(), "\n".join(t.strip() for t in thought if t)
