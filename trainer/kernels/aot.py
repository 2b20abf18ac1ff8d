"""Ahead-of-time compilation of every Triton kernel of the package for a GPU target (sm_90 by
default) on any machine, with Triton's own ptxas: catches what TRITON_INTERPRET=1 hides (dtype
errors in the compiled path, register spills) and reports registers and spill bytes per kernel
and configuration. Must not launch anything: no GPU is needed.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch

_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DZ_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # the compute dtypes dZ is written in


@dataclass(frozen=True)
class KernelReport:
    kernel: str
    config: str
    registers: int
    spill_bytes: int  # local memory per thread (spills); 0 is the goal
    stack_bytes: int
    shared_bytes: int


def _configs() -> list[tuple[object, dict[str, str], dict[str, object], str]]:
    """(kernel, signature, constexprs, label) for every kernel, flag combination and dtype."""
    import importlib

    head = importlib.import_module("trainer.kernels.policy_head")
    out = []
    for has_teacher, mode, has_tail in itertools.product((False, True), range(len(head.DIRECTIONS)), (False, True)):
        if mode and not has_teacher:
            continue
        constexprs = {"HAS_TEACHER": has_teacher, "MODE": mode, "HAS_TAIL": has_tail, "BLOCK_V": head.ROW_BLOCK}
        label = f"teacher={has_teacher} mode={head.DIRECTIONS[mode]} tail={has_tail}"
        stats = {name: "*fp32" for name in ("Z", "ZT", "LSE", "EZ", "LSE_T", "EDIFF", "KLQ", "LSE_TAIL")}
        stats.update(IDS="*i64", V="i32", stride_z="i32", stride_zt="i32", n_ids="i32", tail_start="i32", BETA="fp32")
        out.append((head._row_stats_kernel, {**stats, **{k: "constexpr" for k in constexprs}}, constexprs, label))
        for dtype in DZ_DTYPES:
            grad = {name: "*fp32" for name in ("Z", "ZT", "G_IDS", "LSE", "LSE_T", "LSE_TAIL", "A", "B", "R", "F", "TC")}
            grad.update(IDS="*i64", DZ=f"*{_TRITON_TYPES[dtype]}", V="i32", stride_z="i32", stride_zt="i32",
                        stride_dz="i32", n_ids="i32", tail_start="i32", BETA="fp32")
            out.append((head._row_grad_kernel, {**grad, **{k: "constexpr" for k in constexprs}}, constexprs,
                        f"{label} dz={_TRITON_TYPES[dtype]}"))
    return out


def _ordered(fn: object, signature: dict[str, str]) -> dict[str, str]:
    return {name: signature[name] for name in fn.arg_names}  # type: ignore[attr-defined]


def _resource_usage(cubin: bytes) -> dict[str, int]:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k: int(v) for k, v in fields.items()}


def compile_all(capability: int = 90, num_warps: int | None = None) -> list[KernelReport]:
    """Compile every kernel configuration for `cuda:capability`; raises on a compile error. Under
    TRITON_INTERPRET=1 the kernels are interpreter objects, so this runs in a child process without it."""
    from trainer.kernels.backend import interpret_mode

    if interpret_mode():
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        args = [sys.executable, "-m", "trainer.kernels.aot", "--json", "--capability", str(capability)]
        if num_warps:
            args += ["--num-warps", str(num_warps)]
        result = subprocess.run(args, capture_output=True, text=True, env=env)
        if result.returncode:
            raise RuntimeError(f"ahead-of-time compilation failed:\n{result.stderr[-4000:]}")
        return [KernelReport(**r) for r in json.loads(result.stdout)]
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trainer.kernels.policy_head import ROW_WARPS

    reports = []
    for fn, signature, constexprs, label in _configs():
        source = ASTSource(fn=fn, signature=_ordered(fn, signature), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": num_warps or ROW_WARPS})
        usage = _resource_usage(compiled.asm["cubin"])
        reports.append(KernelReport(fn.__name__, label, usage.get("REG", 0), usage.get("LOCAL", 0),  # type: ignore[attr-defined]
                                    usage.get("STACK", 0), usage.get("SHARED", 0)))
    return reports


def main() -> None:
    import argparse
    from dataclasses import asdict

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--capability", type=int, default=90, help="CUDA compute capability, e.g. 90 (H100)")
    parser.add_argument("--num-warps", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args()
    reports = compile_all(args.capability, args.num_warps)
    if args.json:
        print(json.dumps([asdict(r) for r in reports]))
        return
    for r in reports:
        print(f"{r.kernel:18} {r.config:48} regs {r.registers:3}  spill {r.spill_bytes} B  "
              f"stack {r.stack_bytes} B  shared {r.shared_bytes} B")


if __name__ == "__main__":
    main()
