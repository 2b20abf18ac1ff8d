"""The paper's three claims at CPU scale (issue 40), on the task of `trainer/recipes/claims.py`
(its docstring says why each choice of the task serves a claim). Two runs, in this order:

    python benchmarks/claims_cpu.py --out runs/claims_cpu --pilot --seeds 1000-1003 --jobs 2
        # the pilot: its paired differences give the seeds each claim needs for 80% power
    python benchmarks/claims_cpu.py --out runs/claims_cpu --seeds 0-9 --jobs 2 --figures docs
        # the confirmatory run, seeds fixed by the plan in RESULTS.md (written from the pilot)
    python benchmarks/claims_cpu.py --out /tmp/c --smoke     # seconds: checks the script end to end

Prints the teacher, the arms' table (mean [95% t-interval] over seeds) and the paired test per
claim; writes `pilot.json` or `claims.json` under --out and, with --figures, one picture per claim.
Rerunning resumes (finished evaluations and checkpoints are kept).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trainer.recipes import claims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0-9", help="`0-9` or `0,1,2`")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, one torch thread each")
    parser.add_argument("--pilot", action="store_true", help="write pilot.json (the plan's power analysis)")
    parser.add_argument("--figures", type=Path, help="write claims_cpu_claim{1,2,3}.png here")
    parser.add_argument("--smoke", action="store_true", help="tiny models and steps: checks the script")
    args = parser.parse_args()
    scale = claims.SMOKE if args.smoke else claims.CPU
    started = time.perf_counter()
    report = claims.run(args.out, scale, claims.seed_list(args.seeds), args.jobs, name="pilot" if args.pilot else "claims")
    print(claims.table(report))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        for path in claims.plot(report, args.figures, prefix="claims_cpu"):
            print(f"wrote {path}")
    print(f"wall time {time.perf_counter() - started:.0f} s ({args.jobs} job(s))")


if __name__ == "__main__":
    main()
