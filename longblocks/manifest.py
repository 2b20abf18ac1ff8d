"""The manifest of a stage directory: each stage's typed statistics, stored under the manifest's
`stats` key and read back through `stage_stats`. Other modules read a manifest's statistics only through here. Must not run stages or read data.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longblocks.config import STAGES
from longblocks.errors import LongBlocksError

MANIFEST = "manifest.json"


@dataclass
class SampleStats:
    kept_by_language: dict[str, int] = field(default_factory=dict)
    kept_by_quota: dict[str, int] = field(default_factory=dict)  # "language" or "language/bin" -> documents
    unmet: dict[str, int] = field(default_factory=dict)  # quota key -> documents the source could not supply
    license: str = ""


@dataclass
class DedupStats:
    parameters: dict[str, Any] = field(default_factory=dict)
    datasketch_version: str = ""
    hashing_scheme: str = ""
    shingle_hashing: str = ""
    keep_rule: str = ""
    candidate_pairs: int = 0
    verified_pairs: int = 0
    clusters: int = 0
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class LLMStats:
    """What answered an LLM stage: the backend's description (model, backend, sampling, endpoint
    settings; never an API key) and the stage's own settings, e.g. prompt hashes, question types."""

    model: str = ""
    backend: str = ""
    sampling: dict[str, Any] | None = None
    prompt_sha256: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def flat(self) -> dict[str, Any]:
        """Every field with the settings beside them (what the dataset card reads)."""
        values = dataclasses.asdict(self)
        return {**values.pop("settings"), **values}


@dataclass
class RespondStats:
    responders: dict[str, LLMStats] = field(default_factory=dict)  # column suffix -> what answered


StageStats = SampleStats | DedupStats | LLMStats | RespondStats | None


def llm_stats(description: dict[str, Any], **settings: Any) -> LLMStats:
    """LLMStats from a backend's `describe()` plus the stage's settings."""
    rest = {k: v for k, v in description.items() if k not in ("model", "backend", "sampling")}
    prompts = settings.pop("prompt_sha256", {})
    return LLMStats(model=description.get("model", ""), backend=description.get("backend", ""),
                    sampling=description.get("sampling"), prompt_sha256=prompts, settings={**rest, **settings})


def to_json(stats: StageStats) -> dict[str, Any] | None:
    return None if stats is None else json.loads(json.dumps(dataclasses.asdict(stats)))


def stage_stats(manifest: dict[str, Any]) -> StageStats:
    """A manifest's statistics as its stage's type (None for stages without any, e.g. select)."""
    name = next((spec.stats for spec in STAGES if spec.name == manifest.get("stage")), "")
    cls = globals().get(name) if name else None
    values = manifest.get("stats")
    if cls is None or values is None:
        return None
    if cls is RespondStats:
        return RespondStats({name: LLMStats(**v) for name, v in values.get("responders", {}).items()})
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """A stage directory's manifest; a corrupted one is an error naming the file and what to do."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise LongBlocksError(f"{path} does not exist: {Path(out_dir)} is not a stage directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LongBlocksError(f"{path} is corrupted ({exc}); delete the stage directory {Path(out_dir)} (or rerun "
                              "with --overwrite) to start the stage again") from None
    if not isinstance(manifest, dict) or "stage" not in manifest or "outputs" not in manifest:
        raise LongBlocksError(f"{path} is not a longblocks manifest; delete {Path(out_dir)} or choose another directory")
    return manifest


def lineage(stage_dir: Path) -> list[str]:
    """The stages a stage's records came through, itself first (following each manifest's inputs)."""
    names: list[str] = []
    current: Path | None = stage_dir
    while current is not None and len(names) < 16:
        manifest = read_manifest(current)
        names.append(manifest["stage"])
        current = next((Path(p).parent.parent for p in manifest["inputs"]["paths"]
                        if (Path(p).parent.parent / MANIFEST).exists()), None)
    return names


def unjudged(stage_dir: Path, what: str) -> None:
    """Records that skipped the judge, though a judge stage beside them holds its verdicts, are
    refused: `what` then says how to go on (answer or publish the judge's output, or skip it)."""
    judge = stage_dir.parent / "judge"
    if "judge" not in lineage(stage_dir) and (judge / MANIFEST).exists():
        raise LongBlocksError(f"{stage_dir} holds pairs the judge never saw, though {judge} has what it kept: {what}")


def summary(manifest: dict[str, Any], out: str | Path) -> list[str]:
    """What a stage did, as the commands print it (rich markup): counts in, kept and rejected per
    reason, then what its statistics say (quotas the source could not fill, what answered, dedup)."""
    rejected = manifest.get("rejected", {})
    consumed, kept, lost = manifest.get("units", ("documents", "documents", "documents"))
    lines = [f"[green]{manifest['stage']}[/]: {manifest['inputs']['consumed']} {consumed} in, kept "
             f"{manifest['outputs']['kept']} {kept}, rejected {sum(rejected.values())} {lost} -> {out}"]
    lines += [f"  rejected {reason}: {n}" for reason, n in rejected.items()]
    stats = stage_stats(manifest)
    if isinstance(stats, SampleStats):
        lines += [f"  [yellow]the source ran out[/]: {quota} is {missing} document(s) short of its quota"
                  for quota, missing in stats.unmet.items()]
    if isinstance(stats, LLMStats):
        lines.append(f"  {manifest['stage']}: {stats.backend} {stats.model} (prompts {stats.prompt_sha256})")
    if isinstance(stats, DedupStats):
        lines.append(f"  clusters {stats.clusters}, candidate pairs {stats.candidate_pairs}, verified "
                     f"{stats.verified_pairs} (datasketch {stats.datasketch_version}, {stats.hashing_scheme})")
    return lines
