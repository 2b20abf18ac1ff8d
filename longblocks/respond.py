"""The respond stage: every configured responder model answers every QA record's question over its
document (the prompt the trainer's SFT rows are built with, `{document}\n\n{question}`). The answer,
reasoning removed, goes to `response_<name>` as LongBlocks names it and the reasoning to the working
column `reasoning_<name>`. A failed or truncated response is a rejection of that response, not of
the row: the row is kept with the column empty. Must not judge or rewrite questions and answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from longblocks.backends import Backend, Completion, Messages, build_backend
from longblocks.completions import live_status
from longblocks.config import RespondSection
from longblocks.errors import LongBlocksError
from longblocks.manifest import MANIFEST, RespondStats, llm_stats, unjudged
from longblocks.records import content_id, qa_columns, qa_schema, reasoning_column, response_column
from longblocks.store import Outcome, Rejection, RunOptions, Stage, StageWriter
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
    retry = next((c.error for c in answers.values() if c.error and c.transient), None)
    if retry:  # a responder's endpoint was out: the row waits for the next run, its other answers cached
        return Outcome(record["id"], retry=retry)
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


class RespondStage(Stage):
    """Every QA record with each responder's answer (see the module docstring). Each responder's
    backend is built when the stage opens, with its own request cache, unless the backends are
    given (then left open)."""

    units = ("pairs", "pairs", "responses")

    def __init__(self, section: RespondSection, backends: dict[str, Backend] | None = None) -> None:
        if not section.responders and not backends:
            raise LongBlocksError("respond needs at least one responder")
        self.section, self.given = section, backends
        self.responders: dict[str, Backend] = dict(backends or {})

    def open(self, out_dir: Path, options: RunOptions) -> None:
        if self.given is not None:
            return
        for responder in self.section.responders:
            self.responders[responder.name] = build_backend(
                responder, out_dir.parent / f"{out_dir.name}.{responder.name}", where=f"[{self.name}] {responder.name}: ")

    def provenance(self) -> dict[str, dict[str, Any]]:
        return {name: {**backend.describe(), "column": response_column(name)} for name, backend in self.responders.items()}

    def parameters(self) -> dict[str, Any]:
        return {"responders": self.provenance(), "prompt_sha256": prompt_hashes(["respond"])}

    def prepare(self, files: Sequence[Path]) -> None:
        source = Path(files[0]).parent.parent
        if not self.section.skip_judge and (source / MANIFEST).exists():
            unjudged(source, f"answer what it kept (longblocks respond {source.parent / 'judge'} OUT), or pass "
                             "--skip-judge")
        existing = qa_columns(files[0], "respond")
        mine = [response_column(n)[len("response_"):] for n in self.responders]
        clash = sorted(set(existing) & set(mine))
        if clash:
            raise LongBlocksError(f"{files[0].parent} already has response column(s) for {clash}")
        self.schema = qa_schema([*existing, *mine])

    def process(self, items: Iterator[dict[str, Any]], writer: StageWriter) -> Iterator[Outcome]:
        # Each responder reads its own copy of the records (`tee`), side by side, not one after
        # another: chained, a responder could send only as fast as the one before it handed its
        # answers over in order (three responders took 4x the ideal in bench_fleet.py). The openai
        # backends share one event loop, so whichever waits drives every responder's requests.
        names = list(self.responders)
        copies = itertools.tee(items, len(names))
        answered = [backend.map_ordered(copy, respond_messages)
                    for copy, backend in zip(copies, self.responders.values())]
        for results in zip(*answered):
            yield response_outcome(results[0][0], {name: completion for name, (_, completion) in zip(names, results)})

    def status(self) -> dict[str, Any]:
        live = live_status(b.stats for b in self.responders.values())  # each record: one request per responder
        return {**live, "answered": (live["finished"] + live["cached"]) // max(len(self.responders), 1)}

    def stats(self, out_dir: Path) -> RespondStats:
        return RespondStats({name: llm_stats(backend.describe(), column=response_column(name),
                                             prompt_sha256=prompt_hashes(["respond"]))
                             for name, backend in self.responders.items()})

    def check(self, manifest: dict[str, Any]) -> None:
        if all(b.stats.finished and b.stats.failed >= b.stats.finished for b in self.responders.values()):
            raise LongBlocksError(f"{self.name}: every request to every responder failed ({manifest['rejected']}; "
                                  "the details are in its rejected/): check the endpoints, then run it with --overwrite")

    def close(self) -> None:
        if self.given is None:
            for backend in self.responders.values():
                backend.close()


def stage(section: RespondSection, *, backends: dict[str, Backend] | None = None) -> RespondStage:
    """`[[respond.responders]]` as a stage: each responder answers every question (`backends`, by
    column name, replace the section's endpoints, for tests; the caller closes them)."""
    return RespondStage(section, backends)
