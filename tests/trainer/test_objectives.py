"""The dGRPO objective against values worked out by hand (see the comments for the arithmetic)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import ConfigError, ObjectiveConfig
from trainer.objectives import dgrpo_loss, group_advantages, normalizer, sampled_kl

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
    loss, stats = dgrpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER,
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
    loss, _ = dgrpo_loss(logprobs, logprobs.detach(), torch.zeros(2, dtype=torch.float64), MASK, cfg,
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
    loss, _ = dgrpo_loss(logprobs, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)
    loss.backward()
    assert logprobs.grad[0, 2] == 0
    changed = LOGPROBS.clone()
    changed[0, 2] = 123.0  # a masked token's value cannot change the loss
    loss_changed, _ = dgrpo_loss(changed, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)
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
    loss, _ = dgrpo_loss(LOGPROBS, OLD, advantages, MASK, cfg, teacher_logprobs=TEACHER)
    assert float(loss) == pytest.approx(0.1 * (0.125 + 2.5 / 3) / 2)  # only beta * seq-mean(k2)


def test_micro_batches_add_up_to_the_step_objective():
    cfg = ObjectiveConfig(beta=0.1, estimator="k2", aggregation="token-mean")
    whole, _ = dgrpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, cfg, teacher_logprobs=TEACHER)
    denominator = normalizer(cfg, MASK)
    parts = sum(float(dgrpo_loss(LOGPROBS[i:i + 1], OLD[i:i + 1], ADVANTAGES[i:i + 1], MASK[i:i + 1], cfg,
                                 teacher_logprobs=TEACHER[i:i + 1], denominator=denominator)[0]) for i in range(2))
    assert parts == pytest.approx(float(whole))


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ConfigError, match="estimator"):
        ObjectiveConfig(estimator="k4")
    with pytest.raises(ConfigError, match="aggregation"):
        ObjectiveConfig(aggregation="sum")
    with pytest.raises(ValueError, match="needs the per-token kl from the policy head"):
        dgrpo_loss(LOGPROBS, OLD, ADVANTAGES, MASK, ObjectiveConfig(beta=0.1, estimator="full"))
