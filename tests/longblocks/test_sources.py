"""Sampling: Hub-shaped sources through `datasets` (built locally), local folders, quotas, bad input."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cli, random_text
from longblocks.manifest import stage_stats
from longblocks.errors import LongBlocksError
from longblocks.config import SourceConfig
from longblocks.pipeline import run
from longblocks.sources import resolve_source


def kept(out: Path) -> list[dict]:
    return pq.read_table(out / "data").to_pylist()


def rejected(out: Path) -> dict[str, str]:
    return {r["reason"]: r["detail"] for r in pq.read_table(out / "rejected").to_pylist()}


@pytest.fixture(scope="module")
def hub_like_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local dataset repository laid out like `wikimedia/wikipedia`: one config per language,
    parquet data files and a README with `configs` front matter, exactly what the Hub serves."""
    root = tmp_path_factory.mktemp("wikipedia")
    rng = random.Random(0)
    configs = []
    for lang, n in (("en", 60), ("de", 40), ("fr", 30)):
        rows = [{"id": f"{lang}-{i}", "url": f"https://{lang}.example/{i}", "title": f"T{i}",
                 "text": f"[{lang}] " + random_text(rng, 50)} for i in range(n)]
        rows[3]["text"] = ""  # an empty article
        (root / f"20231101.{lang}").mkdir()
        for shard in range(2):
            pq.write_table(pa.Table.from_pylist(rows[shard::2]), root / f"20231101.{lang}" / f"train-{shard:05d}-of-00002.parquet")
        configs.append(f"- config_name: 20231101.{lang}\n  data_files:\n  - split: train\n    path: 20231101.{lang}/train-*")
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n# test copy\n")
    return root


def test_hub_source_sampling_is_seeded_and_respects_quotas(hub_like_dataset: Path, tmp_path: Path) -> None:
    source = resolve_source("wikipedia", hub_id=str(hub_like_dataset), shuffle_buffer=16)
    quotas = {"en": 7, "de": 5}
    a = run("sample", SourceConfig(quotas=quotas, seed=1), [], tmp_path / "a", source=source, part_size=4)
    b = run("sample", SourceConfig(quotas=quotas, seed=1), [], tmp_path / "b", source=source, part_size=4)
    c = run("sample", SourceConfig(quotas=quotas, seed=2), [], tmp_path / "c", source=source, part_size=4)
    docs_a, docs_b, docs_c = kept(tmp_path / "a"), kept(tmp_path / "b"), kept(tmp_path / "c")
    assert [d["id"] for d in docs_a] == [d["id"] for d in docs_b]
    assert [d["id"] for d in docs_a] != [d["id"] for d in docs_c]
    assert Counter(d["language"] for d in docs_a) == Counter(quotas)
    assert all(d["text"].startswith(f"[{d['language']}]") for d in docs_a)  # right config per language
    assert stage_stats(a).kept_by_language == quotas
    meta = json.loads(docs_a[0]["meta"])
    assert meta["original_id"].startswith(docs_a[0]["language"]) and meta["license"].startswith("cc-by-sa")


def test_hub_source_unknown_language_and_missing_dataset_are_clear_errors(hub_like_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(LongBlocksError, match="has no language"):
        list(resolve_source("wikipedia", hub_id=str(hub_like_dataset)).stream(["xx"], 0))
    with pytest.raises(LongBlocksError, match="could not open dataset"):
        list(resolve_source("wikipedia", hub_id=str(tmp_path / "nowhere")).stream(["en"], 0))


def test_hub_source_records_empty_rows(hub_like_dataset: Path, tmp_path: Path) -> None:
    source = resolve_source("wikipedia", hub_id=str(hub_like_dataset))
    manifest = run("sample", SourceConfig(quotas={"fr": 1000}, seed=0), [], tmp_path / "all", source=source)
    assert stage_stats(manifest).kept_by_language == {"fr": 29}
    assert manifest["rejected"] == {"empty": 1}
    assert "row fr-3" in rejected(tmp_path / "all")["empty"]


def test_sample_resumes_without_loss_or_duplicates(hub_like_dataset: Path, tmp_path: Path) -> None:
    source = resolve_source("wikipedia", hub_id=str(hub_like_dataset), shuffle_buffer=16)
    quotas = {"en": 20, "de": 10}
    run("sample", SourceConfig(quotas=quotas, seed=3), [], tmp_path / "ref", source=source, part_size=4)
    calls = 0

    def crash(phase: str, advance: int, total: int | None, **stats: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("sample", SourceConfig(quotas=quotas, seed=3), [], tmp_path / "out", source=source, part_size=4, progress=crash)
    run("sample", SourceConfig(quotas=quotas, seed=3), [], tmp_path / "out", source=source, part_size=4)
    assert kept(tmp_path / "out") == kept(tmp_path / "ref")


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    rng = random.Random(0)
    for i in range(12):
        (root / ("sub" if i % 2 else "") / f"doc{i}.md").write_text(random_text(rng, 80))
    (root / "code.py").write_text("def f():\n    return 1\n" * 20)
    (root / "empty.txt").write_text("   \n\n")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 10)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    with open(root / "huge.txt", "w") as f:  # a 50 MB document
        f.write(("x" * 1023 + "\n") * (50 * 1024))
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.md").write_text("never read")
    return root


def test_local_folder_rejects_bad_files_with_reasons(messy_folder: Path, tmp_path: Path) -> None:
    source = resolve_source(f"local:{messy_folder}")
    manifest = run("sample", SourceConfig(quotas=None, seed=0), [], tmp_path / "out", source=source)
    reasons = rejected(tmp_path / "out")
    assert manifest["rejected"] == {"binary": 1, "empty": 1, "not_utf8": 1, "too_large": 1}
    assert "blob.bin" in reasons["binary"] and "latin1.txt" in reasons["not_utf8"]
    assert "huge.txt" in reasons["too_large"] and "empty.txt" in reasons["empty"]
    docs = kept(tmp_path / "out")
    assert len(docs) == 13
    assert Counter(d["language"] for d in docs) == {"en": 12, "python": 1}
    assert not any("skip" in d["meta"] for d in docs)


def test_local_folder_sampling_is_seeded_with_quotas(messy_folder: Path, tmp_path: Path) -> None:
    source = resolve_source(f"local:{messy_folder}", include=["*.md", "*.py"])
    runs = [kept(tmp_path / str(s)) for s in (0, 0, 1) if run("sample", SourceConfig(quotas={"en": 4, "python": 1}, seed=s), [], tmp_path / str(s), source=source, overwrite=True)]
    assert [d["id"] for d in runs[0]] == [d["id"] for d in runs[1]]
    assert [d["id"] for d in runs[0]] != [d["id"] for d in runs[2]]
    assert Counter(d["language"] for d in runs[0]) == {"en": 4, "python": 1}


def test_local_jsonl_rows_missing_text_are_rejected_and_missing_column_is_an_error(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    rows = [{"id": i, "text": f"row {i} text", "language": "de"} for i in range(6)]
    rows[2]["text"] = None
    data.write_text("\n".join(json.dumps(r) for r in rows))
    manifest = run("sample", SourceConfig(quotas=None, seed=0), [], tmp_path / "out", source=resolve_source(f"local:{data}"))
    assert stage_stats(manifest).kept_by_language == {"de": 5} and manifest["rejected"] == {"missing_text": 1}

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"content": "x"}) + "\n")
    result = cli("longblocks", "sample", "--source", f"local:{other}", "--out", str(tmp_path / "o2"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no text field 'text'" in result.stderr and "content" in result.stderr


def test_cli_sample_reports_rejections_without_traceback(messy_folder: Path, tmp_path: Path) -> None:
    result = cli("longblocks", "sample", "--source", f"local:{messy_folder}", "--out", str(tmp_path / "o"))
    assert "Traceback" not in result.stderr
    assert "rejected not_utf8: 1" in result.stderr and "rejected binary: 1" in result.stderr
