"""Triton building blocks shared by the fused ops: a logits tile recomputed from hidden states and
the head weight, and the accumulation of dX and dW from a tile's logit gradients (fp32 atomics).
Must not decide any loss: callers pass the gradient w.r.t. the logits tile.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch paths are used
    triton = None
    tl = None

if triton is not None:

    @triton.jit
    def logits_tile(
        X, W, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """x[offs_n] @ w[offs_v].T in fp32, looping over the hidden size in BLOCK_H chunks."""
        acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            mask_h = offs_h < H
            x = tl.load(X + offs_n[:, None] * stride_x + offs_h[None, :], mask=mask_n[:, None] & mask_h[None, :], other=0.0)
            w = tl.load(W + offs_v[:, None] * stride_w + offs_h[None, :], mask=mask_v[:, None] & mask_h[None, :], other=0.0)
            if UPCAST:  # the interpreter's tl.dot mishandles bf16/fp16 operands
                x = x.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def accumulate_grads(
        g, X, W, DX, DW, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
        BLOCK_H: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """DX[offs_n] += g @ W[offs_v]; DW[offs_v] += g.T @ X[offs_n] (fp32 buffers, atomics)."""
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            mask_h = offs_h < H
            w = tl.load(W + offs_v[:, None] * stride_w + offs_h[None, :], mask=mask_v[:, None] & mask_h[None, :], other=0.0)
            x = tl.load(X + offs_n[:, None] * stride_x + offs_h[None, :], mask=mask_n[:, None] & mask_h[None, :], other=0.0)
            g_in = g.to(w.dtype)  # the MMA takes the inputs' dtype; accumulation stays fp32
            if UPCAST:
                g_in = g_in.to(tl.float32)
                w = w.to(tl.float32)
                x = x.to(tl.float32)
            dx = tl.dot(g_in, w, input_precision=PRECISION)
            tl.atomic_add(DX + offs_n[:, None] * H + offs_h[None, :], dx, mask=mask_n[:, None] & mask_h[None, :])
            dw = tl.dot(tl.trans(g_in), x, input_precision=PRECISION)
            tl.atomic_add(DW + offs_v[:, None] * H + offs_h[None, :], dw, mask=mask_v[:, None] & mask_h[None, :])


def block_sizes(hidden_size: int, interpret: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_V, BLOCK_H): small tiles under the interpreter, H100-sized ones on GPU."""
    if interpret:
        return 16, 64, 32
    return 64, 128, 64 if hidden_size >= 64 else 32


def precision(dtype) -> str:  # noqa: ANN001
    # fp32 inputs get exact fp32 products, not TF32: the references are fp32/fp64.
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"
