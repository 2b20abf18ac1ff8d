"""A generated corpus with planted near-duplicate pairs at measured Jaccard similarities: edits,
reordered paragraphs, inserted and deleted sentences, in several languages and in code."""

from __future__ import annotations

import random

from longblocks.dedup import jaccard, shingle_hashes
from longblocks.records import make_document

ALPHABETS = {
    "en": "abcdefghijklmnopqrstuvwxyz",
    "de": "abcdefghijklmnopqrstuvwxyzäöüß",
    "fr": "abcdefghijklmnopqrstuvwxyzéèàçê",
    "ru": "абвгдеёжзийклмнопрстуфхцчшщыэюя",
}
EDIT_RATES = (0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.13)


def _vocab(rng: random.Random, alphabet: str, n: int = 4000) -> list[str]:
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def _paragraphs(rng: random.Random, vocab: list[str], n_par: int, words: int) -> list[list[str]]:
    return [[rng.choice(vocab) for _ in range(words)] for _ in range(n_par)]


def _render(pars: list[list[str]]) -> str:
    return "\n\n".join(" ".join(p).capitalize() + "." for p in pars)


def _code(rng: random.Random, n_funcs: int) -> list[str]:
    names = _vocab(rng, "abcdefghijklmnopqrstuvwxyz_", 600)
    funcs = []
    for _ in range(n_funcs):
        args = ", ".join(rng.sample(names, 2))
        body = "\n".join(
            f"    {rng.choice(names)} = {rng.choice(names)}({rng.choice(names)}, {rng.randint(0, 99)}) + {rng.choice(names)}[{rng.randint(0, 9)}]"
            for _ in range(rng.randint(6, 12))
        )
        funcs.append(f"def {rng.choice(names)}_{rng.choice(names)}({args}):\n{body}\n    return {rng.choice(names)}\n")
    return funcs


def _variant(rng: random.Random, pars: list[list[str]], vocab: list[str], kind: str, rate: float) -> list[list[str]]:
    pars = [list(p) for p in pars]
    if kind == "reorder":
        rng.shuffle(pars)
    elif kind == "insert":
        pars.insert(rng.randrange(len(pars)), [rng.choice(vocab) for _ in range(rng.randint(10, 30))])
    elif kind == "delete":
        del pars[rng.randrange(len(pars))]
    else:
        for p in pars:
            for i in range(len(p)):
                if rng.random() < rate:
                    p[i] = rng.choice(vocab)
    return pars


def planted_corpus(seed: int = 0, bases_per_language: int = 30) -> tuple[list[dict], list[tuple[str, str, float]]]:
    """Documents (base + one variant each, shuffled) and the planted pairs with their true Jaccard."""
    rng = random.Random(seed)
    docs: list[dict] = []
    pairs: list[tuple[str, str, float]] = []
    kinds = ["edit"] * 6 + ["reorder", "insert", "delete"]
    for lang, alphabet in ALPHABETS.items():
        vocab = _vocab(rng, alphabet)
        for b in range(bases_per_language):
            pars = _paragraphs(rng, vocab, 8, 60)
            kind = kinds[b % len(kinds)]
            rate = EDIT_RATES[rng.randrange(len(EDIT_RATES))]
            base = make_document(source="planted", language=lang, text=_render(pars))
            variant = _variant(rng, pars, vocab, kind, rate)
            while variant == pars:  # an unchanged copy would be an exact duplicate, not a planted near one
                variant = _variant(rng, pars, vocab, kind, rate)
            var = make_document(source="planted", language=lang, text=_render(variant))
            docs += [base, var]
    for b in range(bases_per_language):
        funcs = _code(rng, 10)
        kind = ("reorder", "rename", "rename", "delete")[b % 4]
        changed = list(funcs)
        if kind == "reorder":
            while changed == funcs:
                rng.shuffle(changed)
        elif kind == "delete":
            del changed[rng.randrange(len(changed))]
        else:
            k = rng.randrange(len(changed))
            changed[k] = changed[k].replace("=", "+=", rng.randint(1, 6))
        docs += [make_document(source="planted", language="python", text="\n".join(funcs)),
                 make_document(source="planted", language="python", text="\n".join(changed))]
    for base, var in zip(docs[::2], docs[1::2]):
        code = base["language"] == "python"
        score = jaccard(shingle_hashes(base["text"], ngram=5, code=code), shingle_hashes(var["text"], ngram=5, code=code))
        pairs.append((base["id"], var["id"], score))
    rng.shuffle(docs)
    return docs, pairs
