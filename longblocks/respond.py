"""The respond stage: every configured responder model answers every QA record's question over its
document (the prompt the trainer's SFT rows are built with, `{document}\n\n{question}`). The answer,
reasoning removed, goes to `response_<name>` as LongBlocks names it and the reasoning to the working
column `reasoning_<name>`. A failed or truncated response is a rejection of that response, not of
the row: the row is kept with the column empty. Must not judge or rewrite questions and answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from longblocks.backends import Backend, Completion, Messages
from longblocks.errors import LongBlocksError
from longblocks.records import content_id, qa_schema, reasoning_column, response_column, response_models
from longblocks.store import Outcome, Progress, Rejection, StageWriter, count_rows, input_files, no_progress, read_records
from longblocks.text import prompt_hashes, prompt_text

Answers = dict[str, Completion]


def respond_messages(record: dict[str, Any]) -> Messages:
    """The question over its document, as one user turn (the SFT prompt of the trainer)."""
    return [{"role": "user", "content": prompt_text("respond").format(document=record["document"],
                                                                      question=record["question"])}]


def response_outcome(record: dict[str, Any], answers: Answers) -> Outcome:
    """The record with one `response_<name>` (and `reasoning_<name>`) per responder; each response
    that failed, was cut by max_tokens or came back empty is recorded with its reason."""
    row, rejected = dict(record), []
    for name, completion in answers.items():
        column = response_column(name)
        reason = ("response_request_failed" if completion.error else
                  "response_truncated" if completion.finish_reason == "length" else
                  "response_empty" if not completion.text else None)
        row[column] = None if reason else completion.text
        row[reasoning_column(name)] = completion.reasoning or None
        if reason:
            detail = completion.error or f"finish_reason={completion.finish_reason}"
            rejected.append(Rejection(content_id("response-rejection", record["id"], name), reason,
                                      f"{record['id']} {column}: {detail}"))
    return Outcome(record["id"], kept=[row], rejected=rejected)


def _answered(stream: Iterable[tuple[dict[str, Any], Answers]], name: str,
              backend: Backend) -> Iterator[tuple[dict[str, Any], Answers]]:
    """The stream with `name`'s answer added; the responders' requests overlap (each pulls ahead)."""
    for (record, answers), completion in backend.map_ordered(stream, lambda item: respond_messages(item[0])):
        yield record, {**answers, name: completion}


def respond(
    in_path: str | Path, out_dir: str | Path, responders: dict[str, Backend], *, part_size: int = 500,
    overwrite: bool = False, on_progress: Progress | None = None,
) -> dict[str, Any]:
    """QA records of IN with each responder's answer into OUT (resumable; answers live in the caches)."""
    if not responders:
        raise LongBlocksError("respond needs at least one responder")
    files = input_files(in_path)
    existing = response_models(pq.ParquetFile(files[0]).schema_arrow.names)
    clash = sorted(set(existing) & {response_column(n)[len("response_"):] for n in responders})
    if clash:
        raise LongBlocksError(f"{in_path} already has response column(s) for {clash}")
    names = [*existing, *(response_column(n)[len("response_"):] for n in responders)]
    provenance = {name: {**backend.describe(), "column": response_column(name)} for name, backend in responders.items()}
    params = {"responders": provenance, "prompt_sha256": prompt_hashes(["respond"]),
              "inputs": [str(Path(f).resolve()) for f in files]}
    writer = StageWriter(out_dir, stage="respond", schema=qa_schema(names), params=params,
                         inputs=[str(f) for f in files], part_size=part_size, overwrite=overwrite)
    progress = on_progress or no_progress
    progress("respond", 0, count_rows(files))
    stream: Iterable[tuple[dict[str, Any], Answers]] = (
        (r, {}) for r in read_records(files) if not writer.is_consumed(r["id"]))
    for name, backend in responders.items():
        stream = _answered(stream, name, backend)
    failed = 0
    for record, answers in stream:
        outcome = response_outcome(record, answers)
        failed += len(outcome.rejected)
        writer.add(outcome)
        progress("respond", 1, None, failed_responses=failed,
                 in_flight=sum(b.stats.in_flight for b in responders.values()))
    return writer.finish(responders=provenance)
