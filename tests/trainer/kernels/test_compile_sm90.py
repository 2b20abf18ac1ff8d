"""Every Triton kernel of the package compiles ahead of time for an H100 (sm_90) on this CPU
machine, with Triton's own ptxas, for every flag combination and dZ dtype; none spills."""

from __future__ import annotations

import pytest

from trainer.kernels.backend import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def test_every_kernel_compiles_for_sm90_without_spills(capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.kernels.aot import compile_all

    reports = compile_all(capability=90)
    with capsys.disabled():
        for r in reports:
            print(f"\n  sm_90 {r.kernel} [{r.config}]: {r.registers} registers, {r.spill_bytes} B spilled", end="")
    kernels = {r.kernel for r in reports}
    assert kernels == {"_row_stats_kernel", "_row_grad_kernel"}
    assert len(reports) == 32  # 8 flag combinations (3 directions with a teacher) x (stats + 3 dZ dtypes)
    spilled = [r for r in reports if r.spill_bytes or r.stack_bytes]
    assert not spilled, spilled
    assert all(0 < r.registers <= 128 for r in reports)
