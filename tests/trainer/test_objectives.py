"""The dGRPO objective against values worked out by hand (see the comments for the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import ConfigError, ObjectiveConfig
from trainer.objectives import Schedule, TokenBatch, dgrpo_loss, group_advantages, normalizer, sampled_kl


def loss_on(logprobs: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
            cfg: ObjectiveConfig, *, denominator: float | None = None, horizon: int | None = None, relaxed: bool = True,
            **teacher: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`dgrpo_loss` on these per-token tensors (teacher: kl, teacher_logprobs, reference_logprobs, entropy)."""
    return dgrpo_loss(TokenBatch(logprobs, old, advantages, mask, **teacher), cfg, denominator=denominator,
                      at=Schedule(horizon, relaxed))

# Two sequences; the first has a masked third token. Ratios rho = exp(logp - old):
#   seq0 (A = +1): [1.5, 0.9, (masked)]      seq1 (A = -2): [0.5, 1.1, 1.3]
# eps = 0.2: per-token min(rho A, clip(rho) A):
#   seq0: min(1.5, 1.2) = 1.2; min(0.9, 0.9) = 0.9            -> sum 2.1, mean 1.05
#   seq1: min(-1.0, -1.6) = -1.6; -2.2; min(-2.6, -2.4) = -2.6 -> sum -6.4, mean -2.1333
RATIOS = torch.tensor([[1.5, 0.9, 7.0], [0.5, 1.1, 1.3]], dtype=torch.float64)
MASK = torch.tensor([[True, True, False], [True, True, True]])
ADVANTAGES = torch.tensor([1.0, -2.0], dtype=torch.float64)
OLD = torch.full((2, 3), -1.0, dtype=torch.float64)
LOGPROBS = OLD + RATIOS.log()
# d = log pi_theta - log pi_teacher per token (the masked one is huge and must not count)
D = torch.tensor([[0.5, -0.5, 50.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
TEACHER = LOGPROBS - D
SURROGATE_SEQ_MEAN = (1.05 + (-6.4 / 3)) / 2  # J without the KL term, seq-mean


def loss_of(**overrides: object) -> tuple[float, dict]:
    cfg = ObjectiveConfig(**{"beta": 0.0, "estimator": "k2", **overrides})
    loss, stats = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER,
                             kl=torch.tensor([[0.2, 0.4, 9.0], [0.1, 0.1, 0.1]], dtype=torch.float64))
    return float(loss), stats


def test_aggregation_modes_match_hand_computed_values():
    assert loss_of(aggregation="seq-mean")[0] == pytest.approx(-SURROGATE_SEQ_MEAN)
    assert loss_of(aggregation="token-mean")[0] == pytest.approx(-(2.1 - 6.4) / 5)  # 5 trained tokens
    assert loss_of(aggregation="seq-sum-norm", norm_constant=4.0)[0] == pytest.approx(-(2.1 - 6.4) / (2 * 4))


def test_clip_fraction_counts_only_the_branch_min_selects():
    _, stats = loss_of()
    # seq0 tok0 (rho 1.5 > 1.2, A > 0) is clipped high; seq1 tok0 (rho 0.5 < 0.8, A < 0) clipped low;
    # seq1 tok2 has rho 1.3 > 1.2 but A < 0, so min keeps the unclipped term: not clipped.
    assert float(stats["clip_high_sum"]) == 1 and float(stats["clip_low_sum"]) == 1
    assert float(stats["tokens"]) == 5


def test_asymmetric_clipping():
    # eps_high = 0.6: seq0 tok0 is no longer clipped (1.5 < 1.6): 1.5 instead of 1.2.
    expected = ((1.5 + 0.9) / 2 + (-6.4 / 3)) / 2
    assert loss_of(eps_high=0.6)[0] == pytest.approx(-expected)


@pytest.mark.parametrize(("estimator", "direction", "kl_seq_mean"), [
    # k2 = d^2/2: seq0 0.125, seq1 (0 + 0.5 + 2)/3 -> (0.125 + 0.8333)/2
    ("k2", "reverse", (0.125 + 2.5 / 3) / 2),
    # k3 = e^-d - 1 + d (as a loss it is the forward-KL option)
    ("k3", "forward", ((math.exp(-0.5) - 0.5 + math.exp(0.5) - 1.5) / 2
                       + (0 + math.exp(-1) + math.exp(-2) + 1) / 3) / 2),
    # full/topk: the per-token KL comes from the policy head: seq0 (0.2 + 0.4)/2, seq1 0.1
    ("full", "reverse", (0.3 + 0.1) / 2),
    ("topk", "forward", (0.3 + 0.1) / 2),
])
def test_kl_term_added_to_the_loss(estimator: str, direction: str, kl_seq_mean: float):
    loss, stats = loss_of(beta=0.1, estimator=estimator, direction=direction)
    assert loss == pytest.approx(-SURROGATE_SEQ_MEAN + 0.1 * kl_seq_mean, abs=1e-12)


def test_k3_by_hand():
    values = sampled_kl(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([-0.5, 0.0, 1.0]), "k3")
    # d = 0.5, 0, -1: e^-d - 1 + d
    assert values.tolist() == pytest.approx([math.exp(-0.5) - 0.5, 0.0, math.exp(1) - 2])
    assert (values >= 0).all()


def test_kl_folded_into_the_advantage():
    # A_it = A_i - beta * d_it with beta = 0.1:
    # seq0: A = 0.95 (rho 1.5) -> min(1.425, 1.14) = 1.14;  A = 1.05 (rho 0.9) -> 0.945   mean 1.0425
    # seq1: A = -2 (rho .5) -> -1.6; A = -2.1 (rho 1.1) -> -2.31; A = -2.2 (rho 1.3) -> -2.86  mean -2.256667
    expected = (1.0425 + (-1.6 - 2.31 - 2.86) / 3) / 2
    assert loss_of(beta=0.1, estimator="k1", combine="advantage")[0] == pytest.approx(-expected)


def test_advantage_mode_detaches_the_teacher_term():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    cfg = ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage")
    loss, _ = loss_on(logprobs, logprobs.detach(), torch.zeros(2, dtype=torch.float64), MASK, cfg,
                         teacher_logprobs=TEACHER)
    loss.backward()
    # With A_i = 0 and rho = 1 the objective is sum_t rho_t (-beta d_t) / |o_i| / S with d_t a
    # constant: d(loss)/d logp_t = beta d_t / |o_i| / S (no derivative of d itself, which would
    # add beta / |o_i| / S per token).
    expected = 0.1 * D.clone() / torch.tensor([[2.0], [3.0]], dtype=torch.float64) / 2
    expected[0, 2] = 0.0
    assert torch.allclose(logprobs.grad, expected)


def test_masked_tokens_get_no_gradient_and_no_value():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    cfg = ObjectiveConfig(beta=0.5, estimator="k3", direction="forward")
    loss, _ = loss_on(logprobs, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)
    loss.backward()
    assert logprobs.grad[0, 2] == 0
    changed = LOGPROBS.clone()
    changed[0, 2] = 123.0  # a masked token's value cannot change the loss
    loss_changed, _ = loss_on(changed, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)
    assert float(loss_changed) == pytest.approx(float(loss.detach()))


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [2.0, 99.0, 0.0, 1.0]], dtype=torch.float64)
    valid = torch.tensor([[True] * 4, [True] * 4, [True, False, True, True]])
    a = group_advantages(rewards, valid)
    # group 0: mean 0.5, unbiased std sqrt(1/3): +-0.5 / 0.57735 = +-0.866025
    assert a[0].tolist() == pytest.approx([0.866025, -0.866025, 0.866025, -0.866025], abs=1e-5)
    # group 1: zero reward variance -> no outcome signal
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    # group 2: the failed member (99) is ignored: values 2, 0, 1 -> mean 1, std 1
    assert a[2].tolist() == pytest.approx([1.0, 0.0, -1.0, 0.0], abs=1e-5)
    unscaled = group_advantages(rewards, valid, scale_std=False)
    assert unscaled[0].tolist() == [0.5, -0.5, 0.5, -0.5]


def test_zero_variance_group_contributes_only_the_kl():
    cfg = ObjectiveConfig(beta=0.1, estimator="k2")
    advantages = group_advantages(torch.ones(1, 2, dtype=torch.float64))[0]
    loss, _ = loss_on(LOGPROBS, OLD, advantages, MASK, cfg, teacher_logprobs=TEACHER)
    assert float(loss) == pytest.approx(0.1 * (0.125 + 2.5 / 3) / 2)  # only beta * seq-mean(k2)


def test_micro_batches_add_up_to_the_step_objective():
    cfg = ObjectiveConfig(beta=0.1, estimator="k2", aggregation="token-mean")
    whole, _ = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)
    denominator = normalizer(cfg, MASK)
    parts = sum(float(loss_on(LOGPROBS[i:i + 1], OLD[i:i + 1], ADVANTAGES[i:i + 1], MASK[i:i + 1], cfg,
                                 teacher_logprobs=TEACHER[i:i + 1], denominator=denominator)[0]) for i in range(2))
    assert parts == pytest.approx(float(whole))


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ConfigError, match="estimator"):
        ObjectiveConfig(estimator="k4")
    with pytest.raises(ConfigError, match="aggregation"):
        ObjectiveConfig(aggregation="sum")
    with pytest.raises(ValueError, match="needs the per-token kl from the policy head"):
        loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, ObjectiveConfig(beta=0.1, estimator="full"))


# --- the on-policy distillation family (objective.baseline, objective.horizon*) -------------------
KL_EXACT = torch.tensor([[0.2, 0.4, 9.0], [0.1, 0.1, 0.1]], dtype=torch.float64)


def test_vopd_subtracts_the_exact_kl_from_the_sampled_log_ratio():
    # A_it = A_i - beta (d_it - KL_it), beta = 0.1; d - KL: seq0 [0.3, -0.9], seq1 [-0.1, 0.9, 1.9]
    # seq0: A 0.97 (rho 1.5) -> min(1.455, 1.164) = 1.164; A 1.09 (rho 0.9) -> 0.981        mean 1.0725
    # seq1: A -1.99 (rho .5) -> min(-0.995, -1.592) = -1.592; A -2.09 (1.1) -> -2.299;
    #       A -2.19 (rho 1.3) -> min(-2.847, -2.628) = -2.847                                 mean -2.246
    cfg = ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", baseline="exact_kl")
    loss, stats = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, kl=KL_EXACT, teacher_logprobs=TEACHER)
    assert float(loss) == pytest.approx(-(1.0725 - 2.246) / 2)
    assert float(stats["kl_sum"]) == pytest.approx(float(D[MASK].sum()))  # the reported KL is k1, unbaselined
    # neutral: a zero baseline is plain k1-in-the-advantage OPD/dGRPO
    plain = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, kl=torch.zeros_like(KL_EXACT), teacher_logprobs=TEACHER)[0]
    assert float(plain) == pytest.approx(loss_of(beta=0.1, estimator="k1", combine="advantage")[0])


def single_sample_gradients(baseline: str, seed: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient w.r.t. the student's logits of the loss on one sampled token, for every token
    of a small vocabulary (k1 in the advantage, beta 1, A = 0), with the sampling probabilities,
    and the exact reverse-KL gradient."""
    g = torch.Generator().manual_seed(seed)
    z0, teacher = torch.randn(vocab, generator=g, dtype=torch.float64) * 2, torch.randn(vocab, generator=g, dtype=torch.float64) * 2
    q = torch.log_softmax(teacher, -1)
    cfg = ObjectiveConfig(beta=1.0, estimator="k1", combine="advantage", baseline=baseline)
    grads = []
    for y in range(vocab):
        z = z0.clone().requires_grad_(True)
        logp = torch.log_softmax(z, -1)
        exact = (logp.exp() * (logp - q)).sum().detach()
        loss, _ = loss_on(logp[y].view(1, 1), logp[y].detach().view(1, 1), torch.zeros(1, dtype=torch.float64),
                             torch.ones(1, 1, dtype=torch.bool), cfg, kl=exact.view(1, 1), teacher_logprobs=q[y].view(1, 1))
        loss.backward()
        grads.append(z.grad.clone())
    z = z0.clone().requires_grad_(True)
    logp = torch.log_softmax(z, -1)
    (logp.exp() * (logp - q)).sum().backward()
    return torch.stack(grads), torch.softmax(z0, -1), z.grad


def variance_ratio(seed: int, vocab: int) -> float:
    """Var(single-sample gradient with the exact-KL baseline) / Var(without), measured exactly
    over the sampling distribution; both means checked against the reverse-KL gradient."""
    variances = {}
    for baseline in ("none", "exact_kl"):
        grads, p, true = single_sample_gradients(baseline, seed, vocab)
        mean = (p[:, None] * grads).sum(0)
        assert torch.allclose(mean, true, atol=1e-10), (baseline, seed)  # unbiased: E_p[g] = grad KL(p || q)
        variances[baseline] = float((p[:, None] * (grads - mean).pow(2)).sum())
    return variances["exact_kl"] / variances["none"]


def test_vopd_keeps_the_gradient_unbiased_and_cuts_its_variance_in_most_states():
    """Measured exactly over the sampling distribution (no Monte Carlo), 20 random states of a
    50-token vocabulary: both single-sample gradients average to the reverse-KL gradient, and the
    baselined one varies less in most states (the median variance is under 0.6x). The exact KL is
    the log-ratio's mean, not the variance-optimal baseline (which weights by |grad log p|^2), so a
    state can lose: on a 7-token vocabulary seed 4 has 6x the variance. RESULTS.md has the numbers."""
    ratios = sorted(variance_ratio(seed, 50) for seed in range(20))
    assert ratios[10] < 0.6 and sum(r < 1 for r in ratios) >= 17, ratios
    assert variance_ratio(4, 7) > 2  # not a per-state guarantee


def test_topd_keeps_the_teacher_term_on_the_first_h_tokens_only():
    # horizon 1, k2 (d^2/2), beta 0.1: seq0 keeps 0.125 (/2 tokens), seq1 keeps 0 (/3): seq-mean 0.03125
    cfg = ObjectiveConfig(beta=0.1, estimator="k2")
    loss = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER, horizon=1)[0]
    assert float(loss) == pytest.approx(-SURROGATE_SEQ_MEAN + 0.1 * 0.125 / 2 / 2)
    full = loss_of(beta=0.1, estimator="k2")[0]
    for neutral in (None, 3, 100):  # no horizon, or one past every sequence: plain dGRPO
        assert float(loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER, horizon=neutral)[0]) == \
            pytest.approx(full)
    # the gradient after the horizon is the surrogate's alone (A = 0: none at all)
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss_on(logprobs, logprobs.detach(), torch.zeros(2, dtype=torch.float64), MASK, cfg, teacher_logprobs=TEACHER,
               horizon=1)[0].backward()
    assert logprobs.grad[:, 1:].abs().max() == 0 and logprobs.grad[0, 0] == pytest.approx(0.1 * 0.5 / 2 / 2)


def test_horizon_schedules():
    from trainer.objectives import horizon_tokens

    assert horizon_tokens(ObjectiveConfig(), 5, 100) is None
    assert horizon_tokens(ObjectiveConfig(horizon=0.1), 7, 100) == 10  # TOPD: 10% of max_new_tokens
    assert horizon_tokens(ObjectiveConfig(horizon=32), 7, 100) == 32
    popd = ObjectiveConfig(horizon=0.1, horizon_final=1.0, horizon_steps=10)  # POPD: 10 -> 100 over 10 steps
    assert [horizon_tokens(popd, s, 100) for s in (1, 6, 11, 50)] == [10, 55, 100, 100]


def test_family_options_refuse_invalid_pairs():
    with pytest.raises(ConfigError, match="vOPD"):
        ObjectiveConfig(beta=0.1, estimator="k2", baseline="exact_kl")
    with pytest.raises(ConfigError, match="horizon_final"):
        ObjectiveConfig(horizon_steps=10)
    with pytest.raises(ConfigError, match="k1"):
        ObjectiveConfig(beta=0.1, estimator="k2", mixture_clip=0.5)
    with pytest.raises(ConfigError, match="k1"):
        ObjectiveConfig(beta=0.1, estimator="full", reward_scale=2.0)
    with pytest.raises(ConfigError, match="do not combine"):
        ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", baseline="exact_kl", reward_scale=2.0)
    with pytest.raises(ConfigError, match="pick one"):
        ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", reward_scale=2.0, mixture_clip=0.5)
    with pytest.raises(ConfigError, match="neither"):
        ObjectiveConfig(relax_steps=10)
    with pytest.raises(ConfigError, match="jsd_beta"):
        ObjectiveConfig(beta=0.1, direction="jsd", jsd_beta=1.0)
    with pytest.raises(ConfigError, match="does not follow"):
        ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", direction="jsd")
    with pytest.raises(ConfigError, match="token_select"):
        ObjectiveConfig(token_select="random")


# G-OPD / ExOPD: E = log ref - log q per token; with lambda = 2 the term is d + (lambda - 1) E.
E = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.0, -0.5]], dtype=torch.float64)
REFERENCE = TEACHER + E


def test_gopd_scales_the_teacher_reward_against_a_reference():
    # term = D + E: seq0 [1.5, -1.5], seq1 [0.5, 1.0, 1.5]; A_it = A_i - 0.1 term
    # seq0: A 0.85 (rho 1.5) -> min(1.275, 1.02) = 1.02; A 1.15 (rho 0.9) -> 1.035                 mean 1.0275
    # seq1: A -2.05 (rho .5) -> min(-1.025, -1.64) = -1.64; A -2.1 (1.1) -> -2.31;
    #       A -2.15 (rho 1.3) -> min(-2.795, -2.58) = -2.795                                           mean -2.248333
    cfg = ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", reward_scale=2.0)
    loss = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER, reference_logprobs=REFERENCE)[0]
    assert float(loss) == pytest.approx(-(1.0275 - 2.248333333) / 2)
    # the gradient (ratio 1, A = 0): beta x term / |o_i| / 2 sequences, detached, per token
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss_on(logprobs, logprobs.detach(), torch.zeros(2, dtype=torch.float64), MASK, cfg, teacher_logprobs=TEACHER,
               reference_logprobs=REFERENCE)[0].backward()
    expected = torch.tensor([[1.5 / 2, -1.5 / 2, 0.0], [0.5 / 3, 1.0 / 3, 1.5 / 3]], dtype=torch.float64) * 0.1 / 2
    assert torch.allclose(logprobs.grad, expected)
    # neutral: lambda = 1 is plain OPD/dGRPO whatever the reference
    plain = loss_of(beta=0.1, estimator="k1", combine="advantage")[0]
    neutral = ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", reward_scale=1.0)
    assert float(loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, neutral, teacher_logprobs=TEACHER,
                            reference_logprobs=REFERENCE + 5)[0]) == pytest.approx(plain)
    with pytest.raises(ValueError, match="reference_logprobs"):
        loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)


# REOPOLD, lambda = 0.2: the reward r = -d floored at log(0.2 / 0.8) = -1.386294, term = -max(r, floor).
#   d 0.5 -> r -0.5 (kept) -> 0.5; d -0.5 -> r +0.5 (kept: positive rewards are untouched) -> -0.5;
#   d 0 -> 0; d 1 -> 1; d 2 -> r -2 floored -> 1.386294
REOPOLD_TERM = torch.tensor([[0.5, -0.5, 0.0], [0.0, 1.0, 1.386294]], dtype=torch.float64)


def test_reopold_floors_negative_rewards_and_keeps_positive_ones():
    cfg = ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", mixture_clip=0.2)
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss_on(logprobs, logprobs.detach(), torch.zeros(2, dtype=torch.float64), MASK, cfg, teacher_logprobs=TEACHER)[0] \
        .backward()
    lengths = torch.tensor([[2.0], [3.0]], dtype=torch.float64)
    assert torch.allclose(logprobs.grad, 0.1 * REOPOLD_TERM / lengths / 2, atol=1e-7)
    one = torch.ones(1, 1, dtype=torch.bool)

    def single(teacher: float) -> float:
        lp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
        loss_on(lp, lp.detach(), torch.zeros(1, dtype=torch.float64), one, cfg,
                teacher_logprobs=torch.tensor([[teacher]], dtype=torch.float64))[0].backward()
        return float(lp.grad) / 0.1  # the term itself

    assert single(-40.0) == pytest.approx(math.log(4), rel=1e-9)  # a teacher that rules the token out: at most log 4
    assert single(1.0) == pytest.approx(-1.0, rel=1e-9)  # reward +1 stays +1 (the smooth mixture gave +0.295)
    # lambda = 0.5: every negative reward becomes 0, positive ones stay
    half = ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", mixture_clip=0.5)
    cfg = half
    assert single(-3.0) == 0.0 and single(0.7) == pytest.approx(-0.7)
    # neutral: lambda = 1, or the refinement phase (relaxed=False), is plain OPD
    plain = loss_of(beta=0.1, estimator="k1", combine="advantage")[0]
    assert float(loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, half, teacher_logprobs=TEACHER, relaxed=False)[0]) == \
        pytest.approx(plain)
    assert loss_of(beta=0.1, estimator="k1", combine="advantage", mixture_clip=1.0)[0] == pytest.approx(plain)
    with pytest.raises(ConfigError, match="mixture_clip"):
        ObjectiveConfig(beta=0.1, estimator="k1", combine="advantage", mixture_clip=0.7)


# TIP: student entropy and |d| per token (the masked slot's 9 and 50 must never count)
ENTROPY = torch.tensor([[2.0, 0.1, 9.0], [0.5, 0.2, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("mode,chosen", [
    ("entropy", [(0, 0), (1, 2)]),  # the two highest entropies: 2.0, 1.0
    ("divergence", [(1, 1), (1, 2)]),  # |d| 1 and 2
    ("overconfident", [(0, 1), (1, 1)]),  # entropy <= median 0.5: (0,1) .1 |d| .5, (1,0) .5 |d| 0, (1,1) .2 |d| 1
    ("tip", [(0, 0), (1, 1)]),  # one by entropy, one overconfident
])
def test_tip_selects_tokens_by_entropy_and_divergence(mode: str, chosen: list[tuple[int, int]]):
    from trainer.objectives import select_tokens

    cfg = ObjectiveConfig(beta=0.1, estimator="k2", token_select=mode, token_fraction=0.4)  # ceil(0.4 x 5) = 2
    selected = select_tokens(cfg, MASK, ENTROPY, (LOGPROBS - TEACHER).abs())
    assert sorted(map(tuple, selected.nonzero().tolist())) == chosen
    # the loss: k2 = d^2/2 on the chosen tokens only, as their mean: scaled by 5 trained / 2 chosen (seq-mean)
    halves = (D.pow(2) / 2) * selected
    expected = -SURROGATE_SEQ_MEAN + 0.1 * 2.5 * (halves[0].sum() / 2 + halves[1].sum() / 3) / 2
    loss, stats = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER, entropy=ENTROPY)
    assert float(loss) == pytest.approx(float(expected)) and float(stats["distill_tokens"]) == 2
    # token-mean: the teacher term is beta x the mean of k2 over the chosen tokens, whatever the fraction
    # (dividing by all 5 trained tokens would give beta x 2/5 of it)
    token_mean = ObjectiveConfig(beta=0.1, estimator="k2", token_select=mode, token_fraction=0.4, aggregation="token-mean")
    surrogate_only = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, ObjectiveConfig(aggregation="token-mean"))[0]
    with_term = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, token_mean, teacher_logprobs=TEACHER, entropy=ENTROPY)[0]
    assert float(with_term - surrogate_only) == pytest.approx(0.1 * float(halves.sum()) / 2)
    # neutral: every token kept (fraction 1), or REOPOLD's refinement phase
    full = loss_of(beta=0.1, estimator="k2")[0]
    for neutral, relaxed in ((ObjectiveConfig(beta=0.1, estimator="k2", token_select=mode), True), (cfg, False)):
        assert float(loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, neutral, teacher_logprobs=TEACHER, entropy=ENTROPY,
                                relaxed=relaxed)[0]) == pytest.approx(full)


def test_generalized_jsd_by_hand_through_the_policy_head():
    """p = (3/4, 1/4), q = (1/4, 3/4), b = 1/2: m = (1/2, 1/2), JSD = 3/4 ln 3/2 + 1/4 ln 1/2 = 0.130812;
    dJSD/dz_j = (1 - b) p_j (ln p_j/m_j - KL(p||m)) = (+0.102995, -0.102995). Near b = 0 (1) the
    JSD over b (1 - b) is the forward (reverse) KL."""
    from trainer.kernels import policy_head

    weight = torch.tensor([[math.log(3)], [0.0]], dtype=torch.float64, requires_grad=True)
    teacher = {"teacher_hidden": torch.ones(1, 1, dtype=torch.float64),
               "teacher_weight": torch.tensor([[0.0], [math.log(3)]], dtype=torch.float64)}
    out = policy_head(torch.ones(1, 1, dtype=torch.float64), weight, None, direction="jsd", jsd_beta=0.5,
                      backend="torch", **teacher)
    out.kl.sum().backward()
    assert float(out.kl.detach()) == pytest.approx(0.75 * math.log(1.5) - 0.25 * math.log(2), rel=1e-6)
    assert weight.grad[:, 0].tolist() == pytest.approx([0.102995, -0.102995], rel=1e-5)
    x = torch.ones(1, 1, dtype=torch.float64)
    kl = {d: float(policy_head(x, weight, None, direction=d, backend="torch", **teacher).kl.detach())
          for d in ("reverse", "forward")}
    for b, scale, limit in ((1e-4, 1e-4, "forward"), (1 - 1e-4, 1e-4, "reverse")):
        jsd = float(policy_head(x, weight, None, direction="jsd", jsd_beta=b, backend="torch", **teacher).kl.detach())
        assert jsd / scale == pytest.approx(kl[limit], rel=2e-3)


# --- edge cases of the objective (each one failed before the teacher term had one seam) -----------
def test_log_ratio_is_clamped_as_verl_does_so_a_huge_ratio_with_zero_advantage_is_not_nan():
    logprobs = torch.tensor([[0.0, -1.0]], requires_grad=True)  # fp32, as the trainer computes
    old = torch.tensor([[-100.0, -1.0]])  # log-ratio +100: e^100 overflows fp32; inf x 0 is NaN
    loss, stats = loss_on(logprobs, old, torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), ObjectiveConfig())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert float(stats["ratio_sum"]) == pytest.approx(math.exp(20) + 1, rel=1e-5)  # the ratio is e^20 at most


def test_dual_clip_bounds_the_surrogate_of_negative_advantages_as_verl_does():
    # A = -2, rho = e^2 = 7.389: min(rho A, clip(rho) A) = -14.78; verl's dual clip c = 3 makes it max(-14.78, -6) = -6
    logprobs = torch.tensor([[2.0, 0.1]], dtype=torch.float64, requires_grad=True)
    old, mask = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool)
    plain = loss_on(logprobs, old, torch.tensor([-2.0], dtype=torch.float64), mask, ObjectiveConfig())[0]
    dual = loss_on(logprobs, old, torch.tensor([-2.0], dtype=torch.float64), mask, ObjectiveConfig(clip_ratio_c=3.0))[0]
    second = min(math.exp(0.1) * -2, 1.1 * -2)  # rho = 1.105 is inside the dual clip: unchanged
    assert float(plain) == pytest.approx(-(math.exp(2) * -2 + second) / 2)
    assert float(dual) == pytest.approx(-(-6.0 + second) / 2)
    dual.backward()
    assert logprobs.grad[0, 0] == 0  # the clipped token passes no gradient, as in verl
    positive = loss_on(logprobs.detach(), old, torch.tensor([2.0], dtype=torch.float64), mask, ObjectiveConfig(clip_ratio_c=3.0))
    assert float(positive[0]) == pytest.approx(-(1.2 * 2 + min(math.exp(0.1), 1.2) * 2) / 2)  # positive A: untouched
    with pytest.raises(ConfigError, match="clip_ratio_c"):
        ObjectiveConfig(clip_ratio_c=0.5)


@pytest.mark.parametrize("estimator,combine,direction", [("k2", "loss", "reverse"), ("k3", "loss", "forward"),
                                                         ("k1", "advantage", "reverse")])
def test_a_non_finite_teacher_log_prob_at_a_padded_position_reaches_no_value_and_no_gradient(
        estimator: str, combine: str, direction: str):
    teacher = TEACHER.clone()
    teacher[0, 2] = -math.inf  # the masked slot
    logprobs = LOGPROBS.clone().requires_grad_(True)
    cfg = ObjectiveConfig(beta=0.5, estimator=estimator, combine=combine, direction=direction)
    loss, stats = loss_on(logprobs, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all() and torch.isfinite(stats["kl_sum"])
    assert float(loss) == pytest.approx(float(loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)[0]))


# -- edge cases an fp64 audit found (issue 37) -----------------------------------------------------
def test_tip_with_a_horizon_is_neutral_at_fraction_one_and_a_mean_over_the_horizon_below_it():
    """Horizon 1 keeps each sequence's first token: (0,0) d = 0.5 and (1,0) d = 0. k2 = d^2/2 there:
    0.125 and 0. TIP at fraction 1 must give the same loss as no TIP (it once scaled by all 5 trained
    tokens over the 2 in the horizon, x2.5). At fraction 0.5 it keeps ceil(0.5 x 2) = 1 token, the
    highest entropy of the two (entropy 2.0 at (0,0)), as the mean over the horizon: 0.125 x 2/1."""
    horizon = ObjectiveConfig(beta=0.1, estimator="k2")
    plain = float(loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, horizon, teacher_logprobs=TEACHER, horizon=1)[0])
    assert plain == pytest.approx(-SURROGATE_SEQ_MEAN + 0.1 * (0.125 / 2 + 0.0 / 3) / 2)
    for mode in ("entropy", "divergence", "overconfident", "tip"):
        full = ObjectiveConfig(beta=0.1, estimator="k2", token_select=mode, token_fraction=1.0)
        assert float(loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, full, teacher_logprobs=TEACHER, entropy=ENTROPY,
                             horizon=1)[0]) == pytest.approx(plain), mode
    half = ObjectiveConfig(beta=0.1, estimator="k2", token_select="entropy", token_fraction=0.5)
    loss, stats = loss_on(LOGPROBS, OLD, ADVANTAGES, MASK, half, teacher_logprobs=TEACHER, entropy=ENTROPY, horizon=1)
    assert float(loss) == pytest.approx(-SURROGATE_SEQ_MEAN + 0.1 * (0.125 * 2 / 2) / 2)
    assert float(stats["distill_tokens"]) == 1


def test_popd_compares_both_ends_of_its_horizon_in_tokens():
    from trainer.config import RLConfig, load_config

    base = ["--model.path=m", "--data.long=[{path='x'}]", "--rollout.max_new_tokens=512", "--objective.beta=1",
            "--teacher.source=local", "--teacher.path=t", "--objective.horizon_steps=4"]
    # 0.5 of 512 = 256 tokens "growing" to 2 tokens: refused, both ends named in tokens
    with pytest.raises(ConfigError, match=r"horizon = 0.5 \(256 tokens\) grows to horizon_final = 2 \(2 tokens"):
        load_config(RLConfig, None, [*base, "--objective.horizon=0.5", "--objective.horizon_final=2"])
    # 100 tokens growing to the whole rollout (1.0 = 512 tokens): accepted, and it grows linearly
    cfg = load_config(RLConfig, None, [*base, "--objective.horizon=100", "--objective.horizon_final=1.0"]).objective
    assert [cfg.horizon_at(step, 512) for step in (1, 3, 5, 9)] == [100, 306, 512, 512]


def test_k3_as_the_forward_term_reports_the_forward_kl_and_is_clamped():
    """p = (1/2, 1/2), q = (1/4, 3/4): the reported value r log r - (r - 1) (r = q/p) averages under p
    to KL(q || p) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812, where k3's own value estimates KL(p || q)
    = 1/2 ln 2 + 1/2 ln(2/3) = 0.143841. A log-ratio of 100 is clamped to 20: finite."""
    from trainer.objectives import forward_kl_value, teacher_term

    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64)
    reported = forward_kl_value(p.log(), q.log())
    assert float((p * reported).sum()) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-12)
    assert float((p * sampled_kl(p.log(), q.log(), "k3")).sum()) == pytest.approx(0.143841, abs=1e-6)
    cfg = ObjectiveConfig(beta=1.0, estimator="k3", direction="forward")
    batch = TokenBatch(p.log()[None], p.log()[None], torch.zeros(1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool),
                       teacher_logprobs=q.log()[None])
    term = teacher_term(cfg, batch)
    assert term.kl[0].tolist() == pytest.approx(reported.tolist())  # what is logged as teacher_kl
    assert term.term[0].tolist() == pytest.approx(sampled_kl(p.log(), q.log(), "k3").tolist())  # what is trained
    huge = sampled_kl(torch.tensor([-100.0]), torch.tensor([0.0]), "k3")
    assert torch.isfinite(huge).all() and float(huge) == pytest.approx(math.expm1(20.0) - 20.0)


def test_group_advantages_are_continuous_as_the_spread_vanishes():
    """Rewards (0, delta): centred +-delta/2, unbiased std delta/sqrt(2), A = +-(delta/2)/(delta/sqrt(2)
    + 1e-6). Either side of delta = 1e-6 the advantages differ by little (they once jumped from 0 to
    +-0.35 there), and they go to 0 with delta."""
    def advantage(delta: float) -> float:
        return float(group_advantages(torch.tensor([[0.0, delta]], dtype=torch.float64))[0, 1])

    for delta in (1e-9, 1e-7, 0.99e-6 * math.sqrt(2), 1.01e-6 * math.sqrt(2), 1e-5, 1.0):
        assert advantage(delta) == pytest.approx((delta / 2) / (delta / math.sqrt(2) + 1e-6), rel=1e-9)
    assert abs(advantage(1.01e-6 * math.sqrt(2)) - advantage(0.99e-6 * math.sqrt(2))) < 0.01
    assert advantage(1e-12) < 1e-5 and advantage(0.0) == 0.0


def test_a_served_log_prob_above_zero_is_a_failure_not_a_score():
    from trainer.batch import TeacherScores
    from trainer.teacher import _not_finite

    assert _not_finite(TeacherScores([-0.1, -2.0])) is None
    assert _not_finite(TeacherScores([-0.1, 0.00005])) is None  # rounding at 0 is a log-prob of 1
    assert "positive teacher log-prob (1.5) at completion token 1" in _not_finite(TeacherScores([-0.1, 1.5]))
    assert "positive" in _not_finite(TeacherScores([-0.1], topk_ids=[[1]], topk_logprobs=[[0.7]]))
