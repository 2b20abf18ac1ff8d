"""Per-token log-probs of chosen ids (and entropy) from hidden states and the LM-head weight,
forward and backward, without ever holding the tokens x vocab logits.

One op serves every loss built from log p at a few ids per token: the sampled-token log-prob
(K = 1) and the student side of a top-k KL (K = k). The forward computes per token the
log-sum-exp and E_p[z] over the whole vocabulary (Triton: vocab tiles with an online softmax;
CPU: chunks of tokens) and gathers the K logits directly. The backward needs only those
per-token scalars: d/dz_j = (1/T) (sum_k g_k [j = id_k] - p_j (sum_k g_k + g_H (z_j - E_p[z]))),
a dense term recomputed tile by tile plus a sparse term at the K ids.
Must not return anything in low precision: log-probs, entropy and gradient accumulators are fp32.
"""

from __future__ import annotations

import torch

from trainer.kernels import _tiles
from trainer.kernels.backend import interpret_mode, resolve, rows_per_chunk

if _tiles.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _stats_kernel(
        X, W, LSE, EZ, N, V, H, stride_x, stride_w, inv_temp,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        pid = tl.program_id(0)
        offs_n = (pid * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < N
        m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        s = tl.zeros([BLOCK_N], dtype=tl.float32)
        sz = tl.zeros([BLOCK_N], dtype=tl.float32)
        for v0 in range(0, V, BLOCK_V):
            offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
            mask_v = offs_v < V  # the last tile runs past V: those columns must not enter the sum
            z = _tiles.logits_tile(X, W, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
                                   BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST) * inv_temp
            z_valid = tl.where(mask_v[None, :], z, 0.0)
            z = tl.where(mask_v[None, :], z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))  # finite: every tile has a valid column
            alpha = tl.exp(m - m_new)
            p = tl.exp(z - m_new[:, None])
            s = s * alpha + tl.sum(p, axis=1)
            sz = sz * alpha + tl.sum(p * z_valid, axis=1)
            m = m_new
        tl.store(LSE + offs_n, m + tl.log(s), mask=mask_n)
        tl.store(EZ + offs_n, sz / s, mask=mask_n)

    @triton.jit
    def _dense_backward_kernel(
        X, W, LSE, EZ, C, GH, DX, DW, N, V, H, stride_x, stride_w, inv_temp,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_v = (tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        mask_n = offs_n < N
        mask_v = offs_v < V
        z = _tiles.logits_tile(X, W, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
                               BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST) * inv_temp
        lse = tl.load(LSE + offs_n, mask=mask_n, other=0.0)
        ez = tl.load(EZ + offs_n, mask=mask_n, other=0.0)
        c = tl.load(C + offs_n, mask=mask_n, other=0.0)
        gh = tl.load(GH + offs_n, mask=mask_n, other=0.0)
        p = tl.exp(z - lse[:, None])
        g = -inv_temp * p * (c[:, None] + gh[:, None] * (z - ez[:, None]))
        g = tl.where(mask_n[:, None] & mask_v[None, :], g, 0.0)
        _tiles.accumulate_grads(g, X, W, DX, DW, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
                                BLOCK_H, PRECISION, UPCAST)


# -- statistics: log-sum-exp and E_p[z] per token --------------------------------------------------
def _stats_triton(hidden: torch.Tensor, weight: torch.Tensor, inv_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    n, h = hidden.shape
    v = weight.shape[0]
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    ez = torch.empty_like(lse)
    bn, bv, bh = _tiles.block_sizes(h, interpret_mode())
    _stats_kernel[(triton.cdiv(n, bn),)](
        hidden, weight, lse, ez, n, v, h, hidden.stride(0), weight.stride(0), inv_temp,
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, PRECISION=_tiles.precision(hidden.dtype), UPCAST=interpret_mode(),
    )
    return lse, ez


def _stats_torch(hidden: torch.Tensor, weight32: torch.Tensor, inv_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = hidden.shape[0]
    lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
    ez = torch.empty_like(lse)
    step = rows_per_chunk(weight32.shape[0])
    for start in range(0, n, step):
        z = (hidden[start : start + step].float() @ weight32.T) * inv_temp
        lse_c = torch.logsumexp(z, dim=-1)
        lse[start : start + step] = lse_c
        ez[start : start + step] = (torch.exp(z - lse_c[:, None]) * z).sum(-1)
    return lse, ez


def _dense_backward_torch(
    hidden: torch.Tensor, weight32: torch.Tensor, lse: torch.Tensor, ez: torch.Tensor, c: torch.Tensor,
    gh: torch.Tensor, inv_temp: float, dx: torch.Tensor, dw: torch.Tensor,
) -> None:
    step = rows_per_chunk(weight32.shape[0])
    for start in range(0, hidden.shape[0], step):
        sl = slice(start, start + step)
        x = hidden[sl].float()
        z = (x @ weight32.T) * inv_temp
        p = torch.exp(z - lse[sl, None])
        g = -inv_temp * p * (c[sl, None] + gh[sl, None] * (z - ez[sl, None]))
        dx[sl] += g @ weight32
        dw += g.T @ x


# -- the sparse part: logits and gradients at K ids per token --------------------------------------
def gather_logits(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """z[n, k] = x_n . w_{ids[n, k]} / T in fp32, in chunks of rows (no [N, V] tensor)."""
    n, k = ids.shape
    out = torch.empty(n, k, dtype=torch.float32, device=hidden.device)
    step = max(1, (1 << 22) // max(k * hidden.shape[1], 1))
    for start in range(0, n, step):
        x = hidden[start : start + step].float()
        w = weight[ids[start : start + step]].float()  # [c, K, H]
        out[start : start + step] = torch.einsum("ch,ckh->ck", x, w) * inv_temp
    return out


def _sparse_backward(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, g: torch.Tensor, inv_temp: float,
    dx: torch.Tensor, dw: torch.Tensor,
) -> None:
    n, k = ids.shape
    step = max(1, (1 << 22) // max(k * hidden.shape[1], 1))
    for start in range(0, n, step):
        sl = slice(start, start + step)
        gk = g[sl] * inv_temp  # [c, K]
        dx[sl] += torch.einsum("ck,ckh->ch", gk, weight[ids[sl]].float())
        contrib = gk[:, :, None] * hidden[sl].float()[:, None, :]  # [c, K, H]
        dw.index_add_(0, ids[sl].reshape(-1), contrib.reshape(-1, hidden.shape[1]))


class LinearLogprobs(torch.autograd.Function):
    """(hidden [n, H], weight [V, H], ids [n, K]) -> (log p at ids [n, K], entropy [n]), fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature, backend):  # noqa: ANN001, ANN205
        inv_temp = 1.0 / temperature
        weight32 = None
        if backend == "triton":
            lse, ez = _stats_triton(hidden, weight, inv_temp)
        else:
            weight32 = weight.float()
            lse, ez = _stats_torch(hidden, weight32, inv_temp)
        logprobs = gather_logits(hidden, weight, ids, inv_temp) - lse[:, None]
        ctx.save_for_backward(hidden, weight, ids, lse, ez)
        ctx.inv_temp, ctx.backend = inv_temp, backend
        return logprobs, lse - ez

    @staticmethod
    def backward(ctx, g_logprobs, g_entropy):  # noqa: ANN001, ANN205
        hidden, weight, ids, lse, ez = ctx.saved_tensors
        n, h = hidden.shape
        g_logprobs = torch.zeros_like(lse[:, None].expand(n, ids.shape[1])) if g_logprobs is None else g_logprobs.float()
        g_entropy = torch.zeros_like(lse) if g_entropy is None else g_entropy.float().contiguous()
        c = g_logprobs.sum(-1).contiguous()
        dx = torch.zeros(n, h, dtype=torch.float32, device=hidden.device)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=hidden.device)
        if ctx.backend == "triton":
            bn, bv, bh = _tiles.block_sizes(h, interpret_mode())
            grid = (triton.cdiv(n, bn), triton.cdiv(weight.shape[0], bv))
            _dense_backward_kernel[grid](
                hidden, weight, lse, ez, c, g_entropy, dx, dw, n, weight.shape[0], h, hidden.stride(0),
                weight.stride(0), ctx.inv_temp, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh,
                PRECISION=_tiles.precision(hidden.dtype), UPCAST=interpret_mode(),
            )
        else:
            _dense_backward_torch(hidden, weight.float(), lse, ez, c, g_entropy, ctx.inv_temp, dx, dw)
        _sparse_backward(hidden, weight, ids, g_logprobs, ctx.inv_temp, dx, dw)
        return dx.to(hidden.dtype), dw.to(weight.dtype), None, None, None


def logprobs_at(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0,
    mask: torch.Tensor | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(ids[n, k] | hidden[n]) [N, K] and entropy [N] (fp32; zero where `mask` is False)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if ids.dim() != 2 or ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"need ids [N, K] with N = {hidden.shape[0]}, got {tuple(ids.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    n = hidden.shape[0]
    rows = None if mask is None else mask.reshape(-1).nonzero().squeeze(1)
    x = hidden if rows is None else hidden.index_select(0, rows)
    sel = ids if rows is None else ids.index_select(0, rows)
    if sel.numel() and (int(sel.min()) < 0 or int(sel.max()) >= weight.shape[0]):
        raise ValueError(f"ids must be in [0, {weight.shape[0]})")
    logprobs, entropy = LinearLogprobs.apply(
        x.contiguous(), weight.contiguous(), sel.long().contiguous(), float(temperature), resolve(backend, hidden)
    )
    if rows is None:
        return logprobs, entropy
    full_lp = logprobs.new_zeros(n, ids.shape[1]).index_copy(0, rows, logprobs)
    return full_lp, entropy.new_zeros(n).index_copy(0, rows, entropy)


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    return_entropy: bool = False, mask: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(target) [N] in fp32 (and the full-distribution entropy [N] with
    `return_entropy`); tokens where `mask` is False get 0 and no gradient."""
    logprobs, entropy = logprobs_at(hidden, weight, targets.reshape(-1, 1), temperature=temperature, mask=mask, backend=backend)
    return (logprobs[:, 0], entropy) if return_entropy else logprobs[:, 0]
