"""The evaluation suite, generated offline and seeded, every prompt sized to a target length in the
evaluated model's own tokens (chat template and answer prefix included: within 2%, never over).

RULER's 13 synthetic task configurations as RULER defines them (NVIDIA/RULER
`scripts/synthetic.yaml`, `scripts/data/synthetic/*.py`, `constants.py`): its templates and answer
prefixes (appended after the chat template, as RULER does), needles as whole sentences between
haystack sentences, adjective-noun keys from `wonderwords`, its 40-point depth grid, counts and
few-shot examples. Our own tasks keep names RULER does not use (`short_*`, `longblocks_qa`).
Where we must differ from RULER it is said next to the code and in the README's table. Scored like
RULER (`string_match_all` / `string_match_part`, in `trainer.rewards`). Must not run a model.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data import template_ids

# --- RULER's fixed strings (scripts/data/synthetic/constants.py, niah.py) -----------------------
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_SENTENCES = re.split(r"(?<=\.) ", NOISE)
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NIAH_TEMPLATE = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
                 "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_TEMPLATE = ("Answer the question based on the given documents. Only give me the answer and do not output any other "
               "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
               "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"
DOCUMENT_PROMPT = "Document {i}:\n{document}"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # np.round(np.linspace(0, 100, 40)): no .5 ties

WORDS = ("apple river stone cloud tiger maple candle silver harbor meadow lantern violet copper orbit falcon "
         "garden pepper thunder willow marble saddle ember canyon velvet anchor prism quartz nectar summit").split()


@dataclass
class Built:
    prompt: str  # the user message (RULER's `input`)
    references: list[str]
    answer_prefix: str = ""  # appended after the chat template's generation prompt
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What a builder may use besides its size and its seeded rng."""

    length: int  # the requested prompt length
    raw_tokens: Callable[[str], int]  # tokens of plain text, no template
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    build: Callable[[int, random.Random, Context], Built]  # size (in `unit`s) -> prompt
    metric: str  # a reward name: string_match_all | string_match_part
    max_new_tokens: int  # RULER's tokens_to_generate
    unit: str  # what the size counts, e.g. "noise sentences"
    min_size: int = 0
    sized: bool = True  # False: short tasks, the length is whatever the question takes
    ruler: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    task: str
    length: int  # requested prompt length in tokens
    prompt: str  # the user message
    references: list[str]
    metric: str
    max_new_tokens: int
    answer_prefix: str = ""
    prompt_ids: list[int] = field(default_factory=list)  # chat template + answer prefix
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """The measured prompt length (chat template and answer prefix included)."""
        return len(self.prompt_ids)


# --- resources -----------------------------------------------------------------------------------
@functools.cache
def wonderwords(kind: str) -> tuple[str, ...]:
    """One of wonderwords' word lists (nounlist, adjectivelist, verblist), as RULER reads them."""
    from importlib import resources

    try:
        assets = resources.files("wonderwords.assets")
    except ModuleNotFoundError:
        raise ValueError("RULER's keys and word lists come from wonderwords: pip install wonderwords") from None
    return tuple(line.rstrip() for line in (assets / f"{kind}.txt").read_text().splitlines())


def essay_words(source: str) -> list[str]:
    """The essay haystack's words from `local:PATH` (a folder or file of .txt/.md, or RULER's
    PaulGrahamEssays.json with its `text`), split as RULER splits the essays."""
    if not source.startswith("local:"):
        raise ValueError(f"haystack must be 'noise' or 'local:PATH', got {source!r}")
    root = Path(source[6:])
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".txt", ".md", ".json"))
    texts = [json.loads(p.read_text())["text"] if p.suffix == ".json" else p.read_text(errors="replace") for p in files[:5000]]
    words = re.sub(r"\s+", " ", " ".join(texts)).strip().split(" ")
    if len(words) < 100:
        raise ValueError(f"haystack {source}: fewer than 100 words in its .txt/.md/.json files")
    return words


@dataclass
class QASet:
    """RULER's QA layout: questions with their gold documents (`context`) and, for SQuAD, the
    other paragraphs of the same article (`more_context`), drawn first as distractors."""

    qas: list[dict[str, Any]]
    docs: list[str]
    source: str


def read_squad(path: str) -> QASet:
    data = json.loads(Path(path).read_text())
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        article = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for qa in p["qas"]:
                if not qa.get("is_impossible", False):
                    qas.append({"query": qa["question"], "outputs": [a["text"] for a in qa["answers"]],
                                "context": [index[p["context"]]],
                                "more_context": [i for i in article if i != index[p["context"]]]})
    return QASet(qas, docs, f"squad:{path}")


def read_hotpotqa(path: str) -> QASet:
    data = json.loads(Path(path).read_text())
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = [{"query": d["question"], "outputs": [d["answer"]],
            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]], "more_context": []} for d in data]
    return QASet(qas, docs, f"hotpotqa:{path}")


def qa_from_rows(rows: list[dict[str, Any]], source: str) -> QASet:
    """Our QA shards (document, question, answer) in RULER's layout."""
    docs = sorted({r["document"] for r in rows})
    index = {c: i for i, c in enumerate(docs)}
    qas = [{"query": r["question"], "outputs": [str(r["answer"])], "context": [index[r["document"]]], "more_context": []}
           for r in rows]
    return QASet(qas, docs, f"longblocks:{source}")


# --- haystacks -----------------------------------------------------------------------------------
def noise_lines(sentences: int) -> list[str]:
    """RULER's noise haystack: lines of its five noise sentences. The size counts sentences, so the
    last line may hold fewer than five (RULER counts whole lines; sentences hit the length closer)."""
    full, rest = divmod(sentences, len(NOISE_SENTENCES))
    return [NOISE] * full + ([" ".join(NOISE_SENTENCES[:rest])] if rest else [])


def split_sentences(text: str) -> list[str]:
    """Sentence boundaries for the essay haystack. RULER uses NLTK's punkt, whose model we cannot
    download here: a boundary is end punctuation followed by space and an upper-case letter, digit
    or quote, which agrees with punkt on prose apart from abbreviations."""
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])", text) if s] if text else []


def insert_in_essay(words: list[str], n: int, needles: list[str], rng: random.Random) -> str:
    """RULER's essay insertion: the first n words (the essays repeated if needed), split into
    sentences, each needle between two sentences at a depth drawn without replacement from the
    40-point grid."""
    text = " ".join((words * math.ceil(max(n, 1) / len(words)))[:n])
    sentences = split_sentences(text.strip())
    cuts = [0, *sorted(int(len(sentences) * depth / 100) for depth in rng.sample(DEPTHS, len(needles))), len(sentences)]
    parts = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sentences[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(needles):
            parts.append(needles[i - 1])
    return " ".join(parts)


def insert_between_lines(lines: list[str], needles: list[str], rng: random.Random) -> str:
    """RULER's noise/needle insertion: needles go in before distinct lines, never mid-line."""
    lines = list(lines)
    for index, needle in zip(sorted(rng.sample(range(len(lines)), len(needles)), reverse=True), needles):
        lines.insert(index, needle)
    return "\n".join(lines)


# --- RULER tasks ---------------------------------------------------------------------------------
def random_needle(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))  # 7 digits
    if kind == "words":  # RULER: a random adjective-noun pair of wonderwords
        return f"{rng.choice(wonderwords('adjectivelist'))}-{rng.choice(wonderwords('nounlist'))}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"needle type must be numbers, words or uuids, got {kind!r}")


def niah(haystack: str, key: str, value: str, keys: int = 1, values: int = 1, queries: int = 1,
         essay: list[str] | None = None) -> Task:
    """RULER's needle in a haystack (niah.py). `haystack` is essay, noise or needle (distractor
    needles with random keys); an essay task without essays runs on the noise haystack."""
    keys = max(keys, queries)
    needles_total = keys * values
    kind = haystack if haystack != "essay" or essay else "noise"
    template, prefix, value_name = NIAH_TEMPLATE, NIAH_PREFIX, value
    if queries * values == 1:  # RULER's singular rewrite
        def singular(s: str) -> str:
            return s.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")
        template, prefix, value_name = singular(template), singular(prefix), value[:-1]

    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        names, answers, needles = [], [], []
        for _ in range(keys):
            names.append(random_needle(key, rng))
            answers.append([])
            for _ in range(values):
                answers[-1].append(random_needle(value, rng))
                needles.append(NEEDLE.format(type_needle_v=value, key=names[-1], value=answers[-1][-1]))
        rng.shuffle(needles)
        if kind == "essay":
            assert essay is not None
            context = insert_in_essay(essay, size, needles, rng)
        elif kind == "noise":
            context = insert_between_lines(noise_lines(size), needles, rng)
        else:
            lines = [NEEDLE.format(type_needle_v=value, key=random_needle(key, rng), value=random_needle(value, rng))
                     for _ in range(size)]
            context = insert_between_lines(lines, needles, rng)
        picked = rng.sample(range(keys), queries)
        asked = [names[i] for i in picked]
        query = ", ".join(asked[:-1]) + ", and " + asked[-1] if len(asked) > 1 else asked[0]
        return Built(template.format(type_needle_v=value_name, context=context, query=query),
                     [a for i in picked for a in answers[i]], prefix.format(type_needle_v=value_name, query=query),
                     {"needles": needles_total, "haystack": kind})

    unit = {"essay": "essay words", "noise": "noise sentences", "needle": "distractor needles"}[kind]
    minimum = {"essay": 0, "noise": len(NOISE_SENTENCES) * needles_total, "needle": needles_total}[kind]
    return Task(build, "string_match_all", 128, unit, minimum, ruler=True,
                meta={"haystack": kind, "fallback": haystack == "essay" and not essay})


def _chain(hops: int, value: str, rng: random.Random, letters: int, taken: set[str]) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in taken:
            taken.add(name)
            names.append(name)
    statements = [f"VAR {names[0]} = {value}", *(f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops))]
    return names, statements


def _vt_input(sentences: int, chains: int, hops: int, rng: random.Random, icl: bool) -> tuple[str, str, list[str]]:
    """RULER's variable tracking input on the noise haystack: each chain's statements at sorted
    random line positions (in order), 5-letter names (3 in the example), 5-digit values."""
    taken: set[str] = set()
    hops = min(10, hops) if icl else hops
    built = [_chain(hops, "12345" if icl else str(rng.randint(10000, 99998)), rng, 3 if icl else 5, taken)
             for _ in range(chains)]
    lines = noise_lines(sentences)
    for _, statements in built:
        positions = sorted(rng.sample(range(len(lines)), len(statements)))
        for shift, (position, statement) in enumerate(zip(positions, statements)):
            lines.insert(position + shift, statement)
    context = "\n".join(lines).replace(". \n", ".\n")
    value = built[0][1][0].split("=")[-1].strip()
    return VT_TEMPLATE.format(context=context, query=value), VT_PREFIX.format(num_v=hops + 1, query=value), built[0][0]


def variable_tracking(chains: int = 1, hops: int = 4, example_tokens: int = 500) -> Task:
    """RULER's vt (variable_tracking.py): one in-context example of at most `example_tokens`
    tokens (3-letter names, value 12345, then every name and the value re-drawn per sample) before
    the question. RULER sizes the example at 500 tokens for every length; we cap it at a quarter of
    the requested length so that short lengths still have a haystack."""
    minimum = len(NOISE_SENTENCES) * (hops + 1)

    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        budget = min(example_tokens, ctx.length // 4)
        if "vt_example" not in ctx.cache:  # the example's haystack size, found once per length
            def fits(size: int) -> bool:
                return ctx.raw_tokens("".join(_vt_input(size, chains, hops, random.Random(0), True)[:2])) <= budget

            low, high = minimum, minimum * 2
            while fits(high) and high < 1 << 20:
                low, high = high, high * 2
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if fits(mid) else (low, mid)
            ctx.cache["vt_example"] = low
        text, prefix, names = _vt_input(ctx.cache["vt_example"], chains, hops, rng, True)
        example = f"{text}{prefix} {' '.join(names)}\n"
        for name in names:  # RULER's randomize_icl: fresh names and value in every sample
            example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
        example = example.replace("12345", str(rng.randint(10000, 99998)))
        text, prefix, answer = _vt_input(size, chains, hops, rng, False)
        return Built(f"{example}\n{text}", answer, prefix, {"chains": chains, "hops": hops})

    return Task(build, "string_match_all", 30, "noise sentences", minimum, ruler=True)


def _cwe_vocabulary() -> list[str]:
    return sorted(set(wonderwords("nounlist") + wonderwords("adjectivelist") + wonderwords("verblist")))


def _cwe_list(n: int, common: int, uncommon: int, rng: random.Random, meta: dict[str, Any]) -> tuple[str, list[str]]:
    vocabulary = _cwe_vocabulary()
    if n > len(vocabulary):
        # RULER switches to its 8.5 MB english_words.json here (about 100k tokens and up), which we
        # cannot ship: the extra words are adjective-noun compounds, recorded in the sample's meta
        extra: set[str] = set()
        while len(extra) < n - len(vocabulary):
            extra.add(random_needle("words", rng))
        vocabulary = vocabulary + sorted(extra)
        meta["vocabulary"] = "wonderwords + adjective-noun compounds (RULER: english_words.json)"
    picked = rng.sample(vocabulary, n)
    listing = picked[:10] * common + picked[10:] * uncommon
    rng.shuffle(listing)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listing)), picked[:10]


def common_words(freq_cw: int = 30, freq_ucw: int = 3) -> Task:
    """RULER's cwe (common_words_extraction.py): 10 common words among uncommon ones, each common
    word 30 times and each other 3 (6 and 1 below 4,096 tokens), after one solved example (10 common
    words x 10 + 30 x 3; 10 x 3 + 10 x 1 below 4,096). The size counts distinct words."""
    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        short = ctx.length < 4096
        meta: dict[str, Any] = {}
        example, example_answer = _cwe_list(20 if short else 40, 3 if short else 10, 1 if short else 3, rng, meta)
        context, answer = _cwe_list(size, 6 if short else freq_cw, 1 if short else freq_ucw, rng, meta)
        shot = CWE_TEMPLATE.format(context=example) + CWE_PREFIX + " " + " ".join(
            f"{i + 1}. {w}" for i, w in enumerate(example_answer))
        return Built(f"{shot}\n{CWE_TEMPLATE.format(context=context)}", answer, CWE_PREFIX, meta)

    return Task(build, "string_match_all", 120, "distinct words", 10, ruler=True)


def zeta(alpha: float) -> float:
    """Riemann zeta for alpha > 1 (Euler-Maclaurin after 50 terms; exact to ~1e-12), as
    scipy.special.zeta, which RULER uses."""
    n = 50
    return (sum(k ** -alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1) + 0.5 * n ** -alpha
            + alpha * n ** (-alpha - 1) / 12)


def frequent_words(alpha: float = 2.0, word_length: int = 6, tokens_to_generate: int = 50) -> Task:
    """RULER's fwe (freq_words_extraction.py): coded words of 6 letters from a vocabulary of
    (length - 50) // 50, word k appearing int(n k^-alpha / zeta(alpha)) times; the most frequent is
    '...' noise and the answer is ranks 2-4. The size is RULER's `num_words` (n)."""
    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        vocab_size = max(5, (ctx.length - tokens_to_generate) // 50)
        codes: set[str] = set()
        while len(codes) < vocab_size:
            codes.add("".join(rng.choices(string.ascii_lowercase, k=word_length)))
        vocab = sorted(codes)
        rng.shuffle(vocab)
        vocab[0] = "..."
        z = zeta(alpha)
        words = [w for k, w in enumerate(vocab, start=1) for _ in range(int(size * k ** -alpha / z))]
        rng.shuffle(words)
        return Built(FWE_TEMPLATE.format(context=" ".join(words)), vocab[1:4], FWE_PREFIX, {"alpha": alpha})

    return Task(build, "string_match_all", tokens_to_generate, "coded words (RULER's num_words)", 30, ruler=True)


def ruler_qa(qa: QASet) -> Task:
    """RULER's qa (qa.py): the question's gold documents among distractors (the same article's
    other paragraphs first, then random documents), shuffled, numbered "Document i:". RULER adds
    whole distractors; we fill the last few tokens with the start of one more distractor, so the
    length is met (the gold documents are always whole)."""
    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        q = qa.qas[rng.randrange(len(qa.qas))]
        gold = list(q["context"])
        others = [i for i in rng.sample(range(len(qa.docs)), min(len(qa.docs), 4096)) if i not in gold and i not in q["more_context"]]
        candidates = rng.sample(q["more_context"], len(q["more_context"])) + others
        docs = [qa.docs[i] for i in gold]
        budget, turn = size, 0
        while budget > 0 and candidates:
            words = qa.docs[candidates[turn % len(candidates)]].split(" ")
            docs.append(" ".join(words[:budget]))
            budget -= len(words)
            turn += 1
        rng.shuffle(docs)
        context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(docs))
        return Built(QA_TEMPLATE.format(context=context, query=q["query"]), list(q["outputs"]), QA_PREFIX,
                     {"source": qa.source})

    return Task(build, "string_match_part", 32, "distractor words", 0, ruler=True, meta={"source": qa.source})


RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
               "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")


def ruler_tasks(essay: list[str] | None = None, squad: QASet | None = None, hotpotqa: QASet | None = None) -> dict[str, Task]:
    """RULER's 13 standard configurations (scripts/synthetic.yaml); qa_1/qa_2 only with their data."""
    tasks = {
        "niah_single_1": niah("noise", "words", "numbers"),
        "niah_single_2": niah("essay", "words", "numbers", essay=essay),
        "niah_single_3": niah("essay", "words", "uuids", essay=essay),
        "niah_multikey_1": niah("essay", "words", "numbers", keys=4, essay=essay),
        "niah_multikey_2": niah("needle", "words", "numbers"),
        "niah_multikey_3": niah("needle", "uuids", "uuids"),
        "niah_multivalue": niah("essay", "words", "numbers", values=4, essay=essay),
        "niah_multiquery": niah("essay", "words", "numbers", queries=4, essay=essay),
        "vt": variable_tracking(),
        "cwe": common_words(),
        "fwe": frequent_words(),
    }
    if squad:
        tasks["qa_1"] = ruler_qa(squad)
    if hotpotqa:
        tasks["qa_2"] = ruler_qa(hotpotqa)
    return tasks


# --- our own tasks (names RULER does not use) ----------------------------------------------------
def longblocks_qa(rows: list[dict[str, Any]]) -> Task:
    """QA over one of our documents (document, question, answer), the rest of the length filled
    with the words of other documents around it; scored by string_match_part."""
    if not rows:
        raise ValueError("the longblocks_qa task needs QA rows (--qa-data: our shards or LongBlocks-shaped parquet)")

    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        target = rng.choice(rows)
        others = [r["document"] for r in rows if r is not target]
        filler: list[str] = []
        while len(filler) < size and others:
            filler += f"Document: {rng.choice(others)}".split()
        filler = filler[:size]
        cut = rng.randint(0, len(filler))
        context = " ".join([*filler[:cut], f"Document: {target['document']}", *filler[cut:]])
        return Built(f"Answer the question based on the given documents. Only give me the answer.\n\n{context}\n\n"
                     f"Question: {target['question']}\nAnswer:", [str(target["answer"])])

    return Task(build, "string_match_part", 64, "filler words")


def short_arithmetic() -> Task:
    """Short-context sanity: the length is whatever the question takes (regressions show here)."""
    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return Built(f"What is {a} plus {b}? Answer with the number only.", [str(a + b)])
    return Task(build, "string_match_part", 16, "", sized=False)


def short_recall() -> Task:
    def build(size: int, rng: random.Random, ctx: Context) -> Built:
        items = rng.sample(WORDS, 5)
        position = rng.randint(1, 5)
        return Built(f"Here is a list: {', '.join(items)}. Which word is number {position} in the list? "
                     f"Answer with the word only.", [items[position - 1]])
    return Task(build, "string_match_part", 16, "", sized=False)


SHORT: dict[str, Task] = {"short_arithmetic": short_arithmetic(), "short_recall": short_recall()}


def prompt_ids(tokenizer: Any, prompt: str, answer_prefix: str = "") -> list[int]:
    """The chat-templated user turn with the generation prompt, then RULER's answer prefix as the
    start of the assistant's reply (RULER's `input + answer_prefix` after the model template)."""
    ids = template_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return ids + (list(tokenizer.encode(answer_prefix, add_special_tokens=False)) if answer_prefix else [])


def generate(name: str, task: Task, tokenizer: Any, length: int, n: int, *, seed: int = 0) -> list[Sample]:
    """`n` samples whose prompt (chat template and answer prefix included) is as close to `length`
    tokens as the task's size unit allows without going over (binary search on the size, as RULER
    searches its haystack size); short tasks ignore length."""
    ctx = Context(length, lambda text: len(tokenizer.encode(text, add_special_tokens=False)))
    samples = []
    for i in range(n):
        rng_seed = f"{seed}-{name}-{length}-{i}"

        def render(size: int) -> tuple[Built, list[int]]:
            built = task.build(size, random.Random(rng_seed), ctx)
            return built, prompt_ids(tokenizer, built.prompt, built.answer_prefix)

        if not task.sized:
            built, ids = render(0)
        else:
            low = task.min_size
            built, ids = render(low)
            if len(ids) > length:
                raise ValueError(f"task {name}: its smallest prompt ({low} {task.unit}) has {len(ids)} tokens, "
                                 f"more than the requested length {length}")
            high = max(low + 1, 16)
            while len(render(high)[1]) <= length:
                low, high = high, high * 2
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if len(render(mid)[1]) <= length else (low, mid)
            built, ids = render(low)
        samples.append(Sample(name, length if task.sized else 0, built.prompt, built.references, task.metric,
                              task.max_new_tokens, built.answer_prefix, ids, {**task.meta, **built.meta}))
    return samples
