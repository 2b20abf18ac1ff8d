"""The policy head: every output at once against fp64 (Triton rows under the interpreter and the
PyTorch rows), each teacher kind (none, full vocabulary, top-k with its tail) at odd shapes with
masks, temperature and bf16, fp32 results under bf16 autocast, every dtype pair, tied embeddings,
bitwise determinism, chunking, an exact top-k tail of 1e-8, zero KL for a student equal to its
teacher, real shapes on a GPU."""

from __future__ import annotations

import itertools

import pytest
import torch

from _common import BACKENDS, GRAD_TOL, HT, SHAPES, H, check, leaf, make, mask_for, ref_leaf
from trainer.kernels import policy_head, topk_logprobs
from trainer.kernels.reference import full_vocab_kl_ref, tail_logprob, token_logprobs_ref, topk_kl_ref

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dgrpo_like_loss(out, g: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """A loss that uses every output: weighted log-probs, entropy bonus, KL."""
    return (out.logprobs * g[:, None]).sum() + 0.3 * out.entropy.sum() + 0.7 * (out.kl * g).sum()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", ["reverse", "forward", "jsd"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_output_and_one_backward_match_fp64(backend: str, direction: str, dtype: str) -> None:
    n, v, dt = 67, 1031, DTYPES[dtype]
    hidden, weight = make(n, v, H, dt, seed=1)
    t_hidden, t_weight = make(n, v, HT, dt, seed=2, scale=0.12)
    ids = torch.randint(0, v, (n, 3), generator=torch.Generator().manual_seed(3))
    ids[-1, -1] = v - 1
    mask, g = mask_for(n), torch.randn(n, generator=torch.Generator().manual_seed(4))
    x, w = leaf(hidden), leaf(weight)
    out = policy_head(x, w, ids, teacher_hidden=t_hidden, teacher_weight=t_weight, temperature=0.8, direction=direction,
                      jsd_beta=0.3, entropy=True, mask=mask, backend=backend)
    assert all(t.dtype == torch.float32 for t in (out.logprobs, out.entropy, out.kl, out.teacher_logprobs))
    dgrpo_like_loss(out, g).backward()

    x64, w64 = ref_leaf(hidden, dt), ref_leaf(weight, dt)
    logprobs = torch.log_softmax(x64 @ w64.T / 0.8, -1)
    ref_lp = logprobs.gather(-1, ids)
    ref_ent = -(logprobs.exp() * logprobs).sum(-1)
    ref_kl = full_vocab_kl_ref(x64, w64, t_hidden.double(), t_weight.double(), temperature=0.8, direction=direction,
                               jsd_beta=0.3)
    ref_t = torch.log_softmax(t_hidden.double() @ t_weight.double().T / 0.8, -1).gather(-1, ids)
    m = mask.double()
    ((ref_lp * m[:, None] * g.double()[:, None]).sum() + 0.3 * (ref_ent * m).sum()
     + 0.7 * (ref_kl * m * g.double()).sum()).backward()
    check(out.logprobs, ref_lp * m[:, None], "logprobs")
    check(out.entropy, ref_ent * m, "entropy")
    check(out.kl, ref_kl * m, "kl")
    check(out.teacher_logprobs, ref_t * m[:, None], "teacher logprobs")
    check(x.grad, x64.grad, "d hidden", grad_dtype=dt)
    check(w.grad, w64.grad, "d weight", grad_dtype=dt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("teacher", ["none", "full", "topk"])
@pytest.mark.parametrize("n,v", SHAPES)
def test_each_teacher_kind_at_odd_shapes_matches_fp64(backend: str, teacher: str, n: int, v: int) -> None:
    """Vocabularies that are not a multiple of the row block, one row or many, a mask, a temperature,
    a per-token upstream gradient; bf16 for half the shapes and a direction per shape. The log-probs
    never exceed 0 (no column past V leaks into the log-sum-exp), KLs are divergences (>= 0) and the
    teacher gets no gradient."""
    shape = SHAPES.index((n, v))
    dtype = (torch.float32, torch.bfloat16)[shape % 2]
    direction = ("reverse", "forward", "jsd", "reverse")[shape]
    hidden, weight = make(n, v, H, dtype, seed=n + v)
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(1))
    targets[-1] = v - 1  # the last id lives in the row block that runs past V
    mask, g = mask_for(n), torch.randn(n, generator=torch.Generator().manual_seed(2))
    x, w = leaf(hidden), leaf(weight)
    x64, w64 = ref_leaf(hidden, dtype), ref_leaf(weight, dtype)
    kwargs, ref_kl = {}, None
    if teacher == "full":
        t_hidden, t_weight = make(n, v, HT, dtype, seed=4 + n + v, scale=0.12)  # a wider teacher head
        xt, wt = leaf(t_hidden), leaf(t_weight)
        kwargs = {"teacher_hidden": xt, "teacher_weight": wt}
        ref_kl = full_vocab_kl_ref(x64, w64, t_hidden.double(), t_weight.double(), temperature=0.7, direction=direction)
    elif teacher == "topk":
        t_hidden, t_weight = make(n, v, H, torch.float32, seed=7 + n + v, scale=0.4)
        full = torch.log_softmax(t_hidden.double() @ t_weight.double().T, -1)
        t_lp, t_ids = full.topk(5, dim=-1)
        t_tail = tail_logprob(full, t_ids)
        kwargs = {"teacher_topk_ids": t_ids, "teacher_topk_logprobs": t_lp.float(), "teacher_topk_tail": t_tail.float()}
        ref_kl = topk_kl_ref(x64, w64, t_ids, t_lp, teacher_topk_tail=t_tail, temperature=0.7, direction=direction)
    out = policy_head(x, w, targets, temperature=0.7, entropy=True, mask=mask, direction=direction, backend=backend,
                      **kwargs)
    assert out.logprobs.dtype == torch.float32 and out.entropy.dtype == torch.float32
    loss = (out.logprobs * g).sum() + 0.3 * out.entropy.sum() + (0.7 * (out.kl * g).sum() if ref_kl is not None else 0)
    loss.backward()
    ref_lp, ref_ent = token_logprobs_ref(x64, w64, targets, temperature=0.7)
    m = mask.double()
    ref_loss = (ref_lp * m * g.double()).sum() + 0.3 * (ref_ent * m).sum()
    if ref_kl is not None:
        ref_loss = ref_loss + 0.7 * (ref_kl * m * g.double()).sum()
        check(out.kl, ref_kl * m, f"{teacher} kl")
        assert (out.kl >= -1e-5).all(), "a KL below 0 (top-k: the tail bucket keeps it a divergence)"
    ref_loss.backward()
    check(out.logprobs, ref_lp * m, "logprobs")
    check(out.entropy, ref_ent * m, "entropy")
    assert (out.logprobs <= 1e-6).all(), "log-probs above 0: columns past V leaked into the log-sum-exp"
    check(x.grad, x64.grad, "d hidden", grad_dtype=dtype)
    check(w.grad, w64.grad, "d weight", grad_dtype=dtype)
    if (~mask).any():
        assert x.grad[~mask].abs().max().item() == 0.0
    if teacher == "full":
        assert xt.grad is None and wt.grad is None, "the teacher must get no gradient"


def test_tied_embedding_weight_gets_gradients_from_both_uses() -> None:
    emb = torch.nn.Embedding(300, H)
    ids = torch.randint(0, 300, (12,), generator=torch.Generator().manual_seed(0))
    hidden = emb(ids) * 2.0
    policy_head(hidden, emb.weight, ids.roll(1), backend="torch").logprobs.sum().backward()
    grad = emb.weight.grad.clone()
    emb.weight.grad = None
    ref, _ = token_logprobs_ref(emb(ids) * 2.0, emb.weight, ids.roll(1), dtype=torch.float32)
    ref.sum().backward()
    assert torch.allclose(grad, emb.weight.grad, atol=1e-5)


def test_topk_kl_is_zero_for_an_equal_teacher_and_its_tail_defaults_to_one_minus_the_top_k() -> None:
    hidden, weight = make(8, 300, H, torch.float32, seed=9, scale=0.5)
    full = torch.log_softmax(hidden @ weight.T, -1)
    lp, ids = full.topk(4, dim=-1)

    def kl(logprobs: torch.Tensor, tail: torch.Tensor | None = None) -> torch.Tensor:
        return policy_head(hidden, weight, None, teacher_topk_ids=ids, teacher_topk_logprobs=logprobs,
                           teacher_topk_tail=tail, backend="torch").kl

    assert kl(lp).abs().max() < 1e-5
    assert (kl(lp + 0.1) > 0).all()  # same ids, a heavier top-k (a lighter tail): only the buckets differ
    explicit = kl(lp, torch.log1p(-lp.double().exp().sum(-1)).float())
    assert torch.allclose(kl(lp), explicit, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_gives_fp32_results_exact_for_the_bf16_operands(backend: str) -> None:
    """As on the GPU: bf16 operands under autocast, logits up to |30|; every result within 1e-3
    of an fp64 reference on the same operands (a bf16 gather or GEMM output would be off by 4e-2)."""
    n, v = 40, 1000
    hidden, weight = make(n, v, H, torch.bfloat16, seed=5, scale=1.0)
    z = hidden.double() @ weight.double().T
    assert 20 < z.abs().max() <= 40
    t_hidden, t_weight = make(n, v, H, torch.bfloat16, seed=6, scale=0.8)
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(7))
    teacher = torch.log_softmax(t_hidden.double() @ t_weight.double().T, -1)
    t_lp, t_ids = teacher.topk(6, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = policy_head(hidden, weight, targets, entropy=True, backend=backend)
        full = policy_head(hidden, weight, None, teacher_hidden=t_hidden, teacher_weight=t_weight, backend=backend)
        top = policy_head(hidden, weight, None, teacher_topk_ids=t_ids, teacher_topk_logprobs=t_lp.float(),
                          teacher_topk_tail=tail_logprob(teacher, t_ids).float(), direction="forward", backend=backend)
    ref_lp, ref_ent = token_logprobs_ref(hidden, weight, targets)
    check(lp.logprobs, ref_lp, "logprobs")
    check(lp.entropy, ref_ent, "entropy")
    check(full.kl, full_vocab_kl_ref(hidden, weight, t_hidden, t_weight), "full kl")
    check(top.kl, topk_kl_ref(hidden, weight, t_ids, t_lp, teacher_topk_tail=tail_logprob(teacher, t_ids),
                              direction="forward"), "topk kl")


@pytest.mark.parametrize(("hidden_dtype", "weight_dtype"), list(itertools.product(DTYPES, DTYPES)))
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast-bf16"])
def test_every_dtype_pair_computes_in_one_dtype_with_fp32_results(hidden_dtype: str, weight_dtype: str,
                                                                  autocast: bool) -> None:
    """Operands are cast to one compute dtype: autocast's when active (bf16 here), else the common
    dtype, else the wider of the two; results are fp32 and exact for the cast operands."""
    n, v = 23, 1031
    hidden, _ = make(n, v, H, DTYPES[hidden_dtype], seed=8)
    _, weight = make(n, v, H, DTYPES[weight_dtype], seed=9)
    compute = torch.bfloat16 if autocast else (
        hidden.dtype if hidden.dtype == weight.dtype else torch.promote_types(hidden.dtype, weight.dtype))
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(10))
    x, w = leaf(hidden), leaf(weight)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = policy_head(x, w, targets, entropy=True, backend="torch")
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert out.logprobs.dtype == torch.float32 and x.grad.dtype == x.dtype and w.grad.dtype == w.dtype
    x64, w64 = ref_leaf(hidden, compute), ref_leaf(weight, compute)
    ref_lp, ref_ent = token_logprobs_ref(x64, w64, targets)
    (ref_lp.sum() + ref_ent.sum()).backward()
    check(out.logprobs, ref_lp, "logprobs")
    check(out.entropy, ref_ent, "entropy")
    grad_tol = max(compute, x.dtype, w.dtype, key=lambda d: {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[d])
    check(x.grad, x64.grad, "d hidden", grad_dtype=grad_tol)
    check(w.grad, w64.grad, "d weight", grad_dtype=grad_tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_identical_calls_are_bitwise_identical(backend: str) -> None:
    n, v = 67, 1031
    hidden, weight = make(n, v, H, torch.bfloat16, seed=11)
    t_hidden, t_weight = make(n, v, HT, torch.bfloat16, seed=12)
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(13))
    results = []
    for _ in range(2):
        x, w = leaf(hidden), leaf(weight)
        out = policy_head(x, w, targets, teacher_hidden=t_hidden, teacher_weight=t_weight, entropy=True,
                          chunk_bytes=20 * v * 12, backend=backend)  # several chunks: dW sums over them
        (out.logprobs.sum() - out.entropy.sum() + out.kl.sum()).backward()
        results.append((out.logprobs, out.entropy, out.kl, x.grad, w.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_chunk_size_does_not_change_the_result() -> None:
    n, v = 50, 1000
    hidden, weight = make(n, v, H, torch.float32, seed=14)
    t_hidden, t_weight = make(n, v, HT, torch.float32, seed=15)
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(16))
    grads = []
    for chunk_bytes in (1, 7 * v * 12, None):  # one row per chunk, 7 rows, the default (all rows)
        x, w = leaf(hidden), leaf(weight)
        out = policy_head(x, w, targets, teacher_hidden=t_hidden, teacher_weight=t_weight, entropy=True,
                          chunk_bytes=chunk_bytes, backend="torch")
        (out.logprobs.sum() + out.entropy.sum() + out.kl.sum()).backward()
        grads.append((out.logprobs, out.kl, x.grad, w.grad))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_forward_topk_kl_with_a_tail_of_1e_8_matches_fp64(backend: str, dtype: str) -> None:
    """The student keeps ~1e-8 of its mass outside the teacher's top-5 (1 - sum would round it to
    0 in fp32); the teacher keeps 0.3 there, so the forward KL weighs log p_tail by 0.3."""
    n, v, k = 12, 1000, 5
    gen = torch.Generator().manual_seed(17)
    u = torch.nn.functional.normalize(torch.randn(H, generator=gen), dim=0)
    weight = torch.randn(v, H, generator=gen) * 0.01
    weight[:k] += 4.0 * u
    hidden = 6.0 * u + 0.01 * torch.randn(n, H, generator=gen)
    hidden, weight = hidden.to(DTYPES[dtype]), weight.to(DTYPES[dtype])
    ids = torch.arange(k).expand(n, k).contiguous()
    student = torch.log_softmax(hidden.double() @ weight.double().T, -1)
    true_tail = tail_logprob(student, ids).exp()
    assert 1e-9 < true_tail.max() < 1e-7, true_tail
    t_lp = torch.full((n, k), torch.log(torch.tensor(0.7 / k)).item(), dtype=torch.float64)
    t_tail = torch.full((n,), torch.log(torch.tensor(0.3)).item(), dtype=torch.float64)
    x, w = leaf(hidden), leaf(weight)
    kl = policy_head(x, w, None, teacher_topk_ids=ids, teacher_topk_logprobs=t_lp.float(),
                     teacher_topk_tail=t_tail.float(), direction="forward", backend=backend).kl
    kl.sum().backward()
    x64, w64 = ref_leaf(hidden, DTYPES[dtype]), ref_leaf(weight, DTYPES[dtype])
    ref = topk_kl_ref(x64, w64, ids, t_lp, teacher_topk_tail=t_tail, direction="forward")
    ref.sum().backward()
    assert ((kl.double() - ref).abs() / ref.abs()).max() < 1e-3, (kl, ref)
    # gradients come back in the operands' dtype: bf16 storage alone is 2^-9 relative
    grad_tol = 1e-3 if dtype == "fp32" else GRAD_TOL[torch.bfloat16]
    for ours, theirs in ((x.grad, x64.grad), (w.grad, w64.grad)):
        assert (ours.double() - theirs).abs().max() <= grad_tol * theirs.abs().max()


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("direction", ["reverse", "forward", "jsd"])
def test_a_student_equal_to_its_teacher_gets_zero_kl_and_zero_gradient(temperature: float, direction: str) -> None:
    hidden, weight = make(30, 1000, H, torch.bfloat16, seed=18, scale=0.5)
    ids, lps, tail = topk_logprobs(hidden, weight, 8, temperature=temperature)
    for teacher in ({"teacher_hidden": hidden, "teacher_weight": weight},
                    {"teacher_topk_ids": ids, "teacher_topk_logprobs": lps, "teacher_topk_tail": tail}):
        x, w = leaf(hidden), leaf(weight)
        kl = policy_head(x, w, None, temperature=temperature, direction=direction, backend="torch", **teacher).kl
        kl.sum().backward()
        assert kl.abs().max() < 1e-6
        assert x.grad.float().abs().max() < 1e-5 and w.grad.float().abs().max() < 1e-5


def test_topk_logprobs_are_exact_with_their_tail() -> None:
    hidden, weight = make(9, 777, H, torch.float32, seed=19, scale=0.6)
    ids, lps, tail = topk_logprobs(hidden, weight, 10, temperature=0.9, chunk_bytes=4 * 777 * 8)
    full = torch.log_softmax(hidden.double() @ weight.double().T / 0.9, -1)
    ref_lp, ref_ids = full.topk(10, -1)
    assert torch.equal(ids, ref_ids)
    assert (lps.double() - ref_lp).abs().max() < 1e-5
    assert (tail.double() - tail_logprob(full, ids)).abs().max() < 1e-5


def test_no_selected_rows_gives_zeros_and_a_connected_graph() -> None:
    hidden, weight = make(4, 50, H, torch.float32, seed=20)
    x = leaf(hidden)
    out = policy_head(x, weight, torch.tensor([1, 2, 3, 4]), entropy=True, mask=torch.zeros(4, dtype=torch.bool))
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert out.logprobs.abs().sum() == 0 and x.grad is not None and x.grad.abs().sum() == 0


def test_bad_arguments_are_clear_errors() -> None:
    hidden, weight = make(4, 50, H, torch.float32, seed=0)
    ids = torch.zeros(4, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="either"):
        policy_head(hidden, weight, None, teacher_hidden=hidden, teacher_weight=weight, teacher_topk_ids=ids,
                    teacher_topk_logprobs=ids.float())
    with pytest.raises(ValueError, match="both"):
        policy_head(hidden, weight, None, teacher_topk_ids=ids)
    with pytest.raises(ValueError, match="need targets"):
        policy_head(hidden, weight, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="ids must be in"):
        policy_head(hidden, weight, torch.tensor([0, 1, 2, 50]))
    with pytest.raises(ValueError, match="temperature"):
        policy_head(hidden, weight, torch.tensor([0, 1, 2, 3]), temperature=0.0)
    with pytest.raises(ValueError, match="vocabularies differ"):
        policy_head(hidden, weight, None, teacher_hidden=hidden, teacher_weight=weight[:40])
    with pytest.raises(ValueError, match="direction"):
        policy_head(hidden, weight, None, teacher_hidden=hidden, teacher_weight=weight, direction="sideways")
    with pytest.raises(ValueError, match="teacher_hidden"):
        policy_head(hidden, weight, None, teacher_hidden=hidden[:3], teacher_weight=weight)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [1, 4097])
def test_real_shapes_on_gpu(n: int) -> None:
    """Qwen3-1.7B head (H=2048, V=151936) and a Qwen3-8B teacher head in bf16: values against an fp64
    reference in row chunks, gradients on 256 rows, and bitwise determinism under
    torch.use_deterministic_algorithms."""
    v, h = 151936, 2048
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, h, device="cuda", generator=gen).bfloat16()
    weight = (torch.randn(v, h, device="cuda", generator=gen) * 0.02).bfloat16()
    t_hidden = torch.randn(n, 4096, device="cuda", generator=gen).bfloat16()
    t_weight = (torch.randn(v, 4096, device="cuda", generator=gen) * 0.02).bfloat16()
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    targets[-1] = v - 1
    out = policy_head(hidden, weight, targets, teacher_hidden=t_hidden, teacher_weight=t_weight, entropy=True,
                      backend="triton")
    for start in range(0, n, 512):
        sl = slice(start, start + 512)
        ref_lp, ref_ent = token_logprobs_ref(hidden[sl], weight, targets[sl])
        check(out.logprobs[sl], ref_lp, "logprobs")
        check(out.entropy[sl], ref_ent, "entropy")
        check(out.kl[sl], full_vocab_kl_ref(hidden[sl], weight, t_hidden[sl], t_weight), "kl")
    rows = slice(0, min(n, 256))
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            x, w = leaf(hidden[rows]), leaf(weight)
            o = policy_head(x, w, targets[rows], teacher_hidden=t_hidden[rows], teacher_weight=t_weight, entropy=True,
                            backend="triton")
            (o.logprobs.sum() + o.entropy.sum() + o.kl.sum()).backward()
            grads.append((x.grad, w.grad))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    x64, w64 = ref_leaf(hidden[rows], torch.bfloat16), ref_leaf(weight, torch.bfloat16)
    ref_lp, ref_ent = token_logprobs_ref(x64, w64, targets[rows])
    (ref_lp.sum() + ref_ent.sum() + full_vocab_kl_ref(x64, w64, t_hidden[rows], t_weight).sum()).backward()
    check(grads[0][0], x64.grad, "d hidden", grad_dtype=torch.bfloat16)
    check(grads[0][1], w64.grad, "d weight", grad_dtype=torch.bfloat16)
