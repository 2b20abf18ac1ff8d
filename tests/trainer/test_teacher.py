"""The teacher signal: scores come back as values (`TeacherScores` or a `TeacherFailure` naming the
rollout), a non-finite log-prob from any teacher is refused with the row it came from and never
reaches the loss, and sampled-token teacher terms refuse truncated sampling (their expected
gradient is then not the KL's: measured exactly here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trainer import objectives
from trainer.batch import Rollout, TeacherFailure, TeacherScores, make_micro_batch
from trainer.config import (ConfigError, DataSource, ModelConfig, ObjectiveConfig, RLConfig, RLDataConfig,
                            RolloutConfig, TeacherConfig)
from trainer.kernels import HeadOutput
from trainer.prompts import Prompt, ReplayData, write_rollouts
from trainer.teacher import Teacher


def precomputed_config(estimator: str = "k2") -> RLConfig:
    return RLConfig(model=ModelConfig(path="unused"), teacher=TeacherConfig(source="precomputed"),
                    data=RLDataConfig(replay="unused"),
                    objective=ObjectiveConfig(beta=0.5, estimator=estimator,
                                              combine="advantage" if estimator == "k1" else "loss"))


def replayed(tmp_path: Path, teacher_logprobs: list[list[float]]) -> list[Rollout]:
    """Rollouts written by `write_rollouts` and read back by `ReplayData` (the precomputed path)."""
    rollouts = [Rollout([1, 2, 3], [4, 5, 6][: len(lp)], [-1.0] * len(lp), True) for lp in teacher_logprobs]
    scores = [TeacherScores(lp) for lp in teacher_logprobs]
    path = write_rollouts(tmp_path / "step-000001-rank0.parquet", 1, [Prompt(0, [1, 2, 3], ["a"], {})], [rollouts],
                          ["x"] * len(rollouts), [1.0] * len(rollouts), {}, scores, 1.0)
    [group] = ReplayData(str(path.parent), 0, temperature=1.0, need_behaviour=False).next_groups(1)
    return group.rollouts


def test_a_non_finite_precomputed_log_prob_is_refused_with_its_row_and_the_loss_stays_finite(tmp_path: Path) -> None:
    rollouts = replayed(tmp_path, [[-0.5, -1.0, -0.2], [-0.3, -math.inf, -0.1], [-0.4, float("nan")]])
    teacher = Teacher(precomputed_config(), torch.device("cpu"))
    scored = teacher.score(rollouts)
    assert isinstance(scored[0], TeacherScores)
    for i, bad in ((1, "-inf"), (2, "nan")):
        assert isinstance(scored[i], TeacherFailure)
        assert f"step-000001-rank0.parquet row {i}" in scored[i].reason and bad in scored[i].reason, scored[i]
    # the step excludes those rollouts: the loss and its gradient stay finite
    valid = [not isinstance(s, TeacherFailure) for s in scored]
    mb = make_micro_batch(rollouts, [1.0, -1.0, 0.5], valid, torch.device("cpu"))
    signal = teacher.signal(mb, scored)
    assert signal.valid.tolist() == valid and torch.isfinite(signal.logprobs).all()
    per_target = torch.full((1, mb.input_ids.shape[1] - 1), -0.7, requires_grad=True)
    head = HeadOutput(per_target, torch.ones_like(per_target), None, None)
    cfg = precomputed_config().objective
    loss, _ = objectives.step_loss(cfg, head, signal, mb, None, objectives.normalizer(cfg, mb.mask), objectives.Schedule())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(per_target.grad).all()


class ScriptedSource:
    """Test double for a teacher source (a served endpoint or a local model) that returns a -inf."""

    def score(self, rollouts, *, top_k, temperature):  # noqa: ANN001, ANN201
        return [TeacherScores([-0.1] * (len(r.completion_ids) - 1) + [-math.inf]) for r in rollouts]

    def close(self) -> None:
        pass


def test_every_teacher_source_passes_through_the_same_finiteness_check() -> None:
    teacher = Teacher(precomputed_config(), torch.device("cpu"))
    teacher.source = ScriptedSource()
    [failure] = teacher.score([Rollout([1], [2, 3], None, True, origin="prompt 7 sample 2")])
    assert isinstance(failure, TeacherFailure)
    assert failure.reason.startswith("prompt 7 sample 2: non-finite teacher log-prob") and "token 1" in failure.reason


def truncated_gradient_error(top_p: float, estimator: str) -> float:
    """|E_{y ~ top-p(p)}[grad of the teacher term at y] - grad KL(p || q)| / |grad KL|, exact over a
    7-token vocabulary (the sampling distribution truncated to its top-p nucleus and renormalized)."""
    gen = torch.Generator().manual_seed(3)
    theta = (torch.randn(7, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    w = torch.randn(7, generator=gen, dtype=torch.float64) * 1.5
    cfg = ObjectiveConfig(beta=1.0, estimator=estimator, combine="advantage" if estimator == "k1" else "loss")
    p = torch.softmax(theta, -1).detach()
    order = p.argsort(descending=True)
    keep = torch.zeros(7, dtype=torch.bool)
    keep[order[: int((p[order].cumsum(0) < top_p).sum()) + 1]] = True
    sampling = torch.where(keep, p, 0.0) / p[keep].sum()
    expected = torch.zeros(7, dtype=torch.float64)
    for y in range(7):
        logprobs = torch.log_softmax(theta, -1)[y].reshape(1, 1)
        tokens = objectives.TokenBatch(logprobs, logprobs.detach(), torch.zeros(1, dtype=torch.float64),
                                       torch.ones(1, 1, dtype=torch.bool),
                                       teacher_logprobs=torch.log_softmax(w, -1)[y].reshape(1, 1))
        expected += sampling[y] * torch.autograd.grad(objectives.dgrpo_loss(tokens, cfg)[0], theta)[0]
    s, t = torch.log_softmax(theta, -1), torch.log_softmax(w, -1)
    target = torch.autograd.grad((s.exp() * (s - t)).sum(), theta)[0]
    return float((expected - target).norm() / target.norm())


@pytest.mark.parametrize("estimator", ["k1", "k2"])
def test_sampled_token_terms_refuse_truncated_sampling_whose_gradient_is_not_the_kls(estimator: str) -> None:
    assert truncated_gradient_error(1.0, estimator) < 1e-9  # untruncated: exactly the reverse-KL gradient
    assert truncated_gradient_error(0.9, estimator) > 0.05  # the nucleus alone: off by more than 5%
    base = dict(model=ModelConfig(path="m"), teacher=TeacherConfig(source="local", path="t"),
                data=RLDataConfig(long=[DataSource(path="x")]),
                objective=ObjectiveConfig(beta=0.5, estimator=estimator,
                                          combine="advantage" if estimator == "k1" else "loss"))
    for sampling in (RolloutConfig(top_p=0.95), RolloutConfig(top_k=50)):
        with pytest.raises(ConfigError, match="truncate"):
            RLConfig(**base, rollout=sampling)
    # an exact per-state term does not care which tokens were sampled
    RLConfig(**{**base, "objective": ObjectiveConfig(beta=0.5)}, rollout=RolloutConfig(top_p=0.95))
    from trainer.cli import app

    result = CliRunner().invoke(app, ["rl", "--model.path=m", "--data.long=[{path='x'}]", "--teacher.source=local",
                                      "--teacher.path=t", "--objective.beta=0.5", f"--objective.estimator={estimator}",
                                      f"--objective.combine={base['objective'].combine}", "--rollout.top_p=0.9"])
    assert result.exit_code == 2 and "truncate" in result.output and "Traceback" not in result.output
