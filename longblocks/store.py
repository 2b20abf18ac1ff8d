"""The stage store and the one stage runner: a stage reads parquet shards and writes parquet parts,
a `rejected/` side table and a `manifest.json` that is also its commit log, so a killed stage
restarts where it stopped. `Stage` is the contract every stage keeps (its name, record schema,
parameters, and how its input becomes kept records and rejections); `run_stage` owns everything
around it: input files, the writer, progress, resume, duplicate inputs, the manifest.

Must not know what a stage does: stages hand it kept records and rejections per consumed input.
"""

from __future__ import annotations

import bisect
import fcntl
import itertools
import json
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from longblocks.config import PART_SIZE
from longblocks.errors import LongBlocksError
from longblocks.manifest import MANIFEST, StageStats, read_manifest, to_json
from longblocks.progress import Progress, no_progress
from longblocks.records import REJECTION_SCHEMA, content_id
DATA_DIR = "data"
REJECTED_DIR = "rejected"
CONSUMED_DIR = "consumed"


CONSUMED_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False)])
_VERSIONED_PACKAGES = ("longblocks", "datasets", "pyarrow", "datasketch", "transformers", "tokenizers", "openai")


@dataclass(frozen=True)
class Rejection:
    id: str
    reason: str
    detail: str = ""
    fields: dict[str, Any] = field(default_factory=dict)  # extra columns of a stage's rejection schema


@dataclass
class Outcome:
    """What a stage made of one input record: kept output records and/or rejections."""

    input_id: str
    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # a failure that may pass (an endpoint's outage): the input is not consumed, so the next run tries
    # it again; the stage ends incomplete, naming the first such failure
    retry: str = ""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def input_files(path: str | Path) -> list[Path]:
    """Parquet files of an input: a stage directory (its `data/`), a folder of shards, or one file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LongBlocksError(f"input {path} does not exist")
    if (path / MANIFEST).exists() and (tasks := read_manifest(path).get("tasks")):
        # a stage run as tasks: each task's committed parts, in task order
        return [f for task in tasks for f in input_files(path / task)]
    root = path / DATA_DIR if (path / MANIFEST).exists() else path
    files = sorted(
        p
        for p in root.rglob("*.parquet")
        if not ({REJECTED_DIR, CONSUMED_DIR} & set(p.relative_to(root).parts[:-1]))
    )
    if (path / MANIFEST).exists():
        # Only committed parts count: a stage killed mid-write leaves orphans that are not inputs;
        # and every committed part must be there as committed (never a silent loss of rows).
        manifest = read_manifest(path)
        check_parts(path, manifest, subdirs=(DATA_DIR,))
        committed = {f"{p['name']}.parquet" for p in manifest["outputs"]["parts"]}
        files = [p for p in files if p.name in committed]
    if not files:
        raise LongBlocksError(f"no parquet shards found under {path}")
    return files


CHECKSUM = "xxh3_128"


def file_record(path: Path) -> dict[str, Any]:
    """What the manifest keeps of a committed file: rows, bytes and checksum."""
    return {"rows": pq.ParquetFile(path).metadata.num_rows, "bytes": path.stat().st_size, CHECKSUM: checksum(path)}


def checksum(path: Path) -> str:
    import xxhash

    digest = xxhash.xxh3_128()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def part_problems(stage_dir: Path, manifest: dict[str, Any], *, subdirs: Sequence[str] = (DATA_DIR, REJECTED_DIR, CONSUMED_DIR),
                  checksums: bool = False) -> dict[str, str]:
    """Committed parts that are not there as committed, by part name: a file missing, of another
    size or (with `checksums`) of other contents. Parts committed before files were recorded pass."""
    problems: dict[str, str] = {}
    for task in manifest.get("tasks") or ():  # a stage run as tasks: each task's parts
        problems.update({f"{task}/{name}": detail for name, detail in
                         part_problems(stage_dir / task, read_manifest(stage_dir / task), subdirs=subdirs,
                                       checksums=checksums).items()})
    for part in manifest["outputs"]["parts"]:
        for sub in subdirs:
            record = part.get("files", {}).get(sub)
            if record is None:
                continue
            path = stage_dir / sub / f"{part['name']}.parquet"
            if not path.exists():
                problem = "is missing"
            elif path.stat().st_size != record["bytes"]:
                problem = f"has {path.stat().st_size} bytes where {record['bytes']} were committed"
            elif checksums and checksum(path) != record[CHECKSUM]:
                problem = "does not match its committed checksum"
            else:
                continue
            problems.setdefault(part["name"], f"{path} {problem} ({record['rows']} rows)")
    return problems


def check_parts(stage_dir: Path, manifest: dict[str, Any], **options: Any) -> None:
    """`part_problems` as one line naming the first damaged part and how to redo just that part."""
    problems = part_problems(stage_dir, manifest, **options)
    if problems:
        name, detail = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more part(s))" if len(problems) > 1 else ""
        raise LongBlocksError(f"{detail}: part {name} of {stage_dir} was lost after it was committed{more}; "
                              f"`longblocks repair {stage_dir}` drops the damaged part(s) from its manifest, then "
                              "running the stage again redoes only their inputs")


def set_aside_damaged_caches(stage_dir: Path) -> list[str]:
    """Request caches of a stage (`STAGE[.NAME].requests.sqlite` beside it) that sqlite cannot read,
    renamed to `*.damaged`: the next run starts an empty one."""
    import sqlite3

    moved = []
    for path in sorted(stage_dir.parent.glob(f"{stage_dir.name}.*requests.sqlite")):
        try:
            with sqlite3.connect(path) as db:
                db.execute("SELECT count(*) FROM completions").fetchone()
            continue
        except sqlite3.DatabaseError as exc:
            problem = str(exc)
        damaged = path.with_name(path.name + ".damaged")
        os.replace(path, damaged)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        moved.append(f"{path} ({problem}) set aside as {damaged}: a new cache fills as requests are answered again")
    return moved


def repair(stage_dir: Path) -> list[str]:
    """Drop the parts that are not there as committed (checksums read) from a stage's manifest, and
    their remaining files, so the stage's next run redoes only their inputs, and set aside request
    caches sqlite cannot read; returns what it did, a line each."""
    manifest = read_manifest(stage_dir)
    if manifest.get("tasks"):  # a stage run as tasks: each task repaired, the summed manifest written again later
        done = [line for task in manifest["tasks"] for line in repair(stage_dir / task)]
        if done:
            (stage_dir / MANIFEST).unlink()
        return done
    with directory_lock(stage_dir):
        manifest = read_manifest(stage_dir)
        problems = part_problems(stage_dir, manifest, checksums=True)
        caches = set_aside_damaged_caches(stage_dir)
        if not problems:
            return caches
        kept_parts = []
        rejected: Counter[str] = Counter(manifest["rejected"])
        for part in manifest["outputs"]["parts"]:
            if part["name"] not in problems:
                kept_parts.append(part)
                continue
            manifest["outputs"]["kept"] -= part["kept"]
            manifest["inputs"]["consumed"] -= part["consumed"]
            rejected.subtract(part["rejected"])
            for sub in (DATA_DIR, REJECTED_DIR, CONSUMED_DIR):
                (stage_dir / sub / f"{part['name']}.parquet").unlink(missing_ok=True)
        manifest["outputs"]["parts"] = kept_parts
        manifest["rejected"] = {k: n for k, n in sorted(rejected.items()) if n > 0}
        manifest["status"] = "incomplete"
        _atomic_write_text(stage_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        return [*problems.values(), *caches]


def damaged_file_guard(path: Path, read: Callable[[], Any]) -> Any:
    """`read()`, with a damaged or unreadable parquet file (truncated, 0 bytes, not parquet) as one
    line naming it and what to do, instead of Arrow's traceback."""
    try:
        return read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        stage_dir = next((p for p in path.parents if (p / MANIFEST).exists()), None)
        fix = (f"rerun the stage that wrote {stage_dir} with --overwrite (or delete it)" if stage_dir is not None
               else "replace or remove the file")
        raise LongBlocksError(f"{path} cannot be read ({first}): {fix}") from None


def count_rows(files: Sequence[Path]) -> int:
    return sum(damaged_file_guard(f, lambda f=f: pq.ParquetFile(f).metadata.num_rows) for f in files)


def read_batches(
    files: Sequence[Path], *, columns: Sequence[str] | None = None, batch_size: int = 256
) -> Iterator[pa.RecordBatch]:
    """Arrow batches of parquet files in order, a row group at a time (bounded memory): without
    pyarrow's pre-buffering (made for object stores), which fetches the column chunks of every row
    group an iteration will touch up front, a whole 200 MB shard of documents before its first batch.
    A damaged file or a missing column is a one-line error naming the file."""
    for path in files:
        parquet = damaged_file_guard(path, lambda path=path: pq.ParquetFile(path, pre_buffer=False))
        missing = [c for c in (columns or ()) if c not in parquet.schema_arrow.names]
        if missing:
            raise LongBlocksError(
                f"{path}: missing column(s) {missing}; it has {parquet.schema_arrow.names}"
            )
        iterator = parquet.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None,
                                        use_threads=False)
        while (batch := damaged_file_guard(path, lambda iterator=iterator: next(iterator, None))) is not None:
            yield batch


def read_records(
    files: Sequence[Path], *, columns: Sequence[str] | None = None, batch_size: int = 256
) -> Iterator[dict[str, Any]]:
    """Stream records from parquet files in order, one row group batch at a time (bounded memory)."""
    for batch in read_batches(files, columns=columns, batch_size=batch_size):
        yield from batch.to_pylist()


class ParquetRows:
    """Random access to the rows of parquet files (e.g. a stage's committed parts) without loading
    them: `len()` from the footers, `rows[i]` reads the row group holding row i (the last few row
    groups are kept). For trainers that draw rows in a shuffled order from large shards."""

    def __init__(self, files: Sequence[Path], columns: Sequence[str] | None = None, cache_groups: int = 4) -> None:
        self.files = [damaged_file_guard(Path(f), lambda f=f: pq.ParquetFile(f)) for f in files]
        self.columns = list(columns) if columns else None
        self.cache_groups = cache_groups
        self._index: list[tuple[int, int, int]] = []  # (first row, file, row group)
        first = 0
        for f, parquet in enumerate(self.files):
            for g in range(parquet.metadata.num_row_groups):
                self._index.append((first, f, g))
                first += parquet.metadata.row_group(g).num_rows
        self._len = first
        self._starts = [start for start, _, _ in self._index]
        self._cache: dict[int, list[dict[str, Any]]] = {}

    @property
    def column_names(self) -> list[str]:
        return self.columns or (self.files[0].schema_arrow.names if self.files else [])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self._len:
            raise IndexError(i)
        slot = bisect.bisect_right(self._starts, i) - 1
        if slot not in self._cache:
            if len(self._cache) >= self.cache_groups:
                self._cache.pop(next(iter(self._cache)))
            _, f, g = self._index[slot]
            self._cache[slot] = self.files[f].read_row_group(g, columns=self.columns).to_pylist()
        return self._cache[slot][i - self._starts[slot]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._len):
            yield self[i]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    with parquet_writer_atomic(path, table.schema) as writer:
        writer.write_table(table)


@contextmanager
def parquet_writer_atomic(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A parquet writer whose file appears at `path` only once it is complete (written beside it,
    then renamed): for tables written a batch at a time."""
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd", write_page_index=True) as writer:
        yield writer
    os.replace(tmp, path)


class StageWriter:
    """Writes one stage's outputs in parts of `part_size` consumed inputs.

    A part is committed when the manifest lists it; files of uncommitted parts are deleted on
    restart, and the ids consumed by committed parts are skipped. Part boundaries depend only on
    the input order, so a restarted run writes the same files as an uninterrupted one.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        stage: str,
        schema: pa.Schema,
        params: dict[str, Any],
        inputs: Sequence[str] = (),
        part_size: int = PART_SIZE,
        overwrite: bool = False,
        rejection_schema: pa.Schema = REJECTION_SCHEMA,
    ) -> None:
        if part_size < 1:
            raise LongBlocksError("part size must be at least 1")
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.rejection_schema = rejection_schema
        self.part_size = part_size
        self._pending: list[Outcome] = []
        self._deferred: list[Outcome] = []
        self.retries: list[str] = []  # failures that may pass, left for the next run
        self._loaded: str | None = None
        self._consumed: set[str] = set()
        manifest_path = self.out_dir / MANIFEST
        if overwrite and manifest_path.exists():
            self._clear()
        if manifest_path.exists():
            self.manifest = read_manifest(self.out_dir)
            if self.manifest["stage"] != stage:
                raise LongBlocksError(
                    f"{self.out_dir} holds stage {self.manifest['stage']!r}, not {stage!r}; "
                    "choose another output directory"
                )
            if self.manifest["parameters"] != params:
                changed = sorted(
                    k for k in set(params) | set(self.manifest["parameters"])
                    if params.get(k) != self.manifest["parameters"].get(k)
                )
                raise LongBlocksError(
                    f"{self.out_dir} was written with different parameters ({', '.join(changed)}); "
                    "use --overwrite to start again or another output directory"
                )
            self._remove_orphans()
            check_parts(self.out_dir, self.manifest)
            for part in self.manifest["outputs"]["parts"]:
                path = self.out_dir / CONSUMED_DIR / f"{part['name']}.parquet"
                self._consumed.update(damaged_file_guard(path, lambda: pq.read_table(path)["id"].to_pylist()))
            self._loaded = json.dumps(self.manifest, sort_keys=True)  # a no-op rerun leaves it byte for byte
            self.manifest["status"] = "running"
        else:
            self.manifest = {
                "stage": stage,
                "status": "running",
                "parameters": params,
                "versions": package_versions(),
                "inputs": {"paths": list(inputs), "consumed": 0},
                "outputs": {"parts": [], "kept": 0},
                "rejected": {},
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        for sub in (DATA_DIR, REJECTED_DIR, CONSUMED_DIR):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    # -- reading back ----------------------------------------------------------------------------
    def is_consumed(self, input_id: str) -> bool:
        return input_id in self._consumed

    @property
    def rejected_count(self) -> int:
        return sum(self.manifest["rejected"].values()) + sum(len(o.rejected) for o in self._pending)

    def kept_counts_by(self, column: str, key: Callable[[dict[str, Any]], str] | None = None,
                       columns: Sequence[str] = ()) -> Counter[str]:
        """Counts of committed and pending kept records by the value of one column (or by
        `key(record)` over `column` and `columns`)."""
        key = key or (lambda record: record[column])
        counts: Counter[str] = Counter()
        for part in self.manifest["outputs"]["parts"]:
            path = self.out_dir / DATA_DIR / f"{part['name']}.parquet"
            table = damaged_file_guard(path, lambda path=path: pq.read_table(path, columns=[column, *columns]))
            counts.update(key(r) for r in table.to_pylist())
        for outcome in self._pending:
            counts.update(key(r) for r in outcome.kept)
        return counts

    # -- writing ---------------------------------------------------------------------------------
    def add(self, outcome: Outcome) -> None:
        if outcome.retry:
            self.retries.append(outcome.retry)
            return
        if outcome.input_id in self._consumed:
            return
        self._consumed.add(outcome.input_id)
        self._pending.append(outcome)
        if len(self._pending) >= self.part_size:
            self._commit()

    def defer(self, outcome: Outcome) -> None:
        """An outcome to add when the stage finishes (after every input's own outcome, so the parts
        do not depend on when it was found)."""
        self._deferred.append(outcome)

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Commit what is pending and mark the stage complete; `extra` goes into the manifest."""
        for outcome in self._deferred:
            self.add(outcome)
        self._deferred = []
        if self._pending:
            self._commit()
        self.manifest.update(extra)
        self.manifest["status"] = "incomplete" if self.retries else "complete"
        self.manifest["retry"] = {"inputs": len(self.retries), "first": self.retries[0]} if self.retries else None
        if self._loaded is not None and json.dumps(self.manifest, sort_keys=True) == self._loaded:
            return self.manifest  # nothing happened: the manifest (its updated_at too) stays as it was
        self._write_manifest()
        return self.manifest

    def _commit(self) -> None:
        parts = self.manifest["outputs"]["parts"]
        name = f"part-{max((int(p['name'].split('-')[1]) for p in parts), default=-1) + 1:05d}"
        kept = [r for o in self._pending for r in o.kept]
        rejected = [
            {"id": r.id, "reason": r.reason, "detail": r.detail, **r.fields} for o in self._pending for r in o.rejected
        ]
        write_table_atomic(pa.Table.from_pylist(kept, schema=self.schema), self.out_dir / DATA_DIR / f"{name}.parquet")
        write_table_atomic(
            pa.Table.from_pylist(rejected, schema=self.rejection_schema), self.out_dir / REJECTED_DIR / f"{name}.parquet"
        )
        write_table_atomic(
            pa.Table.from_pylist([{"id": o.input_id} for o in self._pending], schema=CONSUMED_SCHEMA),
            self.out_dir / CONSUMED_DIR / f"{name}.parquet",
        )
        reasons = Counter(r["reason"] for r in rejected)
        files = {sub: file_record(self.out_dir / sub / f"{name}.parquet") for sub in (DATA_DIR, REJECTED_DIR, CONSUMED_DIR)}
        self.manifest["outputs"]["parts"].append(
            {"name": name, "consumed": len(self._pending), "kept": len(kept), "rejected": dict(sorted(reasons.items())),
             "files": files}
        )
        self.manifest["outputs"]["kept"] += len(kept)
        self.manifest["inputs"]["consumed"] += len(self._pending)
        total = Counter(self.manifest["rejected"]) + reasons
        self.manifest["rejected"] = dict(sorted(total.items()))
        self._pending = []
        self._write_manifest()  # the commit point

    def _write_manifest(self) -> None:
        self.manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _atomic_write_text(self.out_dir / MANIFEST, json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")

    def _remove_orphans(self) -> None:
        committed = {f"{p['name']}.parquet" for p in self.manifest["outputs"]["parts"]}
        for sub in (DATA_DIR, REJECTED_DIR, CONSUMED_DIR):
            for path in (self.out_dir / sub).glob("*"):
                if path.name not in committed:
                    path.unlink()

    def _clear(self) -> None:
        for sub in (DATA_DIR, REJECTED_DIR, CONSUMED_DIR):
            for path in (self.out_dir / sub).glob("*"):
                path.unlink()
        (self.out_dir / MANIFEST).unlink()


@dataclass(frozen=True)
class RunOptions:
    """How a stage runs, not what it makes: the commit granularity, whether to start over, progress."""

    part_size: int = PART_SIZE
    overwrite: bool = False
    progress: Progress | None = None


class Stage:
    """The contract of a stage (as datatrove's pipeline step is of its steps): a `name` (its
    directory and manifest; given by `config.STAGES`), the `schema` of the records it keeps, the
    `parameters` its output depends on (a rerun with others is refused), and `process`, which turns
    the unconsumed input records, in order, into one `Outcome` per input, in the same order. Hooks,
    all optional: `open(out_dir, options)` first, for what the run needs beside its directory (a
    backend and its request cache, dedup's signatures); `prepare(files)` once the input files are
    known (a schema that depends on them); `items` for a stage whose input is not parquet records
    (sample streams a source); `stats()` for the typed statistics in the manifest; `status()` for
    live progress fields; `close()`, always called once `open` was."""

    name = ""
    schema: pa.Schema
    rejection_schema: pa.Schema = REJECTION_SCHEMA
    columns: Sequence[str] | None = None  # input columns read (None: all)
    group_by: str | None = None  # hand `process` lists of consecutive records sharing this column
    units = ("documents", "documents", "documents")  # what it consumes, keeps and rejects (summaries)

    def open(self, out_dir: Path, options: RunOptions) -> None:
        pass

    def parameters(self) -> dict[str, Any]:
        return {}

    def prepare(self, files: Sequence[Path]) -> None:
        pass

    def total(self, files: Sequence[Path]) -> int | None:
        return count_rows(files)

    def items(self, files: Sequence[Path], writer: StageWriter) -> Iterator[Any]:
        """The unconsumed inputs: records (or groups by `group_by`) in file order. An id seen
        twice is recorded as a `duplicate_input` rejection, never silently dropped."""
        return _unconsumed(read_records(files, columns=self.columns), writer, self.group_by)

    def process(self, items: Iterator[Any], writer: StageWriter) -> Iterator[Outcome]:
        raise NotImplementedError

    def advance(self, outcome: Outcome) -> int:
        """How far an outcome moves the progress bar (sample counts kept documents against its quotas)."""
        return 1

    def done(self, manifest: dict[str, Any]) -> int:
        """Progress already made by committed parts (a resumed run starts its bar there)."""
        return manifest["inputs"]["consumed"]

    def stats(self, out_dir: Path) -> StageStats:
        return None

    def check(self, manifest: dict[str, Any]) -> None:
        """After the stage is committed: raise for an outcome that is a failure of the whole stage
        (every request failed), so the run does not go on as if it had worked."""

    def status(self) -> dict[str, Any]:
        """Live progress fields (read from another thread every second while the stage runs)."""
        return {}

    def close(self) -> None:
        pass


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of `size` consecutive items (the last may be shorter); itertools.batched is 3.12+."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _unconsumed(records: Iterable[dict[str, Any]], writer: StageWriter, group_by: str | None) -> Iterator[Any]:
    seen: Counter[str] = Counter()
    group: list[dict[str, Any]] = []
    for record in records:
        seen[record["id"]] += 1
        if seen[record["id"]] > 1:  # the same id again: an exact duplicate of an earlier input
            dup = content_id("duplicate-input", record["id"], str(seen[record["id"]]))
            writer.defer(Outcome(dup, rejected=[Rejection(dup, "duplicate_input",
                                                          f"id {record['id']} again (occurrence {seen[record['id']]})")]))
            continue
        if group_by is None:
            if not writer.is_consumed(record["id"]):
                yield record
            continue
        if group and record[group_by] != group[0][group_by]:
            if not all(writer.is_consumed(r["id"]) for r in group):
                yield group
            group = []
        group.append(record)
    if group and not all(writer.is_consumed(r["id"]) for r in group):
        yield group


LOCK = ".lock"


@contextmanager
def ticking(tick: Callable[[], None], every: float = 1.0) -> Iterator[None]:
    """Call `tick` every `every` seconds from a daemon thread while the block runs (live counters of
    a stage whose outcomes come a batch at a time)."""
    import threading

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                tick()
            except Exception:  # noqa: BLE001 - progress must never end a stage
                pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def check_output_dir(out_dir: Path) -> None:
    """OUT can be a folder: it is one, or its nearest existing parent is (not a file)."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise LongBlocksError(f"cannot write the stage directory {out_dir}: {folder} is a file, not a folder")
            return


@contextmanager
def directory_lock(out_dir: Path, lock: Path | None = None) -> Iterator[None]:
    """One run per stage directory: an advisory lock (`flock`) on `OUT/.lock`, which holds the
    holder's pid. A second run exits with one line naming that pid; the kernel drops the lock of a
    process that died, so a killed run's directory is simply taken over by the next run. `lock` puts the lock file elsewhere (a folder that is
    uploaded as it is)."""
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # what this run makes, innermost first
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock or out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        created = []
        raise LongBlocksError(f"{out_dir} is being written by another run (pid {holder}); wait for it to end or stop "
                              "it, then run again") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if created and {p.name for p in out_dir.iterdir()} <= {LOCK}:  # a run that made nothing leaves nothing
            (out_dir / LOCK).unlink(missing_ok=True)
            for folder in created:
                if any(folder.iterdir()):
                    break
                folder.rmdir()


def run_stage(stage: Stage, inputs: Sequence[str | Path], out_dir: str | Path, *, part_size: int = PART_SIZE,
              overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run `stage` on the parquet shards of `inputs` (stage directories, folders or files; none
    for a stage that reads a source) into `out_dir`, resuming what a killed run committed; the
    manifest (with the stage's typed `stats`) is returned."""
    if not stage.name:
        raise LongBlocksError(f"{type(stage).__name__} has no name: build stages with longblocks.pipeline.build")
    files = [f for path in inputs for f in input_files(path)]
    options = RunOptions(part_size=part_size, overwrite=overwrite, progress=progress)
    progress = progress or no_progress
    fresh = not Path(out_dir).exists()
    try:
        stage.open(Path(out_dir), options)
        stage.prepare(files)
        params = {**stage.parameters(), **({"inputs": [str(Path(f).resolve()) for f in files]} if files else {})}
        total = stage.total(files)  # reads every input's footer: a damaged file stops the run before OUT exists
        check_output_dir(Path(out_dir))
        with directory_lock(Path(out_dir)):
            writer = StageWriter(out_dir, stage=stage.name, schema=stage.schema, params=params,
                                 inputs=[str(f) for f in files], part_size=part_size, overwrite=overwrite,
                                 rejection_schema=stage.rejection_schema)
            kept, rejected = writer.manifest["outputs"]["kept"], writer.rejected_count
            progress(stage.name, stage.done(writer.manifest), total, resumed=1, kept=kept, rejected=rejected)
            with ticking(lambda: progress(stage.name, 0, None, **stage.status())):  # moves while a batch runs
                for outcome in stage.process(stage.items(files, writer), writer):
                    writer.add(outcome)
                    kept, rejected = kept + len(outcome.kept), rejected + len(outcome.rejected)
                    progress(stage.name, stage.advance(outcome), None, kept=kept, rejected=rejected, **stage.status())
            stats = to_json(stage.stats(Path(out_dir)))
            manifest = writer.finish(units=list(stage.units), **({"stats": stats} if stats is not None else {}))
            if writer.retries:
                raise LongBlocksError(
                    f"{stage.name}: {len(writer.retries)} input(s) met a failure that may pass (first: "
                    f"{writer.retries[0][:300]}); everything else is committed in {out_dir}: run the same command again "
                    "when the endpoint is back, and only those are tried again")
            stage.check(manifest)
    except BaseException:
        if fresh and Path(out_dir).exists() and not any(Path(out_dir).rglob(MANIFEST)):
            shutil.rmtree(out_dir, ignore_errors=True)  # a stage that failed before committing anything leaves nothing
        raise
    finally:
        stage.close()
    progress(stage.name, 0, None, done=1)
    return manifest
