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
    temperature: float = 1.0, direction: str = "reverse", dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Per-token KL(student || teacher) ("reverse") or KL(teacher || student) ("forward")."""
    s = torch.log_softmax(logits(hidden, weight, temperature, dtype), dim=-1)
    t = torch.log_softmax(logits(teacher_hidden, teacher_weight, temperature, dtype), dim=-1)
    if direction == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    return (t.exp() * (t - s)).sum(-1)


def bucket_kl(student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor, direction: str = "reverse") -> torch.Tensor:
    """KL between two distributions coarsened to K+1 buckets: the teacher's top-k ids and one tail
    bucket holding the remaining mass. A true divergence (>= 0, 0 iff the buckets agree). A tail
    that rounds to zero mass is clamped to the dtype's epsilon (served log-probs can sum past 1)."""
    eps = torch.finfo(student_logprobs.dtype).eps
    s_tail = torch.log1p(-student_logprobs.exp().sum(-1).clamp(max=1 - eps))
    t_tail = torch.log1p(-teacher_logprobs.exp().sum(-1).clamp(max=1 - eps))
    s = torch.cat([student_logprobs, s_tail[:, None]], dim=-1)
    t = torch.cat([teacher_logprobs, t_tail[:, None]], dim=-1)
    if direction == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    return (t.exp() * (t - s)).sum(-1)


def topk_kl_ref(
    hidden: torch.Tensor, weight: torch.Tensor, teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor, *,
    temperature: float = 1.0, direction: str = "reverse", dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    logprobs = torch.log_softmax(logits(hidden, weight, temperature, dtype), dim=-1)
    return bucket_kl(logprobs.gather(-1, teacher_topk_ids.long()), teacher_topk_logprobs.to(dtype), direction)
