"""Sources whose Hub layout is not one config per language: Institutional Books (one stream, ISO
639-3 labels in `language_gen`, text as a list of pages) and Project Gutenberg (one split per
language, exactly those on the Hub), built locally as the Hub serves them; the pipeline files'
languages; code documents' QA language and the card's `language:`."""

from __future__ import annotations

import random
import tomllib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, random_text
from longblocks.qa import generation_messages
from longblocks.config import SourceConfig
from longblocks.pipeline import run
from longblocks.sources import CODE_LANGUAGES, REGISTRY, resolve_source

# LongBlocks' 19 natural languages
LONGBLOCKS_LANGUAGES = set("en fr de es uk sv ro it ru el ja nl fi pl hu zh pt hi ar".split())
PIPELINES = ROOT / "pipelines"


def test_institutional_books_three_letter_codes_fill_two_letter_quotas(tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = [{"barcode_src": f"b{i}", "language_gen": code, "title_src": f"Book {i}",
             "text_by_page_gen": [random_text(rng, 30), random_text(rng, 30)]}
            for i, code in enumerate(["eng", "deu", "fra", "eng", "lat", "deu", "eng", "fra"] * 5)]
    (tmp_path / "hub" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    source = resolve_source("institutional-books", hub_id=str(tmp_path / "hub"), shuffle_buffer=8)
    manifest = run("sample", SourceConfig(quotas={"en": 6, "de": 4, "fr": 3}, seed=0), [], tmp_path / "out", source=source, part_size=5)
    docs = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert Counter(d["language"] for d in docs) == {"en": 6, "de": 4, "fr": 3}
    assert manifest["inputs"]["consumed"] < len(rows)  # the stream stopped once the quotas were met
    assert all("\n" in d["text"] for d in docs)  # pages joined


def test_gutenberg_languages_are_the_hub_splits_and_read_by_split(tmp_path: Path) -> None:
    assert set(REGISTRY["gutenberg"].languages) == {"de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru", "sv", "zh"}
    rng = random.Random(1)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    splits = []
    for lang in ("en", "sv", "pl"):
        rows = [{"id": f"{lang}{i}", "text": f"[{lang}] " + random_text(rng, 40)} for i in range(6)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hub" / "data" / f"{lang}-00000-of-00001.parquet")
        splits.append(f"  - split: {lang}\n    path: data/{lang}-*")
    (tmp_path / "hub" / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                                + "\n".join(splits) + "\n---\n")
    source = resolve_source("gutenberg", hub_id=str(tmp_path / "hub"), shuffle_buffer=4)
    run("sample", SourceConfig(quotas={"sv": 3, "pl": 2}, seed=0), [], tmp_path / "out", source=source)
    docs = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert Counter(d["language"] for d in docs) == {"sv": 3, "pl": 2}
    assert all(d["text"].startswith(f"[{d['language']}]") for d in docs)


def test_pipelines_cover_longblocks_languages_and_stack_edu_uniformly() -> None:
    natural, code = set(), {}
    for path in PIPELINES.glob("*.toml"):
        source = tomllib.loads(path.read_text())["source"]
        langs = set(source.get("quotas") or source.get("languages") or ())
        if source["name"] == "stack-edu":
            code = source["quotas"]
        elif not source["name"].startswith("local:"):
            natural |= langs
    assert natural == LONGBLOCKS_LANGUAGES, natural ^ LONGBLOCKS_LANGUAGES
    assert set(code) == set(REGISTRY["stack-edu"].languages) and len(set(code.values())) == 1


@pytest.mark.parametrize("name", sorted(p.stem for p in PIPELINES.glob("*.toml") if p.stem != "quickstart"))
def test_each_pipeline_runs_every_stage_with_the_papers_models(name: str) -> None:
    from longblocks.config import load_pipeline

    cfg = load_pipeline(PIPELINES / f"{name}.toml")
    assert cfg.generate.model == cfg.judge.model == "Qwen/Qwen3-Next-80B-A3B-Thinking"
    assert [r.name for r in cfg.respond.responders] == ["Qwen3-Next-80B-A3B", "Qwen3.5-27B", "Nemotron-3-Nano-30B-A3B"]
    assert cfg.publish.repo_id


def test_code_documents_get_questions_in_a_natural_language() -> None:
    code = {"id": "0" * 32, "language": "python", "source": "stack-edu", "text": "def f():\n    return 1\n"}
    prose = {"id": "1" * 32, "language": "de", "source": "wikipedia", "text": "Ein Text."}
    code_prompt = generation_messages(code, "summary", 2)[0]["content"]
    assert "python source code" in code_prompt and "in English" in code_prompt and "(python)" not in code_prompt
    assert "in Spanish" in generation_messages(code, "summary", 2, code_qa_language="es")[0]["content"]
    assert "same language as the document (German)" in generation_messages(prose, "summary", 2)[0]["content"]


def test_card_language_holds_natural_languages_only(tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    from longblocks.publish import publish
    from longblocks.records import qa_schema
    from longblocks.store import StageWriter, Outcome

    writer = StageWriter(tmp_path / "run" / "judge", stage="judge", schema=qa_schema(), params={}, part_size=10)
    for i, (lang, source) in enumerate([("en", "arxiv"), ("cpp", "stack-edu"), ("go", "stack-edu"), ("de", "wikipedia")]):
        row = {"id": f"q{i}", "document": "d", "source": source, "language": lang, "question": "q", "answer": "a",
               "doc_id": f"d{i}", "question_type": "summary", "generator": "g"}
        writer.add(Outcome(f"q{i}", kept=[row]))
    writer.finish()
    publish(tmp_path / "run", tmp_path / "pub")
    card = DatasetCard.load(tmp_path / "pub" / "README.md")
    assert card.data.language == ["de", "en"]
    assert {"code", "cpp", "go"} <= set(card.data.tags) and "| cpp |" in card.text
    assert set(CODE_LANGUAGES) >= {"cpp", "go"}
