"""MinHash near-duplicate removal: shingle, sketch with datasketch (parallel), LSH candidates,
exact Jaccard verification, union-find clusters, one deterministic survivor per cluster.
Must not hold all documents in memory: only ids, the signatures as one uint32 matrix, and the
shingle sets of LSH candidates while they are verified. The in-memory LSH is a sort per band over
that matrix (the same candidate pairs as datasketch's MinHashLSH, whose per-band tables of Python
sets cost ~6 KB a document); `--lsh-storage redis` keeps datasketch's index in Redis instead.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from datasketch import LeanMinHash, MinHash, MinHashLSH

from longblocks.config import DedupConfig, DedupSection
from longblocks.errors import LongBlocksError
from longblocks.records import DOCUMENT_SCHEMA, REJECTION_SCHEMA
from longblocks.sources import is_code
from longblocks.text import normalize_text
from longblocks.manifest import DedupStats, to_json
from longblocks.store import (
    Outcome, Rejection, RunOptions, Stage, StageWriter, batched, count_rows, input_files, parquet_writer_atomic,
    read_batches, read_records, run_stage, write_table_atomic,
)

SCHEME = "affine32"  # datasketch >= 2.0 default; sketches of other schemes are not comparable
SHINGLE_HASHING = (
    "64-bit polynomial over xxh3-64 hashes of the n consecutive tokens (exact-Jaccard sets), "
    "xor-folded to 32 bits as datasketch update_batch inputs"
)

DEDUP_REJECTION_SCHEMA = pa.schema(
    list(REJECTION_SCHEMA)
    + [pa.field("cluster_id", pa.string()), pa.field("survivor_id", pa.string()), pa.field("jaccard", pa.float64())]
)
SIGNATURE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("n_chars", pa.int64()),
        pa.field("n_shingles", pa.int64()),
        pa.field("hashvalues", pa.list_(pa.uint32())),
    ]
)
CLUSTERS_SCHEMA = pa.schema(
    [pa.field("id", pa.string()), pa.field("cluster_id", pa.string()), pa.field("cluster_size", pa.int64())]
)

_CODE_TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_POLY = np.uint64(0x100000001B3)  # FNV prime: odd, so the polynomial mixes every position


def tokens(text: str, *, code: bool) -> list[str]:
    """Words after normalization; for code, identifiers and punctuation with case kept."""
    return _CODE_TOKEN_RE.findall(text) if code else normalize_text(text).split()


def shingle_hashes(text: str, *, ngram: int, code: bool) -> np.ndarray:
    """64-bit hashes of the token n-grams (all tokens as one shingle when there are fewer than n)."""
    words = tokens(text, code=code)
    if not words:
        return np.empty(0, dtype=np.uint64)
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=len(words))
    word_hashes = np.fromiter((xxhash.xxh3_64_intdigest(w.encode("utf-8", "surrogatepass")) for w in vocab), dtype=np.uint64, count=len(vocab))[ids]
    n = min(ngram, len(words))
    with np.errstate(over="ignore"):
        hashes = word_hashes[: len(words) - n + 1].copy()
        for k in range(1, n):
            hashes = hashes * _POLY + word_hashes[k : len(words) - n + 1 + k]
    return np.unique(hashes)


def _fold32(hashes: np.ndarray) -> np.ndarray:
    return ((hashes >> np.uint64(32)) ^ (hashes & np.uint64(0xFFFFFFFF))).astype(np.uint32)


def _identity(value: Any) -> Any:
    return value


def sketch(doc: dict[str, Any], cfg: DedupConfig) -> dict[str, Any]:
    """A document's MinHash signature (affine32, seed and num_perm from `cfg`)."""
    hashes = shingle_hashes(doc["text"], ngram=cfg.ngram, code=is_code(doc))
    minhash = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=_identity, scheme=SCHEME)
    minhash.update_batch(_fold32(hashes).tolist())  # one vectorized permutation for all shingles
    return {
        "id": doc["id"], "source": doc["source"], "n_chars": len(doc["text"]),
        "n_shingles": int(hashes.size), "hashvalues": minhash.hashvalues.astype(np.uint32),
    }


def _sketch_batch(args: tuple[list[dict[str, Any]], DedupConfig]) -> list[dict[str, Any]]:
    docs, cfg = args
    return [sketch(d, cfg) for d in docs]


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 and b.size == 0:
        return 0.0  # two empty documents share no evidence of duplication
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def make_lsh(cfg: DedupConfig, redis_url: str | None) -> tuple[MinHashLSH, Callable[[], None]]:
    """datasketch's LSH index kept in Redis, for corpora whose band tables outgrow one machine."""
    try:
        import redis
    except ImportError:
        raise LongBlocksError("--lsh-storage redis needs the `redis` package: pip install redis") from None
    url = redis_url or "redis://127.0.0.1:6379/0"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise LongBlocksError(f"cannot reach Redis at {url}: {exc}") from None
    basename = f"longblocks-dedup-{uuid.uuid4().hex}".encode()
    conn = client.connection_pool.connection_kwargs
    storage_config = {"type": "redis", "basename": basename,
                      "redis": {"host": conn.get("host", "127.0.0.1"), "port": conn.get("port", 6379), "db": conn.get("db", 0)}}
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows), storage_config=storage_config)

    def drop() -> None:
        keys = list(client.scan_iter(match=basename + b"*"))
        if keys:
            client.delete(*keys)

    return lsh, drop


@dataclass
class Signatures:
    """The signatures of the documents that have at least one shingle (the others are never
    candidates): ids, lengths and one row of `num_perm` uint32 hash values each, about
    4 x num_perm bytes a document (450 bytes at 14 x 8) where an in-memory MinHashLSH holds ~6 KB."""

    ids: list[str]
    n_chars: np.ndarray  # int64
    values: np.ndarray  # (n, num_perm) uint32


def read_signatures(files: Sequence[Path], num_perm: int) -> Signatures:
    """The signature sub-stage's parts as one matrix, read a batch at a time into a preallocated array."""
    total = count_rows(files)
    values = np.empty((total, num_perm), dtype=np.uint32)
    n_chars = np.empty(total, dtype=np.int64)
    ids: list[str] = []
    row = 0
    for batch in read_batches(files, columns=["id", "n_chars", "n_shingles", "hashvalues"], batch_size=4096):
        flat = batch.column("hashvalues").flatten().to_numpy()
        if flat.size != batch.num_rows * num_perm:
            raise LongBlocksError(f"signatures of another size than num_perm={num_perm} in {files[0].parent}; "
                                  "run dedup with --overwrite")
        keep = batch.column("n_shingles").to_numpy() > 0
        k = int(keep.sum())
        values[row : row + k] = flat.reshape(batch.num_rows, num_perm)[keep]
        n_chars[row : row + k] = batch.column("n_chars").to_numpy()[keep]
        ids.extend(batch.column("id").filter(pa.array(keep)).to_pylist())
        row += k
    return Signatures(ids, n_chars[:row], values[:row])


def band_pairs(values: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Candidate pairs (i < j, as i * n + j, sorted, unique): the rows that agree on every hash value
    of at least one band, exactly the pairs datasketch's MinHashLSH with params (bands, rows)
    returns (it keys each band's table by those same values). One sort per band instead of an index
    of Python objects, so the memory is the signature matrix and the pairs."""
    n = len(values)
    codes = []
    for band in range(bands):
        keys = values[:, band * rows : (band + 1) * rows]
        order = np.lexsort(keys.T[::-1])
        ordered = keys[order]
        same = np.all(ordered[1:] == ordered[:-1], axis=1)  # row k + 1 of the sorted band equals row k
        if not same.any():
            continue
        starts = np.flatnonzero(np.concatenate(([True], ~same)))
        sizes = np.diff(np.append(starts, n))
        for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
            members = np.sort(order[start : start + size]).astype(np.int64)
            first, second = np.triu_indices(size, 1)
            codes.append(members[first] * n + members[second])
    return np.unique(np.concatenate(codes)) if codes else np.empty(0, dtype=np.int64)


def redis_pairs(values: np.ndarray, cfg: DedupConfig, redis_url: str | None) -> np.ndarray:
    """The same candidate pairs from datasketch's MinHashLSH in Redis (query, then insert, per row)."""
    lsh, drop = make_lsh(cfg, redis_url)
    n, codes = len(values), []
    try:
        for i, row in enumerate(values):
            minhash = LeanMinHash(seed=cfg.seed, hashvalues=row, scheme=SCHEME)
            codes.extend(int(other) * n + i for other in lsh.query(minhash))
            lsh.insert(str(i), minhash, check_duplication=False)
    finally:
        drop()
    return np.unique(np.asarray(codes, dtype=np.int64))


@dataclass
class DedupResult:
    survivors: dict[str, str]  # id of every document in a cluster of size > 1 -> survivor id
    jaccard_to_survivor: dict[str, float]
    cluster_sizes: dict[str, int]  # survivor id -> size
    candidate_pairs: int
    verified_pairs: int


def find_duplicates(
    signatures: Signatures,
    documents: Callable[[], Iterator[dict[str, Any]]],
    cfg: DedupConfig,
    *,
    storage: str = "memory",
    redis_url: str | None = None,
) -> DedupResult:
    """LSH candidates from the signatures, then exact Jaccard on the candidates' shingle sets. Rows
    with the same signature (exact copies, mostly) enter the LSH once and are checked against their
    first row alone, so a thousand copies are a thousand checks, not half a million pairs; a pair
    whose two sides are already in one cluster is not checked again (the clusters do not change)."""
    n = len(signatures.ids)
    values = signatures.values
    rows = np.ascontiguousarray(values).view(np.dtype((np.void, values.dtype.itemsize * values.shape[1]))).ravel() \
        if n else np.empty(0)
    _, first_of, inverse = np.unique(rows, return_index=True, return_inverse=True) if n else (None, np.empty(0, np.int64),
                                                                                               np.empty(0, np.int64))
    representative = first_of[inverse].astype(np.int64) if n else np.empty(0, np.int64)
    distinct = np.unique(representative)
    if storage == "memory":
        sub = band_pairs(values[distinct], cfg.bands, cfg.rows)
    elif storage == "redis":
        sub = redis_pairs(values[distinct], cfg, redis_url)
    else:
        raise LongBlocksError(f"unknown LSH storage {storage!r}; use memory or redis")
    a, b = np.divmod(sub, max(len(distinct), 1))
    copies = np.flatnonzero(representative != np.arange(n))
    pairs = np.unique(np.concatenate([distinct[a] * n + distinct[b], representative[copies] * n + copies]))
    first, second = np.divmod(pairs, n) if n else (pairs, pairs)
    index = {signatures.ids[i]: i for i in np.union1d(first, second).tolist()}
    shingles: dict[int, np.ndarray] = {}
    if index:
        for doc in documents():
            i = index.get(doc["id"])
            if i is not None and i not in shingles:
                shingles[i] = shingle_hashes(doc["text"], ngram=cfg.ngram, code=is_code(doc))
    union = UnionFind()
    verified = 0
    for a, b in zip(first.tolist(), second.tolist()):
        if union.find(signatures.ids[a]) == union.find(signatures.ids[b]):
            continue  # already one cluster: checking the pair would change nothing
        if jaccard(shingles[a], shingles[b]) >= cfg.threshold:
            union.union(signatures.ids[a], signatures.ids[b])
            verified += 1
    members: dict[str, list[int]] = defaultdict(list)
    for i in index.values():
        members[union.find(signatures.ids[i])].append(i)
    survivors: dict[str, str] = {}
    jaccards: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for group in members.values():
        if len(group) < 2:
            continue
        # Keep the longest document; ties go to the smallest id. Independent of order and workers.
        keep = min(group, key=lambda i: (-int(signatures.n_chars[i]), signatures.ids[i]))
        sizes[signatures.ids[keep]] = len(group)
        for i in group:
            survivors[signatures.ids[i]] = signatures.ids[keep]
            jaccards[signatures.ids[i]] = 1.0 if i == keep else jaccard(shingles[i], shingles[keep])
    return DedupResult(survivors, jaccards, sizes, len(pairs), verified)


class SignatureStage(Stage):
    """MinHash signatures of the input documents, a resumable sub-stage (`OUT/signatures`), hashed
    in `workers` processes."""

    schema = SIGNATURE_SCHEMA
    columns = [f.name for f in DOCUMENT_SCHEMA]

    def __init__(self, cfg: DedupConfig, workers: int) -> None:
        self.cfg, self.workers = cfg, workers
        self.pool = get_context("spawn").Pool(workers) if workers > 1 else None

    def parameters(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def process(self, items: Iterator[dict[str, Any]], writer: StageWriter) -> Iterator[Outcome]:
        for batch in batched(items, 16 * max(self.workers, 1) * 4):
            if self.pool is None:
                yield from (Outcome(d["id"], kept=[sketch(d, self.cfg)]) for d in batch)
                continue
            chunks = [(batch[i : i + 8], self.cfg) for i in range(0, len(batch), 8)]
            yield from (Outcome(s["id"], kept=[s]) for part in self.pool.map(_sketch_batch, chunks) for s in part)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


class DedupStage(Stage):
    """Each input document kept, or rejected as a near-duplicate of its cluster's survivor, across
    all inputs as one pool (the survivors do not depend on their order): 1. signatures, a resumable
    sub-stage (`OUT/signatures`, hashing is the expensive part); 2-3. LSH candidates and their exact
    Jaccard, union-find clusters (recomputed on restart: cheap next to hashing); 4. the outputs,
    near-duplicates in `rejected/` with cluster, survivor and measured Jaccard, and
    `clusters.parquet` listing every document's cluster."""

    schema = DOCUMENT_SCHEMA
    rejection_schema = DEDUP_REJECTION_SCHEMA
    columns = [f.name for f in DOCUMENT_SCHEMA]

    def __init__(self, section: DedupSection, decided: DedupResult | None = None) -> None:
        self.section, self.cfg = section, section.config()
        self.files: Sequence[Path] = ()
        self.result: DedupResult | None = decided
        self.decided = decided is not None  # one task of a dedup run as tasks: the decision was made for all
        self.out_dir = Path()
        self.options = RunOptions()

    def open(self, out_dir: Path, options: RunOptions) -> None:
        self.out_dir, self.options = out_dir, options

    def parameters(self) -> dict[str, Any]:
        return asdict(self.cfg)

    def prepare(self, files: Sequence[Path]) -> None:
        self.files = files
        if self.decided:
            return
        signatures = SignatureStage(self.cfg, self.section.workers)
        signatures.name = "minhash"
        run_stage(signatures, files, self.out_dir / "signatures", part_size=self.options.part_size,
                  overwrite=self.options.overwrite, progress=self.options.progress)
        self.result = find_duplicates(
            read_signatures(input_files(self.out_dir / "signatures"), self.cfg.num_perm),
            lambda: read_records(files, columns=[f.name for f in DOCUMENT_SCHEMA]), self.cfg,
            storage=self.section.lsh_storage, redis_url=self.section.redis_url)

    def process(self, items: Iterator[dict[str, Any]], writer: StageWriter) -> Iterator[Outcome]:
        assert self.result is not None
        for doc in items:
            keep = self.result.survivors.get(doc["id"], doc["id"])
            if keep == doc["id"]:
                yield Outcome(doc["id"], kept=[doc])
                continue
            score = self.result.jaccard_to_survivor[doc["id"]]
            yield Outcome(doc["id"], rejected=[Rejection(doc["id"], "near_duplicate", f"jaccard {score:.3f} with {keep}",
                                                         fields={"cluster_id": keep, "survivor_id": keep, "jaccard": score})])

    def stats(self, out_dir: Path) -> DedupStats | None:
        assert self.result is not None
        if self.decided:
            return None  # the stage's statistics are the decision's, written once beside the tasks
        return _write_clusters(list(self.files), out_dir, self.result, self.cfg)


def stage(section: DedupSection, *, decided: DedupResult | None = None) -> DedupStage:
    """`[dedup]` as a stage: the MinHash parameters (what the survivors depend on) and how the
    work runs (hashing processes, where the LSH index lives)."""
    return DedupStage(section, decided)


# -- dedup as tasks (longblocks.executors) ----------------------------------------------------------
DECISIONS = "decisions.parquet"
DECISIONS_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("survivor_id", pa.string()),
                              pa.field("jaccard", pa.float64()), pa.field("cluster_size", pa.int64())])


def sharded(spec: Any, section: DedupSection, extra: dict[str, Any], files: Sequence[Path], out_dir: Path, *,
            cfg: Any, part_size: int, overwrite: bool, run: Callable[[list[Any]], None]) -> tuple[list[Any], dict[str, Any]]:
    """Dedup in steps that scale: the signatures per task; the LSH candidates, their exact check and
    the keep/drop decision once (they need every document's signature: here, on the driver); the
    filtering per task, from the decision. The kept ids are those of the one-process dedup."""
    from longblocks.executors import TASK, Task, shards

    planned = shards(files, cfg.for_stage(spec.name)["tasks"])
    hashing = [Task(spec.name, section, {}, shard, str(out_dir / "signatures" / TASK.format(rank)), rank, len(planned),
                    part_size, overwrite, function="longblocks.dedup:signature_task") for rank, shard in enumerate(planned)]
    run(hashing)
    dedup_cfg = section.config()
    result = find_duplicates(read_signatures([f for t in hashing for f in input_files(Path(t.out_dir))], dedup_cfg.num_perm),
                             lambda: read_records(files, columns=[f.name for f in DOCUMENT_SCHEMA]), dedup_cfg,
                             storage=section.lsh_storage, redis_url=section.redis_url)
    decisions = [{"id": i, "survivor_id": keep, "jaccard": result.jaccard_to_survivor[i],
                  "cluster_size": result.cluster_sizes[keep]} for i, keep in sorted(result.survivors.items())]
    write_table_atomic(pa.Table.from_pylist(decisions, schema=DECISIONS_SCHEMA), out_dir / DECISIONS)
    stats = to_json(_write_clusters(list(files), out_dir, result, dedup_cfg))
    filtering = [Task(spec.name, section, {"decisions": str(out_dir / DECISIONS), "candidate_pairs": result.candidate_pairs,
                                           "verified_pairs": result.verified_pairs},
                      shard, str(out_dir / TASK.format(rank)), rank, len(planned), part_size, overwrite,
                      function="longblocks.dedup:filter_task") for rank, shard in enumerate(planned)]
    run(filtering)
    return filtering, {"stats": stats}


def signature_task(task: Any) -> dict[str, Any]:
    """A worker's share of dedup's hashing (a resumable stage of its own, like the one-process one)."""
    stage = SignatureStage(task.section.config(), task.section.workers)
    stage.name = "minhash"
    manifest = run_stage(stage, list(task.files), task.out_dir, part_size=task.part_size, overwrite=task.overwrite)
    return {"kept": manifest["outputs"]["kept"], "status": manifest["status"]}


def filter_task(task: Any) -> dict[str, Any]:
    """A worker's share of dedup's output: its documents kept or rejected by the decision made once."""
    from longblocks.config import build_stage

    table = pq.read_table(task.extra["decisions"]).to_pylist()
    result = DedupResult({r["id"]: r["survivor_id"] for r in table}, {r["id"]: r["jaccard"] for r in table},
                         {r["survivor_id"]: r["cluster_size"] for r in table}, task.extra["candidate_pairs"],
                         task.extra["verified_pairs"])
    stage = build_stage("dedup", task.section, decided=result)
    manifest = run_stage(stage, list(task.files), task.out_dir, part_size=task.part_size, overwrite=task.overwrite)
    return {"kept": manifest["outputs"]["kept"], "status": manifest["status"]}


def _write_clusters(files: list[Path], out_dir: Path, result: DedupResult, cfg: DedupConfig) -> DedupStats:
    """`clusters.parquet` and the manifest's dedup report (parameters, versions, counts per source)."""
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    with parquet_writer_atomic(out_dir / "clusters.parquet", CLUSTERS_SCHEMA) as clusters:  # a batch at a time, not a row per document in memory
        for batch in batched(read_records(files, columns=["id", "source"]), 65536):
            ids = [row["id"] for row in batch]
            keep = [result.survivors.get(i, i) for i in ids]
            clusters.write_table(pa.table({"id": ids, "cluster_id": keep,
                                           "cluster_size": [result.cluster_sizes.get(k, 1) for k in keep]}, schema=CLUSTERS_SCHEMA))
            for row, survivor in zip(batch, keep):
                by_source[row["source"]]["input"] += 1
                by_source[row["source"]]["kept" if survivor == row["id"] else "removed"] += 1
    return DedupStats(
        parameters={
            **asdict(cfg),
            "num_perm": cfg.num_perm,
            "shingle": "word n-grams after normalization; code: token n-grams (identifiers, punctuation, case kept)",
            "normalization": "NFKD, accents removed, lowercase, digits->0, punctuation removed, whitespace collapsed",
            "detection_probability_at_threshold": round(cfg.detection_probability_at_threshold, 4),
        },
        datasketch_version=metadata.version("datasketch"),
        hashing_scheme=SCHEME,
        shingle_hashing=SHINGLE_HASHING,
        keep_rule="longest document per cluster, ties to the smallest id",
        candidate_pairs=result.candidate_pairs,
        verified_pairs=result.verified_pairs,
        clusters=len(result.cluster_sizes),
        by_source={source: dict(counts) for source, counts in sorted(by_source.items())},
    )
