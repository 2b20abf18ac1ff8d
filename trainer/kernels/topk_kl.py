"""KL between the student and a teacher known only by its top-k log-probs per token (what a
served teacher returns), from the student's hidden states: a thin call of the policy head.

Both distributions are coarsened to K+1 buckets, the teacher's K ids plus one "rest of the
vocabulary" bucket. The student's tail is exact (a log-sum-exp over the ids outside the top-k,
not 1 - sum, which has no resolution below ~1e-7 in fp32); the teacher's is given
(`teacher_topk_tail`) or log(1 - sum). The bucket KL is a true divergence and a lower bound on
the full KL. Must not renormalize the top-k: that hides the tail mass from the gradient.
"""

from __future__ import annotations

import torch

from trainer.kernels.policy_head import policy_head


def topk_kl(
    hidden: torch.Tensor, weight: torch.Tensor, teacher_topk_ids: torch.Tensor, teacher_topk_logprobs: torch.Tensor, *,
    teacher_topk_tail: torch.Tensor | None = None, temperature: float = 1.0, direction: str = "reverse",
    jsd_beta: float = 0.5, mask: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor:
    """Per-token KL on the teacher's top-k support plus a tail bucket, fp32 [N] (0 where masked).
    `direction="reverse"` is KL(student || teacher) as in dGRPO; "forward" is KL(teacher || student)."""
    return policy_head(hidden, weight, None, teacher_topk_ids=teacher_topk_ids,
                       teacher_topk_logprobs=teacher_topk_logprobs, teacher_topk_tail=teacher_topk_tail,
                       temperature=temperature, direction=direction, jsd_beta=jsd_beta, mask=mask,
                       backend=backend).kl
