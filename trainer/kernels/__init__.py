"""Fused ops from last hidden states and LM-head weights that never materialize the logits: the
policy head (`policy_head`: log-probs, entropy, full-vocabulary and top-k KL with one backward) and
a teacher's top-k (`topk_logprobs`)."""

from trainer.kernels.policy_head import HeadOutput, bucket_kl, policy_head, topk_logprobs

__all__ = ["HeadOutput", "bucket_kl", "policy_head", "topk_logprobs"]
