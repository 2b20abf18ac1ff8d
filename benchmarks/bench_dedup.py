"""MinHash dedup throughput and memory on 10,000-word documents, against a plain datasketch loop
(`MinHash.update` per shingle, then `MinHashLSH.insert`) measured in the same run.

    python benchmarks/bench_dedup.py --docs 300 --words 10000
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import LeanMinHash, MinHash, MinHashLSH

from longblocks.dedup import SCHEME, DedupConfig, dedup, sketch
from longblocks.text import normalize_text
from longblocks.records import DOCUMENT_SCHEMA, make_document


def corpus(n_docs: int, n_words: int, seed: int = 0) -> list[dict]:
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


def plain_loop(docs: list[dict], cfg: DedupConfig) -> tuple[float, MinHashLSH, list]:
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


def ours_in_process(docs: list[dict], cfg: DedupConfig) -> tuple[float, MinHashLSH, list]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--words", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = DedupConfig()
    docs = corpus(args.docs, args.words)
    print(f"device: CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{args.docs} documents x {args.words} words, {cfg.bands} bands x {cfg.rows} rows, ngram {cfg.ngram}")

    t_plain, *_ = plain_loop(docs, cfg)
    t_ours, *_ = ours_in_process(docs, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), Path(tmp) / "in.parquet")
        start = time.perf_counter()
        dedup(Path(tmp) / "in.parquet", Path(tmp) / "out", cfg, workers=args.workers)
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
