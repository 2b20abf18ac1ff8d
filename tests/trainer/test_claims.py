"""The claims experiment's task and statistics (trainer/recipes/claims.py); the script end to end
is in tests/test_benchmark_scripts.py."""

from __future__ import annotations

import random
import statistics

import pytest

from trainer.recipes import claims


def test_the_key_sits_in_the_first_third_and_the_answer_is_three_values() -> None:
    for row in claims.rows(200, seed=3, scale=claims.CPU):
        words = row["document"].split()
        at = words.index("key")
        assert words[at + 1 : at + 4] == row["answer"].split()
        assert all(v in claims.VALUES for v in row["answer"].split())
        fillers = len(words) - 4
        assert claims.CPU.words[0] <= fillers <= claims.CPU.words[1]
        assert at <= fillers // 3  # far from the question at the end


def test_teacher_labels_are_wrong_only_on_the_trap_quarter_at_the_stated_rate() -> None:
    rng = random.Random(0)
    table = claims.rows(4000, seed=1, scale=claims.CPU)
    shifted = [claims.teacher_label(r["answer"], rng) != r["answer"] for r in table]
    trap = [s for s, r in zip(shifted, table) if claims.is_trap(r["answer"])]
    other = [s for s, r in zip(shifted, table) if not claims.is_trap(r["answer"])]
    assert not any(other)
    assert statistics.fmean(trap) == pytest.approx(claims.TEACHER_ERROR, abs=0.04)
    assert len(trap) / len(table) == pytest.approx(len(claims.TRAP) / len(claims.VALUES), abs=0.03)


def test_paired_interval_and_p_match_scipy() -> None:
    from scipy import stats

    rng = random.Random(5)
    a = [rng.random() for _ in range(9)]
    b = [x - 0.1 + 0.2 * rng.random() for x in a]
    test = claims.paired(a, b)
    ref = stats.ttest_rel(a, b)
    assert test["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    low, high = ref.confidence_interval(0.95)
    assert (test["low"], test["high"]) == pytest.approx((low, high), rel=1e-9)


@pytest.mark.parametrize(("effect", "sd", "seeds"), [(1.0, 1.0, 10), (0.5, 1.0, 34), (0.8, 1.0, 15)])
def test_seeds_for_power_match_the_textbook_paired_t(effect: float, sd: float, seeds: int) -> None:
    """G*Power's one-sample/paired t, two-sided alpha 0.05, power 0.8: d = 1 -> 10, 0.5 -> 34, 0.8 -> 15."""
    assert claims.seeds_for_power(effect, sd) == seeds
    assert claims.seeds_for_power(0.0, 1.0) is None


def test_verdicts_follow_the_interval() -> None:
    base = {"n": 8, "p": 0.01}
    assert claims.verdict({**base, "low": 0.02, "high": 0.3}) == "shown"
    assert claims.verdict({**base, "low": -0.3, "high": -0.01}) == "reversed"
    assert claims.verdict({**base, "p": 0.4, "low": -0.1, "high": 0.2}) == "not shown"


def test_seed_lists() -> None:
    assert claims.seed_list("0-3") == [0, 1, 2, 3] and claims.seed_list("5,7") == [5, 7]
