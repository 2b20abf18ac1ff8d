"""RULER's 13 tasks as RULER defines them: every generated prompt is held against RULER's own fixed
strings (copied here as data from NVIDIA/RULER scripts/data/synthetic/constants.py and niah.py,
not imported from our code), its needle sentence and answer set, insertion at sentence boundaries
only, CWE/FWE counts, VT chains and example, QA documents; and `dgrpo-train eval --tasks ruler`
on a tiny model writes the 13 tasks and RULER's mean per length."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import cli, random_text
from trainer.eval.tasks import RULER_TASKS, Sample, essay_words, generate, read_hotpotqa, read_squad, ruler_tasks

# RULER's fixed strings, as data ({type_needle_v}, {query}, {num_v} filled by the test)
NIAH = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will quiz "
        "you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} for {query} "
        "mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NIAH_ONE = ("A special magic {type_needle_v} is hidden within the following text. Make sure to memorize it. I will quiz "
            "you about the {type_needle_v} afterwards.\n{context}\nWhat is the special magic {type_needle_v} for {query} "
            "mentioned in the provided text?")
NIAH_ONE_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text is"
VT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\nQuestion: Find "
      "all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
             "the value {query}, they are: ")
CWE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that "
       "appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE = ("Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared "
       "coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the "
       "three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA = ("Answer the question based on the given documents. Only give me the answer and do not output any other words.\n\n"
      "The following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only give me "
      "the answer and do not output any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = re.compile(r"One of the special magic (numbers|uuids) for (\S+) is: (\S+)\.")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# synthetic.yaml: (haystack, key type, value type, keys, values, queries)
NIAH_CONFIGS = {
    "niah_single_1": ("noise", "words", "numbers", 1, 1, 1), "niah_single_2": ("essay", "words", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "words", "uuids", 1, 1, 1), "niah_multikey_1": ("essay", "words", "numbers", 4, 1, 1),
    "niah_multikey_2": ("needle", "words", "numbers", 1, 1, 1), "niah_multikey_3": ("needle", "uuids", "uuids", 1, 1, 1),
    "niah_multivalue": ("essay", "words", "numbers", 1, 4, 1), "niah_multiquery": ("essay", "words", "numbers", 1, 1, 4),
}


def match(template: str, prompt: str, **fixed: str) -> dict[str, str]:
    """The template's free fields ({context}, {query}) as matched in the prompt; fails if the fixed text differs."""
    pattern = re.escape(template)
    for name, value in fixed.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), re.escape(value))
    pattern = pattern.replace(re.escape("{context}"), "(?P<context>.*)").replace(re.escape("{query}"), "(?P<query>.+?)")
    found = re.fullmatch(pattern, prompt, flags=re.S)
    assert found, f"prompt does not follow RULER's template:\n{template[:80]!r}\n{prompt[:200]!r}...{prompt[-200:]!r}"
    return found.groupdict()


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def essay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("essays")
    for i in range(3):
        (root / f"essay{i}.txt").write_text(random_text(random.Random(i), 3000))
    return root


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small files in RULER's SQuAD (v2 dev) and HotpotQA (dev distractor) layouts."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("qa")
    articles = []
    for a in range(6):
        paragraphs = []
        for p in range(4):
            context = random_text(rng, 60)
            paragraphs.append({"context": context, "qas": [
                {"question": f"Which word opens paragraph {a}.{p}?", "answers": [{"text": context.split()[0]}], "is_impossible": False},
                {"question": f"Unanswerable {a}.{p}?", "answers": [], "is_impossible": True}]})
        articles.append({"title": f"article {a}", "paragraphs": paragraphs})
    (root / "squad.json").write_text(json.dumps({"version": "v2.0", "data": articles}))
    hotpot = [{"question": f"Which two titles go together in item {i}?", "answer": f"answer-{i}",
               "context": [[f"Title {i}-{j}", [random_text(rng, 12), " " + random_text(rng, 10)]] for j in range(10)]}
              for i in range(8)]
    (root / "hotpotqa.json").write_text(json.dumps(hotpot))
    return {"squad": root / "squad.json", "hotpotqa": root / "hotpotqa.json"}


@pytest.fixture(scope="module")
def tasks(essay_dir: Path, qa_files: dict[str, Path]):
    return ruler_tasks(essay_words(f"local:{essay_dir}"), read_squad(str(qa_files["squad"])),
                       read_hotpotqa(str(qa_files["hotpotqa"])))


def one(name: str, tasks, tokenizer, length: int = 2048, seed: int = 0, i: int = 0) -> Sample:
    return generate(name, tasks[name], tokenizer, length, i + 1, seed=seed)[i]


def test_the_thirteen_standard_configurations() -> None:
    assert RULER_TASKS == ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
                           "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")


@pytest.mark.parametrize("name", list(NIAH_CONFIGS))
def test_niah_follows_ruler(name: str, tasks, tokenizer, essay_dir: Path) -> None:
    from wonderwords.random_word import _get_words_from_text_file

    adjectives, nouns = set(_get_words_from_text_file("adjectivelist.txt")), set(_get_words_from_text_file("nounlist.txt"))
    haystack, key_type, value_type, keys, values, queries = NIAH_CONFIGS[name]
    for seed in range(3):
        sample = one(name, tasks, tokenizer, seed=seed)
        singular = queries * values == 1
        kind = value_type[:-1] if singular else value_type
        fields = match(NIAH_ONE if singular else NIAH, sample.prompt, type_needle_v=kind)
        assert sample.answer_prefix == (NIAH_ONE_PREFIX if singular else NIAH_PREFIX).format(type_needle_v=kind, query=fields["query"])
        asked = re.split(r", and |, ", fields["query"])
        assert len(asked) == queries and (queries == 1 or ", and " in fields["query"])
        context = fields["context"]
        needles = NEEDLE.findall(context)
        assert all(t == value_type for t, _, _ in needles)
        by_key: dict[str, list[str]] = {}
        for _, key, value in needles:
            by_key.setdefault(key, []).append(value)
            if key_type == "words":
                adjective, noun = key.split("-", 1)
                assert adjective in adjectives and noun in nouns, key
            else:
                assert UUID.fullmatch(key), key
            assert UUID.fullmatch(value) if value_type == "uuids" else re.fullmatch(r"[1-9]\d{6}", value), value
        assert Counter(sample.references) == Counter(v for key in asked for v in by_key[key])
        assert all(len(by_key[key]) == values for key in asked)
        if haystack == "needle":  # the haystack is distractor needles, one per line
            assert all(NEEDLE.fullmatch(line) for line in context.split("\n"))
            assert len(needles) > 10
        else:
            assert len(needles) == max(keys, queries) * values
        if haystack == "noise":  # needles are whole lines between lines of whole noise sentences
            for line in context.split("\n"):
                assert NEEDLE.fullmatch(line) or NOISE.startswith(line) and line.endswith("."), line
        if haystack == "essay":  # needles go between the essays' sentences, which stay in order
            text = context
            for needle in re.findall(NEEDLE.pattern.replace("(", "(?:"), context):
                left, right = text.split(needle, 1)
                # at the start, after a sentence, or at depth 100 after the haystack's last (cut) sentence
                assert not left.strip() or left.endswith(". ") or not right.strip(), left[-30:]
                assert not right.strip() or re.match(r" +(?:One of the special|[A-Z])", right), right[:30]
                text = left + right
            essay = " ".join(essay_words(f"local:{essay_dir}"))
            assert essay.startswith(re.sub(r"\s+", " ", text).strip()), "the haystack is the essays' first words, in order"
        assert "grass is green" not in context or haystack == "noise"


def test_essay_tasks_fall_back_to_noise_without_essays(tokenizer) -> None:
    tasks = ruler_tasks()
    assert tasks["niah_single_2"].meta == {"haystack": "noise", "fallback": True}
    sample = one("niah_single_2", tasks, tokenizer)
    assert "The grass is green." in sample.prompt and sample.meta["haystack"] == "noise"
    assert not tasks["niah_single_1"].meta["fallback"]


def test_vt_follows_ruler(tasks, tokenizer) -> None:
    for seed in range(3):
        sample = one("vt", tasks, tokenizer, seed=seed)
        head, sep, question = sample.prompt.rpartition("\nMemorize and track")
        fields = match(VT, "Memorize and track" + question)
        assert sample.answer_prefix == VT_PREFIX.format(num_v=5, query=fields["query"])
        # the chain: "VAR A = value" then "VAR B = VAR A " ..., in order, 5 upper-case letters each
        lines = fields["context"].split("\n")
        statements = [line for line in lines if line.startswith("VAR ")]
        names = sample.references
        assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
        assert statements == [f"VAR {names[0]} = {fields['query']}", *(f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4))]
        assert re.fullmatch(r"[1-9]\d{4}", fields["query"])
        assert all(line in statements or NOISE.startswith(line) for line in lines)
        # RULER's one-shot example before it: solved, 3-letter names, a fresh 5-digit value
        shot, _, solved = head.partition(VT_PREFIX[:20])
        example = match(VT, shot)
        answer = re.fullmatch(r"(\d{5}), they are:  ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3}) ([A-Z]{3})\n",
                              solved.removeprefix(VT_PREFIX[20:].split("{query}")[0].replace("{num_v}", "5")))
        assert answer and answer.group(1) == example["query"] != "12345"
        assert f"VAR {answer.group(2)} = {answer.group(1)}" in example["context"]


@pytest.mark.parametrize("length,common,uncommon,shot", [(2048, 6, 1, (20, 3, 1)), (8192, 30, 3, (40, 10, 3))])
def test_cwe_counts_are_rulers(tasks, tokenizer, length: int, common: int, uncommon: int, shot: tuple[int, int, int]) -> None:
    sample = one("cwe", tasks, tokenizer, length=length)
    example, _, rest = sample.prompt.partition("\nBelow is a numbered list")
    fields = match(CWE, "Below is a numbered list" + rest)
    assert sample.answer_prefix == CWE_PREFIX

    def counts(listing: str) -> Counter:
        items = re.findall(r"(\d+)\. (\S+)", listing)
        assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
        return Counter(w for _, w in items)

    listed = counts(fields["context"])
    assert set(sample.references) == {w for w, c in listed.items() if c == common} and len(sample.references) == 10
    assert {c for w, c in listed.items() if w not in sample.references} == {uncommon}
    shot_context, _, shot_answer = example.partition(CWE_PREFIX)
    shot_listing = counts(match(CWE, shot_context)["context"])
    n, shot_common, shot_uncommon = shot
    assert len(shot_listing) == n and sorted(shot_listing.values()) == [shot_uncommon] * (n - 10) + [shot_common] * 10
    assert {w for _, w in re.findall(r"(\d+)\. (\S+)", shot_answer)} == {w for w, c in shot_listing.items() if c == shot_common}


def test_fwe_counts_are_rulers_zipf(tasks, tokenizer) -> None:
    length = 4096
    sample = one("fwe", tasks, tokenizer, length=length)
    fields = match(FWE, sample.prompt)
    assert sample.answer_prefix == FWE_PREFIX
    counts = Counter(fields["context"].split(" "))
    ranked = [w for w, _ in counts.most_common()]
    n = round(counts["..."] * math.pi ** 2 / 6)  # RULER: count_k = int(n k^-2 / zeta(2)), '...' is rank 1
    assert ranked[0] == "..." and sample.references == ranked[1:4]
    for k, word in enumerate(ranked[:4], start=1):
        assert abs(counts[word] - n * k ** -2 / (math.pi ** 2 / 6)) <= 1 + n * 1e-2, (k, counts[word])
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:]) and len(counts) <= (length - 50) // 50


@pytest.mark.parametrize("name", ["qa_1", "qa_2"])
def test_qa_follows_ruler(name: str, tasks, tokenizer, qa_files: dict[str, Path]) -> None:
    data = read_squad(str(qa_files["squad"])) if name == "qa_1" else read_hotpotqa(str(qa_files["hotpotqa"]))
    assert all("Unanswerable" not in q["query"] for q in data.qas)  # SQuAD v2's impossible questions are left out
    for seed in range(3):
        sample = one(name, tasks, tokenizer, seed=seed)
        fields = match(QA, sample.prompt)
        assert sample.answer_prefix == QA_PREFIX and sample.metric == "string_match_part"
        [q] = [q for q in data.qas if q["query"] == fields["query"]]
        assert sample.references == q["outputs"]
        documents = re.split(r"\n\nDocument \d+:\n", "\n\n" + fields["context"])[1:]
        numbers = [int(i) for i in re.findall(r"(?:^|\n\n)Document (\d+):\n", fields["context"])]
        assert numbers == list(range(1, len(documents) + 1))
        assert all(data.docs[i] in documents for i in q["context"])  # gold documents whole
        if name == "qa_1":  # the same article's other paragraphs come first among distractors
            assert sum(data.docs[i] in documents for i in q["more_context"]) == min(len(q["more_context"]), len(documents) - 2)


@pytest.mark.parametrize("length", [2048, 8192])
def test_every_ruler_task_hits_the_requested_length(tasks, tokenizer, length: int) -> None:
    """Within 2% and never over; RULER's coarsest unit (a uuid needle line, ~70 tokens) needs 4k+
    for 2%, so below that only `never over` and `one unit short at most` hold."""
    for name in RULER_TASKS:
        for sample in generate(name, tasks[name], tokenizer, length, 2, seed=1):
            assert sample.tokens <= length, (name, sample.tokens)
            assert sample.tokens >= (0.98 if length >= 4096 or name != "niah_multikey_3" else 0.95) * length, (name, sample.tokens)


def test_a_length_too_short_for_the_task_is_a_clear_error(tasks, tokenizer) -> None:
    with pytest.raises(ValueError, match="smallest prompt .* more than the requested length 300"):
        one("vt", tasks, tokenizer, length=300)


@pytest.mark.slow
def test_eval_ruler_on_a_tiny_model(tiny_model_dir: Path, essay_dir: Path, qa_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = cli("dgrpo-train", "eval", "--model", str(tiny_model_dir), "--tasks", "ruler", "--lengths", "2048",
                 "--samples", "1", "--out", str(out), "--haystack", f"local:{essay_dir}",
                 "--qa-source", f"squad={qa_files['squad']},hotpotqa={qa_files['hotpotqa']}", timeout=600)
    results = json.loads((out / "results.json").read_text())
    assert list(results["scores"]) == list(RULER_TASKS) and results["ruler_tasks"] == list(RULER_TASKS)
    assert set(results["ruler_average_by_length"]) == {"2048"}
    assert results["ruler_average_by_length"]["2048"] == pytest.approx(sum(s["2048"] for s in results["scores"].values()) / 13)
    assert results["essay_haystack"] == f"local:{essay_dir}" and not results["essay_tasks_on_noise"]
    assert results["qa_source"] == {"qa_1": f"squad:{qa_files['squad']}", "qa_2": f"hotpotqa:{qa_files['hotpotqa']}"}
    assert all(0.98 * 2048 <= t["2048"] <= 2048 for name, t in results["mean_prompt_tokens"].items() if name != "niah_multikey_3")
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["task"]: r["answer_prefix"] for r in rows}["qa_1"] == QA_PREFIX
    assert "RULER mean (13 tasks)" in result.stdout
