"""Per-token log-probs of chosen ids (and the entropy) from hidden states and the LM-head weight:
a thin call of the policy head. Must not return anything in low precision.
"""

from __future__ import annotations

import torch

from trainer.kernels.policy_head import policy_head


def logprobs_at(
    hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0,
    mask: torch.Tensor | None = None, backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(ids[n, k] | hidden[n]) [N, K] and entropy [N] (fp32; zero where `mask` is False)."""
    if ids.dim() != 2 or ids.shape[0] != hidden.shape[0]:
        raise ValueError(f"need ids [N, K] with N = {hidden.shape[0]}, got {tuple(ids.shape)}")
    out = policy_head(hidden, weight, ids, temperature=temperature, entropy=True, mask=mask, backend=backend)
    return out.logprobs, out.entropy


def token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
    return_entropy: bool = False, mask: torch.Tensor | None = None, backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(target) [N] in fp32 (and the full-distribution entropy [N] with
    `return_entropy`); tokens where `mask` is False get 0 and no gradient."""
    out = policy_head(hidden, weight, targets.reshape(-1), temperature=temperature, entropy=return_entropy,
                      mask=mask, backend=backend)
    return (out.logprobs, out.entropy) if return_entropy else out.logprobs
