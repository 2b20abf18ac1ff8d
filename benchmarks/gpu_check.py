"""The GPU verification in one prepared command for one 15-minute H200 window, and the step that
turns what it measured into `benchmarks/RESULTS.md` and the README's status table.

    bash benchmarks/gpu_wheels.sh                                    # here, once: the wheels the image lacks
    python benchmarks/gpu_check.py --part all --budget 480 --out $OUT   # on the GPU machine, one command
    python benchmarks/gpu_check.py --write-results DIR                  # back here: RESULTS.md + README
    python benchmarks/gpu_check.py --part all --smoke --out /tmp/x      # the same command on CPU, tiny shapes

`--part all` runs, in this order, each step under its own cap (scaled to `--budget`; the last
gets what is left) and writes `part-all.json` again the moment each step ends, so a command
stopped at its limit still returns what finished:
  a. correctness: the `gpu`-marked tests, Triton compiling for the device (not the interpreter);
  b. kernels: at the anchor shapes (H=2048, V=151936: log-prob at 16k and 64k tokens; full KL with
     an H=4096 teacher and the whole dGRPO head at 32k): ours, Liger's op and the bare GEMMs;
  c. training steps: one `sft` step and one `rl` update of a Qwen3-0.6B-shaped model at 16k and
     32k tokens per sequence, the longest sequence that fits, beside TRL when its wheel came along;
  d. the claims: `trainer.recipes.replicate --scale window`, one seed, every arm.
`--part kernels|train|replicate` still run one group alone. Nothing here needs the pipeline's
dependencies (datasets, polars, datasketch, openai).
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


# The steps of each part: (name, share of the budget: None = what is left, command).
def steps(part: str, out: Path, smoke: bool) -> list[tuple[str, float | None, list[str]]]:
    py, smoke_flag = sys.executable, ["--smoke"] if smoke else []
    correctness = ("correctness", 75 / 480, [py, "-m", "pytest", "-q", "-m", "gpu", "tests/trainer",
                                             f"--junitxml={out / 'pytest-gpu.xml'}"])
    kernels = ("kernels", 120 / 480, [py, "benchmarks/bench_kernels.py", "--plan", "anchors", "--json",
                                      str(out / "kernels.json"), *smoke_flag])
    sft = ("sft step", 60 / 480, [py, "benchmarks/bench_sft_step.py", "--model", "qwen3-0.6b", "--lengths", "16384,32768",
                                  "--longest", "65536,131072", "--json", str(out / "sft.json"), *smoke_flag])
    dgrpo = ("dgrpo step", 60 / 480, [py, "benchmarks/bench_dgrpo_step.py", "--student", "qwen3-0.6b", "--teacher",
                                      "qwen3-1.7b", "--lengths", "16384,32768", "--json", str(out / "dgrpo.json"),
                                      *smoke_flag])
    claims = ("claims", None, [py, "-m", "trainer.recipes.replicate", "--scale", "smoke" if smoke else "window",
                               "--seeds", "0", "--out", str(out / "replicate")])
    parts = {"all": [correctness, kernels, sft, dgrpo, claims], "kernels": [correctness, kernels],
             "train": [sft, dgrpo], "replicate": [claims]}
    if part not in parts:
        raise SystemExit(f"unknown part {part!r}: {', '.join(parts)}")
    return parts[part]


def run_part(part: str, out: Path, budget: float, smoke: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    record = {"part": part, "environment": environment(), "smoke": smoke, "budget": budget, "steps": []}
    started = time.monotonic()
    deadline = started + budget
    planned = steps(part, out, smoke)
    for name, share, command in planned:
        left = deadline - time.monotonic()
        # a smoke run (tiny shapes on a CPU) gives each step what is left of the budget: it checks the
        # orchestration, not the GPU window's split, and on a busy CPU a tiny step can take minutes
        cap = left if share is None or smoke else min(left, share * budget)
        step = {"name": name, "command": " ".join(command[1:]), "cap_s": round(cap, 1)}
        if cap < 5:
            step["outcome"] = "not run: the part's time budget was spent"
        else:
            log = out / f"{part}-{name.replace(' ', '-')}.log"
            start = time.monotonic()
            try:
                with log.open("w") as handle:
                    done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=cap,
                                          env={**os.environ, "PYTHONPATH": str(ROOT)})
                step["outcome"] = "ok" if done.returncode == 0 else f"exit status {done.returncode}"
            except subprocess.TimeoutExpired:
                step["outcome"] = f"stopped after {cap:.0f} s (its cap)"
            step["seconds"] = round(time.monotonic() - start, 1)
            step["log_tail"] = log.read_text(errors="replace")[-4000:]
        record["steps"].append(step)
        record["seconds"] = round(time.monotonic() - started, 1)
        tmp = out / f".part-{part}.json.tmp"  # rewritten after every step: what finished is always there
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, out / f"part-{part}.json")
        print(f"{part}: {name}: {step['outcome']}", flush=True)
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


def write_results(dirs: list[Path], results: Path, readme: Path | None = None) -> str:
    """The campaign's section of RESULTS.md (replacing the previous one) from the parts' JSON, and
    the README's status block saying what was measured on which GPU (when `readme` is given)."""
    section = [MARK_BEGIN, "## GPU campaign (`benchmarks/gpu_check.py`)", ""]
    measured: list[str] = []
    for d in dirs:
        for part_file in sorted(d.glob("part-*.json")):
            part = json.loads(part_file.read_text())
            if "part" not in part:
                continue
            env, groups = part["environment"], {"all": {"kernels", "train", "replicate"}}.get(part["part"], {part["part"]})
            where = f"{'smoke, ' if part['smoke'] else ''}{env['device']}, torch {env['torch']}, Triton {env['triton']}, " \
                    f"CUDA {env['cuda']}, {env['date']}"
            section += [f"### {part['part']} ({where})", ""]
            section += [f"- {s['name']}: {s['outcome']}" + (f" ({s['seconds']} s of a {s['cap_s']} s cap)"
                                                             if "seconds" in s and "cap_s" in s else
                                                             f" ({s['seconds']} s)" if "seconds" in s else "")
                        for s in part["steps"]]
            section.append("")
            ok = {s["name"] for s in part["steps"] if s["outcome"] == "ok"}
            if (d / "kernels.json").exists() and "kernels" in groups:
                section += _kernel_table(json.loads((d / "kernels.json").read_text())) + [""]
                measured += ["fused kernels vs Liger and the GEMMs"] if "kernels" in ok else []
            if (d / "sft.json").exists() and "train" in groups:
                section += _sft_table(json.loads((d / "sft.json").read_text())) + [""]
                measured += ["one SFT step (tokens/s, peak memory, longest sequence)"] if "sft step" in ok else []
            if (d / "dgrpo.json").exists() and "train" in groups:
                data = json.loads((d / "dgrpo.json").read_text())
                section += ["dGRPO step (seconds per phase, peak GiB):", "", "```",
                            json.dumps(data["results"], indent=1)[:3000], "```", ""]
                measured += ["one dGRPO update"] if "dgrpo step" in ok else []
            table = d / "replicate" / "replication.md"
            if table.exists() and "replicate" in groups:
                section += ["The claims at window scale (`replicate --scale window`, one seed):", "",
                            table.read_text().strip(), ""]
                measured += ["the claims at window scale (one seed)"] if "claims" in ok else []
            if part["smoke"]:
                measured = []  # a CPU smoke run measures nothing on a GPU
            elif measured:
                measured = [f"{', '.join(measured)}: measured on {env['device']} ({env['date']})"]
    section.append(MARK_END)
    text = results.read_text() if results.exists() else ""
    block = "\n".join(section)
    results.write_text(_replace_block(text, MARK_BEGIN, MARK_END, block))
    if readme is not None and readme.exists():
        status = [STATUS_BEGIN, "**Measured on a GPU:** " + ("; ".join(measured) + "." if measured else
                                                                "nothing yet; `benchmarks/gpu_check.py --part all` is ready "
                                                                "for the first GPU window."), STATUS_END]
        readme.write_text(_replace_block(readme.read_text(), STATUS_BEGIN, STATUS_END, "\n".join(status)))
    return block


STATUS_BEGIN, STATUS_END = "<!-- gpu_status: begin -->", "<!-- gpu_status: end -->"


def _replace_block(text: str, begin: str, end: str, block: str) -> str:
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        return head + block + rest.partition(end)[2]
    return text.rstrip() + "\n\n" + block + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "kernels", "train", "replicate"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole part (a device call "
                        "is limited to 540 here: the rest is the machine's start and the transfers)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks the campaign runs (CPU)")
    parser.add_argument("--write-results", type=Path, nargs="+", metavar="DIR",
                        help="turn the parts' JSON in DIR(s) into the GPU section of RESULTS.md")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="whose status table follows the results")
    args = parser.parse_args()
    if args.write_results:
        print(write_results(args.write_results, args.results, args.readme))
    elif args.part:
        record = run_part(args.part, args.out, args.budget, args.smoke)
        sys.exit(0 if all(s["outcome"] == "ok" for s in record["steps"]) else 1)
    else:
        parser.error("give --part or --write-results")


if __name__ == "__main__":
    main()
