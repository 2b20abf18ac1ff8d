"""Per-token KL between the student's and a teacher's full next-token distributions, from both
models' last hidden states and LM heads, without the tokens x vocab logits of either.

Forward: one pass over vocab tiles computes both heads' logits tile (two GEMMs, the heads may
have different hidden sizes) and online statistics: log-sum-exp of each and E_p[z_s - z_t]
(reverse) or E_q[z_t - z_s] (forward). Backward (student only; the teacher gets no gradient)
recomputes the tiles: reverse d/dz_j = p_j ((z_j - w_j) - E_p[z - w]); forward d/dz_j = p_j - q_j.
Must not return a gradient for the teacher's inputs.
"""

from __future__ import annotations

import torch

from trainer.kernels import _tiles
from trainer.kernels.backend import interpret_mode, resolve, rows_per_chunk

DIRECTIONS = ("reverse", "forward")

if _tiles.triton is not None:
    import triton
    import triton.language as tl

    @triton.jit
    def _kl_stats_kernel(
        X, W, XT, WT, LSE_S, LSE_T, E_DIFF, N, V, H, HT, stride_x, stride_w, stride_xt, stride_wt, inv_temp,
        REVERSE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < N
        m_s = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        m_t = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        s_s = tl.zeros([BLOCK_N], dtype=tl.float32)
        s_t = tl.zeros([BLOCK_N], dtype=tl.float32)
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum over the weighting head of e^(z - m) (diff)
        for v0 in range(0, V, BLOCK_V):
            offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
            mask_v = offs_v < V
            zs = _tiles.logits_tile(X, W, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
                                    BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST) * inv_temp
            zt = _tiles.logits_tile(XT, WT, offs_n, offs_v, mask_n, mask_v, HT, stride_xt, stride_wt,
                                    BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST) * inv_temp
            diff = tl.where(mask_v[None, :], zs - zt, 0.0)
            zs = tl.where(mask_v[None, :], zs, float("-inf"))
            zt = tl.where(mask_v[None, :], zt, float("-inf"))
            ms_new = tl.maximum(m_s, tl.max(zs, axis=1))
            mt_new = tl.maximum(m_t, tl.max(zt, axis=1))
            ps = tl.exp(zs - ms_new[:, None])
            pt = tl.exp(zt - mt_new[:, None])
            a_s = tl.exp(m_s - ms_new)
            a_t = tl.exp(m_t - mt_new)
            s_s = s_s * a_s + tl.sum(ps, axis=1)
            s_t = s_t * a_t + tl.sum(pt, axis=1)
            if REVERSE:
                acc = acc * a_s + tl.sum(ps * diff, axis=1)
            else:
                acc = acc * a_t - tl.sum(pt * diff, axis=1)
            m_s = ms_new
            m_t = mt_new
        tl.store(LSE_S + offs_n, m_s + tl.log(s_s), mask=mask_n)
        tl.store(LSE_T + offs_n, m_t + tl.log(s_t), mask=mask_n)
        if REVERSE:
            tl.store(E_DIFF + offs_n, acc / s_s, mask=mask_n)
        else:
            tl.store(E_DIFF + offs_n, acc / s_t, mask=mask_n)

    @triton.jit
    def _kl_backward_kernel(
        X, W, XT, WT, LSE_S, LSE_T, E_DIFF, G, DX, DW, N, V, H, HT, stride_x, stride_w, stride_xt, stride_wt,
        inv_temp, REVERSE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        offs_n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_v = (tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
        mask_n = offs_n < N
        mask_v = offs_v < V
        zs = _tiles.logits_tile(X, W, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
                                BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST) * inv_temp
        zt = _tiles.logits_tile(XT, WT, offs_n, offs_v, mask_n, mask_v, HT, stride_xt, stride_wt,
                                BLOCK_N, BLOCK_V, BLOCK_H, PRECISION, UPCAST) * inv_temp
        lse_s = tl.load(LSE_S + offs_n, mask=mask_n, other=0.0)
        gn = tl.load(G + offs_n, mask=mask_n, other=0.0)
        p = tl.exp(zs - lse_s[:, None])
        if REVERSE:
            e_diff = tl.load(E_DIFF + offs_n, mask=mask_n, other=0.0)
            g = p * ((zs - zt) - e_diff[:, None])
        else:
            lse_t = tl.load(LSE_T + offs_n, mask=mask_n, other=0.0)
            g = p - tl.exp(zt - lse_t[:, None])
        g = tl.where(mask_n[:, None] & mask_v[None, :], g * (gn * inv_temp)[:, None], 0.0)
        _tiles.accumulate_grads(g, X, W, DX, DW, offs_n, offs_v, mask_n, mask_v, H, stride_x, stride_w,
                                BLOCK_H, PRECISION, UPCAST)


def _tile_logits(x: torch.Tensor, w32: torch.Tensor, inv_temp: float) -> torch.Tensor:
    return (x.float() @ w32.T) * inv_temp


class FullVocabKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, temperature, reverse, backend):  # noqa: ANN001, ANN205
        n = hidden.shape[0]
        inv_temp = 1.0 / temperature
        lse_s = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse_t, e_diff = torch.empty_like(lse_s), torch.empty_like(lse_s)
        if backend == "triton":
            bn, bv, bh = _tiles.block_sizes(min(hidden.shape[1], t_hidden.shape[1]), interpret_mode())
            _kl_stats_kernel[(triton.cdiv(n, bn),)](
                hidden, weight, t_hidden, t_weight, lse_s, lse_t, e_diff, n, weight.shape[0], hidden.shape[1],
                t_hidden.shape[1], hidden.stride(0), weight.stride(0), t_hidden.stride(0), t_weight.stride(0), inv_temp,
                REVERSE=reverse, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, PRECISION=_tiles.precision(hidden.dtype), UPCAST=interpret_mode(),
            )
        else:
            w32, wt32 = weight.float(), t_weight.float()
            step = rows_per_chunk(weight.shape[0], 1 << 23)
            for start in range(0, n, step):
                sl = slice(start, start + step)
                zs, zt = _tile_logits(hidden[sl], w32, inv_temp), _tile_logits(t_hidden[sl], wt32, inv_temp)
                lse_s[sl], lse_t[sl] = torch.logsumexp(zs, -1), torch.logsumexp(zt, -1)
                if reverse:
                    e_diff[sl] = (torch.exp(zs - lse_s[sl, None]) * (zs - zt)).sum(-1)
                else:
                    e_diff[sl] = (torch.exp(zt - lse_t[sl, None]) * (zt - zs)).sum(-1)
        ctx.save_for_backward(hidden, weight, t_hidden, t_weight, lse_s, lse_t, e_diff)
        ctx.inv_temp, ctx.reverse, ctx.backend = inv_temp, reverse, backend
        # KL(p||q) = E_p[z_s - z_t] - lse_s + lse_t ; KL(q||p) = E_q[z_t - z_s] - lse_t + lse_s
        return e_diff - lse_s + lse_t if reverse else e_diff - lse_t + lse_s

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        hidden, weight, t_hidden, t_weight, lse_s, lse_t, e_diff = ctx.saved_tensors
        n, h = hidden.shape
        grad = grad.float().contiguous()
        dx = torch.zeros(n, h, dtype=torch.float32, device=hidden.device)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=hidden.device)
        inv_temp = ctx.inv_temp
        if ctx.backend == "triton":
            bn, bv, bh = _tiles.block_sizes(min(h, t_hidden.shape[1]), interpret_mode())
            grid = (triton.cdiv(n, bn), triton.cdiv(weight.shape[0], bv))
            _kl_backward_kernel[grid](
                hidden, weight, t_hidden, t_weight, lse_s, lse_t, e_diff, grad, dx, dw, n, weight.shape[0], h,
                t_hidden.shape[1], hidden.stride(0), weight.stride(0), t_hidden.stride(0), t_weight.stride(0),
                inv_temp, REVERSE=ctx.reverse, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh,
                PRECISION=_tiles.precision(hidden.dtype), UPCAST=interpret_mode(),
            )
        else:
            w32, wt32 = weight.float(), t_weight.float()
            step = rows_per_chunk(weight.shape[0], 1 << 23)
            for start in range(0, n, step):
                sl = slice(start, start + step)
                x = hidden[sl].float()
                zs, zt = _tile_logits(x, w32, inv_temp), _tile_logits(t_hidden[sl], wt32, inv_temp)
                p = torch.exp(zs - lse_s[sl, None])
                if ctx.reverse:
                    g = p * ((zs - zt) - e_diff[sl, None])
                else:
                    g = p - torch.exp(zt - lse_t[sl, None])
                g = g * (grad[sl] * inv_temp)[:, None]
                dx[sl] += g @ w32
                dw += g.T @ x
        return dx.to(hidden.dtype), dw.to(weight.dtype), None, None, None, None, None


def full_vocab_kl(
    hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, *,
    temperature: float = 1.0, direction: str = "reverse", mask: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor:
    """Per-token KL(student || teacher) ("reverse", the dGRPO term) or KL(teacher || student)
    ("forward") over the whole vocabulary, fp32 [N]; 0 where `mask` is False. The teacher's head
    may have another hidden size but must share the vocabulary; it receives no gradient."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student and teacher vocabularies differ: {weight.shape[0]} vs {teacher_weight.shape[0]}")
    if hidden.shape[0] != teacher_hidden.shape[0] or hidden.shape[1] != weight.shape[1] or teacher_hidden.shape[1] != teacher_weight.shape[1]:
        raise ValueError("need hidden [N, H], weight [V, H], teacher_hidden [N, Ht], teacher_weight [V, Ht]")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    n = hidden.shape[0]
    rows = None if mask is None else mask.reshape(-1).nonzero().squeeze(1)
    x, xt = (hidden, teacher_hidden) if rows is None else (hidden.index_select(0, rows), teacher_hidden.index_select(0, rows))
    kl = FullVocabKL.apply(
        x.contiguous(), weight.contiguous(), xt.detach().contiguous(), teacher_weight.detach().contiguous(),
        float(temperature), direction == "reverse", resolve(backend, hidden),
    )
    return kl if rows is None else kl.new_zeros(n).index_copy(0, rows, kl)
