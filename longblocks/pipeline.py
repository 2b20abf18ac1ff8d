"""A pipeline is a list of stages, as a datatrove pipeline is a list of steps: each stage module
gives its `step(cfg)` (None when the pipeline file does not configure it), and `run_pipeline` runs
them in order, each reading the previous stage's directory and resuming from its own. Adding a
stage is one new module with a `Stage` and a `step`, and one line in the list below. Must not
implement stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longblocks import dedup, judge, qa, respond, sample, select
from longblocks.progress import Progress
from longblocks.config import PipelineConfig


def run_pipeline(cfg: PipelineConfig, *, overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run every configured stage in order into `<out>/<stage>`; a stage that keeps nothing ends
    the run there (the manifests returned say which and why)."""
    steps = [
        sample.step(cfg),
        select.step(cfg),
        dedup.step(cfg),
        qa.step(cfg),
        judge.step(cfg),
        respond.step(cfg),
    ]
    manifests: dict[str, Any] = {}
    inputs: list[Path] = []
    for step in (s for s in steps if s is not None):
        out = cfg.out / step.name
        manifests[step.name] = step.run(inputs, out, part_size=cfg.part_size, overwrite=overwrite, progress=progress)
        if manifests[step.name]["outputs"]["kept"] == 0:
            break
        inputs = [out]
    return manifests


def run_publish(cfg: PipelineConfig) -> dict[str, Any]:
    """Shards and card of the run into the publish folder, then (with `push = true`) the upload."""
    from longblocks.publish import parse_size, publish
    from longblocks.push import push

    section = cfg.publish
    folder = Path(section.folder) if section.folder else cfg.out / "publish"
    summary = publish(cfg.out, folder, repo_id=section.repo_id, pretty_name=section.pretty_name,
                      max_shard_size=section.max_shard_size, row_group_rows=section.row_group_rows,
                      working_config=section.working_config, license=section.license)
    if section.push:
        push(folder, section.repo_id, private=section.private, revision=section.revision,
             max_files=section.max_commit_files, max_bytes=parse_size(section.max_commit_size))
    return summary
