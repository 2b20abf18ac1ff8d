"""The benchmark scripts keep running (tiny shapes, CPU); no timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import pyarrow.parquet as pq

from trainer.recipes.claims import CLAIMS

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_benchmark_runs_in_smoke_mode() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--device", "cpu", "--smoke"],
                            capture_output=True, text=True, timeout=300, env=env, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| (")]
    assert len(rows) == 8 and all(r.split("|")[3].strip().endswith("GiB") for r in rows)  # ours measured in every case


@pytest.mark.slow
def test_rollout_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_rollout.py"), "--smoke"],
                            capture_output=True, text=True, timeout=300, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| batched") or l.startswith("| per-prompt")]
    assert len(rows) == 2 and "device:" in result.stdout


def test_dedup_benchmark_runs_on_a_few_documents() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dedup.py"), "--docs", "4", "--words", "500"],
                            capture_output=True, text=True, timeout=300, check=True)
    assert "x plain" in result.stdout and result.stdout.count("| longblocks") == 2
    # --scale: each method in its own process on the same planted corpus, peak RSS and the pairs it found
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dedup.py"), "--scale", "300",
                             "--methods", "longblocks,datasketch", "--repeats", "2"], capture_output=True, text=True,
                            timeout=300, check=True)
    rows = {cells[2]: cells for l in result.stdout.splitlines() if (cells := [c.strip() for c in l.split("|")])[1:2] == ["300"]}
    assert set(rows) == {"longblocks", "datasketch"} and rows["datasketch"][4] == rows["datasketch"][7] == "1.00x"
    assert "[" in rows["longblocks"][3] and float(rows["longblocks"][3].split()[0]) > 0  # CPU s: median [min-max]
    assert float(rows["longblocks"][6].split()[0]) > 0 and rows["longblocks"][9] == "1.000", rows  # precision


def test_openai_backend_benchmark_measures_both_loops_on_each_path() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_openai_backend.py"), "--latency", "none",
                             "--requests", "40", "--concurrency", "8", "--repeats", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| none | 8 |")]
    assert [row[2] for row in rows] == ["backend", "generate", "respond"]
    for _, _, _, bare, ours, ratio, bare_cpu, ours_cpu in rows:
        assert float(bare) > 0 and float(ours) > 0 and float(ratio) == pytest.approx(float(ours) / float(bare), rel=0.05)
        assert float(bare_cpu) > 0 and float(ours_cpu) > 0  # the client's CPU ms per request


@pytest.mark.slow
def test_dgrpo_step_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dgrpo_step.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| 128 |")]
    assert len(rows) == 1 and "skipped" in rows[0]


@pytest.mark.slow
def test_sft_step_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sft_step.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| 256 |")]
    assert len(rows) == 1 and "skipped" in rows[0] and "longest sequence trained (of 512): ours 512" in result.stdout


@pytest.mark.slow
def test_memory_benchmark_measures_each_method_on_the_same_step(tmp_path: Path) -> None:
    methods = "sft-ours,sft-transformers,sft-trl,rl-ours,rl-transformers"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--smoke", "--methods", methods,
                             "--json", str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert set(rows) == {f"{m}@{n}" for m in methods.split(",") for n in (256, 512)}
    for key, row in rows.items():
        assert "error" not in row and row["loaded_mb"] > 100 and row["step_mb"] > 0, (key, row)
    for n in (256, 512):  # ours and transformers' loss are the same step: the same loss, to bf16's precision
        assert rows[f"sft-ours@{n}"]["loss"] == pytest.approx(rows[f"sft-transformers@{n}"]["loss"], rel=2e-2)
        assert rows[f"rl-ours@{n}"]["kl"] == pytest.approx(rows[f"rl-transformers@{n}"]["kl"], rel=5e-2, abs=1e-3)
    fits = {cells[1]: cells[2] for l in result.stdout.splitlines() if (cells := [c.strip() for c in l.split("|")])[1:2]
            and cells[1] in methods.split(",") and len(cells) == 7}
    assert set(fits) == set(methods.split(",")) and all(float(b) == float(b) for b in fits.values()), fits


def test_memory_benchmark_fits_the_exponent_of_a_power_law() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_memory import fit

    b, a = fit([1024, 2048, 4096, 8192], [3.0 * n ** 1.5 for n in (1024, 2048, 4096, 8192)])
    assert b == pytest.approx(1.5) and a == pytest.approx(math.log(3.0))
    assert fit([1024], [5.0]) is None


def test_memory_benchmark_merges_runs_of_different_methods(tmp_path: Path) -> None:
    # Two runs (the slow method measured apart, as RESULTS.md's table was) printed as one table: each
    # method's ratio against its own "ours" at the same length, the fit over the lengths it has.
    cell = lambda mb: {"loaded_mb": 1000.0, "step_mb": mb, "seconds": 1.0, "loss": 2.5}  # noqa: E731
    (tmp_path / "a.json").write_text(json.dumps({"sft-ours@2048": cell(100.0), "sft-ours@4096": cell(200.0),
                                                 "sft-transformers@2048": cell(400.0),
                                                 "sft-transformers@4096": cell(1600.0)}))
    (tmp_path / "b.json").write_text(json.dumps({"sft-trl@2048": cell(300.0), "sft-trl@4096": {"error": "exit -9: "}}))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--from-json",
                             str(tmp_path / "a.json"), str(tmp_path / "b.json")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {(c[1], c[2]): c for line in result.stdout.splitlines()
            if len(c := [x.strip() for x in line.split("|")]) == 9 and c[1].startswith("sft-")}
    assert rows["sft-transformers", "4,096"][5] == "8.00x" and rows["sft-trl", "2,048"][5] == "3.00x"
    assert rows["sft-trl", "4,096"][3] == "exit -9:"
    fits = {c[1]: c[2] for line in result.stdout.splitlines()
            if len(c := [x.strip() for x in line.split("|")]) == 7 and c[1].startswith("sft-")}
    assert float(fits["sft-ours"]) == pytest.approx(1.0) and float(fits["sft-transformers"]) == pytest.approx(2.0)
    assert fits["sft-trl"] == "n/a"  # one length measured: no exponent


def test_fleet_benchmark_runs_the_llm_stages_over_several_servers() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fleet.py"), "--docs", "40", "--servers", "2",
                             "--smoke"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {c[1]: c[2:-1] for line in result.stdout.splitlines()
            if len(c := [x.strip() for x in line.split("|")]) == 11 and c[1] in ("generate", "judge", "respond")}
    # every document asked for two pairs, the simulated judge passes one of each two, three responders
    # answer every kept pair: the requests and rows of the real stages, not of the script
    assert [rows[s][0] for s in ("generate", "judge", "respond")] == ["40", "40", "120"]
    assert [rows[s][-1] for s in ("generate", "judge", "respond")] == ["80", "40", "40"]
    assert all(float(rows[s][4]) > 0 and float(rows[s][6]) > 100 for s in rows)  # client CPU, peak RSS


def test_scale_projection_follows_its_inputs() -> None:
    # The projection is arithmetic over stated inputs: GPU-hours proportional to the rows, wall time
    # inversely proportional to the servers, and every stage of the paper's run present.
    def run(*flags: str) -> dict[str, list[str]]:
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "project_scale.py"), "--prefill-cost", "0.1",
                                 "--servers", "8,32", *flags], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return {c[1]: c[2:-1] for line in result.stdout.splitlines()
                if len(c := [x.strip() for x in line.split("|")]) == 9 and c[1] not in ("stage", "---")}

    one, two = run(), run("--rows", str(2 * 193_894))
    assert len(one) == 6 and "judge" in one and sum(k.startswith("respond:") for k in one) == 3
    for stage in one:
        low, high = (float(x.replace(",", "")) for x in one[stage][3].split("-"))
        low2, high2 = (float(x.replace(",", "")) for x in two[stage][3].split("-"))
        assert low2 == pytest.approx(2 * low, rel=0.01) and high2 == pytest.approx(2 * high, rel=0.01)
        wall8, wall32 = (float(w.split("-")[1].replace(",", "")) for w in one[stage][4:6])
        assert wall8 == pytest.approx(4 * wall32, rel=0.05)


@pytest.mark.slow
def test_cpu_claims_script_runs_in_smoke_mode(tmp_path: Path) -> None:
    """Teacher, teacher responses, warm starts, every arm in chunks with held-out evaluations, the
    paired tests and one picture per claim; a rerun resumes from what the first run wrote."""
    command = [sys.executable, str(ROOT / "benchmarks" / "claims_cpu.py"), "--out", str(tmp_path / "run"), "--smoke",
               "--seeds", "0,1", "--jobs", "2", "--figures", str(tmp_path / "figures")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rows = [l.split(" | ")[0].strip("| ") for l in result.stdout.splitlines() if l.startswith("| ")]
    assert [r for r in rows if r not in ("arm", "claim") and not r.startswith("-")] == [
        "SFT continued", "GRPO (beta 0)", "on-policy distillation (reward 0)", "dGRPO (beta 1, reward 1)",
        "dGRPO without warm start", *(f"{n}. {claims_name}" for n, (claims_name, *_) in CLAIMS.items())]
    report = json.loads((tmp_path / "run" / "claims.json").read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1]
    for run in report["runs"]:
        for arm, entry in run["arms"].items():
            assert [p["step"] for p in entry["curve"]] == [0, 1, 2], arm
            assert len(entry["train_reward"]) == (0 if arm == "sft_continued" else 2), arm
    train_rows = pq.read_table(tmp_path / "run" / "data" / "warm.parquet").column_names
    assert "response_teacher" in train_rows  # the students learn from the teacher's responses
    assert all((tmp_path / "figures" / f"claims_cpu_claim{n}.png").stat().st_size > 0 for n in (1, 2, 3))
    assert "dgrpo: started" in result.stdout + result.stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "dgrpo: started" not in again.stdout + again.stderr  # nothing trained twice
    assert json.loads((tmp_path / "run" / "claims.json").read_text())["runs"] == report["runs"]


@pytest.mark.slow
def test_the_claims_task_is_a_scale_of_the_replication_recipe(tmp_path: Path) -> None:
    """`replicate --scale claims-smoke` runs the same task, arms and analysis as claims_cpu.py."""
    result = subprocess.run([sys.executable, "-m", "trainer.recipes.replicate", "--out", str(tmp_path), "--scale",
                             "claims-smoke", "--seeds", "0,1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    table = (tmp_path / "claims.md").read_text()
    assert all(f"| {n}. {name}" in table for n, (name, *_) in CLAIMS.items())
    report = json.loads((tmp_path / "claims.json").read_text())
    assert report["scale"]["steps"] == 2 and sorted(report["runs"][0]["arms"]) == sorted(
        ("sft_continued", "grpo", "opd", "dgrpo", "dgrpo_cold"))
    assert all((tmp_path / f"claims_claim{n}.png").stat().st_size > 0 for n in (1, 2, 3))


@pytest.mark.slow
def test_opd_family_script_runs_in_smoke_mode(tmp_path: Path) -> None:
    """The comparison script end to end on a subset of arms (every arm runs through the real loop in
    tests/trainer/test_rl.py); the horizon table is always measured."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "opd_family_cpu.py"), "--out", str(tmp_path),
                             "--smoke", "--seeds", "0", "--arms", "opd,reopold"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rows = [l.split(" | ")[0].strip("| ") for l in result.stdout.splitlines() if l.startswith("| ")]
    assert [r for r in rows if r not in ("arm", "run") and not r.startswith("-")] == ["opd", "reopold", "full", "topd", "popd"]
    report = json.loads((tmp_path / "family.json").read_text())
    assert report["arms"]["reopold"][0]["trained_fraction"] == 0.5  # one step, in the exploration phase
    topd, full = (report["horizon"][k]["rollout_tokens"] for k in ("topd", "full"))
    assert max(topd) <= 64 < min(full)  # TOPD stops each of the 64 rollouts at 1 token; the full horizon samples on


@pytest.mark.slow
def test_the_gpu_campaign_is_one_command_that_runs_on_cpu_and_writes_results_and_the_readme_status(
        tmp_path: Path) -> None:
    """`gpu_check.py --part all --smoke` on CPU, the GPU window's one command at tiny shapes: every
    step runs under its cap, part-all.json holds each step as it ends, the replication recipe's
    outputs are there (every arm trained and evaluated, curves, table, plots), and `--write-results`
    turns it all into one RESULTS.md section (replaced, not appended, on a re-run) while the README's
    status block still says nothing was measured on a GPU (a smoke run measures nothing there)."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--part", "all", "--smoke", "--budget", "480",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    part = json.loads((out / "part-all.json").read_text())
    assert [s["name"] for s in part["steps"]] == ["correctness", "kernels", "sft step", "dgrpo step", "claims"]
    assert all(s["outcome"] == "ok" and s["seconds"] <= s["cap_s"] for s in part["steps"]), part["steps"]
    for name in ("kernels.json", "sft.json", "dgrpo.json", "pytest-gpu.xml"):
        assert (out / name).exists(), name
    cases = {(r["case"], r["n"]) for r in json.loads((out / "kernels.json").read_text())}
    assert {c for c, _ in cases} == {"(a) log-prob", "(b) full KL", "(c) dGRPO head"}  # the anchors' cases only
    replicate = out / "replicate"
    report = json.loads((replicate / "replication.json").read_text())
    assert set(report["arms"]) == {"sft_continued", "grpo", "opd", "dgrpo", "dgrpo_cold"}
    assert all(len(entry["final"]) == 1 and set(entry["final"][0]) == {"192", "256"} for entry in report["arms"].values())
    table = (replicate / "replication.md").read_text()
    assert all(f"| {arm} |" in table for arm in ("teacher", "warm start", "grpo", "opd", "dgrpo", "dgrpo_cold"))
    assert (replicate / "curves.png").stat().st_size > 0 and (replicate / "final.png").stat().st_size > 0

    results, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    results.write_text("# Results\n\nkept text\n")
    readme.write_text("# x\n\n<!-- gpu_status: begin -->\nold\n<!-- gpu_status: end -->\n\nafter\n")
    for _ in range(2):
        subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--write-results", str(out), "--results", str(results),
                        "--readme", str(readme)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    text = results.read_text()
    assert text.startswith("# Results\n\nkept text") and text.count("## GPU campaign") == 1
    assert "| (c) dGRPO head |" in text and "correctness: ok" in text and "| grpo |" in text
    assert "**Measured on a GPU:** nothing yet" in readme.read_text() and readme.read_text().endswith("after\n")


def test_a_step_past_its_cap_is_stopped_and_recorded(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--part", "kernels", "--smoke", "--budget", "3",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    outcomes = [s["outcome"] for s in json.loads((tmp_path / "part-kernels.json").read_text())["steps"]]
    # 3 s cannot hold both steps (a smoke step gets what is left of the budget): the part stops and says so
    assert done.returncode == 1 and outcomes[-1].startswith(("stopped after", "not run")), outcomes


def test_the_gpu_wheels_script_names_what_the_image_lacks() -> None:
    listed = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_wheels.sh"), "--list"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert {"liger-kernel", "trl", "datasets", "wonderwords"} <= set(listed)
    assert "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()


def test_trainer_imports_without_the_pipeline_dependencies() -> None:
    """The GPU image has no datasets, polars, datasketch, openai, vLLM, TRL or Liger: the trainer and
    its CLI must import without them (they are imported lazily where a feature needs them)."""
    code = (
        "import sys, importlib.abc\n"
        "BLOCKED = {'datasets', 'polars', 'datasketch', 'openai', 'vllm', 'trl', 'liger_kernel', 'wonderwords'}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import trainer.cli, trainer.sft, trainer.rl, trainer.eval.run, trainer.recipes.replicate, trainer.kernels\n"
        "from trainer.cli import app\n"
        "print('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr
