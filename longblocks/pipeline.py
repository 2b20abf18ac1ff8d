"""Runs the stages a pipeline file (`longblocks.config.load_pipeline`) or a command declares: every
command reaches generate and judge through `run_generate`/`run_judge`, so the same section gives the
same requests whichever command runs it. Must not implement stages: it only composes the stage
functions, in order, each resuming from its own directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longblocks.config import GenerateConfig, GenerateSection, JudgeSection, PipelineConfig
from longblocks.dedup import dedup
from longblocks.judge import judge_qa
from longblocks.qa import generate_qa
from longblocks.sample import sample
from longblocks.select import select
from longblocks.store import Progress


def run_generate(section: GenerateSection, in_dir: Path, out_dir: Path, *, part_size: int, overwrite: bool = False,
                 progress: Progress | None = None) -> dict[str, Any]:
    """The generate stage with the section's backend (closed afterwards)."""
    cfg = GenerateConfig(question_types=tuple(section.question_types), n_questions=section.n_questions)
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
                        overwrite=overwrite, on_progress=progress)
    finally:
        backend.close()


def run_pipeline(cfg: PipelineConfig, *, overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run every stage in order; each stage's directory is `<out>/<stage>` and resumes on restart."""
    manifests: dict[str, Any] = {}
    common = {"part_size": cfg.part_size, "overwrite": overwrite}
    manifests["sample"] = sample(cfg.source.source(), cfg.out / "sample", quotas=cfg.source.resolved_quotas(),
                                 seed=cfg.source.seed, on_progress=progress, **common)
    manifests["select"] = select(cfg.out / "sample", cfg.out / "select", cfg.select, on_progress=progress, **common)
    manifests["dedup"] = dedup(cfg.out / "select", cfg.out / "dedup", cfg.dedup, workers=cfg.dedup_workers,
                               on_progress=progress, **common)
    if not cfg.generate.model:
        return manifests  # no generator configured: the run ends with deduplicated documents
    manifests["generate"] = run_generate(cfg.generate, cfg.out / "dedup", cfg.out / "generate", progress=progress,
                                         **common)
    if cfg.judge.model and manifests["generate"]["outputs"]["kept"] > 0:
        manifests["judge"] = run_judge(cfg.judge, cfg.out / "generate", cfg.out / "judge", progress=progress,
                                       **common)
    return manifests
