from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from longblocks.records import (
    DOCUMENT_SCHEMA,
    PUBLISHED_COLUMNS,
    document_id,
    published_column_names,
    qa_id,
    qa_schema,
    reasoning_column,
    response_column,
)
from longblocks.store import Outcome, StageWriter

LONGBLOCKS_COLUMNS = [
    "id", "document", "source", "language", "question", "answer",
    "response_Qwen3-Next-80B-A3B", "response_Qwen3.5-27B", "response_Nemotron-3-Nano-30B-A3B",
]
MODELS = ["Qwen/Qwen3-Next-80B-A3B", "Qwen/Qwen3.5-27B", "nvidia/Nemotron-3-Nano-30B-A3B"]


def test_ids_are_stable_content_hashes() -> None:
    assert document_id("arxiv", "text") == document_id("arxiv", "text")
    assert document_id("arxiv", "text") != document_id("arxiv", "text ")
    assert document_id("arxiv", "text") != document_id("wikipedia", "text")
    assert qa_id("d", "q", "a") != qa_id("d", "q", "b")
    assert len(document_id("a", "b")) == 32


def test_response_column_uses_model_basename() -> None:
    assert response_column("Qwen/Qwen3-Next-80B-A3B") == "response_Qwen3-Next-80B-A3B"
    with pytest.raises(ValueError):
        response_column("bad name")


def test_qa_shard_written_by_store_loads_with_longblocks_columns(tmp_path: Path) -> None:
    schema = qa_schema(MODELS)
    writer = StageWriter(tmp_path / "qa", stage="generate", schema=schema, params={}, part_size=2)
    for i in range(5):
        doc = f"document {i}"
        record = {
            "id": qa_id(doc, f"q{i}", f"a{i}"), "document": doc, "source": "arxiv", "language": "en",
            "question": f"q{i}", "answer": f"a{i}", "doc_id": document_id("arxiv", doc), "question_type": "summary",
            "generator": "Qwen/Qwen3-Next-80B-A3B", "judge_verdict": "pass", "judge_reasons": [],
        }
        record.update({response_column(m): f"r{i}" for m in MODELS})
        writer.add(Outcome(record["id"], kept=[record]))
    writer.finish()

    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "qa" / "data" / "*.parquet"), split="train")
    assert ds.num_rows == 5
    published = published_column_names(schema)
    assert published == LONGBLOCKS_COLUMNS
    assert ds.column_names[: len(published)] == LONGBLOCKS_COLUMNS
    for name in LONGBLOCKS_COLUMNS:
        assert ds.features[name] == datasets.Value("string"), name
    assert set(ds.column_names) - set(published) == {"doc_id", "question_type", "generator", "judge_verdict",
                                                      "judge_reasons", *(reasoning_column(m) for m in MODELS)}


def test_document_schema_fields() -> None:
    assert DOCUMENT_SCHEMA.names == ["id", "source", "language", "text", "n_tokens", "meta"]
    assert DOCUMENT_SCHEMA.field("n_tokens").type == pa.int64()
    assert list(PUBLISHED_COLUMNS) == LONGBLOCKS_COLUMNS[:6]
