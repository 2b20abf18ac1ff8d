"""The sample stage: draw documents from a source with a seed and per-language quotas, into a
stage directory. Must not judge length or quality (select does); unusable raw items are rejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from longblocks.errors import LongBlocksError
from longblocks.manifest import SampleStats
from longblocks.records import DOCUMENT_SCHEMA, content_id
from longblocks.config import PipelineConfig
from longblocks.sources import Candidate, Source, open_source
from longblocks.progress import Progress
from longblocks.store import PART_SIZE, Outcome, Rejection, Stage, StageWriter, Step, run_stage


Admit = Callable[[dict[str, Any]], "dict[str, Any] | Rejection"]


class SampleStage(Stage):
    """A source's stream into documents: up to `quotas[key]` per quota key (all when None); the key
    is the language, or `quota_key(doc)` (e.g. "en/32k-64k"). See `sample`."""

    name = "sample"
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


def sample(
    source: Source,
    out_dir: str | Path,
    *,
    quotas: Mapping[str, int] | None,
    seed: int = 0,
    part_size: int = PART_SIZE,
    overwrite: bool = False,
    on_progress: Progress | None = None,
    admit: Admit | None = None,
    quota_key: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Write up to `quotas[key]` documents per quota key (all of them when `quotas` is None); the
    key is the language, or `quota_key(doc)` (e.g. "en/32k-64k").

    With `admit` (selection while streaming: the document with its token count, or a rejection),
    a quota counts documents that passed selection, so it means what it says. Rejected raw items
    (empty, binary, not UTF-8, too large, missing text, unreadable files), documents admit refuses,
    documents for a full quota and repeated rows are recorded with their reason. The manifest
    lists the quotas the source could not fill (`unmet`). Restarting continues where the last run
    committed.
    """
    stage = SampleStage(source, quotas, seed=seed, admit=admit, quota_key=quota_key)
    return run_stage(stage, [], out_dir, part_size=part_size, overwrite=overwrite, progress=on_progress)


def step(cfg: PipelineConfig) -> Step:
    """`[source]` (and `[select]` when quotas count length bins) as the pipeline's first stage."""
    def run(inputs: list[Path], out_dir: Path, **options: Any) -> dict[str, Any]:
        from longblocks.select import admit_selected

        admit, key = admit_selected(cfg.select) if cfg.source.bin_quotas else (None, None)
        stage = SampleStage(open_source(cfg.source), cfg.source.resolved_quotas(), seed=cfg.source.seed, admit=admit,
                            quota_key=key)
        return run_stage(stage, inputs, out_dir, **options)

    return Step("sample", run)
