"""QA generation: one request per document asks the generator for all of its question-answer
pairs of one question type; the parser turns completions into QA records or rejection reasons.
Must not judge quality beyond form: the judge stage does that.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longblocks.backends import Backend, Completion, Messages, build_backend
from longblocks.completions import every_request_failed
from longblocks.config import GenerateSection
from longblocks.manifest import LLMStats, llm_stats
from longblocks.records import DOCUMENT_SCHEMA, content_id, qa_id, qa_schema, response_column
from longblocks.sources import is_code
from longblocks.store import Outcome, Rejection, RunOptions, Stage, StageWriter
from longblocks.text import prompt_hashes, prompt_text

LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "ru": "Russian", "uk": "Ukrainian", "cs": "Czech", "sv": "Swedish",
    "da": "Danish", "fi": "Finnish", "no": "Norwegian", "hu": "Hungarian", "ro": "Romanian", "tr": "Turkish",
    "el": "Greek", "bg": "Bulgarian", "ar": "Arabic", "fa": "Persian", "he": "Hebrew", "hi": "Hindi",
    "ja": "Japanese", "ko": "Korean", "zh": "Chinese", "vi": "Vietnamese", "id": "Indonesian", "th": "Thai",
    "ca": "Catalan",
}
_QUESTION_LABELS = "question|q|frage|pregunta|domanda|pergunta|vraag|pytanie|вопрос|问题|問題|質問|soru|otázka|fråga"
_ANSWER_LABELS = "answer|a|antwort|respuesta|réponse|reponse|risposta|resposta|antwoord|odpowiedź|ответ|答案|回答|答え|cevap|odpověď|svar"
_LABEL_RE = re.compile(
    rf"^[\s#>*_\-]*(?:\d+[.)]\s*)?[*_]*\s*(?P<label>{_QUESTION_LABELS}|{_ANSWER_LABELS})\s*(?:\d+)?\s*[*_]*\s*[:：]\s*[*_]*\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
_ANSWER_SET = set(_ANSWER_LABELS.split("|"))
# The format's own placeholders (prompts/_format.txt) copied back instead of a pair.
_PLACEHOLDER_RE = re.compile(r"^\W*the (question|answer)\W*$", re.IGNORECASE)
_REFERENTIAL_RE = re.compile(
    r"\b(the (?:given |above |provided )?(?:text|document|passage|excerpt|article)|(?:this|above) (?:text|passage|document))\b",
    re.IGNORECASE,
)


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


def question_type_for(doc_id: str, types: tuple[str, ...]) -> str:
    """Spread question types over documents, stably (the same document always gets the same type)."""
    return types[int(doc_id[:8], 16) % len(types)]


def language_instruction(doc: dict[str, Any], code_qa_language: str) -> str:
    """Which language the pairs are written in: the document's own for prose; for source code, a
    natural language (the document's `language` names the programming language)."""
    if is_code(doc):
        return (f"The document is {doc['language']} source code. Write the questions and answers in "
                f"{language_name(code_qa_language)}; name code elements (functions, classes, files) exactly as written.")
    return f"Write the questions and answers in the same language as the document ({language_name(doc['language'])})."


def generation_messages(doc: dict[str, Any], question_type: str, n_questions: int,
                        code_qa_language: str = "en") -> Messages:
    fmt = prompt_text("_format").format(language_instruction=language_instruction(doc, code_qa_language),
                                        n_questions=n_questions)
    text = prompt_text(question_type).format(document=doc["text"], n_questions=n_questions, format=fmt)
    return [{"role": "user", "content": text}]


def parse_pairs(text: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Question/Answer pairs from plain text (numbered, markdown-bold and translated labels are
    fine); returns (pairs, problems) where each problem is (reason code, detail)."""
    pairs: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    question: list[str] | None = None
    answer: list[str] | None = None

    def close() -> None:
        nonlocal question, answer
        if question is not None:
            q = " ".join(" ".join(question).split())
            if answer is None:
                problems.append(("unanswered_question", q[:200]))
            else:
                a = "\n".join(answer).strip()
                if not q:
                    problems.append(("empty_question", a[:200]))
                elif not a:
                    problems.append(("empty_answer", q[:200]))
                else:
                    pairs.append((q, a))
        elif answer is not None:
            problems.append(("answer_without_question", "\n".join(answer)[:200]))
        question, answer = None, None

    for line in text.splitlines():
        match = _LABEL_RE.match(line)
        if match and match.group("label").lower() in _ANSWER_SET and (question is not None and answer is None):
            answer = [match.group("rest")]
        elif match and match.group("label").lower() not in _ANSWER_SET:
            close()
            question = [match.group("rest")]
        elif match:  # an answer label with no open question
            close()
            answer = [match.group("rest")]
        elif answer is not None:
            answer.append(line)
        elif question is not None:
            question.append(line)
    close()
    return pairs, problems


_WORD_RE = re.compile(r"\w+")


@functools.cache
def _instruction_ngrams(n: int = 8) -> frozenset[tuple[str, ...]]:
    """Every run of `n` words of the prompts' own instructions (not the document): a pair that
    contains one repeats the prompt instead of asking about the document."""
    from longblocks.config import QUESTION_TYPES

    grams: set[tuple[str, ...]] = set()
    for name in ("_format", *QUESTION_TYPES):
        words = [w.lower() for w in _WORD_RE.findall(re.sub(r"\{\w+\}", " ", prompt_text(name)))]
        grams.update(tuple(words[k:k + n]) for k in range(len(words) - n + 1))
    return frozenset(grams)


def instruction_echo(text: str, n: int = 8) -> str:
    """The first run of 8 words `text` copies from the prompts' instructions ("" if none)."""
    grams = _instruction_ngrams(n)
    words = [w.lower() for w in _WORD_RE.findall(text)]
    return next((" ".join(words[k:k + n]) for k in range(len(words) - n + 1) if tuple(words[k:k + n]) in grams), "")


def completion_outcome(
    doc: dict[str, Any], completion: Completion, *, question_type: str, generator: str, response_models: tuple[str, ...] = ()
) -> Outcome:
    """QA records for one document's completion, and rejections for everything that is malformed."""
    doc_id = doc["id"]

    def reject(reason: str, detail: str, index: int = 0) -> Rejection:
        return Rejection(content_id("qa-rejection", doc_id, reason, str(index)), reason, f"doc {doc_id}: {detail}")

    if completion.error:
        if completion.transient:
            return Outcome(doc_id, retry=completion.error)
        return Outcome(doc_id, rejected=[reject("request_failed", completion.error)])
    if not completion.text:
        reason = "truncated" if completion.finish_reason == "length" else "empty_completion"
        return Outcome(doc_id, rejected=[reject(reason, f"no answer text (finish_reason={completion.finish_reason})")])
    pairs, problems = parse_pairs(completion.text)
    rejected = [reject(code, detail, i) for i, (code, detail) in enumerate(problems)]
    if completion.finish_reason == "length" and pairs:
        question, _ = pairs.pop()  # the last pair may be cut mid-answer
        rejected.append(reject("truncated", f"last pair dropped: {question[:200]}", len(problems)))
    if not pairs and not rejected:
        rejected.append(reject("no_pairs", completion.text[:300].replace("\n", " ")))
    kept, seen = [], set()
    for i, (question, answer) in enumerate(pairs):
        if question.lower() in seen:
            rejected.append(reject("duplicate_question", question[:200], 1000 + i))
            continue
        seen.add(question.lower())
        if _PLACEHOLDER_RE.match(question) or _PLACEHOLDER_RE.match(answer):
            rejected.append(reject("template_echo", f"{question[:100]} / {answer[:100]}", 3000 + i))
            continue
        if echo := instruction_echo(f"{question} {answer}"):
            rejected.append(reject("template_echo", f"repeats the prompt's instructions: {echo!r}", 4000 + i))
            continue
        if _REFERENTIAL_RE.search(question):
            rejected.append(reject("not_self_contained", question[:200], 2000 + i))
            continue
        record = {
            "id": qa_id(doc_id, question, answer), "document": doc["text"], "source": doc["source"],
            "language": doc["language"], "question": question, "answer": answer, "doc_id": doc_id,
            "question_type": question_type, "generator": generator, "judge_verdict": None, "judge_reasons": [],
        }
        record.update({response_column(m): None for m in response_models})
        kept.append(record)
    return Outcome(doc_id, kept=kept, rejected=rejected)


class GenerateStage(Stage):
    """One request per document for all of its pairs of one question type; the parsed pairs kept,
    everything malformed rejected with its reason. The backend is the section's, built when the
    stage opens (its request cache beside the stage directory) and closed with it, unless one is
    given (and then left open)."""

    schema = qa_schema()
    columns = [f.name for f in DOCUMENT_SCHEMA]
    units = ("documents", "pairs", "pairs")

    def __init__(self, section: GenerateSection, backend: Backend | None = None) -> None:
        self.section, self.given = section, backend
        self.question_types = tuple(section.question_types)
        self.settings = {"question_types": list(section.question_types), "n_questions": section.n_questions,
                         "code_qa_language": section.code_qa_language,
                         "prompt_sha256": prompt_hashes(list(section.question_types))}

    def open(self, out_dir: Path, options: RunOptions) -> None:
        self.backend = self.given or build_backend(self.section, out_dir, where=f"[{self.name}] ")

    def parameters(self) -> dict[str, Any]:
        return {**self.backend.describe(), **self.settings}

    def messages(self, doc: dict[str, Any]) -> Messages:
        return generation_messages(doc, question_type_for(doc["id"], self.question_types), self.section.n_questions,
                                   self.section.code_qa_language)

    def process(self, items: Iterator[dict[str, Any]], writer: StageWriter) -> Iterator[Outcome]:
        for doc, completion in self.backend.map_ordered(items, self.messages):
            yield completion_outcome(doc, completion, question_type=question_type_for(doc["id"], self.question_types),
                                     generator=self.backend.model)

    def status(self) -> dict[str, Any]:
        live = self.backend.stats.live()  # one request per document: answered requests are documents done
        return {**live, "answered": live["finished"] + live["cached"]}

    def stats(self, out_dir: Path) -> LLMStats:
        return llm_stats(self.backend.describe(), **self.settings)

    def check(self, manifest: dict[str, Any]) -> None:
        every_request_failed(self.name, manifest, [self.backend.stats])

    def close(self) -> None:
        if self.given is None and getattr(self, "backend", None) is not None:
            self.backend.close()


def stage(section: GenerateSection, *, backend: Backend | None = None) -> GenerateStage:
    """`[generate]` as a stage: the section's endpoint and sampling, and the pairs asked per
    document (`backend` replaces the section's endpoint, for tests; the caller closes it)."""
    return GenerateStage(section, backend)
