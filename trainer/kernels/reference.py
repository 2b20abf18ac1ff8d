"""Pure-PyTorch references for the fused ops: they build the full tokens x vocab logits, so they
are for tests and small shapes only. Must stay obviously correct rather than fast.
"""

from __future__ import annotations

import torch


def logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    return (hidden.to(dtype) @ weight.to(dtype).T) / temperature


def token_logprobs_ref(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and the entropy of the full distribution, per token."""
    logprobs = torch.log_softmax(logits(hidden, weight, temperature, dtype), dim=-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logprobs.gather(-1, targets[:, None].long())[:, 0], entropy


def full_vocab_kl_ref(
    hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, *,
    temperature: float = 1.0, direction: str = "reverse", dtype: torch.dtype = torch.float64, jsd_beta: float = 0.5,
) -> torch.Tensor:
    """Per-token KL(student || teacher) ("reverse"), KL(teacher || student) ("forward") or the
    generalized JSD ("jsd": b KL(t || m) + (1 - b) KL(s || m), m = (1 - b) s + b t, b = jsd_beta)."""
    s = torch.log_softmax(logits(hidden, weight, temperature, dtype), dim=-1)
    t = torch.log_softmax(logits(teacher_hidden, teacher_weight, temperature, dtype), dim=-1)
    if direction == "jsd":
        return _jsd(s, t, jsd_beta)
    if direction == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    return (t.exp() * (t - s)).sum(-1)


def tail_logprob(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the mass outside `ids` [N, K], from full log-probs [N, V] (a complement log-sum-exp)."""
    return torch.logsumexp(logprobs.scatter(-1, ids.long(), float("-inf")), dim=-1)


def topk_kl_ref(
    hidden: torch.Tensor, weight: torch.Tensor, teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor, *,
    teacher_topk_tail: torch.Tensor | None = None, temperature: float = 1.0, direction: str = "reverse",
    dtype: torch.dtype = torch.float64, jsd_beta: float = 0.5,
) -> torch.Tensor:
    """KL between the K+1-bucket coarsenings (top-k ids + the rest), computed in `dtype` from full
    logits; the teacher's tail is `teacher_topk_tail` or log(1 - sum of its top-k)."""
    logprobs = torch.log_softmax(logits(hidden, weight, temperature, dtype), dim=-1)
    s = torch.cat([logprobs.gather(-1, teacher_topk_ids.long()), tail_logprob(logprobs, teacher_topk_ids)[:, None]], -1)
    t_top = teacher_topk_logprobs.to(dtype)
    t_tail = teacher_topk_tail.to(dtype) if teacher_topk_tail is not None else torch.log1p(-t_top.exp().sum(-1))
    t = torch.cat([t_top, t_tail[:, None]], -1)
    if direction == "jsd":
        return _jsd(s, t, jsd_beta)
    if direction == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    return (t.exp() * (t - s)).sum(-1)


def _jsd(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalized JSD from log-probabilities, with the mixture written out in probabilities."""
    m = ((1 - beta) * s.exp() + beta * t.exp()).log()
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
