"""A finished run directory built with the real stage store (no LLM needed): documents through
sample/dedup, QA records through generate/filter, with manifests carrying provenance."""

from __future__ import annotations

import random
from pathlib import Path

from conftest import random_text
from longblocks.config import DedupSection
from longblocks.pipeline import run
from longblocks.manifest import llm_stats, to_json
from longblocks.records import DOCUMENT_SCHEMA, make_document, qa_id, qa_schema
from longblocks.store import Outcome, Rejection, StageWriter

MODELS = ("Qwen3-Next-80B-A3B",)


def build_run(root: Path, n_docs: int = 40, pairs_per_doc: int = 3, seed: int = 0) -> Path:
    rng = random.Random(seed)
    sample = StageWriter(root / "sample", stage="sample", schema=DOCUMENT_SCHEMA, params={}, part_size=50)
    docs = []
    for i in range(n_docs):
        source, lang = (("arxiv", "en"), ("wikipedia", "de"), ("gutenberg", "fr"))[i % 3]
        doc = make_document(source=source, language=lang, text=f"Doc {i}. " + random_text(rng, 300))
        docs.append(doc)
        sample.add(Outcome(doc["id"], kept=[doc]))
    sample.add(Outcome("bad", rejected=[Rejection("bad", "binary", "x.bin")]))
    sample.finish()
    run("dedup", DedupSection(), [root / "sample"], root / "dedup")
    gen = StageWriter(root / "generate", stage="generate", schema=qa_schema(MODELS), params={}, part_size=10)
    qas = []
    for doc in docs:
        for j in range(pairs_per_doc):
            q, a = f"Question {j} about {doc['id'][:6]}?", random_text(rng, 40)
            rec = {"id": qa_id(doc["id"], q, a), "document": doc["text"], "source": doc["source"],
                   "language": doc["language"], "question": q, "answer": a, "doc_id": doc["id"],
                   "question_type": ("summary", "multi_hop")[j % 2], "generator": "Qwen/Qwen3-Next-80B-A3B-Thinking",
                   "judge_verdict": None, "judge_reasons": [], "response_Qwen3-Next-80B-A3B": "r"}
            qas.append(rec)
        gen.add(Outcome(doc["id"], kept=qas[-pairs_per_doc:]))
    gen.finish(stats=to_json(llm_stats({"backend": "openai", "model": "Qwen/Qwen3-Next-80B-A3B-Thinking",
                                        "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768}},
                                       question_types=["summary", "multi_hop"], n_questions=pairs_per_doc,
                                       prompt_sha256={"summary": "abc", "multi_hop": "def"})))
    filt = StageWriter(root / "judge", stage="judge", schema=qa_schema(MODELS), params={}, part_size=25)
    for i, rec in enumerate(qas):
        if i % 7 == 3:
            filt.add(Outcome(rec["id"], rejected=[Rejection(rec["id"], "unsupported", "judge: invented")]))
        else:
            filt.add(Outcome(rec["id"], kept=[{**rec, "judge_verdict": "pass"}]))
    filt.finish(stats=to_json(llm_stats({"backend": "openai", "model": "Qwen/Qwen3-Next-80B-A3B-Thinking",
                                         "sampling": {"temperature": 0.0}}, mode="text", prompt_sha256={"judge": "123"})))
    return root
