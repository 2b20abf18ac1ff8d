"""The sample stage: draw documents from a source with a seed and per-language quotas, into a
stage directory. Must not judge length or quality (select does); unusable raw items are rejected.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from longblocks.errors import LongBlocksError
from longblocks.manifest import SampleStats
from longblocks.records import DOCUMENT_SCHEMA, content_id
from longblocks.config import SelectConfig, SourceConfig
from longblocks.sources import Candidate, Source, open_source
from longblocks.store import Outcome, Rejection, Stage, StageWriter


Admit = Callable[[dict[str, Any]], "dict[str, Any] | Rejection"]


class SampleStage(Stage):
    """A source's stream into documents: up to `quotas[key]` per quota key (all when None); the key
    is the language, or `quota_key(doc)` (e.g. "en/32k-64k"). See `sample`."""

    schema = DOCUMENT_SCHEMA

    def __init__(self, source: Source, quotas: Mapping[str, int] | None, *, seed: int = 0, admit: Admit | None = None,
                 quota_key: Callable[[dict[str, Any]], str] | None = None) -> None:
        if quotas is not None and any(n < 0 for n in quotas.values()):
            raise LongBlocksError("quotas must be non-negative")
        self.source, self.quotas, self.seed, self.admit = source, quotas, seed, admit
        self.key = quota_key or (lambda doc: doc["language"])
        self.counts: Counter[str] = Counter()

    def parameters(self) -> dict[str, Any]:
        source = self.source
        return {
            "source": source.name, "hub_id": source.spec.hub_id if source.spec else None,
            "text_field": source.text_field, "include": list(source.include),
            "quotas": dict(self.quotas) if self.quotas is not None else None, "seed": self.seed,
            "max_bytes": source.max_bytes, "revision": source.revision,
            "selected_while_sampling": self.admit is not None,
        }

    def total(self, files: Sequence[Path]) -> int | None:
        return sum(self.quotas.values()) if self.quotas is not None else None

    def advance(self, outcome: Outcome) -> int:
        return len(outcome.kept)

    def done(self, manifest: dict[str, Any]) -> int:
        return manifest["outputs"]["kept"]

    def full(self, key: str) -> bool:
        return self.quotas is not None and self.counts[key] >= self.quotas.get(key, 0)

    def language_done(self, language: str) -> bool:
        return self.quotas is not None and all(self.full(k) for k in self.quotas if k.split("/")[0] == language)

    def items(self, files: Sequence[Path], writer: StageWriter) -> Iterator[Candidate]:
        self.counts = writer.kept_counts_by("language", self.key, columns=["n_tokens"])
        if self.quotas is not None and all(self.full(k) for k in self.quotas):
            return iter(())
        languages = sorted({k.split("/")[0] for k in self.quotas}) if self.quotas is not None else None
        return self.source.stream(languages, self.seed, self.language_done)

    def process(self, items: Iterator[Candidate], writer: StageWriter) -> Iterator[Outcome]:
        seen: Counter[str] = Counter()
        for candidate in items:
            if candidate.rejection is not None:
                if not writer.is_consumed(candidate.rejection.id):
                    yield Outcome(candidate.rejection.id, rejected=[candidate.rejection])
                continue
            doc = candidate.document
            seen[doc["id"]] += 1
            if seen[doc["id"]] > 1:  # the same text twice in the source: recorded, never silently dropped
                dup = content_id("duplicate-row", doc["id"], str(seen[doc["id"]]))
                if not writer.is_consumed(dup):
                    yield Outcome(dup, rejected=[Rejection(dup, "duplicate_row", f"same text as document {doc['id']}")])
            elif not self.language_done(doc["language"]) and not writer.is_consumed(doc["id"]):
                yield self.decide(doc)
            if self.quotas is not None and all(self.full(k) for k in self.quotas):
                return

    def decide(self, doc: dict[str, Any]) -> Outcome:
        admitted = self.admit(doc) if self.admit else doc
        if isinstance(admitted, Rejection):
            return Outcome(doc["id"], rejected=[admitted])
        key = self.key(admitted)
        if self.full(key):
            return Outcome(doc["id"], rejected=[Rejection(doc["id"], "quota_full", f"{key} already has its documents")])
        self.counts[key] += 1
        return Outcome(doc["id"], kept=[admitted])

    def stats(self, out_dir: Path) -> SampleStats:
        unmet = {k: n - self.counts[k] for k, n in (self.quotas or {}).items() if self.counts[k] < n}
        by_language = Counter(k.split("/")[0] for k in self.counts.elements())
        return SampleStats(kept_by_language=dict(sorted(by_language.items())),
                           kept_by_quota=dict(sorted(self.counts.items())), unmet=unmet, license=self.source.license)


def stage(section: SourceConfig, *, select: SelectConfig | None = None, source: Source | None = None,
          shard: tuple[int, int] = (0, 1)) -> SampleStage:
    """`[source]` as the pipeline's first stage: up to the section's quotas per language (all
    documents without quotas), drawn with its seed; with `bin_quotas`, per language and length bin,
    counting documents that pass `[select]` (selection runs while sampling, so a quota means what
    it says). Rejected raw items (empty, binary, not UTF-8, too large, missing text, unreadable
    files), documents selection refuses, documents for a full quota and repeated rows are recorded
    with their reason; the manifest lists the quotas the source could not fill (`unmet`). `source`
    replaces the section's (an opened `Source`, for tests). `shard` = (rank, tasks): as one of several
    sample tasks, this task draws from its share of the source's files for its share of each quota."""
    quotas = section.resolved_quotas()
    rank, world = shard
    if quotas is not None and world > 1:
        quotas = {key: n // world + (1 if rank < n % world else 0) for key, n in quotas.items()}
    admit, key = None, None
    if section.bin_quotas:
        from longblocks.select import admit_selected

        select = select or SelectConfig()
        unknown = sorted(set(section.bin_quotas) - set(select.bin_labels()))
        if unknown:
            raise LongBlocksError(f"source.bin_quotas: unknown bin(s) {unknown}; the bins of select.bins are "
                                  f"{select.bin_labels()}")
        admit, key = admit_selected(select)
    opened = source or open_source(section)
    if world > 1:
        opened = dataclasses.replace(opened, shard=shard)
    return SampleStage(opened, quotas, seed=section.seed, admit=admit, quota_key=key)
