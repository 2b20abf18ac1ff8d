"""Outcome rewards for rollouts (and scores for eval): exact match, token F1, RULER's string match
(all / part), an LLM judge over an OpenAI-compatible endpoint, and user callables by dotted path,
combined with weights. A reward that fails is NaN with its error recorded, never a silent zero.
Must not know about models or advantages.
"""

from __future__ import annotations

import importlib
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from longblocks.text import split_reasoning
from trainer.config import ConfigError, RewardConfig

Reference = str | Sequence[str]
RewardFn = Callable[[str, Reference, dict[str, Any]], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _refs(reference: Reference) -> list[str]:
    return [reference] if isinstance(reference, str) else [str(r) for r in reference]


def answer_text(completion: str) -> str:
    """The completion without any `<think>` reasoning."""
    return split_reasoning(completion)[0]


def exact_match(completion: str, reference: Reference, row: dict[str, Any] | None = None) -> float:
    """1.0 when the normalized answer equals any normalized reference."""
    answer = normalize_answer(answer_text(completion))
    return float(any(answer == normalize_answer(r) for r in _refs(reference)))


def token_f1(completion: str, reference: Reference, row: dict[str, Any] | None = None) -> float:
    """SQuAD token F1 against the best-matching reference."""
    predicted = normalize_answer(answer_text(completion)).split()
    best = 0.0
    for ref in _refs(reference):
        gold = normalize_answer(ref).split()
        if not predicted or not gold:
            best = max(best, float(predicted == gold))
            continue
        common = sum((Counter(predicted) & Counter(gold)).values())
        if common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def string_match_all(completion: str, reference: Reference, row: dict[str, Any] | None = None) -> float:
    """RULER's score for tasks with several needles: the fraction of references found in the answer."""
    answer = answer_text(completion).lower()
    refs = _refs(reference)
    return sum(r.lower() in answer for r in refs) / len(refs) if refs else 0.0


def string_match_part(completion: str, reference: Reference, row: dict[str, Any] | None = None) -> float:
    """RULER's score for QA: 1.0 when any reference is found in the answer."""
    answer = answer_text(completion).lower()
    return float(any(r.lower() in answer for r in _refs(reference)))


BUILTIN: dict[str, RewardFn] = {
    "exact_match": exact_match, "token_f1": token_f1,
    "string_match_all": string_match_all, "string_match_part": string_match_part,
}

JUDGE_PROMPT = """You grade an answer against a reference answer.
Question: {question}
Reference answer: {reference}
Answer to grade: {answer}
How correct and complete is the answer, compared with the reference? Reply with one line
`Score: N` where N is an integer from 0 (wrong) to 10 (fully correct)."""
_SCORE = re.compile(r"score\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


class JudgeReward:
    """An LLM judge over an OpenAI-compatible endpoint (the `longblocks` backend: concurrency,
    retries, request cache); returns the 0-10 score / 10. Unparseable or failed -> NaN + error."""

    def __init__(self, model: str, base_url: str | None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16,
                 max_tokens: int = 512, question_field: str = "question", max_retries: int = 6) -> None:
        from longblocks.backends import OpenAIBackend, Sampling

        self.backend = OpenAIBackend(model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                                     max_retries=max_retries, backoff=0.5, sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0))
        self.question_field = question_field

    def score_batch(self, completions: list[str], references: list[Reference], rows: list[dict[str, Any]]
                    ) -> list[tuple[float, str | None]]:
        def messages(i: int) -> list[dict[str, str]]:
            prompt = JUDGE_PROMPT.format(question=rows[i].get(self.question_field, ""),
                                         reference=" | ".join(_refs(references[i])), answer=answer_text(completions[i]))
            return [{"role": "user", "content": prompt}]

        out: list[tuple[float, str | None]] = []
        for _, completion in self.backend.map_ordered(range(len(completions)), messages):
            if completion.error:
                out.append((math.nan, f"judge request failed: {completion.error}"))
            elif (match := _SCORE.search(completion.text)) is None:
                out.append((math.nan, f"judge reply without a score: {completion.text[:80]!r}"))
            else:
                out.append((min(float(match.group(1)), 10.0) / 10.0, None))
        return out

    def close(self) -> None:
        self.backend.close()


def load_callable(path: str) -> RewardFn:
    """`package.module:function` or `package.module.function`."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"reward callable {path!r} cannot be imported: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"reward callable {path!r} is not callable")
    return fn


@dataclass
class RewardResult:
    total: list[float]  # weighted sum; NaN when any weighted reward failed
    per_fn: dict[str, list[float]]
    errors: list[str] = field(default_factory=list)  # "name: message" per failure (first few kept)
    failures: dict[str, int] = field(default_factory=dict)


class RewardSet:
    def __init__(self, specs: Sequence[RewardConfig]) -> None:
        if not specs:
            raise ConfigError("at least one reward is needed (weight 0 disables its effect but keeps it logged)")
        self.specs = list(specs)
        self.fns: dict[str, RewardFn | JudgeReward] = {}
        for spec in self.specs:
            if spec.name in self.fns:
                raise ConfigError(f"reward {spec.name!r} given twice")
            if spec.callable:
                self.fns[spec.name] = load_callable(spec.callable)
            elif spec.name == "judge":
                if not spec.judge_model:
                    raise ConfigError("the judge reward needs judge_model (and judge_base_url)")
                self.fns[spec.name] = JudgeReward(spec.judge_model, spec.judge_base_url, spec.judge_api_key_env,
                                                      max_retries=spec.judge_max_retries)
            elif spec.name in BUILTIN:
                self.fns[spec.name] = BUILTIN[spec.name]
            else:
                raise ConfigError(f"unknown reward {spec.name!r}; built-ins: {sorted(BUILTIN)}, judge, or set callable")

    def score(self, completions: list[str], references: list[Reference], rows: list[dict[str, Any]]) -> RewardResult:
        per_fn: dict[str, list[float]] = {}
        errors: list[str] = []
        failures: dict[str, int] = {}
        for spec in self.specs:
            fn = self.fns[spec.name]
            if isinstance(fn, JudgeReward):
                scored = fn.score_batch(completions, references, rows)
            else:
                scored = []
                for completion, reference, row in zip(completions, references, rows):
                    try:
                        value = float(fn(completion, reference, row))
                        scored.append((value, None) if math.isfinite(value) else (math.nan, f"returned {value}"))
                    except Exception as exc:  # noqa: BLE001 - a user reward may raise anything; it is recorded
                        scored.append((math.nan, f"{type(exc).__name__}: {exc}"))
            per_fn[spec.name] = [value for value, _ in scored]
            failed = [msg for _, msg in scored if msg]
            failures[spec.name] = len(failed)
            errors += [f"{spec.name}: {msg}" for msg in failed[:3]]
        total = []
        for i in range(len(completions)):
            parts = [spec.weight * per_fn[spec.name][i] for spec in self.specs if spec.weight != 0]
            total.append(math.nan if any(math.isnan(p) for p in parts) else float(sum(parts)))
        return RewardResult(total=total, per_fn=per_fn, errors=errors, failures=failures)

    def close(self) -> None:
        for fn in self.fns.values():
            if isinstance(fn, JudgeReward):
                fn.close()
