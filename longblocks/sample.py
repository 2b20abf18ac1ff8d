"""The sample stage: draw documents from a source with a seed and per-language quotas, into a
stage directory. Must not judge length or quality (select does); unusable raw items are rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longblocks.errors import LongBlocksError
from longblocks.records import DOCUMENT_SCHEMA
from longblocks.sources import Source
from longblocks.store import Outcome, Progress, StageWriter, no_progress


def sample(
    source: Source,
    out_dir: str | Path,
    *,
    quotas: Mapping[str, int] | None,
    seed: int = 0,
    part_size: int = 1000,
    overwrite: bool = False,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Write up to `quotas[language]` documents per language (all of them when `quotas` is None).

    Rejected raw items (empty, binary, not UTF-8, too large, missing text) are recorded with their
    reason and do not count towards a quota. Restarting continues where the last run committed.
    """
    if quotas is not None and any(n < 0 for n in quotas.values()):
        raise LongBlocksError("quotas must be non-negative")
    params = {
        "source": source.name,
        "hub_id": source.spec.hub_id if source.spec else None,
        "text_field": source.text_field,
        "include": list(source.include),
        "quotas": dict(quotas) if quotas is not None else None,
        "seed": seed,
        "max_bytes": source.max_bytes,
        "revision": source.revision,
    }
    writer = StageWriter(out_dir, stage="sample", schema=DOCUMENT_SCHEMA, params=params, part_size=part_size, overwrite=overwrite)
    counts = writer.kept_counts_by("language")
    rejected = sum(writer.manifest["rejected"].values())
    progress = on_progress or no_progress
    progress("sample", 0, sum(quotas.values()) if quotas is not None else None)
    progress("sample", sum(counts.values()), None, kept=sum(counts.values()), rejected=rejected)

    def full(language: str) -> bool:
        return quotas is not None and counts[language] >= quotas.get(language, 0)

    if quotas is None or not all(full(lang) for lang in quotas):
        languages = list(quotas) if quotas is not None else None
        for candidate in source.stream(languages, seed, full):
            if candidate.rejection is not None:
                if not writer.is_consumed(candidate.rejection.id):
                    writer.add(Outcome(candidate.rejection.id, rejected=[candidate.rejection]))
                    rejected += 1
            else:
                doc = candidate.document
                assert doc is not None
                if full(doc["language"]) or writer.is_consumed(doc["id"]):
                    continue
                writer.add(Outcome(doc["id"], kept=[doc]))
                counts[doc["language"]] += 1
            progress("sample", candidate.document is not None, None, kept=sum(counts.values()), rejected=rejected)
            if quotas is not None and all(full(lang) for lang in quotas):
                break
    return writer.finish(kept_by_language=dict(sorted(counts.items())), license=source.license)
