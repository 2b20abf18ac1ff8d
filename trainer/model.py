"""Student/teacher models: loading with the Auto classes, and a wrapper whose forward returns
per-token log-probs (and entropy) through `trainer.kernels` from the decoder's last hidden states,
so no code path builds the tokens x vocab logits. Must not hold any loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.kernels import token_logprobs

KLFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
            "fp16": torch.float16, "float16": torch.float16}[name]


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.path, trust_remote_code=cfg.trust_remote_code)


def load_causal_lm(cfg: ModelConfig, device: torch.device) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(cfg.dtype, device), "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(cfg.path, **kwargs)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model.to(device)


class FusedLogprobLM(nn.Module):
    """Wraps a `*ForCausalLM`: forward(input_ids, position_ids) -> log p(next token) [T-1] (fp32)
    and entropy, from hidden states and the LM-head weight. Being the root module lets FSDP2
    unshard the head (tied or not) around the fused op."""

    def __init__(self, causal_lm: Any) -> None:
        super().__init__()
        self.lm = causal_lm

    @property
    def decoder(self) -> nn.Module:
        return self.lm.get_decoder()

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # No attention mask: transformers detects packed samples from restarting position ids and
        # keeps attention inside each sample (varlen with flash attention, block mask otherwise).
        out = self.decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, *, temperature: float = 1.0,
        mask: torch.Tensor | None = None, return_entropy: bool = False, kl_fn: KLFn | None = None,
        generate: dict[str, Any] | None = None,
    ) -> Any:
        """log p(next token) [B, T-1]; with `return_entropy` also the entropy; with `kl_fn` the
        tuple (logprobs, entropy, kl), kl = kl_fn(hidden [N, H], head weight, mask [N]) [N] (the
        teacher term, computed from the same hidden states inside this forward, where FSDP2 has
        the head unsharded). `generate=kwargs` runs `generate(**kwargs)` of the wrapped model
        instead: under FSDP2 the root's parameters are gathered only around the root's forward."""
        if generate is not None:
            return self.lm.generate(**generate)
        hidden = self.hidden_states(input_ids, position_ids)[:, :-1]
        targets = input_ids[:, 1:]
        weight = self.lm.get_output_embeddings().weight
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        flat_mask = None if mask is None else mask.reshape(-1)
        logprobs, entropy = token_logprobs(flat_hidden, weight, targets.reshape(-1), temperature=temperature,
                                           mask=flat_mask, return_entropy=True)
        logprobs, entropy = logprobs.view(targets.shape), entropy.view(targets.shape)
        if kl_fn is not None:
            return logprobs, entropy, kl_fn(flat_hidden, weight, flat_mask).view(targets.shape)
        return (logprobs, entropy) if return_entropy else logprobs
