"""The policy head: per token, from last hidden states and LM-head weights, the fp32 log-probs of
chosen ids, the entropy, the log-mass outside a set of ids (a top-k tail) and the KL to a teacher
(full vocabulary from the teacher's head, or its top-k plus tail), with one backward for whatever
loss uses them, never holding the tokens x vocab logits of the whole batch.

Per chunk of tokens (`chunk_bytes` of fp32 tiles): the logits tile by one GEMM (operands in the
compute dtype, fp32 accumulation and output; the teacher's tile the same way), then one fused row
pass for the statistics (Triton on CUDA or under TRITON_INTERPRET=1, PyTorch otherwise). The
backward recomputes the tiles, writes dL/dz with one fused row pass (dense terms and the sparse
terms at the chosen ids), then dX = dZ W and dW += dZ^T X as GEMMs in a fixed order: no atomics,
bitwise-identical on repeat.

Compute dtype: the active autocast dtype when autocast is on (as an `nn.Linear` head would run),
else the operands' dtype, else (mixed operands) the wider of the two. Operands are cast to it once
per call; every result and accumulator is fp32, whatever autocast is active.
Must not return anything in low precision, and must not use atomics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.kernels.backend import resolve

DIRECTIONS = ("reverse", "forward", "jsd")
REVERSE, FORWARD, JSD = range(3)  # the row kernels' MODE
DEFAULT_CHUNK_BYTES = 512 * 2**20
TAIL_FLOOR = -80.0
_HALF = (torch.bfloat16, torch.float16)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch row passes are used
    triton = None
    tl = None

if triton is not None:

    @triton.jit
    def _log_mixture(lp, lq, beta):
        """log((1 - beta) e^lp + beta e^lq), stable."""
        a = lp + tl.log(1.0 - beta)
        b = lq + tl.log(beta)
        top = tl.maximum(a, b)
        return top + tl.log(tl.exp(a - top) + tl.exp(b - top))

    @triton.jit
    def _row_stats_kernel(
        Z, ZT, IDS, LSE, EZ, LSE_T, EDIFF, KLQ, LSE_TAIL, V, stride_z, stride_zt, n_ids, tail_start, BETA,
        HAS_TEACHER: tl.constexpr, MODE: tl.constexpr, HAS_TAIL: tl.constexpr, BLOCK_V: tl.constexpr,
    ):
        """One row of the (temperature-scaled) logits tile: log-sum-exp, E_p[z], the teacher's
        log-sum-exp and E_p[z - w] (MODE reverse) or E_q[w - z] (forward), and the log-sum-exp over
        the columns outside IDS[tail_start:] -- all with online (running-max) sums. MODE jsd: a
        second pass over the row, once both log-sum-exps are known, for KL(p || m) and KL(q || m)
        with m = (1 - BETA) p + BETA q."""
        row = tl.program_id(0).to(tl.int64)
        m = float("-inf")
        s = 0.0
        sz = 0.0
        mt = float("-inf")
        st = 0.0
        acc = 0.0
        m2 = float("-inf")
        s2 = 0.0
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            valid = offs < V
            z = tl.load(Z + row * stride_z + offs, mask=valid, other=float("-inf"))
            z0 = tl.where(valid, z, 0.0)
            m_new = tl.maximum(m, tl.max(z, 0))  # finite: every block has a valid column
            alpha = tl.exp(m - m_new)
            p = tl.exp(z - m_new)
            s = s * alpha + tl.sum(p, 0)
            sz = sz * alpha + tl.sum(p * z0, 0)
            if HAS_TEACHER:
                w = tl.load(ZT + row * stride_zt + offs, mask=valid, other=float("-inf"))
                w0 = tl.where(valid, w, 0.0)
                mt_new = tl.maximum(mt, tl.max(w, 0))
                alpha_t = tl.exp(mt - mt_new)
                q = tl.exp(w - mt_new)
                st = st * alpha_t + tl.sum(q, 0)
                if MODE == 0:
                    acc = acc * alpha + tl.sum(p * (z0 - w0), 0)
                elif MODE == 1:
                    acc = acc * alpha_t + tl.sum(q * (w0 - z0), 0)
                mt = mt_new
            if HAS_TAIL:
                in_k = offs < 0
                for k in range(tail_start, n_ids):
                    in_k = in_k | (offs == tl.load(IDS + row * n_ids + k))
                zr = tl.where(in_k, float("-inf"), z)
                m2_new = tl.maximum(m2, tl.max(zr, 0))
                shift = tl.where(m2_new == float("-inf"), 0.0, m2_new)  # a block wholly inside the ids
                s2 = s2 * tl.exp(m2 - shift) + tl.sum(tl.exp(zr - shift), 0)
                m2 = m2_new
            m = m_new
        tl.store(LSE + row, m + tl.log(s))
        tl.store(EZ + row, sz / s)
        if HAS_TEACHER:
            tl.store(LSE_T + row, mt + tl.log(st))
            if MODE == 0:
                tl.store(EDIFF + row, acc / s)
            elif MODE == 1:
                tl.store(EDIFF + row, acc / st)
            else:
                lse = m + tl.log(s)
                lse_t = mt + tl.log(st)
                acc_q = 0.0
                for v0 in range(0, V, BLOCK_V):
                    offs = v0 + tl.arange(0, BLOCK_V)
                    valid = offs < V
                    lp = tl.load(Z + row * stride_z + offs, mask=valid, other=0.0) - lse
                    lq = tl.load(ZT + row * stride_zt + offs, mask=valid, other=0.0) - lse_t
                    lm = _log_mixture(lp, lq, BETA)
                    acc += tl.sum(tl.where(valid, tl.exp(lp) * (lp - lm), 0.0), 0)
                    acc_q += tl.sum(tl.where(valid, tl.exp(lq) * (lq - lm), 0.0), 0)
                tl.store(EDIFF + row, acc)
                tl.store(KLQ + row, acc_q)
        if HAS_TAIL:
            tl.store(LSE_TAIL + row, m2 + tl.log(s2))

    @triton.jit
    def _row_grad_kernel(
        Z, ZT, IDS, G_IDS, DZ, LSE, LSE_T, LSE_TAIL, A, B, R, F, TC, V, stride_z, stride_zt, stride_dz, n_ids,
        tail_start, BETA, HAS_TEACHER: tl.constexpr, MODE: tl.constexpr, HAS_TAIL: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):
        """dL/dz for one row: p (a + b z + r d) - f q + tc [j outside the tail ids] e^(z - lse_tail),
        plus G_IDS at IDS (the sparse terms), written once in DZ's dtype; d = z - w (MODE reverse)
        or log p - log m (jsd), f only for forward."""
        row = tl.program_id(0).to(tl.int64)
        lse = tl.load(LSE + row)
        a = tl.load(A + row)
        b = tl.load(B + row)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            valid = offs < V
            z = tl.load(Z + row * stride_z + offs, mask=valid, other=0.0)
            p = tl.exp(z - lse)
            g = p * (a + b * z)
            if HAS_TEACHER:
                w = tl.load(ZT + row * stride_zt + offs, mask=valid, other=0.0)
                if MODE == 0:
                    g += p * tl.load(R + row) * (z - w)
                elif MODE == 1:
                    g -= tl.load(F + row) * tl.exp(w - tl.load(LSE_T + row))
                else:
                    lp = z - lse
                    g += p * tl.load(R + row) * (lp - _log_mixture(lp, w - tl.load(LSE_T + row), BETA))
            if HAS_TAIL:
                in_k = offs < 0
                for k in range(tail_start, n_ids):
                    in_k = in_k | (offs == tl.load(IDS + row * n_ids + k))
                g += tl.where(in_k, 0.0, tl.load(TC + row) * tl.exp(z - tl.load(LSE_TAIL + row)))
            for k in range(0, n_ids):
                g += tl.where(offs == tl.load(IDS + row * n_ids + k), tl.load(G_IDS + row * n_ids + k), 0.0)
            tl.store(DZ + row * stride_dz + offs, g.to(DZ.dtype.element_ty), mask=valid)


ROW_BLOCK = 1024  # columns per step of the row kernels (8 fp32 per thread at num_warps=4)
ROW_WARPS = 4


# -- operands and GEMMs --------------------------------------------------------------------------
def compute_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """The dtype both GEMM operands are cast to (see the module docstring)."""
    device_type = a.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if a.dtype == b.dtype:
        return a.dtype
    return torch.promote_types(a.dtype, b.dtype)


def _operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The GEMM operand: in `dtype` on CUDA (cuBLAS takes it, fp32 out); on CPU the same values
    widened to fp32 once, so the CPU GEMM is exact fp32 arithmetic on compute-dtype values."""
    t = t.detach().to(dtype).contiguous()
    return t if t.is_cuda else t.float()


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 accumulation and an fp32 result."""
    if a.is_cuda and a.dtype in _HALF:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)


def _addmm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out (fp32) += a @ b, fp32 accumulation."""
    if a.is_cuda and a.dtype in _HALF:
        torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
    else:
        out.addmm_(a, b)


def _grad_operand(dz: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """dZ rounded to the compute dtype (as the GPU's GEMM reads it), widened again on CPU."""
    return dz if dz.dtype == like.dtype else dz.to(like.dtype)


@dataclass
class _Spec:
    n_targets: int  # the first n_targets columns of ids are targets, the rest the teacher's top-k
    has_teacher: bool
    mode: int  # REVERSE, FORWARD or JSD
    beta: float  # JSD's mixture weight of the teacher
    has_tail: bool
    inv_temp: float
    rows_per_chunk: int
    backend: str
    dtype: torch.dtype  # the student's GEMM operands (and dZ)
    t_dtype: torch.dtype  # the teacher's GEMM operands


# -- the row passes, PyTorch ---------------------------------------------------------------------
def _tail_mask(ids: torch.Tensor, spec: _Spec, shape: torch.Size) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.bool, device=ids.device).scatter_(1, ids[:, spec.n_targets:], True)


def _stats_torch(z: torch.Tensor, zt: torch.Tensor | None, ids: torch.Tensor, spec: _Spec) -> dict[str, torch.Tensor]:
    lse = torch.logsumexp(z, -1)
    p = torch.exp(z - lse[:, None])
    stats = {"lse": lse, "ez": (p * z).sum(-1)}
    if spec.has_teacher:
        stats["lse_t"] = torch.logsumexp(zt, -1)
        if spec.mode == REVERSE:
            stats["e_diff"] = (p * (z - zt)).sum(-1)
        elif spec.mode == FORWARD:
            stats["e_diff"] = (torch.exp(zt - stats["lse_t"][:, None]) * (zt - z)).sum(-1)
        else:
            lp, lq = z - lse[:, None], zt - stats["lse_t"][:, None]
            lm = _log_mixture_torch(lp, lq, spec.beta)
            stats["e_diff"] = (p * (lp - lm)).sum(-1)
            stats["kl_q"] = (lq.exp() * (lq - lm)).sum(-1)
    if spec.has_tail:
        stats["lse_tail"] = torch.logsumexp(z.masked_fill(_tail_mask(ids, spec, z.shape), float("-inf")), -1)
    return stats


def _log_mixture_torch(lp: torch.Tensor, lq: torch.Tensor, beta: float) -> torch.Tensor:
    """log m = log((1 - beta) p + beta q), from log p and log q."""
    return torch.logaddexp(lp + math.log1p(-beta), lq + math.log(beta))


def _grad_torch(z: torch.Tensor, zt: torch.Tensor | None, ids: torch.Tensor, g_ids: torch.Tensor,
                stats: dict[str, torch.Tensor], coef: dict[str, torch.Tensor], spec: _Spec) -> torch.Tensor:
    p = torch.exp(z - stats["lse"][:, None])
    g = p * (coef["a"][:, None] + coef["b"][:, None] * z)
    if spec.has_teacher:
        if spec.mode == REVERSE:
            g += p * coef["r"][:, None] * (z - zt)
        elif spec.mode == FORWARD:
            g -= coef["f"][:, None] * torch.exp(zt - stats["lse_t"][:, None])
        else:
            lp = z - stats["lse"][:, None]
            g += p * coef["r"][:, None] * (lp - _log_mixture_torch(lp, zt - stats["lse_t"][:, None], spec.beta))
    if spec.has_tail:
        rest = torch.exp(z - stats["lse_tail"][:, None]).masked_fill_(_tail_mask(ids, spec, z.shape), 0.0)
        g += coef["tc"][:, None] * rest
    for k in range(ids.shape[1]):  # one id per row per call: no duplicate index, a fixed order
        g.scatter_add_(1, ids[:, k : k + 1], g_ids[:, k : k + 1])
    return g.to(spec.dtype)


# -- the row passes, Triton ----------------------------------------------------------------------
def _stats_triton(z: torch.Tensor, zt: torch.Tensor | None, ids: torch.Tensor, spec: _Spec) -> dict[str, torch.Tensor]:
    c, v = z.shape
    names = ("lse", "ez", "lse_t", "e_diff", "kl_q", "lse_tail")
    out = {name: torch.empty(c, dtype=torch.float32, device=z.device) for name in names}
    _row_stats_kernel[(c,)](
        z, z if zt is None else zt, ids, out["lse"], out["ez"], out["lse_t"], out["e_diff"], out["kl_q"], out["lse_tail"],
        v, z.stride(0), z.stride(0) if zt is None else zt.stride(0), ids.shape[1], spec.n_targets, spec.beta,
        HAS_TEACHER=spec.has_teacher, MODE=spec.mode, HAS_TAIL=spec.has_tail, BLOCK_V=ROW_BLOCK,
        num_warps=ROW_WARPS,
    )
    return out


def _grad_triton(z: torch.Tensor, zt: torch.Tensor | None, ids: torch.Tensor, g_ids: torch.Tensor,
                 stats: dict[str, torch.Tensor], coef: dict[str, torch.Tensor], spec: _Spec) -> torch.Tensor:
    c, v = z.shape
    dz = torch.empty(c, v, dtype=spec.dtype, device=z.device)
    _row_grad_kernel[(c,)](
        z, z if zt is None else zt, ids, g_ids.contiguous(), dz, stats["lse"], stats["lse_t"], stats["lse_tail"],
        coef["a"], coef["b"], coef["r"], coef["f"], coef["tc"], v, z.stride(0),
        z.stride(0) if zt is None else zt.stride(0), dz.stride(0), ids.shape[1], spec.n_targets, spec.beta,
        HAS_TEACHER=spec.has_teacher, MODE=spec.mode, HAS_TAIL=spec.has_tail, BLOCK_V=ROW_BLOCK,
        num_warps=ROW_WARPS,
    )
    return dz


_STATS = {"torch": _stats_torch, "triton": _stats_triton}
_GRAD = {"torch": _grad_torch, "triton": _grad_triton}


def _operands(hidden: torch.Tensor, weight: torch.Tensor, t_hidden: torch.Tensor | None,
              t_weight: torch.Tensor | None, spec: _Spec) -> tuple[torch.Tensor, ...]:
    x, w = _operand(hidden, spec.dtype), _operand(weight, spec.dtype)
    if not spec.has_teacher:
        return x, w, None, None
    return x, w, _operand(t_hidden, spec.t_dtype), _operand(t_weight, spec.t_dtype)


def _tiles(x: torch.Tensor, w: torch.Tensor, xt: torch.Tensor | None, wt: torch.Tensor | None, sl: slice,
           spec: _Spec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunk's temperature-scaled logits, student and teacher, fp32."""
    z = _mm(x[sl], w.T)
    zt = _mm(xt[sl], wt.T) if spec.has_teacher else None
    if spec.inv_temp != 1.0:
        z.mul_(spec.inv_temp)
        if zt is not None:
            zt.mul_(spec.inv_temp)
    return z, zt


class _PolicyHead(torch.autograd.Function):
    """(hidden [n, H], weight [V, H], ids [n, K]) -> (log p at ids [n, K], entropy [n], kl [n],
    tail log-mass [n], teacher log p at the target ids [n, n_targets]), all fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, ids, spec):  # noqa: ANN001, ANN205
        n = hidden.shape[0]
        x, w, xt, wt = _operands(hidden, weight, t_hidden, t_weight, spec)
        device = hidden.device
        with torch.autocast(device.type, enabled=False):
            names = ("lse", "ez") + (("lse_t", "e_diff") if spec.has_teacher else ()) \
                + (("kl_q",) if spec.has_teacher and spec.mode == JSD else ()) + (("lse_tail",) if spec.has_tail else ())
            stats = {name: torch.empty(n, dtype=torch.float32, device=device) for name in names}
            z_ids = torch.empty(n, ids.shape[1], dtype=torch.float32, device=device)
            t_targets = torch.zeros(n, spec.n_targets, dtype=torch.float32, device=device)
            for start in range(0, n, spec.rows_per_chunk):
                sl = slice(start, start + spec.rows_per_chunk)
                z, zt = _tiles(x, w, xt, wt, sl, spec)
                chunk = _STATS[spec.backend](z, zt, ids[sl], spec)
                for name in names:
                    stats[name][sl] = chunk[name]
                z_ids[sl] = z.gather(1, ids[sl])
                if spec.has_teacher and spec.n_targets:
                    t_targets[sl] = zt.gather(1, ids[sl, : spec.n_targets]) - chunk["lse_t"][:, None]
            logprobs = z_ids - stats["lse"][:, None]
            entropy = stats["lse"] - stats["ez"]
            kl = torch.zeros(n, dtype=torch.float32, device=device)
            if spec.has_teacher and spec.mode == JSD:  # JSD_beta = beta KL(q||m) + (1 - beta) KL(p||m)
                kl = spec.beta * stats["kl_q"] + (1 - spec.beta) * stats["e_diff"]
            elif spec.has_teacher:  # KL(p||q) = E_p[z - w] - lse + lse_t ; KL(q||p) = E_q[w - z] - lse_t + lse
                sign = 1.0 if spec.mode == REVERSE else -1.0
                kl = stats["e_diff"] - sign * (stats["lse"] - stats["lse_t"])
            tail = stats["lse_tail"] - stats["lse"] if spec.has_tail else torch.zeros_like(kl)
        ctx.save_for_backward(hidden, weight, t_hidden, t_weight, ids, *(stats[k] for k in names))
        ctx.names, ctx.spec = names, spec
        ctx.mark_non_differentiable(t_targets)
        ctx.set_materialize_grads(False)
        return logprobs, entropy, kl, tail, t_targets

    @staticmethod
    def backward(ctx, g_lp, g_ent, g_kl, g_tail, _):  # noqa: ANN001, ANN205
        hidden, weight, t_hidden, t_weight, ids, *saved = ctx.saved_tensors
        spec: _Spec = ctx.spec
        stats = dict(zip(ctx.names, saved))
        n, device = hidden.shape[0], hidden.device
        zeros = torch.zeros(n, dtype=torch.float32, device=device)
        g_lp = torch.zeros(n, ids.shape[1], dtype=torch.float32, device=device) if g_lp is None else g_lp.float()
        g_ent = zeros if g_ent is None else g_ent.float()
        g_kl = zeros if g_kl is None or not spec.has_teacher else g_kl.float()
        g_tail = zeros if g_tail is None or not spec.has_tail else g_tail.float()
        # dL/dz_j = sum_k g_k ([j = id_k] - p_j) - g_ent p_j (z_j - E_p z) + g_tail ([j not in K] e^(z_j - lse_tail) - p_j)
        #           + g_kl (reverse: p_j (z_j - w_j - E_p[z - w]) ; forward: p_j - q_j ;
        #                   jsd: (1 - beta) p_j (log p_j/m_j - KL(p||m)), since dJSD/dp_j = (1 - beta) log p_j/m_j),
        #           all divided by T.
        s = spec.inv_temp
        a = -g_lp.sum(-1) + g_ent * stats["ez"] - g_tail
        r = g_kl
        if spec.has_teacher and spec.mode == JSD:
            r = g_kl * (1 - spec.beta)
            a = a - r * stats["e_diff"]
        elif spec.has_teacher:
            a = a - g_kl * stats["e_diff"] if spec.mode == REVERSE else a + g_kl
        coef = {"a": a * s, "b": -g_ent * s, "r": r * s, "f": g_kl * s, "tc": g_tail * s}
        coef = {k: v.contiguous() for k, v in coef.items()}
        g_ids = (g_lp * s).contiguous()
        for name in ("lse_t", "lse_tail"):
            stats.setdefault(name, zeros)
        x, w, xt, wt = _operands(hidden, weight, t_hidden, t_weight, spec)
        dx = torch.empty_like(hidden)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=device)
        with torch.autocast(device.type, enabled=False):
            for start in range(0, n, spec.rows_per_chunk):
                sl = slice(start, start + spec.rows_per_chunk)
                z, zt = _tiles(x, w, xt, wt, sl, spec)
                chunk_stats = {k: v[sl] for k, v in stats.items()}
                chunk_coef = {k: v[sl] for k, v in coef.items()}
                dz = _GRAD[spec.backend](z, zt, ids[sl], g_ids[sl], chunk_stats, chunk_coef, spec)
                del z, zt
                dz = _grad_operand(dz, x)
                dx[sl] = _mm(dz, w).to(dx.dtype)
                _addmm_(dw, dz.T, x[sl])
        return dx, dw.to(weight.dtype), None, None, None, None


@dataclass
class HeadOutput:
    """Per-token results of `policy_head`, fp32; fields not asked for are None."""

    logprobs: torch.Tensor | None  # [N] (targets [N]) or [N, K] (targets [N, K])
    entropy: torch.Tensor | None  # [N]
    kl: torch.Tensor | None  # [N]
    teacher_logprobs: torch.Tensor | None  # [N] or [N, K]: the local teacher's log p at the targets (no grad)


def bucket_kl(student_logprobs: torch.Tensor, student_tail: torch.Tensor, teacher_logprobs: torch.Tensor,
              teacher_tail: torch.Tensor | None, direction: str, jsd_beta: float = 0.5) -> torch.Tensor:
    """KL between two distributions coarsened to K+1 buckets: the teacher's top-k ids and one
    bucket for the rest of the vocabulary. A true divergence (>= 0, 0 iff the buckets agree) and a
    lower bound on the full KL. `student_tail` is the exact log-mass outside the ids (a complement
    log-sum-exp, not 1 - sum); a teacher known only by its top-k gets log(1 - sum) in fp64. Tails
    are floored at e^-80 (a top-k that covers the vocabulary, or served log-probs summing past 1)."""
    if teacher_tail is None:
        mass = teacher_logprobs.double().exp().sum(-1)
        teacher_tail = torch.log1p(-mass.clamp(max=1.0))
    s = torch.cat([student_logprobs, student_tail.clamp(min=TAIL_FLOOR)[:, None]], dim=-1)
    t = torch.cat([teacher_logprobs, teacher_tail.clamp(min=TAIL_FLOOR)[:, None]], dim=-1).to(s.dtype)
    if direction == "jsd":  # on the buckets: m = (1 - beta) s + beta t
        m = _log_mixture_torch(s, t, jsd_beta)
        return jsd_beta * (t.exp() * (t - m)).sum(-1) + (1 - jsd_beta) * (s.exp() * (s - m)).sum(-1)
    weights, first, second = (s, s, t) if direction == "reverse" else (t, t, s)
    return (weights.exp() * (first - second)).sum(-1)


def _rows_per_chunk(vocab: int, has_teacher: bool, chunk_bytes: int | None) -> int:
    budget = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    per_row = vocab * (4 + (4 if has_teacher else 0) + 4)  # fp32 tiles, and dZ
    return max(1, budget // per_row)


def policy_head(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor | None, *,
    teacher_hidden: torch.Tensor | None = None, teacher_weight: torch.Tensor | None = None,
    teacher_topk_ids: torch.Tensor | None = None, teacher_topk_logprobs: torch.Tensor | None = None,
    teacher_topk_tail: torch.Tensor | None = None, temperature: float = 1.0, direction: str = "reverse",
    jsd_beta: float = 0.5, entropy: bool = False, mask: torch.Tensor | None = None, chunk_bytes: int | None = None,
    backend: str = "auto",
) -> HeadOutput:
    """Per-token log p(targets) ([N] or [N, K]), entropy (with `entropy=True`) and the KL to a
    teacher at the same `temperature`: over the full vocabulary when `teacher_hidden` [N, Ht] and
    `teacher_weight` [V, Ht] are given, or on the teacher's top-k (`teacher_topk_ids`,
    `teacher_topk_logprobs` [N, k], optional exact `teacher_topk_tail` [N]) plus one tail bucket.
    `direction="reverse"` is KL(student || teacher), the dGRPO term; "forward" KL(teacher || student);
    "jsd" the generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024) with TRL's
    convention: JSD_b = b KL(teacher || m) + (1 - b) KL(student || m), m = (1 - b) student + b teacher,
    b = `jsd_beta` in (0, 1) (b -> 0 approaches the forward KL, b -> 1 the reverse, each scaled).
    Rows where `mask` is False are skipped: zeros and no gradient. The teacher gets no gradient."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "jsd" and not 0 < jsd_beta < 1:
        raise ValueError(f"jsd_beta must be in (0, 1) (0 and 1 are the forward and reverse KL), got {jsd_beta}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    n, vocab = hidden.shape[0], weight.shape[0]
    full = teacher_hidden is not None or teacher_weight is not None
    topk = teacher_topk_ids is not None or teacher_topk_logprobs is not None
    if full and topk:
        raise ValueError("give either the teacher's hidden states and head or its top-k, not both")
    if full:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("the full-vocabulary KL needs both teacher_hidden and teacher_weight")
        if teacher_weight.shape[0] != vocab:
            raise ValueError(f"student and teacher vocabularies differ: {vocab} vs {teacher_weight.shape[0]}")
        if teacher_hidden.shape[0] != n or teacher_hidden.dim() != 2 or teacher_hidden.shape[1] != teacher_weight.shape[1]:
            raise ValueError("need teacher_hidden [N, Ht] and teacher_weight [V, Ht]")
    if topk and (teacher_topk_ids is None or teacher_topk_logprobs is None
                 or teacher_topk_ids.shape != teacher_topk_logprobs.shape or teacher_topk_ids.shape[0] != n):
        raise ValueError("teacher_topk_ids and teacher_topk_logprobs must both be [N, k]")
    one_target = targets is not None and targets.dim() == 1
    if targets is None:
        target_ids = torch.zeros(n, 0, dtype=torch.long, device=hidden.device)
    else:
        target_ids = targets[:, None] if one_target else targets
    if target_ids.dim() != 2 or target_ids.shape[0] != n:
        raise ValueError(f"need targets [N] or [N, K] with N = {n}, got {tuple(targets.shape)}")
    ids = torch.cat([target_ids, teacher_topk_ids], 1) if topk else target_ids
    ids = ids.long()

    rows = None if mask is None else mask.reshape(-1).nonzero().squeeze(1)
    pick = (lambda t: t) if rows is None else (lambda t: None if t is None else t.index_select(0, rows))
    sel_ids = pick(ids).contiguous()
    if sel_ids.numel() and (int(sel_ids.min()) < 0 or int(sel_ids.max()) >= vocab):
        raise ValueError(f"ids must be in [0, {vocab})")
    spec = _Spec(n_targets=target_ids.shape[1], has_teacher=full, mode=DIRECTIONS.index(direction),
                 beta=float(jsd_beta), has_tail=topk,
                 inv_temp=1.0 / float(temperature), rows_per_chunk=_rows_per_chunk(vocab, full, chunk_bytes),
                 backend=resolve(backend, hidden), dtype=compute_dtype(hidden, weight),
                 t_dtype=compute_dtype(teacher_hidden, teacher_weight) if full else torch.float32)
    x = pick(hidden)
    if x.shape[0]:
        lp, ent, kl, tail, t_lp = _PolicyHead.apply(
            x, weight, pick(teacher_hidden).detach() if full else None, teacher_weight.detach() if full else None,
            sel_ids, spec)
    else:  # nothing to compute; keep the graph connected so backward still reaches the inputs
        lp = (x.sum() * 0).float().expand(0, ids.shape[1])
        ent = kl = tail = lp.new_zeros(0)
        t_lp = lp.new_zeros(0, spec.n_targets)
    if topk:
        k1 = spec.n_targets
        tt = pick(teacher_topk_tail) if teacher_topk_tail is not None else None
        kl = bucket_kl(lp[:, k1:], tail, pick(teacher_topk_logprobs).float(), tt, direction, jsd_beta)
        lp = lp[:, :k1]

    def scatter(t: torch.Tensor) -> torch.Tensor:
        if rows is None:
            return t
        return t.new_zeros((n, *t.shape[1:])).index_copy(0, rows, t)

    logprobs = teacher_lp = None
    if targets is not None:
        logprobs = scatter(lp)
        teacher_lp = scatter(t_lp) if full else None
        if one_target:
            logprobs = logprobs[:, 0]
            teacher_lp = teacher_lp[:, 0] if teacher_lp is not None else None
    return HeadOutput(logprobs=logprobs, entropy=scatter(ent) if entropy else None,
                      kl=scatter(kl) if (full or topk) else None, teacher_logprobs=teacher_lp)


@torch.no_grad()
def topk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, k: int, *, temperature: float = 1.0,
                  chunk_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A teacher's top-k per token from its hidden states and head, in chunks of tokens: ids [N, k],
    fp32 log-probs [N, k] and the exact log-mass outside them [N] (complement log-sum-exp)."""
    n, vocab = hidden.shape[0], weight.shape[0]
    k = min(k, vocab)
    dtype = compute_dtype(hidden, weight)
    x, w = _operand(hidden, dtype), _operand(weight, dtype)
    ids = torch.empty(n, k, dtype=torch.long, device=hidden.device)
    values = torch.empty(n, k, dtype=torch.float32, device=hidden.device)
    tail = torch.empty(n, dtype=torch.float32, device=hidden.device)
    step = _rows_per_chunk(vocab, False, chunk_bytes)
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, n, step):
            sl = slice(start, start + step)
            z = _mm(x[sl], w.T).mul_(1.0 / temperature)
            lse = torch.logsumexp(z, -1, keepdim=True)
            top = z.topk(k, -1)
            ids[sl], values[sl] = top.indices, top.values - lse
            tail[sl] = (torch.logsumexp(z.scatter_(1, top.indices, float("-inf")), -1, keepdim=True) - lse)[:, 0]
    return ids, values, tail
