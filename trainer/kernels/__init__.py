"""Fused ops from last hidden states and LM-head weights that never materialize the logits."""

from trainer.kernels.full_vocab_kl import full_vocab_kl
from trainer.kernels.token_logprobs import logprobs_at, token_logprobs
from trainer.kernels.topk_kl import topk_kl

__all__ = ["full_vocab_kl", "logprobs_at", "token_logprobs", "topk_kl"]
