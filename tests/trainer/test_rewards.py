"""Reward functions: normalization, F1, RULER string match, the LLM judge over HTTP (scripted
test-double server), user callables, and failures recorded as NaN with a reason."""

from __future__ import annotations

import math

import pytest

from openai_double import ScriptedServer
from trainer.config import ConfigError, RewardConfig
from trainer.rewards import RewardSet, exact_match, string_match_all, string_match_part, token_f1


def test_exact_match_normalizes_like_squad_and_ignores_reasoning():
    assert exact_match("The  Eiffel tower.", "eiffel Tower") == 1.0
    assert exact_match("<think>maybe the Louvre</think> Eiffel Tower", ["Louvre museum", "Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert exact_match("<think>never finished", "Eiffel Tower") == 0.0


def test_token_f1_by_hand():
    # predicted {red, big, dog}, gold {big, red, cat}: 2 common -> P = R = 2/3 -> F1 = 2/3
    assert token_f1("red big dog", "big red cat") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_ruler_string_match():
    assert string_match_all("The keys are 12 and 77.", ["12", "77", "31"]) == pytest.approx(2 / 3)
    assert string_match_part("answer: 77", ["12", "77"]) == 1.0
    assert string_match_part("answer: 78", ["12", "77"]) == 0.0


def test_weighted_sum_and_callable_by_dotted_path():
    rewards = RewardSet([RewardConfig("exact_match", 1.0), RewardConfig("token_f1", 0.5),
                         RewardConfig("short", 2.0, callable="copy_task:short_answer_reward")])
    result = rewards.score(["v3", "v3 v4"], [["v3"], ["v3"]], [{}, {}])
    assert result.per_fn["exact_match"] == [1.0, 0.0]
    assert result.total == pytest.approx([1.0 + 0.5 + 2.0, 0.0 + 0.5 * (2 * 0.5 * 1 / 1.5) + 0.0])


def test_a_failing_reward_is_nan_with_its_reason():
    rewards = RewardSet([RewardConfig("exact_match", 1.0), RewardConfig("flaky", 1.0, callable="copy_task:flaky_reward"),
                         RewardConfig("off", 0.0, callable="copy_task:flaky_reward")])
    result = rewards.score(["a", "b", "c"], ["a"] * 3, [{}] * 3)
    assert any(math.isnan(t) for t in result.total) and not all(math.isnan(t) for t in result.total)
    assert result.failures["flaky"] >= 1 and "scripted reward failure" in result.errors[0]


def test_llm_judge_over_http():
    with ScriptedServer() as server:
        rewards = RewardSet([RewardConfig("judge", 1.0, judge_model="scripted", judge_base_url=server.base_url,
                                          judge_max_retries=1)])
        result = rewards.score(["v1 [[mode:score7]]", "v2 [[mode:noscore]]", "v3 [[mode:down]]"], ["v1"] * 3,
                               [{"question": "what is the key ?"}] * 3)
        rewards.close()
    assert result.per_fn["judge"][0] == pytest.approx(0.7)
    assert math.isnan(result.per_fn["judge"][1]) and math.isnan(result.per_fn["judge"][2])
    assert result.failures["judge"] == 2
    assert any("without a score" in e for e in result.errors) and any("HTTP 500" in e for e in result.errors)
    assert "Reference answer: v1" in server.prompts[0] and "what is the key ?" in server.prompts[0]


def test_unknown_or_broken_rewards_are_configuration_errors():
    with pytest.raises(ConfigError, match="unknown reward"):
        RewardSet([RewardConfig("nope")])
    with pytest.raises(ConfigError, match="cannot be imported"):
        RewardSet([RewardConfig("x", callable="no_such_module:fn")])
    with pytest.raises(ConfigError, match="judge_model"):
        RewardSet([RewardConfig("judge")])
