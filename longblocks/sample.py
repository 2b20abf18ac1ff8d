"""The sample stage: draw documents from a source with a seed and per-language quotas, into a
stage directory. Must not judge length or quality (select does); unusable raw items are rejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from longblocks.errors import LongBlocksError
from longblocks.records import DOCUMENT_SCHEMA
from longblocks.sources import Source
from longblocks.store import Outcome, Progress, Rejection, StageWriter, no_progress


Admit = Callable[[dict[str, Any]], "dict[str, Any] | Rejection"]


def sample(
    source: Source,
    out_dir: str | Path,
    *,
    quotas: Mapping[str, int] | None,
    seed: int = 0,
    part_size: int = 1000,
    overwrite: bool = False,
    on_progress: Progress | None = None,
    admit: Admit | None = None,
    quota_key: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """Write up to `quotas[key]` documents per quota key (all of them when `quotas` is None); the
    key is the language, or `quota_key(doc)` (e.g. "en/32k-64k").

    With `admit` (selection while streaming: the document with its token count, or a rejection),
    a quota counts documents that passed selection, so it means what it says. Rejected raw items
    (empty, binary, not UTF-8, too large, missing text), documents admit refuses and documents for
    a full quota are recorded with their reason. The manifest lists the quotas the source could not
    fill (`unmet`). Restarting continues where the last run committed.
    """
    if quotas is not None and any(n < 0 for n in quotas.values()):
        raise LongBlocksError("quotas must be non-negative")
    key = quota_key or (lambda doc: doc["language"])
    params = {
        "source": source.name,
        "hub_id": source.spec.hub_id if source.spec else None,
        "text_field": source.text_field,
        "include": list(source.include),
        "quotas": dict(quotas) if quotas is not None else None,
        "seed": seed,
        "max_bytes": source.max_bytes,
        "revision": source.revision,
        "selected_while_sampling": admit is not None,
    }
    writer = StageWriter(out_dir, stage="sample", schema=DOCUMENT_SCHEMA, params=params, part_size=part_size, overwrite=overwrite)
    counts = writer.kept_counts_by("language", key, columns=["n_tokens"])
    rejected = sum(writer.manifest["rejected"].values())
    progress = on_progress or no_progress
    progress("sample", 0, sum(quotas.values()) if quotas is not None else None)
    progress("sample", sum(counts.values()), None, kept=sum(counts.values()), rejected=rejected)
    languages = sorted({k.split("/")[0] for k in quotas}) if quotas is not None else None

    def full(k: str) -> bool:
        return quotas is not None and counts[k] >= quotas.get(k, 0)

    def language_done(language: str) -> bool:
        return quotas is not None and all(full(k) for k in quotas if k.split("/")[0] == language)

    def reject(doc_id: str, reason: Rejection) -> None:
        nonlocal rejected
        writer.add(Outcome(doc_id, rejected=[reason]))
        rejected += 1

    if quotas is None or not all(full(k) for k in quotas):
        for candidate in source.stream(languages, seed, language_done):
            doc = candidate.document
            if candidate.rejection is not None:
                if not writer.is_consumed(candidate.rejection.id):
                    reject(candidate.rejection.id, candidate.rejection)
            elif not language_done(doc["language"]) and not writer.is_consumed(doc["id"]):
                admitted = admit(doc) if admit else doc
                if isinstance(admitted, Rejection):
                    reject(doc["id"], admitted)
                elif full(key(admitted)):
                    reject(doc["id"], Rejection(doc["id"], "quota_full", f"{key(admitted)} already has its documents"))
                else:
                    writer.add(Outcome(doc["id"], kept=[admitted]))
                    counts[key(admitted)] += 1
                    progress("sample", 1, None, kept=sum(counts.values()), rejected=rejected)
            if quotas is not None and all(full(k) for k in quotas):
                break
    unmet = {k: n - counts[k] for k, n in (quotas or {}).items() if counts[k] < n}
    return writer.finish(kept_by_language=dict(sorted(Counter(k.split("/")[0] for k in counts.elements()).items())),
                         kept_by_quota=dict(sorted(counts.items())), unmet=unmet, license=source.license)
