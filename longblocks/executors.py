"""Executors beside stages, as datatrove splits them: an executor runs a stage as `tasks` shards of
its input files (`files[rank::tasks]`, stable), each task the one stage runner (`store.run_stage`)
into its own folder `OUT/<stage>/task-NNNNN/` with its own parts, manifest and lock; a task is
complete once its manifest says so, and the stage's own manifest, written when every task is
complete, adds them up (downstream stages read the tasks' committed parts in task order). Rerunning
skips complete tasks and resumes a killed one from its committed parts. `local` runs tasks in this
process or a pool of processes, `ray` as Ray Core tasks (retried by Ray when a worker or node dies),
`slurm` as a submitit job array. Must not know what a stage does beyond its `sharded` hook.
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longblocks.config import ExecutorSection, StageSpec
from longblocks.errors import LongBlocksError
from longblocks.manifest import MANIFEST, read_manifest
from longblocks.progress import Progress, no_progress

TASK = "task-{:05d}"


@dataclass(frozen=True)
class Task:
    """One shard of one stage, as a worker runs it (picklable: sent to processes, Ray, Slurm)."""

    stage: str
    section: Any
    extra: dict[str, Any]  # the other sections its builder takes (sample: select)
    files: tuple[str, ...]  # its shard of the stage's input files ((): a stage that reads a source)
    out_dir: str
    rank: int
    world: int
    part_size: int
    overwrite: bool
    function: str = "longblocks.executors:stage_task"  # what the worker calls with the task

    @property
    def label(self) -> str:
        return f"{self.stage} task {self.rank + 1}/{self.world} ({len(self.files)} input file(s))"


def stage_task(task: Task) -> dict[str, Any]:
    """A worker's body: the stage built from its section, run on the task's shard into its folder."""
    from longblocks.config import build_stage
    from longblocks.store import run_stage

    extra = dict(task.extra)
    if task.world > 1 and task.stage == "sample":
        extra["shard"] = (task.rank, task.world)
    manifest = run_stage(build_stage(task.stage, task.section, **extra), list(task.files), task.out_dir,
                         part_size=task.part_size, overwrite=task.overwrite)
    return {"kept": manifest["outputs"]["kept"], "status": manifest["status"]}


def call(task: Task) -> dict[str, Any]:
    module, _, name = task.function.partition(":")
    return getattr(importlib.import_module(module), name)(task)


def complete(folder: Path) -> bool:
    try:
        return read_manifest(folder).get("status") == "complete"
    except LongBlocksError:
        return False


# -- the engines ------------------------------------------------------------------------------------
class Engine:
    """Runs a batch of tasks to completion, or raises one line naming the first task that failed."""

    def __init__(self, cfg: ExecutorSection, stage: str) -> None:
        self.cfg, self.resources = cfg, cfg.for_stage(stage)

    def run(self, tasks: Sequence[Task]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _failed(task: Task, reason: str) -> LongBlocksError:
    first = (reason.strip().splitlines() or ["failed"])[-1][:400]
    return LongBlocksError(f"{task.label} failed: {first}; the other tasks' committed work is kept: fix the cause and "
                           "run the same command again (complete tasks are skipped)")


class LocalEngine(Engine):
    """Tasks one after another in this process, or `workers` at a time in spawned processes."""

    def run(self, tasks: Sequence[Task]) -> None:
        failures: list[tuple[Task, str]] = []
        if self.cfg.workers <= 1 or len(tasks) <= 1:
            for task in tasks:  # every task runs: one that fails does not stop its siblings
                try:
                    call(task)
                except LongBlocksError as exc:
                    failures.append((task, str(exc)))
        else:
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing import get_context

            with ProcessPoolExecutor(self.cfg.workers, mp_context=get_context("spawn")) as pool:
                futures = [(task, pool.submit(call, task)) for task in tasks]
                for task, future in futures:
                    try:
                        future.result()
                    except Exception as exc:  # noqa: BLE001 - a worker's error, whatever its type: one line
                        failures.append((task, f"{type(exc).__name__}: {exc}"))
        if failures:
            raise _failed(*failures[0])


class RayEngine(Engine):
    """Ray Core tasks with the stage's CPUs, GPUs and memory; Ray runs a task again when its worker
    process or node dies (`retries`), and the task resumes from its committed parts."""

    def __init__(self, cfg: ExecutorSection, stage: str) -> None:
        super().__init__(cfg, stage)
        import ray

        if not ray.is_initialized():
            if cfg.address:
                ray.init(address=cfg.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=max(cfg.workers, 1), include_dashboard=False, log_to_driver=False)
        self.ray = ray

    def run(self, tasks: Sequence[Task]) -> None:
        ray, r = self.ray, self.resources
        options: dict[str, Any] = {"num_cpus": r["cpus"], "num_gpus": r["gpus"], "max_retries": r["retries"],
                                   "retry_exceptions": False}
        if r["memory_gb"]:
            options["memory"] = int(r["memory_gb"] * 2**30)
        remote = ray.remote(call).options(**options)
        refs = [(task, remote.remote(task)) for task in tasks]
        failures: list[tuple[Task, str]] = []
        for task, ref in refs:  # every task is waited for: one that fails does not stop its siblings
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the task's own error (bad input, a server that refuses)
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                failures.append((task, str(cause)))
            except ray.exceptions.RayError as exc:  # a worker or node lost past the retries
                failures.append((task, f"{type(exc).__name__} after {r['retries']} retries: {exc}"))
        if failures:
            raise _failed(*failures[0])


class SlurmEngine(Engine):
    """A submitit job array per batch of tasks (cluster "local" runs the same code path on this
    machine: submitit's LocalExecutor); a failed job is submitted again up to `retries` times."""

    def __init__(self, cfg: ExecutorSection, stage: str, folder: Path) -> None:
        super().__init__(cfg, stage)
        import submitit

        self.submitit = submitit
        r = self.resources
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cfg.slurm_cluster or None)
        params: dict[str, Any] = {"timeout_min": cfg.slurm_time_min, "cpus_per_task": r["cpus"]}
        if r["gpus"]:
            params["gpus_per_node"] = int(r["gpus"])
        if r["memory_gb"]:
            params["mem_gb"] = r["memory_gb"]
        if cfg.slurm_partition:
            params["slurm_partition"] = cfg.slurm_partition
        self.executor.update_parameters(**params)

    def run(self, tasks: Sequence[Task]) -> None:
        pending = list(tasks)
        for attempt in range(self.resources["retries"] + 1):
            jobs = self.executor.map_array(call, pending)
            failed = []
            for task, job in zip(pending, jobs):
                try:
                    job.result()
                except Exception as exc:  # noqa: BLE001 - submitit wraps the job's error
                    failed.append((task, f"{type(exc).__name__}: {exc}"))
            if not failed:
                return
            if attempt == self.resources["retries"] or any("LongBlocksError" in reason for _, reason in failed):
                task, reason = failed[0]
                raise _failed(task, reason)
            pending = [task for task, _ in failed]


def engine(cfg: ExecutorSection, stage: str, out_dir: Path) -> Engine:
    if cfg.kind == "ray":
        return RayEngine(cfg, stage)
    if cfg.kind == "slurm":
        return SlurmEngine(cfg, stage, Path(cfg.slurm_folder) if cfg.slurm_folder else out_dir / ".slurm")
    return LocalEngine(cfg, stage)


# -- a stage as tasks -------------------------------------------------------------------------------
def shards(files: Sequence[Path], tasks: int) -> list[tuple[str, ...]]:
    """files[rank::tasks] for each rank with any (a stage with fewer files than tasks has fewer tasks)."""
    names = [str(f) for f in files]
    return [tuple(names[rank::tasks]) for rank in range(min(tasks, len(names)))] if names else []


def run_sharded(spec: StageSpec, section: Any, extra: dict[str, Any], inputs: Sequence[Path], out_dir: Path, *,
                cfg: ExecutorSection, part_size: int, overwrite: bool, progress: Progress | None = None) -> dict[str, Any]:
    """Run one stage as tasks (see the module docstring); its summed manifest is returned."""
    from longblocks.store import check_output_dir, directory_lock, input_files

    progress = progress or no_progress
    tasks_wanted = cfg.for_stage(spec.name)["tasks"]
    files = [f for path in inputs for f in input_files(path)]
    check_output_dir(out_dir)
    if complete(out_dir) and not overwrite and read_manifest(out_dir).get("tasks"):
        return read_manifest(out_dir)
    module = importlib.import_module(spec.module)
    with directory_lock(out_dir):
        summed: dict[str, Any] = {}
        if hasattr(module, "sharded"):  # a stage with a step over all of its input (dedup's decision)
            tasks, summed = module.sharded(spec, section, extra, files, out_dir, cfg=cfg, part_size=part_size,
                                           overwrite=overwrite,
                                           run=lambda batch: _run_tasks(spec, batch, out_dir, cfg, progress))
        else:
            if spec.reads is None:
                planned = [() for _ in range(tasks_wanted)]  # a source: each task draws its own share
            else:
                planned = shards(files, tasks_wanted)
                if not planned:
                    raise LongBlocksError(f"{spec.name}: no input files to split into tasks")
            tasks = [Task(spec.name, section, extra, shard, str(out_dir / TASK.format(rank)), rank, len(planned),
                          part_size, overwrite) for rank, shard in enumerate(planned)]
            _run_tasks(spec, tasks, out_dir, cfg, progress)
        return write_summed_manifest(spec.name, out_dir, [Path(t.out_dir) for t in tasks], files, **summed)


def _run_tasks(spec: StageSpec, tasks: Sequence[Task], out_dir: Path, cfg: ExecutorSection, progress: Progress) -> None:
    todo = [t for t in tasks if t.overwrite or not complete(Path(t.out_dir))]
    progress(spec.name, len(tasks) - len(todo), len(tasks), resumed=1, running=len(todo))
    if todo:
        runner = engine(cfg, spec.name, out_dir)
        try:
            runner.run(todo)
        finally:
            runner.close()
    progress(spec.name, len(todo), None, running=0)
    progress(spec.name, 0, None, done=1)


def write_summed_manifest(stage: str, out_dir: Path, task_dirs: Sequence[Path], files: Sequence[Path],
                          **extra: Any) -> dict[str, Any]:
    """The stage's manifest over its tasks: counts added up, each task's folder listed in order
    (what `store.input_files` reads), complete only when every task is."""
    from longblocks.store import _atomic_write_text, package_versions

    manifests = [read_manifest(d) for d in task_dirs]
    rejected: Counter[str] = Counter()
    for m in manifests:
        rejected.update(m["rejected"])
    stats = extra.pop("stats", None) or _summed_stats(manifests)
    summed = {
        "stage": stage, "status": "complete" if all(m["status"] == "complete" for m in manifests) else "incomplete",
        "tasks": [d.name for d in task_dirs], "parameters": manifests[0]["parameters"] if manifests else {},
        "versions": package_versions(),
        "inputs": {"paths": [str(f) for f in files], "consumed": sum(m["inputs"]["consumed"] for m in manifests)},
        "outputs": {"parts": [], "kept": sum(m["outputs"]["kept"] for m in manifests)},
        "rejected": dict(sorted(rejected.items())), "units": manifests[0].get("units") if manifests else None,
        **({"stats": stats} if stats is not None else {}), **extra,
    }
    path = out_dir / MANIFEST
    if not path.exists() or json.loads(path.read_text()) != summed:  # a rerun that changed nothing leaves it
        _atomic_write_text(path, json.dumps(summed, indent=2, ensure_ascii=False) + "\n")
    return summed


def _summed_stats(manifests: Sequence[dict[str, Any]]) -> Any:
    """Statistics over tasks: counters added (sample's per-language and per-quota counts), the first
    task's description otherwise (an LLM stage's model and sampling are every task's)."""
    stats = [m.get("stats") for m in manifests if m.get("stats") is not None]
    if not stats:
        return None
    first = dict(stats[0])
    for key, value in first.items():
        if isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
            total: Counter[str] = Counter()
            for s in stats:
                total.update(s.get(key) or {})
            first[key] = dict(sorted(total.items()))
    return first


def configured(cfg: ExecutorSection, stage: str) -> bool:
    """Whether a stage runs as tasks (otherwise exactly as one process always has)."""
    return cfg.kind != "local" or cfg.for_stage(stage)["tasks"] > 1

