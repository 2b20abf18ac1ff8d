"""`token_logprobs` / `logprobs_at` (thin calls of the policy head) against an fp64 reference:
odd shapes, masks, temperature, bf16; tied embeddings; argument errors."""

from __future__ import annotations

import pytest
import torch

from _common import BACKENDS, SHAPES, H, check, leaf, make, mask_for, ref_leaf
from trainer.kernels import logprobs_at, token_logprobs
from trainer.kernels.reference import token_logprobs_ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n,v", SHAPES)
def test_token_logprobs_and_entropy_match_fp64(backend: str, dtype: torch.dtype, n: int, v: int) -> None:
    hidden, weight = make(n, v, H, dtype, seed=n + v)
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(1))
    targets[-1] = v - 1  # the last id lives in the row block that runs past V
    mask = mask_for(n)
    g_lp = torch.randn(n, generator=torch.Generator().manual_seed(2))  # per-token upstream (advantages)
    x, w = leaf(hidden), leaf(weight)
    lp, ent = token_logprobs(x, w, targets, temperature=0.7, return_entropy=True, mask=mask, backend=backend)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    ((lp * g_lp).sum() + 0.3 * ent.sum()).backward()

    x64, w64 = ref_leaf(hidden, dtype), ref_leaf(weight, dtype)
    ref_lp, ref_ent = token_logprobs_ref(x64, w64, targets, temperature=0.7)
    m = mask.double()
    ((ref_lp * m * g_lp.double()).sum() + 0.3 * (ref_ent * m).sum()).backward()
    check(lp, ref_lp * m, "logprobs")
    check(ent, ref_ent * m, "entropy")
    assert (lp <= 1e-6).all(), "log-probs above 0: columns past V leaked into the log-sum-exp"
    check(x.grad, x64.grad, "d hidden", grad_dtype=dtype)
    check(w.grad, w64.grad, "d weight", grad_dtype=dtype)
    if (~mask).any():
        assert x.grad[~mask].abs().max().item() == 0.0


def test_logprobs_at_k_ids_match_reference() -> None:
    hidden, weight = make(10, 257, H, torch.float32, seed=10)
    ids = torch.randint(0, 257, (10, 7))
    lp, _ = logprobs_at(hidden, weight, ids, backend="torch")
    ref = torch.log_softmax(hidden.double() @ weight.double().T, -1).gather(-1, ids)
    assert (lp.double() - ref).abs().max() < 1e-5


def test_tied_embedding_weight_gets_gradients_from_both_uses() -> None:
    emb = torch.nn.Embedding(300, H)
    ids = torch.randint(0, 300, (12,))
    hidden = emb(ids) * 2.0
    token_logprobs(hidden, emb.weight, ids.roll(1), backend="torch").sum().backward()
    grad = emb.weight.grad.clone()
    emb.weight.grad = None
    ref, _ = token_logprobs_ref(emb(ids) * 2.0, emb.weight, ids.roll(1), dtype=torch.float32)
    ref.sum().backward()
    assert torch.allclose(grad, emb.weight.grad, atol=1e-5)


def test_bad_arguments_are_clear_errors() -> None:
    hidden, weight = make(4, 50, H, torch.float32, seed=0)
    with pytest.raises(ValueError, match="ids must be in"):
        token_logprobs(hidden, weight, torch.tensor([0, 1, 2, 50]))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, torch.tensor([0, 1, 2, 3]), temperature=0.0)
    with pytest.raises(ValueError, match="need ids"):
        logprobs_at(hidden, weight, torch.tensor([0, 1, 2, 3]))

