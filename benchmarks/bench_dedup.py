"""MinHash dedup throughput and memory, against a plain datasketch loop (`MinHash.update` per
shingle, then `MinHashLSH.insert`) measured in the same run.

    python benchmarks/bench_dedup.py --docs 300 --words 10000           # speed on 10,000-word documents
    python benchmarks/bench_dedup.py --scale 2000,10000,40000           # peak RSS and time at LongBlocks' scale

`--scale`: prose-like documents of 3-6k characters (Zipf word frequencies, sentences), 2% of them
planted near-duplicates (Jaccard ~0.9) and 1% half-rewritten variants (~0.5), written as parquet;
each method runs in its own process, which reports its wall time, peak RSS (VmHWM) and the
pairs it removed, scored against the planted ones: `longblocks dedup` (the stage, 1 worker), the
plain datasketch loop (word 5-grams, the same 14 x 8 LSH, first of each candidate group removed)
and datatrove's MinHash pipeline when it is installed (`pip install datatrove`).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

# Only what every method needs is imported here: `--run datasketch` (one method's own process, whose
# peak RSS is measured) must not carry longblocks' modules, and `--run longblocks` not datatrove's.
from longblocks.config import DedupConfig
from longblocks.text import normalize_text


def corpus(n_docs: int, n_words: int, seed: int = 0) -> list[dict]:
    from longblocks.records import make_document

    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(30000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf-like word frequencies, as in real text
    cum = np.cumsum(weights / weights.sum())
    nprng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        idx = np.searchsorted(cum, nprng.random(n_words))
        words = [vocab[i] for i in idx]
        for k in range(0, n_words, 15):
            words[k] = words[k].capitalize() + ","
        docs.append(make_document(source="bench", language="en", text=" ".join(words)))
    return docs


def plain_loop(docs: list[dict], cfg: DedupConfig) -> tuple[float, Any, list]:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    kept = []
    for doc in docs:
        words = normalize_text(doc["text"]).split()
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
        for i in range(len(words) - cfg.ngram + 1):
            m.update(" ".join(words[i : i + cfg.ngram]).encode("utf-8"))
        lsh.query(m)
        lsh.insert(doc["id"], m)
        kept.append(m)
    return time.perf_counter() - start, lsh, kept


def ours_in_process(docs: list[dict], cfg: DedupConfig) -> tuple[float, Any, list]:
    from datasketch import LeanMinHash, MinHashLSH

    from longblocks.dedup import SCHEME, sketch

    start = time.perf_counter()
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    kept = []
    for doc in docs:
        sig = sketch(doc, cfg)
        m = LeanMinHash(seed=cfg.seed, hashvalues=sig["hashvalues"], scheme=SCHEME)
        lsh.query(m)
        lsh.insert(doc["id"], m)
        kept.append(m)
    return time.perf_counter() - start, lsh, kept


def index_bytes_per_doc(fn, docs: list[dict], cfg: DedupConfig) -> float:
    """Python heap held by the LSH index and its sketches after indexing, per document."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    _, lsh, kept = fn(docs, cfg)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del lsh, kept
    return held / len(docs)


def prose(n_docs: int, seed: int = 0) -> tuple[list[dict], set[frozenset[str]]]:
    """Prose-like documents of 3-6k characters and the pairs planted as near-duplicates (J >= 0.8)."""
    from longblocks.records import make_document

    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(50000)]
    cum = np.cumsum(1.0 / np.arange(1, len(vocab) + 1))
    cum /= cum[-1]

    def text(n_words: int) -> list[str]:
        words = [vocab[i] for i in np.searchsorted(cum, nprng.random(n_words))]
        for k in range(0, n_words, 14):
            words[k] = words[k].capitalize()
            if k:
                words[k - 1] += "."
        return words

    docs, planted = [], set()
    while len(docs) < n_docs:
        words = text(int(nprng.integers(500, 950)))
        doc = make_document(source="bench", language="en", text=" ".join(words) + ".")
        docs.append(doc)
        roll = nprng.random()
        if roll < 0.03 and len(docs) < n_docs:  # a near-duplicate (2%) or a half-rewritten variant (1%)
            edited = list(words)
            share = 0.01 if roll < 0.02 else 0.5
            for k in nprng.choice(len(edited), size=max(1, int(share * len(edited))), replace=False):
                edited[k] = vocab[int(nprng.integers(len(vocab)))]
            twin = make_document(source="bench", language="en", text=" ".join(edited) + ".")
            docs.append(twin)
            if share < 0.1:
                planted.add(frozenset((doc["id"], twin["id"])))
    return docs, planted


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_method(method: str, path: Path, work: Path) -> dict:
    """One method on the parquet at `path`, in this process: seconds, peak RSS, removed pairs."""
    import pyarrow.parquet as pq

    import resource

    cfg = DedupConfig()
    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    removed: list[tuple[str, str]] = []
    if method == "longblocks":
        from longblocks.config import DedupSection
        from longblocks.pipeline import run

        run("dedup", DedupSection(workers=1), [path], work / "out")
        removed = [(r["id"], r["survivor_id"]) for r in pq.read_table(work / "out" / "rejected").to_pylist()]
    elif method == "datasketch":
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
        # read as longblocks reads (a row group at a time, no pre-buffering of the whole file)
        for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=256, columns=["id", "text"],
                                                                          use_threads=False):
            for row in batch.to_pylist():
                words = normalize_text(row["text"]).split()
                m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
                m.update_batch([" ".join(words[i : i + cfg.ngram]).encode() for i in range(len(words) - cfg.ngram + 1)])
                hits = lsh.query(m)
                if hits:
                    removed.append((row["id"], hits[0]))
                else:
                    lsh.insert(row["id"], m)
    else:
        removed = run_datatrove(path, work)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu, "peak_rss_mb": peak_rss_mb(), "removed": removed}


def run_datatrove(path: Path, work: Path) -> list[tuple[str, str]]:
    """datatrove's four-stage MinHash pipeline (signatures, buckets, clusters, filter), local executor."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter

    cfg = MinhashConfig(num_buckets=14, hashes_per_bucket=8, n_grams=5)
    read = lambda: ParquetReader(str(path.parent), glob_pattern=path.name, id_key="id")  # noqa: E731
    stages = [
        [read(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
        [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)],
        [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "ids"), config=cfg)],
        [read(), MinhashDedupFilter(input_folder=str(work / "ids"), exclusion_writer=JsonlWriter(str(work / "removed"))),
         JsonlWriter(str(work / "kept"))],
    ]
    for i, pipeline in enumerate(stages):
        tasks = cfg.num_buckets if i == 1 else 1
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(work / f"logs{i}")).run()
    import gzip
    import json

    removed = []
    for file in (work / "removed").glob("*"):
        for line in gzip.open(file, "rt"):
            removed.append((json.loads(line)["id"], ""))
    return removed


def scale(sizes: list[int], methods: list[str] | None = None, datatrove_python: str | None = None,
          repeats: int = 1) -> None:
    import json
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from longblocks.records import DOCUMENT_SCHEMA

    if methods is None:
        methods = ["longblocks", "datasketch"]
        try:
            import datatrove  # noqa: F401

            methods.append("datatrove")
        except ImportError:
            if datatrove_python:
                methods.append("datatrove")
    print(f"device: CPU, {os.cpu_count()} cores, {platform.machine()}, python {platform.python_version()}; one "
          "process per method; peak RSS = VmHWM of that process")
    print(f"{repeats} repeat(s), the methods interleaved within each (a, b, a, b, ...); median [min-max]; CPU "
          "seconds = the method's own user + system time (the machine's other load does not count)")
    print("\n| documents | method | CPU s | x datasketch CPU | wall s | peak RSS (MB) | x datasketch RSS | removed | "
          "precision | recall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        docs, planted = prose(n)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "docs" / "docs.parquet"
            path.parent.mkdir()
            pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), path, row_group_size=1000)
            del docs
            runs: dict[str, list[dict]] = {m: [] for m in methods}
            for repeat in range(repeats):
                for method in methods:
                    work = Path(tmp) / f"{method}-{repeat}"
                    work.mkdir()
                    python = datatrove_python if method == "datatrove" and datatrove_python else sys.executable
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                                        os.environ.get("PYTHONPATH", "")])}
                    out = subprocess.run([python, __file__, "--run", method, "--input", str(path), "--work", str(work)],
                                         capture_output=True, text=True, env=env)
                    if out.returncode != 0:
                        raise SystemExit(f"{method} failed (exit {out.returncode}) under {python}:\n{out.stderr[-3000:]}")
                    runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))

            def spread(method: str, key: str) -> tuple[float, str]:
                values = sorted(r[key] for r in runs[method])
                median = values[len(values) // 2]
                return median, f"{median:.1f}" + (f" [{values[0]:.1f}-{values[-1]:.1f}]" if len(values) > 1 else "")

            results = {m: runs[m][0] for m in methods}
            base = spread("datasketch", "peak_rss_mb")[0] if "datasketch" in results else float("nan")
            base_cpu = spread("datasketch", "cpu_seconds")[0] if "datasketch" in results else float("nan")
            members = set().union(*planted) if planted else set()
            for method, r in results.items():
                removed_ids = {p[0] for p in r["removed"]}
                # precision: removed documents that belong to a planted near-duplicate pair (a removed
                # half-rewritten variant or an unrelated document is a false positive); recall: planted
                # pairs of which one member was removed
                precision = len(removed_ids & members) / len(removed_ids) if removed_ids else float("nan")
                recall = sum(1 for p in planted if p & removed_ids) / max(len(planted), 1)
                cpu, cpu_text = spread(method, "cpu_seconds")
                rss, rss_text = spread(method, "peak_rss_mb")
                print(f"| {n} | {method} | {cpu_text} | {cpu / base_cpu:.2f}x | {spread(method, 'seconds')[1]} | {rss_text} | "
                      f"{rss / base:.2f}x | {len(removed_ids)} | {precision:.3f} | {recall:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--words", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", help="comma-separated corpus sizes: peak memory and time per method")
    parser.add_argument("--repeats", type=int, default=1, help="--scale: runs of each method, interleaved")
    parser.add_argument("--methods", help="--scale: comma-separated subset of longblocks,datasketch,datatrove "
                        "(default: all that are installed)")
    parser.add_argument("--datatrove-python", help="--scale: the interpreter of an environment with datatrove (datatrove "
                        "0.10 needs xxhash<4, which this project's environment does not pin): python -m venv dt && "
                        "dt/bin/pip install datatrove 'xxhash<4' datasketch regex tokenizers spacy orjson (its MinHash steps import "
                        "these without declaring them)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        import json

        print(json.dumps(run_method(args.run, args.input, args.work)))
        return
    if args.scale:
        scale([int(n) for n in args.scale.split(",")], args.methods.split(",") if args.methods else None,
              args.datatrove_python, repeats=args.repeats)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longblocks.config import DedupSection
    from longblocks.pipeline import run
    from longblocks.records import DOCUMENT_SCHEMA

    cfg = DedupConfig()
    docs = corpus(args.docs, args.words)
    print(f"device: CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{args.docs} documents x {args.words} words, {cfg.bands} bands x {cfg.rows} rows, ngram {cfg.ngram}")

    t_plain, *_ = plain_loop(docs, cfg)
    t_ours, *_ = ours_in_process(docs, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), Path(tmp) / "in.parquet")
        start = time.perf_counter()
        run("dedup", DedupSection(workers=args.workers), [Path(tmp) / "in.parquet"], Path(tmp) / "out")
        t_stage = time.perf_counter() - start
    sub = docs[: min(100, len(docs))]
    mem_plain = index_bytes_per_doc(plain_loop, sub, cfg)
    mem_ours = index_bytes_per_doc(ours_in_process, sub, cfg)

    rows = [
        ("plain datasketch loop (update per shingle + insert)", t_plain, mem_plain),
        ("longblocks sketch + LeanMinHash insert, 1 process", t_ours, mem_ours),
        (f"longblocks dedup stage end to end, {args.workers} workers (parquet in/out, verification)", t_stage, None),
    ]
    print("\n| method | docs/s | x plain | index bytes/doc |\n|---|---|---|---|")
    for name, seconds, mem in rows:
        print(f"| {name} | {args.docs / seconds:.1f} | {t_plain / seconds:.2f}x | {f'{mem:,.0f}' if mem else '-'} |")


if __name__ == "__main__":
    main()
