"""Per-length-bin quotas: sampling selects as it streams, so a quota of N documents in a bin means
N documents of that length that passed selection; a quota the source cannot fill is reported."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from conftest import cli, random_text
from longblocks.manifest import SampleStats, stage_stats, to_json
from longblocks.config import SelectConfig

BINS = "100,200,400,800"  # bins 100-200, 200-400, 400-800 (approx tokens: words and punctuation)


def corpus(root: Path) -> Path:
    rng = random.Random(3)
    root.mkdir()
    for i, words in enumerate([50] * 6 + [150] * 8 + [300] * 8 + [600] * 2 + [2000] * 3):
        (root / f"{i:02d}.md").write_text(random_text(rng, words))
    return root


def test_bin_quotas_count_selected_documents_per_bin(tmp_path: Path) -> None:
    docs = corpus(tmp_path / "docs")
    result = cli("longblocks", "sample", "--source", f"local:{docs}", "--out", str(tmp_path / "s"), "--languages", "en",
                 "--bin-quotas", "100-200=3,200-400=5,400-800=4", "--select.bins", BINS, "--select.min-tokens", "100",
                 "--select.max-tokens", "800")
    kept = pq.read_table(tmp_path / "s" / "data").to_pylist()
    select = SelectConfig(tokenizer="approx", min_tokens=100, max_tokens=800, bins=(100, 200, 400, 800))
    assert Counter(select.bin_of(d["n_tokens"]) for d in kept) == {"100-200": 3, "200-400": 5, "400-800": 2}
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert stage_stats(manifest).kept_by_quota == {"en/100-200": 3, "en/200-400": 5, "en/400-800": 2}
    assert stage_stats(manifest).unmet == {"en/400-800": 2}  # only two documents of that length exist
    assert "en/400-800 is 2 document(s) short" in result.stderr
    reasons = Counter(r["reason"] for r in pq.read_table(tmp_path / "s" / "rejected").to_pylist())
    assert reasons["too_few_tokens"] == 6 and reasons["too_many_tokens"] == 3 and reasons["quota_full"] >= 1


def test_pipeline_bin_quotas_and_the_card_table(tmp_path: Path) -> None:
    docs = corpus(tmp_path / "docs")
    path = tmp_path / "p.toml"
    path.write_text(f'[run]\nout = "{tmp_path / "run"}"\n[source]\nname = "local:{docs}"\nlanguages = ["en"]\n'
                    f'bin_quotas = {{ "100-200" = 2, "200-400" = 3 }}\n'
                    f'[select]\nmin_tokens = 100\nmax_tokens = 800\nbins = [{BINS}]\n')
    cli("longblocks", "run", str(path))
    manifest = json.loads((tmp_path / "run" / "sample" / "manifest.json").read_text())
    assert stage_stats(manifest).kept_by_quota == {"en/100-200": 2, "en/200-400": 3} and stage_stats(manifest).unmet == {}
    assert pq.read_table(tmp_path / "run" / "dedup" / "data").num_rows == 5


def test_bad_bin_quota_is_one_line(tmp_path: Path) -> None:
    docs = corpus(tmp_path / "docs")
    result = cli("longblocks", "sample", "--source", f"local:{docs}", "--out", str(tmp_path / "s"), "--languages",
                 "en", "--bin-quotas", "1k-2k=3", check=False)
    assert result.returncode == 2 and "unknown bin" in result.stderr and "Traceback" not in result.stderr


def test_the_card_reports_documents_per_bin(tmp_path: Path) -> None:
    from longblocks.publish import publish
    from longblocks.records import qa_schema
    from longblocks.store import Outcome, StageWriter

    run = tmp_path / "run"
    sample = StageWriter(run / "sample", stage="sample", schema=qa_schema(), params={})
    sample.finish(stats=to_json(SampleStats(kept_by_quota={"en/16k-32k": 10, "en/32k-64k": 4}, unmet={"en/32k-64k": 6})))
    judge = StageWriter(run / "judge", stage="judge", schema=qa_schema(), params={})
    judge.add(Outcome("q", kept=[{"id": "q", "document": "d", "source": "arxiv", "language": "en", "question": "q",
                                  "answer": "a", "doc_id": "d", "question_type": "summary"}]))
    judge.finish()
    publish(run, tmp_path / "pub")
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "| en/16k-32k | 10 | 0 |" in card and "| en/32k-64k | 4 | 6 |" in card
