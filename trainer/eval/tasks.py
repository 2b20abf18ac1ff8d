"""RULER-style synthetic long-context tasks, generated offline and seeded, each prompt sized to a
target length in the evaluated model's own tokens: needle-in-a-haystack (single, multi-key,
multi-value, multi-query; needles as numbers, words or uuids), variable tracking, common and
frequent word extraction, QA over real documents with other documents as haystack, and two short
sanity tasks. Scored like RULER (`string_match_all` / `string_match_part`, in `trainer.rewards`).
Must not run a model.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data import template_ids

NOISE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ").split()
WORDS = ("apple river stone cloud tiger maple candle silver harbor meadow lantern violet copper orbit falcon "
         "garden pepper thunder willow marble saddle ember canyon velvet anchor prism quartz nectar summit "
         "tundra zephyr bramble cobalt dune fjord glacier hazel iris juniper kelp lagoon mango nimbus oasis").split()


@dataclass
class Sample:
    task: str
    length: int  # requested prompt length in tokens
    prompt: str  # the user message
    references: list[str]
    metric: str  # a reward name: string_match_all | string_match_part
    max_new_tokens: int
    prompt_ids: list[int] = field(default_factory=list)  # the chat-templated prompt
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """The measured prompt length (chat template included)."""
        return len(self.prompt_ids)


class Haystack:
    """Filler words: RULER's repeated noise sentences, or the words of local text documents."""

    def __init__(self, source: str = "noise") -> None:
        if source == "noise":
            self.words = NOISE
        elif source.startswith("local:"):
            files = sorted(p for p in Path(source[6:]).rglob("*") if p.is_file() and p.suffix in (".txt", ".md"))
            self.words = " ".join(p.read_text(errors="replace") for p in files[:2000]).split()
            if len(self.words) < 100:
                raise ValueError(f"haystack {source}: fewer than 100 words in its .txt/.md files")
        else:
            raise ValueError(f"haystack must be 'noise' or 'local:PATH', got {source!r}")

    def take(self, n: int, offset: int) -> list[str]:
        return [self.words[(offset + i) % len(self.words)] for i in range(n)]


def _value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return f"{rng.choice(WORDS)}-{rng.choice(WORDS)}"
    return str(uuid.UUID(int=rng.getrandbits(128)))


def _insert(words: list[str], sentences: list[str], rng: random.Random) -> str:
    """Put each sentence at a seeded depth of the haystack (at a word boundary)."""
    out = list(words)
    for sentence in sentences:
        out.insert(rng.randint(0, len(out)), sentence)
    return " ".join(out)


# A builder returns (prompt, references, metric, max_new_tokens) for a haystack of n filler words.
Builder = Callable[[list[str], random.Random], tuple[str, list[str], str, int]]


def niah(keys: int = 1, values: int = 1, queries: int = 1, kind: str = "numbers") -> Builder:
    def build(words: list[str], rng: random.Random) -> tuple[str, list[str], str, int]:
        names = rng.sample(WORDS, keys)
        needles, answers = [], []
        for i, name in enumerate(names):
            for _ in range(values if i == 0 else 1):
                value = _value(kind, rng)
                needles.append(f"One of the special magic {kind} for {name} is: {value}.")
                if i < queries:
                    answers.append(value)
        asked = names[:queries]
        context = _insert(words, needles, rng)
        question = (f"What are all the special magic {kind} for {', '.join(asked)} mentioned in the provided text?"
                    if queries > 1 or values > 1 else f"What is the special magic {kind} for {asked[0]} mentioned in the provided text?")
        prompt = (f"Some special magic {kind} are hidden within the following text. Make sure to memorize them. "
                  f"I will quiz you about the {kind} afterwards.\n{context}\n{question}")
        return prompt, answers, "string_match_all", 128
    return build


def variable_tracking(hops: int = 4, chains: int = 1) -> Builder:
    def build(words: list[str], rng: random.Random) -> tuple[str, list[str], str, int]:
        used = rng.sample(range(10000, 99999), hops * chains + chains)
        statements, answers = [], []
        for c in range(chains):
            value = str(rng.randint(10000, 99999))
            names = [f"X{used[c * (hops + 1) + h]}" for h in range(hops + 1)]
            statements.append(f"VAR {names[0]} = {value}.")
            statements += [f"VAR {names[h + 1]} = VAR {names[h]}." for h in range(hops)]
            if c == 0:
                answers, asked = names, value
        # keep each chain in order: insert at increasing depths
        out = list(words)
        positions = sorted(rng.randint(0, len(out)) for _ in statements)
        for shift, (position, statement) in enumerate(zip(positions, statements)):
            out.insert(position + shift, statement)
        prompt = (f"Memorize and track the chain(s) of variable assignment hidden in the following text.\n{' '.join(out)}\n"
                  f"Question: Find all variables that are assigned the value {asked} in the text above.")
        return prompt, answers, "string_match_all", 30
    return build


def common_words(common: int = 10) -> Builder:
    """Common word extraction: a few words appear many times, the others at most a few times; the
    list's length is the filler budget (fewer common words when the list is short)."""
    def build(words: list[str], rng: random.Random) -> tuple[str, list[str], str, int]:
        vocab = [f"{a}{b}" for a in WORDS for b in WORDS]
        slots = max(len(words), 4)
        count = min(common, max(1, slots // 8))
        repeats = max(3, slots // (3 * count))
        frequent = rng.sample(vocab, count)
        rare = [w for w in vocab if w not in frequent]
        listing = [w for w in frequent for _ in range(repeats)]
        need = max(0, slots - len(listing))
        # distinct rare words while they last, then with replacement (each still far below `repeats`)
        listing += rng.sample(rare, min(need, len(rare))) + rng.choices(rare, k=max(0, need - len(rare)))
        rng.shuffle(listing)
        numbered = " ".join(f"{i + 1}. {w}" for i, w in enumerate(listing))
        prompt = (f"Below is a numbered list of words. In these words, some appear more often than others. "
                  f"Memorize the ones that appear most often.\n{numbered}\n"
                  f"Question: What are the {count} most common words in the above list?")
        return prompt, frequent, "string_match_all", 120
    return build


def frequent_words(top: int = 3, alpha: float = 2.0) -> Builder:
    """Frequent word extraction: coded words drawn from a Zipf-like distribution."""
    def build(words: list[str], rng: random.Random) -> tuple[str, list[str], str, int]:
        codes = [f"{rng.choice('abcdefghijklmnopqrstuvwxyz')}{rng.choice('abcdefghijklmnopqrstuvwxyz')}"
                 f"{rng.choice('abcdefghijklmnopqrstuvwxyz')}{rng.randint(10, 99)}" for _ in range(200)]
        codes = list(dict.fromkeys(codes))
        weights = [1 / (rank + 1) ** alpha for rank in range(len(codes))]
        listing = rng.choices(codes, weights=weights, k=max(len(words), 10))
        counts = sorted(((listing.count(c), -i, c) for i, c in enumerate(codes)), reverse=True)
        answers = [c for _, _, c in counts[:top]]
        prompt = (f"Read the following coded text and track the frequency of each coded word. Find the {top} most "
                  f"frequently appeared coded words.\n{' '.join(listing)}\n"
                  f"Question: Do not provide any explanation. What are the {top} most frequently appeared words in the above coded text?")
        return prompt, answers, "string_match_all", 50
    return build


def document_qa(rows: list[dict[str, Any]]) -> Builder:
    """QA over a real document (our QA shards: document, question, answer), the haystack filled
    with other documents around it."""
    if not rows:
        raise ValueError("the qa task needs QA rows (--qa-data: our shards or LongBlocks-shaped parquet)")

    def build(words: list[str], rng: random.Random) -> tuple[str, list[str], str, int]:
        target = rng.choice(rows)
        others = [r["document"] for r in rows if r is not target]
        filler: list[str] = []
        budget = max(0, len(words) - len(target["document"].split()))
        while len(filler) < budget and others:
            filler += f"Document: {rng.choice(others)}".split()
        filler = filler[:budget]
        cut = rng.randint(0, len(filler))
        context = " ".join([*filler[:cut], f"Document: {target['document']}", *filler[cut:]])
        prompt = (f"Answer the question based on the given documents. Only give me the answer.\n\n{context}\n\n"
                  f"Question: {target['question']}\nAnswer:")
        return prompt, [str(target["answer"])], "string_match_part", 64
    return build


def short_arithmetic() -> Builder:
    """Short-context sanity: the length is whatever the question takes (regressions show here)."""
    def build(words: list[str], rng: random.Random) -> tuple[str, list[str], str, int]:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"What is {a} plus {b}? Answer with the number only.", [str(a + b)], "string_match_part", 16
    return build


def short_recall() -> Builder:
    def build(words: list[str], rng: random.Random) -> tuple[str, list[str], str, int]:
        items = rng.sample(WORDS, 5)
        position = rng.randint(1, 5)
        return (f"Here is a list: {', '.join(items)}. Which word is number {position} in the list? "
                f"Answer with the word only.", [items[position - 1]], "string_match_part", 16)
    return build


RULER: dict[str, Builder] = {
    "niah_single_numbers": niah(kind="numbers"),
    "niah_single_words": niah(kind="words"),
    "niah_single_uuids": niah(kind="uuids"),
    "niah_multikey": niah(keys=4),
    "niah_multivalue": niah(values=4),
    "niah_multiquery": niah(keys=4, queries=4),
    "vt": variable_tracking(),
    "cwe": common_words(),
    "fwe": frequent_words(),
}
SHORT: dict[str, Builder] = {"short_arithmetic": short_arithmetic(), "short_recall": short_recall()}


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return template_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def generate(name: str, builder: Builder, tokenizer: Any, length: int, n: int, *, seed: int = 0,
             haystack: Haystack | None = None) -> list[Sample]:
    """`n` samples whose chat-templated prompt is as close to `length` tokens as the filler allows
    without going over (binary search on the number of filler words); short tasks ignore length."""
    haystack = haystack or Haystack()
    samples = []
    for i in range(n):
        rng_seed = f"{seed}-{name}-{length}-{i}"
        offset = random.Random(rng_seed + "-offset").randrange(len(haystack.words))

        def render(words: int) -> tuple[str, list[str], str, int]:
            return builder(haystack.take(words, offset), random.Random(rng_seed))

        if name in SHORT:
            prompt, refs, metric, new = render(0)
        else:
            low, high = 0, max(16, length)
            while len(prompt_ids(tokenizer, render(high)[0])) <= length:  # filler words can be < 1 token
                low, high = high, high * 2
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if len(prompt_ids(tokenizer, render(mid)[0])) <= length else (low, mid)
            prompt, refs, metric, new = render(low)
        samples.append(Sample(name, length, prompt, refs, metric, new, prompt_ids(tokenizer, prompt)))
    return samples
