"""Fused ops from last hidden states and LM-head weights that never materialize the logits: one
policy head (`policy_head`) and the thin ops built on it."""

from trainer.kernels.full_vocab_kl import full_vocab_kl
from trainer.kernels.policy_head import HeadOutput, bucket_kl, policy_head, topk_logprobs
from trainer.kernels.token_logprobs import logprobs_at, token_logprobs
from trainer.kernels.topk_kl import topk_kl

__all__ = ["HeadOutput", "bucket_kl", "full_vocab_kl", "logprobs_at", "policy_head", "token_logprobs", "topk_kl",
           "topk_logprobs"]
