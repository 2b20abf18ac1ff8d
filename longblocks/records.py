"""Record schemas shared by every stage, declared once as pyarrow schemas, and stable content ids.

Must not hold stage logic: stages import these schemas, they never redefine columns.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pyarrow as pa

from longblocks.errors import LongBlocksError

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int64()),
        # Free-form provenance (path, url, title, original id, license) as a JSON string: a struct
        # would force every source to share one set of keys.
        pa.field("meta", pa.string()),
    ]
)

# The columns of the public `utter-project/LongBlocks` dataset, in its order and with its types.
PUBLISHED_COLUMNS: tuple[str, ...] = ("id", "document", "source", "language", "question", "answer")
RESPONSE_PREFIX = "response_"
REASONING_PREFIX = "reasoning_"  # a responder's removed reasoning: a working column, never published

# Working columns kept in the run directory next to the published ones.
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "doc_id",
    "question_type",
    "generator",
    "judge_verdict",
    "judge_reasons",
)

_PUBLISHED_FIELDS = [pa.field(name, pa.string()) for name in PUBLISHED_COLUMNS]
_PROVENANCE_FIELDS = [
    pa.field("doc_id", pa.string()),
    pa.field("question_type", pa.string()),
    pa.field("generator", pa.string()),
    pa.field("judge_verdict", pa.string()),
    pa.field("judge_reasons", pa.list_(pa.string())),
]

REJECTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ]
)

_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


def response_column(model: str) -> str:
    """Column name for one answering model, as LongBlocks names it: `response_<model basename>`."""
    name = model.rstrip("/").split("/")[-1]
    if not _MODEL_NAME_RE.match(name):
        raise ValueError(f"model name {model!r} cannot be a column suffix (letters, digits, . _ - only)")
    return RESPONSE_PREFIX + name


def response_name(model: str) -> str:
    """A responder's column suffix: the model's basename (`Qwen/Qwen3.5-27B` -> `Qwen3.5-27B`)."""
    return response_column(model)[len(RESPONSE_PREFIX):]


def reasoning_column(model: str) -> str:
    """The working column holding a responder's reasoning: `reasoning_<model basename>`."""
    return REASONING_PREFIX + response_name(model)


def response_columns(columns: list[str] | tuple[str, ...]) -> list[str]:
    """The `response_<model>` columns among `columns`, in their order."""
    return [c for c in columns if c.startswith(RESPONSE_PREFIX)]


def response_models(columns: list[str] | tuple[str, ...]) -> list[str]:
    """The model suffixes of the `response_<model>` columns among `columns`."""
    return [c[len(RESPONSE_PREFIX):] for c in response_columns(columns)]


def qa_schema(response_models: list[str] | tuple[str, ...] = (), *, provenance: bool = True) -> pa.Schema:
    """Schema of QA records: the published LongBlocks columns, one `response_<model>` column per
    answering model, then (in working shards) our provenance columns."""
    fields = list(_PUBLISHED_FIELDS)
    fields += [pa.field(response_column(m), pa.string()) for m in response_models]
    if provenance:
        fields += _PROVENANCE_FIELDS
        fields += [pa.field(reasoning_column(m), pa.string()) for m in response_models]
    return pa.schema(fields)



def qa_columns(path: Any, reader: str) -> list[str]:
    """The response models of a parquet file of QA records (its `response_<model>` suffixes); a file
    of something else is one line saying what `reader` needs."""
    import pyarrow.parquet as pq

    names = pq.ParquetFile(path).schema_arrow.names
    missing = [c for c in (*PUBLISHED_COLUMNS, "doc_id") if c not in names]
    if missing:
        raise LongBlocksError(f"{reader} reads QA records (a generate stage's output); {path} lacks {missing}")
    return response_models(names)


def content_id(*parts: str) -> str:
    """Stable id from content: sha256 over the parts (NUL-separated), 32 hex characters.
    The same content always gets the same id, so a re-run writes the same ids."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def document_id(source: str, text: str) -> str:
    return content_id("document", source, text)


def qa_id(doc_id: str, question: str, answer: str) -> str:
    return content_id("qa", doc_id, question, answer)


def make_document(
    *, source: str, language: str, text: str, meta: str = "{}", n_tokens: int | None = None
) -> dict[str, Any]:
    return {
        "id": document_id(source, text),
        "source": source,
        "language": language,
        "text": text,
        "n_tokens": n_tokens,
        "meta": meta,
    }


def published_column_names(schema: pa.Schema) -> list[str]:
    """The columns of `schema` that go to the Hub: LongBlocks' own, then `response_<model>` ones."""
    return list(PUBLISHED_COLUMNS) + response_columns(schema.names)
