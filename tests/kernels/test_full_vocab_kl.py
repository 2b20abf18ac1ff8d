"""`full_vocab_kl` (a thin call of the policy head) against an fp64 reference: both directions,
a wider teacher head, odd shapes, masks, temperature, bf16; the teacher gets no gradient."""

from __future__ import annotations

import pytest
import torch

from _common import BACKENDS, HT, SHAPES, H, check, leaf, make, mask_for, ref_leaf
from trainer.kernels import full_vocab_kl
from trainer.kernels.reference import full_vocab_kl_ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["reverse", "forward", "jsd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n,v", SHAPES)
def test_full_vocab_kl_matches_fp64(backend: str, direction: str, dtype: torch.dtype, n: int, v: int) -> None:
    hidden, weight = make(n, v, H, dtype, seed=3 + n + v)
    t_hidden, t_weight = make(n, v, HT, dtype, seed=4 + n + v, scale=0.12)  # a wider teacher head
    mask = mask_for(n)
    g = torch.rand(n, generator=torch.Generator().manual_seed(5))
    x, w, xt, wt = leaf(hidden), leaf(weight), leaf(t_hidden), leaf(t_weight)
    kl = full_vocab_kl(x, w, xt, wt, temperature=1.3, direction=direction, mask=mask, backend=backend)
    assert kl.dtype == torch.float32
    (kl * g).sum().backward()
    assert xt.grad is None and wt.grad is None, "the teacher must get no gradient"

    x64, w64 = ref_leaf(hidden, dtype), ref_leaf(weight, dtype)
    ref = full_vocab_kl_ref(x64, w64, t_hidden.double(), t_weight.double(), temperature=1.3, direction=direction)
    (ref * mask.double() * g.double()).sum().backward()
    check(kl, ref * mask.double(), "kl")
    assert (kl >= -1e-5).all()
    check(x.grad, x64.grad, "d hidden", grad_dtype=dtype)
    check(w.grad, w64.grad, "d weight", grad_dtype=dtype)


def test_bad_arguments_are_clear_errors() -> None:
    hidden, weight = make(4, 50, H, torch.float32, seed=0)
    with pytest.raises(ValueError, match="vocabularies differ"):
        full_vocab_kl(hidden, weight, hidden, weight[:40])
    with pytest.raises(ValueError, match="direction"):
        full_vocab_kl(hidden, weight, hidden, weight, direction="sideways")
    with pytest.raises(ValueError, match="teacher_hidden"):
        full_vocab_kl(hidden, weight, hidden[:3], weight)
