"""The GPU campaign of issue 17 as three device calls, and the step that turns what they measured
into `benchmarks/RESULTS.md`.

    python benchmarks/gpu_check.py --part kernels   --out $OUT   # pytest -m gpu + kernels vs Liger
    python benchmarks/gpu_check.py --part train     --out $OUT   # SFT vs TRL, dGRPO step vs TRL
    python benchmarks/gpu_check.py --part replicate --out $OUT   # the five arms x seeds, curves
    python benchmarks/gpu_check.py --write-results DIR [DIR...]  # back here: RESULTS.md tables
    python benchmarks/gpu_check.py --part kernels --smoke --out /tmp/x   # CPU check of the script

Each part keeps inside `--budget` seconds (default 540: a device call is limited to 600): every
step gets what is left, a step that runs out is stopped and recorded as such, and everything goes
to `$OUT` (`part-<part>.json` with the environment and each step's outcome, the steps' own JSON files,
logs, PNGs). Nothing here needs the pipeline's dependencies (datasets, polars, datasketch, openai).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK_BEGIN, MARK_END = "<!-- gpu_check: begin -->", "<!-- gpu_check: end -->"


def environment() -> dict[str, str]:
    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda or "none", "device": "cpu"}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    return env


def steps(part: str, out: Path, smoke: bool) -> list[tuple[str, list[str]]]:
    """(name, command) of each step of a part, in order; each step writes into `out`."""
    py, smoke_flag = sys.executable, ["--smoke"] if smoke else []
    if part == "kernels":
        return [
            ("pytest -m gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/trainer",
                               f"--junitxml={out / 'pytest-gpu.xml'}"]),
            ("kernels vs Liger", [py, "benchmarks/bench_kernels.py", "--json", str(out / "kernels.json"), *smoke_flag]),
        ]
    if part == "train":
        return [
            ("SFT vs TRL", [py, "benchmarks/bench_sft_step.py", "--json", str(out / "sft.json"), *smoke_flag]),
            ("dGRPO step vs TRL", [py, "benchmarks/bench_dgrpo_step.py", "--json", str(out / "dgrpo.json"),
                                   *smoke_flag]),
        ]
    if part == "replicate":
        return [("replication", [py, "-m", "trainer.recipes.replicate", "--out", str(out / "replicate"), *smoke_flag])]
    raise SystemExit(f"unknown part {part!r}: kernels, train or replicate")


def run_part(part: str, out: Path, budget: float, smoke: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    record = {"part": part, "environment": environment(), "smoke": smoke, "steps": []}
    deadline = time.monotonic() + budget
    for name, command in steps(part, out, smoke):
        left = deadline - time.monotonic()
        step = {"name": name, "command": " ".join(command[1:])}
        if left < 5:
            step["outcome"] = "not run: the part's time budget was spent"
        else:
            log = out / f"{part}-{name.split()[0].lower()}.log"
            start = time.monotonic()
            try:
                with log.open("w") as handle:
                    done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=left,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)})
                step["outcome"] = "ok" if done.returncode == 0 else f"exit status {done.returncode}"
            except subprocess.TimeoutExpired:
                step["outcome"] = f"stopped after {left:.0f} s (budget)"
            step["seconds"] = round(time.monotonic() - start, 1)
            step["log_tail"] = log.read_text(errors="replace")[-4000:]
        record["steps"].append(step)
        print(f"{part}: {name}: {step['outcome']}", flush=True)
    (out / f"part-{part}.json").write_text(json.dumps(record, indent=1))
    return record


def _kernel_table(rows: list[dict]) -> list[str]:
    lines = ["| case | N | ours ms (GiB) | Liger ms (GiB) | naive ms (GiB) | GEMMs ms | Liger / ours |",
             "|---|---|---|---|---|---|---|"]
    cells: dict[tuple[str, int], dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["case"], r["n"]), {})[r["impl"]] = r

    def cell(r: dict | None) -> str:
        return "n/a" if not r or "ms" not in r else f"{r['ms']:.1f} ({r['gib']:.2f})"

    for (case, n), impls in cells.items():
        ours, liger = impls.get("ours", {}), impls.get("liger", {})
        ratio = f"{liger['ms'] / ours['ms']:.2f}x" if "ms" in ours and "ms" in liger else "n/a"
        gemms = impls.get("gemms", {})
        gemm_ms = f"{gemms['ms']:.1f}" if "ms" in gemms else "n/a"
        lines.append(f"| {case} | {n} | {cell(ours)} | {cell(liger)} | {cell(impls.get('naive'))} | {gemm_ms} | {ratio} |")
    return lines


def _sft_table(data: dict) -> list[str]:
    lines = ["| tokens/seq | ours tok/s | ours peak GiB | TRL tok/s | TRL peak GiB | ours / TRL |", "|---|---|---|---|---|---|"]
    def cells(result: dict | str) -> str:
        return f"{result['tokens_per_s']:,.0f} | {result['peak_gib']:.1f}" if isinstance(result, dict) else f"{result} | n/a"

    for row in data["rows"]:
        o, t = row["ours"], row["trl"]
        ratio = f"{o['tokens_per_s'] / t['tokens_per_s']:.2f}x" if isinstance(o, dict) and isinstance(t, dict) else "n/a"
        lines.append(f"| {row['length']} | {cells(o)} | {cells(t)} | {ratio} |")
    lines.append(f"\nLongest sequence trained: ours {data['longest']['ours'] or 'none'}, TRL {data['longest']['trl'] or 'none'}.")
    return lines


def write_results(dirs: list[Path], results: Path) -> str:
    """The campaign's section of RESULTS.md (replacing the previous one) from the parts' JSON."""
    section = [MARK_BEGIN, "## GPU campaign (`benchmarks/gpu_check.py`)", ""]
    for d in dirs:
        for part_file in sorted(d.glob("part-*.json")):
            part = json.loads(part_file.read_text())
            if "part" not in part:
                continue
            env = part["environment"]
            section += [f"### {part['part']} ({'smoke, ' if part['smoke'] else ''}{env['device']}, torch {env['torch']}, "
                        f"Triton {env['triton']}, CUDA {env['cuda']}, {env['date']})", ""]
            section += [f"- {s['name']}: {s['outcome']}" + (f" ({s['seconds']} s)" if "seconds" in s else "")
                        for s in part["steps"]]
            section.append("")
            if (d / "kernels.json").exists() and part["part"] == "kernels":
                section += _kernel_table(json.loads((d / "kernels.json").read_text())) + [""]
            if (d / "sft.json").exists() and part["part"] == "train":
                section += _sft_table(json.loads((d / "sft.json").read_text())) + [""]
            if (d / "dgrpo.json").exists() and part["part"] == "train":
                data = json.loads((d / "dgrpo.json").read_text())
                section += ["dGRPO step (seconds per phase, peak GiB):", "", "```",
                            json.dumps(data["results"], indent=1)[:3000], "```", ""]
    section.append(MARK_END)
    text = results.read_text() if results.exists() else ""
    block = "\n".join(section)
    if MARK_BEGIN in text and MARK_END in text:
        head, _, rest = text.partition(MARK_BEGIN)
        text = head + block + rest.partition(MARK_END)[2]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    results.write_text(text)
    return block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("kernels", "train", "replicate"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole part")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks the campaign runs (CPU)")
    parser.add_argument("--write-results", type=Path, nargs="+", metavar="DIR",
                        help="turn the parts' JSON in DIR(s) into the GPU section of RESULTS.md")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    if args.write_results:
        print(write_results(args.write_results, args.results))
    elif args.part:
        record = run_part(args.part, args.out, args.budget, args.smoke)
        sys.exit(0 if all(s["outcome"] == "ok" for s in record["steps"]) else 1)
    else:
        parser.error("give --part or --write-results")


if __name__ == "__main__":
    main()
