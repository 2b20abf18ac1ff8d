"""Dedup of a corpus holding many identical copies of one document (a mirror, a boilerplate page):
wall and CPU seconds, candidate pairs, exact checks and peak RSS, for a range of copy counts, with
this checkout's dedup. Run it against an older checkout (PYTHONPATH=OLD) to compare.

    python benchmarks/bench_dedup_copies.py --docs 10000 --copies 0,500,2000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10000)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--copies", default="0,2000")
    args = parser.parse_args()
    from conftest import random_text
    from longblocks.config import DedupSection
    from longblocks.pipeline import run
    from longblocks.records import DOCUMENT_SCHEMA, make_document

    print(f"device: CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print("| documents | identical copies | wall s | CPU s | candidate pairs | exact checks | removed |")
    print("|---|---|---|---|---|---|---|")
    for copies in (int(c) for c in args.copies.split(",")):
        rng = random.Random(0)
        docs = [make_document(source="local", language="en", text=random_text(rng, args.words))
                for _ in range(args.docs - copies)]
        docs += [dict(docs[0], id=f"copy{i}") for i in range(copies)]
        with tempfile.TemporaryDirectory() as tmp:
            pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), Path(tmp) / "in.parquet")
            wall, cpu = time.perf_counter(), time.process_time()
            manifest = run("dedup", DedupSection(), [Path(tmp) / "in.parquet"], Path(tmp) / "out")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stats = manifest["stats"]
        print(f"| {args.docs} | {copies} | {wall:.1f} | {cpu:.1f} | {stats['candidate_pairs']} | {stats['verified_pairs']} "
              f"| {manifest['rejected'].get('near_duplicate', 0)} |")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
