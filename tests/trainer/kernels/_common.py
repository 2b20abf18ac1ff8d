"""Shared helpers of the kernel tests: seeded operands, fp64 leaves and a tolerance check.

Tolerances: results are compared with an fp64 reference computed on the same operands as the op
used (cast to its compute dtype). Values (log-probs, entropy, KL) within VALUE_TOL absolute
whatever the dtype: every GEMM accumulates and returns fp32. Gradients within GRAD_TOL[dtype] x
max|reference grad|: fp32 compute is exact to ~1e-6; half-precision compute rounds dL/dz to the
compute dtype before the backward GEMMs (as the GPU does), ~2^-9 relative.
"""

from __future__ import annotations

import torch

from trainer.kernels.backend import triton_available

BACKENDS = ["torch"] + (["triton"] if triton_available() else [])
SHAPES = [(1, 1000), (67, 1031), (67, 1000), (1, 1031)]  # V not a multiple of the 1024 row block
H, HT = 64, 96
VALUE_TOL = 1e-3
GRAD_TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make(n: int, v: int, h: int, dtype: torch.dtype, seed: int, scale: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * scale).to(dtype)
    return hidden, weight


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def ref_leaf(t: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """The fp64 reference operand: the values the op multiplies (cast to its compute dtype)."""
    return t.detach().to(compute).double().requires_grad_()


def check(ours: torch.Tensor, ref: torch.Tensor, what: str, *, grad_dtype: torch.dtype | None = None) -> None:
    tol = GRAD_TOL[grad_dtype] * max(ref.abs().max().item(), 1e-6) if grad_dtype else VALUE_TOL
    err = (ours.double() - ref).abs().max().item()
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"


def mask_for(n: int) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[::3] = False
    if n == 1:
        mask[0] = True
    return mask
