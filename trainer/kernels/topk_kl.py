"""KL between the student and a teacher known only by its top-k log-probs per token (what a
served teacher returns), computed from the student's hidden states without full logits.

Tail handling: both distributions are coarsened to K+1 buckets, the teacher's K ids plus one
"rest of the vocabulary" bucket with mass 1 - sum_k p_k (student) and 1 - sum_k q_k (teacher).
The KL between the coarsened distributions is a true divergence (>= 0, zero iff the buckets
agree) and a lower bound on the full KL (data processing). Dropping the tail instead gives a
quantity that can be negative and rewards moving mass off the support.
Must not renormalize the top-k: that hides the tail mass from the gradient.
"""

from __future__ import annotations

import torch

from trainer.kernels.reference import bucket_kl
from trainer.kernels.token_logprobs import logprobs_at

DIRECTIONS = ("reverse", "forward")


def topk_kl(
    hidden: torch.Tensor, weight: torch.Tensor, teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor, *,
    temperature: float = 1.0, direction: str = "reverse", mask: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor:
    """Per-token KL on the teacher's top-k support plus a tail bucket, fp32 [N] (0 where masked).
    `direction="reverse"` is KL(student || teacher) as in dGRPO; "forward" is KL(teacher || student)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if teacher_topk_ids.shape != teacher_topk_logprobs.shape:
        raise ValueError("teacher_topk_ids and teacher_topk_logprobs must have the same [N, K] shape")
    if mask is None:
        student, _ = logprobs_at(hidden, weight, teacher_topk_ids, temperature=temperature, backend=backend)
        return bucket_kl(student, teacher_topk_logprobs.float(), direction)
    rows = mask.reshape(-1).nonzero().squeeze(1)
    student, _ = logprobs_at(hidden.index_select(0, rows), weight, teacher_topk_ids.index_select(0, rows),
                             temperature=temperature, backend=backend)
    kl = bucket_kl(student, teacher_topk_logprobs.index_select(0, rows).float(), direction)
    return kl.new_zeros(hidden.shape[0]).index_copy(0, rows, kl)
