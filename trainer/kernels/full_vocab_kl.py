"""Per-token KL between the student's and a teacher's full next-token distributions, from both
models' last hidden states and LM heads: a thin call of the policy head (the heads may have
different hidden sizes; they share the vocabulary). Must not give the teacher a gradient.
"""

from __future__ import annotations

import torch

from trainer.kernels.policy_head import policy_head


def full_vocab_kl(
    hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, *,
    temperature: float = 1.0, direction: str = "reverse", jsd_beta: float = 0.5, mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-token KL(student || teacher) ("reverse", the dGRPO term) or KL(teacher || student)
    ("forward") or the generalized JSD ("jsd", `jsd_beta`; see `policy_head`) over the whole vocabulary,
    both at `temperature`, fp32 [N]; 0 where `mask` is False."""
    return policy_head(hidden, weight, None, teacher_hidden=teacher_hidden, teacher_weight=teacher_weight,
                       temperature=temperature, direction=direction, jsd_beta=jsd_beta, mask=mask,
                       backend=backend).kl
