"""LLM-as-judge filtering: one judge request per document lists all of its QA pairs (the document
is sent once) and asks five checks per pair; the parser reads verdicts robustly, keeps what
passes and records reason codes for what fails. Must not rewrite questions or answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from longblocks.backends import Backend, Completion, Messages, build_backend
from longblocks.completions import every_request_failed
from longblocks.config import JudgeSection
from longblocks.errors import LongBlocksError
from longblocks.manifest import LLMStats, llm_stats
from longblocks.records import qa_columns, qa_schema
from longblocks.store import Outcome, Rejection, RunOptions, Stage, StageWriter
from longblocks.text import normalize_text, prompt_hashes, prompt_text

CHECKS = {  # check -> reason code when it fails
    "well_formed": "malformed",
    "complete": "incomplete",
    "supported": "unsupported",
    "multi_span": "local_span",
    "self_contained": "not_self_contained",
}
# The checks asked one at a time when the judge answers by constrained choice (mode "choice").
CHECK_QUESTIONS = {
    "well_formed": "Is the question a clear question, and the answer a direct answer to it?",
    "complete": "Does the answer address every part of the question?",
    "supported": "Is everything the answer states supported by the document?",
    "multi_span": "Does answering need information from more than one passage of the document?",
    "self_contained": "Does the question make sense on its own, without words like \"the text\" or \"this passage\"?",
}
JUDGE_MODES = ("text", "choice")
_PAIR_HEADER_RE = re.compile(r"^[\s#*_>\-]*pair\s*#?\s*(\d+)\s*[*_]*\s*[:.)]?", re.IGNORECASE)
_FIELD_RE = re.compile(r"^[\s*_\-]*([a-z_ ]+?)[*_]*\s*[:=]\s*[*_]*\s*(.*?)\s*[*_]*\s*$", re.IGNORECASE)
_YES = {"yes", "y", "true", "pass", "passed", "1"}
_NO = {"no", "n", "false", "fail", "failed", "0"}


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]  # reason codes, then the judge's sentence as "judge: ..."


def judge_messages(records: list[dict[str, Any]]) -> Messages:
    pairs = "\n\n".join(
        f"Pair {i}:\nQuestion: {r['question']}\nAnswer: {r['answer']}" for i, r in enumerate(records, start=1)
    )
    return [{"role": "user", "content": prompt_text("judge").format(document=records[0]["document"], pairs=pairs)}]


def check_messages(record: dict[str, Any], check: str) -> Messages:
    """One yes/no check of one pair over its document (mode "choice")."""
    text = prompt_text("judge_check").format(document=record["document"], question=record["question"],
                                             answer=record["answer"], check=CHECK_QUESTIONS[check])
    return [{"role": "user", "content": text}]


# The content-free pair each check is calibrated against in mode "choice" (Zhao et al. 2021,
# "Calibrate Before Use"): a small model says "yes" more or less often whatever it reads, so a check
# passes when the pair makes "yes" likelier than this pair does, not when P(yes) > 1/2.
CONTENT_FREE = {"document": "N/A", "question": "N/A", "answer": "N/A"}


def choice_baselines(backend: Any) -> dict[str, float]:
    """P(yes) of each check on the content-free pair (scored once, then from the cache)."""
    scored = dict(backend.choose(CHECKS, lambda check: check_messages(CONTENT_FREE, check), ("yes", "no")))
    failed = {check: p for check, p in scored.items() if isinstance(p, str)}
    if failed:
        raise LongBlocksError(f"judge calibration failed: {failed}")
    return {check: p["yes"] for check, p in scored.items()}


def choice_verdicts(backend: Any, groups: Iterable[list[dict[str, Any]]],
                    baselines: dict[str, float]) -> Iterator[tuple[list[dict[str, Any]], dict[int, Verdict]]]:
    """Each group's verdicts from constrained yes/no choices, one per pair and check: a pair passes
    when every check's P(yes) is above that check's content-free baseline; a check that could not be
    scored fails the pair."""
    items = ((group, number, record, check) for group in groups
             for number, record in enumerate(group, start=1) for check in CHECKS)
    current: list[dict[str, Any]] | None = None
    answers: dict[int, dict[str, dict[str, float] | str]] = {}
    for (group, number, _, check), probs in backend.choose(items, lambda it: check_messages(it[2], it[3]), ("yes", "no")):
        if current is not None and group is not current:
            yield current, _choice_verdicts(answers, baselines)
            answers = {}
        current = group
        answers.setdefault(number, {})[check] = probs
    if current is not None:
        yield current, _choice_verdicts(answers, baselines)


def _choice_verdicts(answers: dict[int, dict[str, dict[str, float] | str]], baselines: dict[str, float]) -> dict[int, Verdict]:
    verdicts = {}
    for number, checks in answers.items():
        errors = [f"{check}: {p}" for check, p in checks.items() if isinstance(p, str)]
        if errors:
            verdicts[number] = Verdict(False, ["judge_request_failed", *errors])
            continue
        failed = [CHECKS[check] for check, p in checks.items() if p["yes"] <= baselines[check]]
        scores = "; ".join(f"{check} p(yes)={p['yes']:.2f} vs {baselines[check]:.2f}" for check, p in checks.items())
        verdicts[number] = Verdict(not failed, [*failed, f"judge: {scores}"])
    return verdicts


def _flag(value: str) -> bool | None:
    word = value.strip().strip(".*_`'\"").split()[0].lower() if value.strip() else ""
    return True if word in _YES else False if word in _NO else None


def parse_verdicts(text: str, n_pairs: int) -> dict[int, Verdict]:
    """Verdict per pair number (1-based) for the blocks that could be read; a pair passes only
    when its verdict says pass and no check says no."""
    blocks: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        header = _PAIR_HEADER_RE.match(line)
        if header:
            current = blocks.setdefault(int(header.group(1)), {})
            rest = line[header.end():]
            line = rest
        if current is None:
            continue
        for part in re.split(r"[;,]\s*(?=[a-z_ ]+\s*[:=])", line, flags=re.IGNORECASE):
            field = _FIELD_RE.match(part)
            if field:
                current[field.group(1).strip().lower().replace(" ", "_")] = field.group(2)
    verdicts: dict[int, Verdict] = {}
    for number, fields in blocks.items():
        if not 1 <= number <= n_pairs:
            continue
        verdict = _flag(fields.get("verdict", ""))
        checks = {name: _flag(fields[name]) for name in CHECKS if name in fields}
        if verdict is None and not checks:
            continue  # nothing readable in this block
        reasons = [CHECKS[name] for name, ok in checks.items() if ok is False]
        passed = verdict is not False and not reasons and verdict is not None
        if not passed and not reasons:
            reasons.append("judge_fail" if verdict is False else "judge_unreadable")
        if fields.get("reason"):
            reasons.append(f"judge: {fields['reason'][:300]}")
        verdicts[number] = Verdict(passed, reasons)
    return verdicts


def local_span(question: str, answer: str, document: str, window: int) -> bool:
    """Cheap check: do all content words of the answer occur within one window of `window` words
    of the document? Then one local passage probably answers the question."""
    needed = {w for w in normalize_text(answer).split() if len(w) > 3}
    if not needed or window <= 0:
        return False
    words = normalize_text(document).split()
    counts: dict[str, int] = {}
    present = 0
    for i, word in enumerate(words):
        if word in needed:
            counts[word] = counts.get(word, 0) + 1
            present += counts[word] == 1
        if i >= window:
            old = words[i - window]
            if old in needed:
                counts[old] -= 1
                present -= counts[old] == 0
        if present == len(needed):
            return True
    return False


def rule_failure(question: str, answer: str) -> tuple[str, str] | None:
    """Failures no judge should pass, checked without one (a small judge passes them): the answer
    repeats the question (`malformed`), or announces an answer and stops (`incomplete`)."""
    q, a = normalize_text(question), normalize_text(answer)
    if a == q or (a.startswith(q) and len(a.split()) <= len(q.split()) + 2):
        return "malformed", "the answer repeats the question"
    if answer.rstrip().endswith(":") and len(a.split()) <= 12:
        return "incomplete", "the answer announces an answer and stops"
    return None


def judge_outcomes(records: list[dict[str, Any]], completion: Completion, *, local_span_window: int = 0,
                   verdicts: dict[int, Verdict] | None = None) -> list[Outcome]:
    """Outcomes of one document's pairs from the judge's completion (or, by choice, its verdicts)."""
    def rejected(record: dict[str, Any], reason: str, detail: str) -> Outcome:
        return Outcome(record["id"], rejected=[Rejection(record["id"], reason, detail)])

    if completion.error:
        if completion.transient:
            return [Outcome(r["id"], retry=completion.error) for r in records]
        return [rejected(r, "judge_request_failed", completion.error) for r in records]
    if verdicts is None:
        verdicts = parse_verdicts(completion.text, len(records))
    outcomes = []
    for number, record in enumerate(records, start=1):
        verdict = verdicts.get(number)
        if verdict is None:
            detail = f"no readable verdict for pair {number} (finish_reason={completion.finish_reason})"
            outcomes.append(rejected(record, "judge_missing_verdict", detail))
        elif not verdict.passed:
            codes = [r for r in verdict.reasons if not r.startswith("judge: ")]
            outcomes.append(rejected(record, codes[0], "; ".join(verdict.reasons)))
        elif broken := rule_failure(record["question"], record["answer"]):
            outcomes.append(rejected(record, broken[0], f"rule: {broken[1]}; " + "; ".join(verdict.reasons)))
        elif local_span_window and local_span(record["question"], record["answer"], record["document"], local_span_window):
            outcomes.append(rejected(record, "local_span_heuristic", f"answer words all within {local_span_window} words"))
        else:
            kept = {**record, "judge_verdict": "pass", "judge_reasons": verdict.reasons}
            outcomes.append(Outcome(record["id"], kept=[kept]))
    return outcomes


class JudgeStage(Stage):
    """QA records judged a document at a time: passes kept with their verdict, failures rejected.
    Mode "text": one request per document, the verdicts parsed from the judge's text; mode
    "choice": each check of each pair a constrained yes/no (backends with `choose`: transformers),
    calibrated against a content-free pair, for models too small to write the verdict format. The
    backend is the section's, built when the stage opens, unless one is given (left open)."""

    group_by = "doc_id"  # the generate stage writes a document's pairs together
    units = ("pairs", "pairs", "pairs")

    def __init__(self, section: JudgeSection, backend: Backend | None = None) -> None:
        if section.mode not in JUDGE_MODES:
            raise LongBlocksError(f"judge mode must be one of {JUDGE_MODES}, got {section.mode!r}")
        self.section, self.given = section, backend
        self.local_span_window, self.mode = section.local_span_window, section.mode
        self.settings: dict[str, Any] = {"mode": self.mode, "local_span_window": self.local_span_window,
                                         "prompt_sha256": prompt_hashes(["judge_check" if self.mode == "choice" else "judge"])}
        if backend is not None:
            self._check(backend)

    def _check(self, backend: Backend) -> None:
        if self.mode == "choice" and not hasattr(backend, "choose"):
            raise LongBlocksError(f"judge mode \"choice\" needs a backend that scores choices (transformers); "
                                  f"{backend.name} answers in text only: use mode \"text\"")

    def open(self, out_dir: Path, options: RunOptions) -> None:
        self.backend = self.given or build_backend(self.section, out_dir, where=f"[{self.name}] ")
        self._check(self.backend)

    def parameters(self) -> dict[str, Any]:
        return {**self.backend.describe(), **self.settings}

    def prepare(self, files: Sequence[Path]) -> None:
        self.schema = qa_schema(qa_columns(files[0], "the judge"))

    def process(self, items: Iterator[list[dict[str, Any]]], writer: StageWriter) -> Iterator[Outcome]:
        if self.mode == "choice":
            baselines = choice_baselines(self.backend)
            self.settings["content_free_p_yes"] = {check: round(p, 4) for check, p in baselines.items()}
            judged = ((group, Completion(), verdicts) for group, verdicts in choice_verdicts(self.backend, items, baselines))
        else:
            judged = ((group, completion, None) for group, completion in self.backend.map_ordered(items, judge_messages))
        for group, completion, verdicts in judged:
            yield from judge_outcomes(group, completion, local_span_window=self.local_span_window, verdicts=verdicts)

    def status(self) -> dict[str, Any]:
        return self.backend.stats.live()

    def stats(self, out_dir: Path) -> LLMStats:
        return llm_stats(self.backend.describe(), **self.settings)

    def check(self, manifest: dict[str, Any]) -> None:
        every_request_failed(self.name, manifest, [self.backend.stats])

    def close(self) -> None:
        if self.given is None and getattr(self, "backend", None) is not None:
            self.backend.close()


def stage(section: JudgeSection, *, backend: Backend | None = None) -> JudgeStage:
    """`[judge]` (or `[filter]`) as a stage: the judge's endpoint, sampling and mode (`backend`
    replaces the section's endpoint, for tests; the caller closes it)."""
    return JudgeStage(section, backend)
