"""A pipeline is a list of stages, as a datatrove pipeline is a list of steps: `config.STAGES`
names each stage once with the section it is built from, and `run_pipeline` runs them in order,
each reading the previous stage's directory and resuming from its own. Every way of running a
stage (a pipeline file, its own command, a test) builds it here, from its section, with its
module's one entry `stage(section)`. Must not implement stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longblocks import executors
from longblocks.config import PART_SIZE, STAGES, PipelineConfig, build_stage
from longblocks.progress import Progress
from longblocks.store import run_stage


build = build_stage  # the stage `name` from its section (see config.build_stage)


def run(name: str, section: Any, inputs: list[str | Path] | list[Path], out_dir: str | Path, *,
        part_size: int = PART_SIZE, overwrite: bool = False, progress: Progress | None = None,
        **extra: Any) -> dict[str, Any]:
    """Build the stage `name` from its section and run it on `inputs` into `out_dir` (resumable);
    returns its manifest."""
    return run_stage(build(name, section, **extra), inputs, out_dir, part_size=part_size, overwrite=overwrite,
                     progress=progress)


def run_pipeline(cfg: PipelineConfig, *, overwrite: bool = False, progress: Progress | None = None,
                 until: str | None = None) -> dict[str, Any]:
    """Run every configured stage in order into `<out>/<stage>` (through `until`, when given). A
    stage whose section leaves it out (no model, no responders) is skipped, and so is one that
    reads what no earlier stage wrote (QA records without a generator); a stage that keeps nothing
    ends the run there (the manifests returned say which and why). With `[executor]` tasks > 1, or on
    Ray or Slurm, each stage runs as tasks (`longblocks.executors`)."""
    manifests: dict[str, Any] = {}
    inputs: list[Path] = []
    flowing: str | None = None  # what the last stage wrote
    for spec in STAGES:
        section = getattr(cfg, spec.section)
        if spec.enabled(section) and spec.reads == flowing:
            out = cfg.out / spec.name
            others = {name: getattr(cfg, name) for name in spec.also}
            if executors.configured(cfg.executor, spec.name):  # as tasks, locally or on Ray or Slurm
                manifests[spec.name] = executors.run_sharded(spec, section, others, inputs, out, cfg=cfg.executor,
                                                             part_size=cfg.part_size, overwrite=overwrite,
                                                             progress=progress)
            else:
                manifests[spec.name] = run(spec.name, section, inputs, out, part_size=cfg.part_size,
                                           overwrite=overwrite, progress=progress, **others)
            if manifests[spec.name]["outputs"]["kept"] == 0:
                break
            inputs, flowing = [out], spec.writes
        if spec.name == until:
            break
    return manifests


def run_publish(cfg: PipelineConfig) -> dict[str, Any]:
    """Shards and card of the run into the publish folder, then (with `push = true`) the upload."""
    from longblocks.publish import parse_size, publish
    from longblocks.push import push

    section = cfg.publish
    folder = Path(section.folder) if section.folder else cfg.out / "publish"
    summary = publish(cfg.out, folder, repo_id=section.repo_id, pretty_name=section.pretty_name,
                      max_shard_size=section.max_shard_size, row_group_rows=section.row_group_rows,
                      working_config=section.working_config, license=section.license, skip_judge=section.skip_judge)
    if section.push:
        push(folder, section.repo_id, private=section.private, revision=section.revision,
             max_files=section.max_commit_files, max_bytes=parse_size(section.max_commit_size))
    return summary
