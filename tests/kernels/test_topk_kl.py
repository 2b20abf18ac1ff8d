"""`topk_kl` (a thin call of the policy head) against an fp64 reference with exact tails: both
directions, odd shapes, masks, temperature, bf16; a true divergence; the tail carries signal."""

from __future__ import annotations

import pytest
import torch

from _common import BACKENDS, SHAPES, H, check, leaf, make, mask_for, ref_leaf
from trainer.kernels import topk_kl
from trainer.kernels.reference import tail_logprob, topk_kl_ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["reverse", "forward", "jsd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n,v", SHAPES)
def test_topk_kl_matches_fp64(backend: str, direction: str, dtype: torch.dtype, n: int, v: int) -> None:
    k = 5
    hidden, weight = make(n, v, H, dtype, seed=6 + n + v)
    t_hidden, t_weight = make(n, v, H, torch.float32, seed=7 + n + v, scale=0.4)
    teacher = torch.log_softmax(t_hidden.double() @ t_weight.double().T, -1)
    t_lp, t_ids = teacher.topk(k, dim=-1)
    t_tail = tail_logprob(teacher, t_ids)
    mask = mask_for(n)
    x, w = leaf(hidden), leaf(weight)
    kl = topk_kl(x, w, t_ids, t_lp.float(), teacher_topk_tail=t_tail.float(), temperature=0.9, direction=direction,
                 mask=mask, backend=backend)
    kl.sum().backward()
    x64, w64 = ref_leaf(hidden, dtype), ref_leaf(weight, dtype)
    ref = topk_kl_ref(x64, w64, t_ids, t_lp, teacher_topk_tail=t_tail, temperature=0.9, direction=direction)
    (ref * mask.double()).sum().backward()
    check(kl, ref * mask.double(), "topk kl")
    assert (kl >= -1e-5).all(), "the tail bucket keeps the top-k KL a divergence"
    check(x.grad, x64.grad, "d hidden", grad_dtype=dtype)
    check(w.grad, w64.grad, "d weight", grad_dtype=dtype)


def test_topk_kl_is_zero_when_student_equals_teacher_and_tail_matters() -> None:
    hidden, weight = make(8, 300, H, torch.float32, seed=9, scale=0.5)
    full = torch.log_softmax(hidden @ weight.T, -1)
    lp, ids = full.topk(4, dim=-1)
    assert topk_kl(hidden, weight, ids, lp, backend="torch").abs().max() < 1e-5
    # Same ids, a teacher with a heavier top-k (so a lighter tail): only the buckets differ.
    assert (topk_kl(hidden, weight, ids, lp + 0.1, backend="torch") > 0).all()


def test_teacher_tail_defaults_to_one_minus_its_top_k_mass() -> None:
    hidden, weight = make(6, 200, H, torch.float32, seed=11, scale=0.5)
    t_lp, t_ids = torch.log_softmax(make(6, 200, H, torch.float32, seed=12)[0] @ weight.T, -1).topk(8, -1)
    implicit = topk_kl(hidden, weight, t_ids, t_lp, backend="torch")
    explicit = topk_kl(hidden, weight, t_ids, t_lp, teacher_topk_tail=torch.log1p(-t_lp.double().exp().sum(-1)).float(),
                       backend="torch")
    assert torch.allclose(implicit, explicit, atol=1e-6)
