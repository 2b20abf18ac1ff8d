"""Runs the stages a pipeline file (`longblocks.config.load_pipeline`) or a command declares: every
command reaches generate and judge through `run_generate`/`run_judge`, so the same section gives the
same requests whichever command runs it. Must not implement stages: it only composes the stage
functions, in order, each resuming from its own directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longblocks.config import GenerateConfig, GenerateSection, JudgeSection, PipelineConfig, RespondSection
from longblocks.dedup import dedup
from longblocks.judge import judge_qa
from longblocks.qa import generate_qa
from longblocks.respond import respond
from longblocks.sample import sample
from longblocks.select import admit_selected, select
from longblocks.store import Progress


def run_generate(section: GenerateSection, in_dir: Path, out_dir: Path, *, part_size: int, overwrite: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
    """The generate stage with the section's backend (closed afterwards)."""
    cfg = GenerateConfig(question_types=tuple(section.question_types), n_questions=section.n_questions,
                         code_qa_language=section.code_qa_language)
    backend = section.build(out_dir)
    try:
        return generate_qa(in_dir, out_dir, cfg, backend, part_size=part_size, overwrite=overwrite, on_progress=progress)
    finally:
        backend.close()


def run_judge(section: JudgeSection, in_dir: Path, out_dir: Path, *, part_size: int, overwrite: bool = False,
              progress: Progress | None = None) -> dict[str, Any]:
    """The judge stage with the section's backend: the one path `judge`, `run` and `generate` take."""
    backend = section.build(out_dir)
    try:
        return judge_qa(in_dir, out_dir, backend, local_span_window=section.local_span_window, part_size=part_size,
                        overwrite=overwrite, on_progress=progress, mode=section.mode)
    finally:
        backend.close()


def run_respond(section: RespondSection, in_dir: Path, out_dir: Path, *, part_size: int, overwrite: bool = False,
                progress: Progress | None = None) -> dict[str, Any]:
    """The respond stage with one backend per responder (each with its own request cache)."""
    backends = {}
    try:
        for responder in section.responders:
            backends[responder.name] = responder.build(out_dir.parent / f"{out_dir.name}.{responder.name}")
        return respond(in_dir, out_dir, backends, part_size=part_size, overwrite=overwrite, on_progress=progress)
    finally:
        for backend in backends.values():
            backend.close()


def run_pipeline(cfg: PipelineConfig, *, overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run every stage in order; each stage's directory is `<out>/<stage>` and resumes on restart."""
    manifests: dict[str, Any] = {}
    common = {"part_size": cfg.part_size, "overwrite": overwrite}
    admit, key = admit_selected(cfg.select) if cfg.source.bin_quotas else (None, None)
    manifests["sample"] = sample(cfg.source.source(), cfg.out / "sample", quotas=cfg.source.resolved_quotas(),
                                 seed=cfg.source.seed, on_progress=progress, admit=admit, quota_key=key, **common)
    manifests["select"] = select(cfg.out / "sample", cfg.out / "select", cfg.select, on_progress=progress, **common)
    manifests["dedup"] = dedup(cfg.out / "select", cfg.out / "dedup", cfg.dedup, workers=cfg.dedup_workers,
                               on_progress=progress, **common)
    if not cfg.generate.model:
        return manifests  # no generator configured: the run ends with deduplicated documents
    manifests["generate"] = run_generate(cfg.generate, cfg.out / "dedup", cfg.out / "generate", progress=progress,
                                         **common)
    qa = cfg.out / "generate"
    if cfg.judge.model and manifests["generate"]["outputs"]["kept"] > 0:
        manifests["judge"] = run_judge(cfg.judge, qa, cfg.out / "judge", progress=progress, **common)
        qa = cfg.out / "judge"
    if cfg.respond.responders and manifests[qa.name]["outputs"]["kept"] > 0:
        manifests["respond"] = run_respond(cfg.respond, qa, cfg.out / "respond", progress=progress, **common)
    return manifests


def run_publish(cfg: PipelineConfig) -> dict[str, Any]:
    """Shards and card of the run into the publish folder, then (with `push = true`) the upload."""
    from longblocks.publish import parse_size, publish
    from longblocks.push import push

    section = cfg.publish
    folder = Path(section.folder) if section.folder else cfg.out / "publish"
    summary = publish(cfg.out, folder, repo_id=section.repo_id, pretty_name=section.pretty_name,
                      max_shard_size=section.max_shard_size, license=section.license)
    if section.push:
        push(folder, section.repo_id, private=section.private, max_bytes=parse_size("2GB"))
    return summary
