"""The stage store: a stage reads parquet shards and writes parquet parts, a `rejected/` side table
and a `manifest.json` that is also its commit log, so a killed stage restarts where it stopped.

Must not know what a stage does: stages hand it kept records and rejections per consumed input.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from longblocks.config import STAGES  # noqa: F401  (re-exported: the store names its stages)
from longblocks.errors import LongBlocksError
from longblocks.records import REJECTION_SCHEMA

MANIFEST = "manifest.json"
DATA_DIR = "data"
REJECTED_DIR = "rejected"
CONSUMED_DIR = "consumed"


class Progress(Protocol):
    """The one progress callback every stage takes: `phase` names a bar (a stage may have several),
    `advance` moves it, `total` (once, when known) sizes it, and `stats` are shown beside it."""

    def __call__(self, phase: str, advance: int, total: int | None, /, **stats: int) -> None: ...


def no_progress(phase: str, advance: int, total: int | None, /, **stats: int) -> None:
    """The callback used when a caller passes none."""
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
    root = path / DATA_DIR if (path / MANIFEST).exists() else path
    files = sorted(
        p
        for p in root.rglob("*.parquet")
        if not ({REJECTED_DIR, CONSUMED_DIR} & set(p.relative_to(root).parts[:-1]))
    )
    if (path / MANIFEST).exists():
        # Only committed parts count: a stage killed mid-write leaves orphans that are not inputs.
        committed = {f"{p['name']}.parquet" for p in read_manifest(path)["outputs"]["parts"]}
        files = [p for p in files if p.name in committed]
    if not files:
        raise LongBlocksError(f"no parquet shards found under {path}")
    return files


def count_rows(files: Sequence[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def read_records(
    files: Sequence[Path], *, columns: Sequence[str] | None = None, batch_size: int = 256
) -> Iterator[dict[str, Any]]:
    """Stream records from parquet files in order, one row group batch at a time (bounded memory)."""
    for path in files:
        parquet = pq.ParquetFile(path)
        missing = [c for c in (columns or ()) if c not in parquet.schema_arrow.names]
        if missing:
            raise LongBlocksError(
                f"{path}: missing column(s) {missing}; it has {parquet.schema_arrow.names}"
            )
        for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
            yield from batch.to_pylist()


class ParquetRows:
    """Random access to the rows of parquet files (e.g. a stage's committed parts) without loading
    them: `len()` from the footers, `rows[i]` reads the row group holding row i (the last few row
    groups are kept). For trainers that draw rows in a shuffled order from large shards."""

    def __init__(self, files: Sequence[Path], columns: Sequence[str] | None = None, cache_groups: int = 4) -> None:
        self.files = [pq.ParquetFile(f) for f in files]
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


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / MANIFEST).read_text())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd", write_page_index=True)
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
        part_size: int = 1000,
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
            for part in self.manifest["outputs"]["parts"]:
                ids = pq.read_table(self.out_dir / CONSUMED_DIR / f"{part['name']}.parquet")["id"]
                self._consumed.update(ids.to_pylist())
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
    @property
    def complete(self) -> bool:
        return self.manifest["status"] == "complete"

    def is_consumed(self, input_id: str) -> bool:
        return input_id in self._consumed

    @property
    def kept_count(self) -> int:
        return self.manifest["outputs"]["kept"] + sum(len(o.kept) for o in self._pending)

    def kept_counts_by(self, column: str, key: Callable[[dict[str, Any]], str] | None = None,
                       columns: Sequence[str] = ()) -> Counter[str]:
        """Counts of committed and pending kept records by the value of one column (or by
        `key(record)` over `column` and `columns`)."""
        key = key or (lambda record: record[column])
        counts: Counter[str] = Counter()
        for part in self.manifest["outputs"]["parts"]:
            table = pq.read_table(self.out_dir / DATA_DIR / f"{part['name']}.parquet", columns=[column, *columns])
            counts.update(key(r) for r in table.to_pylist())
        for outcome in self._pending:
            counts.update(key(r) for r in outcome.kept)
        return counts

    # -- writing ---------------------------------------------------------------------------------
    def add(self, outcome: Outcome) -> None:
        if outcome.input_id in self._consumed:
            return
        self._consumed.add(outcome.input_id)
        self._pending.append(outcome)
        if len(self._pending) >= self.part_size:
            self._commit()

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Commit what is pending and mark the stage complete; `extra` goes into the manifest."""
        if self._pending:
            self._commit()
        self.manifest.update(extra)
        self.manifest["status"] = "complete"
        self._write_manifest()
        return self.manifest

    def _commit(self) -> None:
        name = f"part-{len(self.manifest['outputs']['parts']):05d}"
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
        self.manifest["outputs"]["parts"].append(
            {"name": name, "consumed": len(self._pending), "kept": len(kept), "rejected": dict(sorted(reasons.items()))}
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


def run_stage(
    records: Iterable[dict[str, Any]],
    writer: StageWriter,
    process_batch: Callable[[list[dict[str, Any]]], list[Outcome]],
    *,
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Feed unconsumed records to `process_batch` in batches and commit their outcomes in order."""
    batch: list[dict[str, Any]] = []
    seen: set[str] = set()
    repeated = 0

    def flush() -> None:
        for outcome in process_batch(batch):
            writer.add(outcome)
        if on_progress:
            on_progress(len(batch))
        batch.clear()

    for record in records:
        repeat = record["id"] in seen
        repeated += repeat  # the same id twice in the input: an exact duplicate, counted in the manifest
        seen.add(record["id"])
        if repeat or writer.is_consumed(record["id"]):
            if on_progress:
                on_progress(1)
            continue
        batch.append(record)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return writer.finish(repeated_input_ids=repeated)
