"""The benchmark scripts keep running (tiny shapes, CPU); no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_benchmark_runs_in_smoke_mode() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--device", "cpu", "--smoke"],
                            capture_output=True, text=True, timeout=300, env=env, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| (")]
    assert len(rows) == 6 and all(r.split("|")[3].strip().endswith("GiB") for r in rows)  # ours measured in every case


def test_rollout_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_rollout.py"), "--smoke"],
                            capture_output=True, text=True, timeout=300, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| batched") or l.startswith("| per-prompt")]
    assert len(rows) == 2 and "device:" in result.stdout


def test_dedup_benchmark_runs_on_a_few_documents() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dedup.py"), "--docs", "4", "--words", "500"],
                            capture_output=True, text=True, timeout=300, check=True)
    assert "x plain" in result.stdout and result.stdout.count("| longblocks") == 2


def test_dgrpo_step_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dgrpo_step.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| 128 |")]
    assert len(rows) == 1 and "skipped" in rows[0]


def test_sft_step_benchmark_runs_in_smoke_mode() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_sft_step.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| 256 |")]
    assert len(rows) == 1 and "skipped" in rows[0] and "longest sequence trained (of 512): ours 512" in result.stdout


def test_cpu_claims_script_runs_in_smoke_mode(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "claims_cpu.py"), "--out", str(tmp_path), "--smoke",
                             "--seeds", "0"], capture_output=True, text=True, timeout=600, check=True)
    rows = [l for l in result.stdout.splitlines() if l.startswith("| ") and not l.startswith("| arm")]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == ["sft_continued", "grpo", "opd", "dgrpo", "dgrpo_cold"]
