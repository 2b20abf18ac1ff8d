from __future__ import annotations

import math
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from conftest import cli
from longblocks.errors import LongBlocksError
from longblocks.publish import parse_size, publish
from run_fixture import build_run

LONGBLOCKS_COLUMNS = ["id", "document", "source", "language", "question", "answer", "response_Qwen3-Next-80B-A3B"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("run"))


def test_published_folder_loads_with_datasets_and_card_validates(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pub"
    summary = publish(run_dir, out, repo_id="org/longblocks-test", max_shard_size="64KB")
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.column_names == LONGBLOCKS_COLUMNS
    kept = pq.read_table(run_dir / "judge" / "data")
    assert ds.num_rows == kept.num_rows == summary["rows"]
    card = DatasetCard.load(out / "README.md")
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    parsed = DatasetCardData(**meta)  # huggingface_hub's own parser of the front matter
    assert parsed.to_dict() == card.data.to_dict()
    assert meta["license"] == "cc-by-sa-4.0"  # arxiv and wikipedia are share-alike
    assert meta["configs"][0]["data_files"][0]["path"] == "data/train-*"
    assert set(meta["language"]) == {"en", "de", "fr"}
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["size_categories"] == ["n<1K"]
    # dataset_info as push_to_hub writes it, and as datasets reads it back from the folder
    info = meta["dataset_info"]
    assert [f["name"] for f in info["features"]] == LONGBLOCKS_COLUMNS
    assert info["splits"] == [{"name": "train", "num_bytes": info["dataset_size"], "num_examples": ds.num_rows}]
    assert info["download_size"] == sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))
    assert list(ds.info.features) == LONGBLOCKS_COLUMNS and ds.info.splits["train"].num_examples == ds.num_rows
    assert "wikimedia/wikipedia" in meta["source_datasets"] and meta["pretty_name"] == "LongBlocks"
    body = card.text
    for needle in ("| arxiv |", "| de |", "| multi_hop |", "unsupported", "binary 1", "datasketch 2.",
                   "affine32", "14 bands x 8 rows", "Qwen/Qwen3-Next-80B-A3B-Thinking", "temperature", "share-alike"):
        assert needle in body, needle
    for path in out.rglob("*.parquet"):
        metadata = pq.ParquetFile(path).metadata
        assert all(metadata.row_group(i).num_rows <= 100 for i in range(metadata.num_row_groups))


def test_small_max_shard_size_gives_expected_contiguous_shards(run_dir: Path, tmp_path: Path) -> None:
    kept = pq.read_table(run_dir / "judge" / "data", columns=LONGBLOCKS_COLUMNS)
    limit = 50_000
    summary = publish(run_dir, tmp_path / "pub", max_shard_size=limit)
    expected = math.ceil(kept.nbytes / limit)
    assert expected > 2
    names = sorted(p.name for p in (tmp_path / "pub" / "data").glob("*.parquet"))
    assert names == [f"train-{i:05d}-of-{expected:05d}.parquet" for i in range(expected)]
    assert summary["shards"] == [f"data/{n}" for n in names]
    ids = [i for n in names for i in pq.read_table(tmp_path / "pub" / "data" / n, columns=["id"])["id"].to_pylist()]
    assert ids == kept["id"].to_pylist()  # same rows, same order: none lost, none duplicated
    sizes = [pq.ParquetFile(tmp_path / "pub" / "data" / n).metadata.num_rows for n in names]
    assert max(sizes) - min(sizes) <= 1


def test_working_config_keeps_provenance_columns_separately(run_dir: Path, tmp_path: Path) -> None:
    publish(run_dir, tmp_path / "pub", working_config=True)
    default = datasets.load_dataset(str(tmp_path / "pub"), split="train")
    working = datasets.load_dataset(str(tmp_path / "pub"), "working", split="train")
    assert "judge_reasons" not in default.column_names and "judge_reasons" in working.column_names
    assert working.num_rows == default.num_rows


def test_license_conflict_and_sizes() -> None:
    assert parse_size("500MB") == 500_000_000 and parse_size("2GiB") == 2_000_000_000 and parse_size(123) == 123
    with pytest.raises(LongBlocksError, match="share-alike"):
        from longblocks.publish import _license

        _license(["wikipedia"], "cc-by-4.0")


def test_cli_publish(run_dir: Path, tmp_path: Path) -> None:
    result = cli("longblocks", "publish", str(run_dir), str(tmp_path / "pub"), "--repo-id", "org/x", "--max-shard-size", "100KB")
    assert "Traceback" not in result.stderr and (tmp_path / "pub" / "README.md").exists()


def test_the_card_says_what_the_run_did_its_models_the_local_license_and_how_to_load_the_folder(
        tmp_path: Path) -> None:
    from longblocks.manifest import llm_stats, to_json
    from longblocks.records import qa_schema
    from longblocks.store import Outcome, StageWriter

    run = tmp_path / "run"
    generate = StageWriter(run / "generate", stage="generate", schema=qa_schema(), params={})
    generate.add(Outcome("d", kept=[{"id": "q", "document": "d", "source": "local", "language": "python",
                                     "question": "q?", "answer": "a", "doc_id": "d", "question_type": "summary"}]))
    small = {"backend": "transformers", "model": "/cache/SmolLM2-135M-Instruct", "model_size": "135M"}
    generate.finish(stats=to_json(llm_stats(small, question_types=["summary"], n_questions=2, prompt_sha256={})))
    StageWriter(run / "judge", stage="judge", schema=qa_schema(), params={}).finish(
        stats=to_json(llm_stats(small, mode="choice", prompt_sha256={})))
    publish(run / "generate", tmp_path / "unknown", skip_judge=True)
    card = (tmp_path / "unknown" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "unknown" and "local: not stated (set [publish] license" in card
    assert "written by `SmolLM2-135M-Instruct` (135M parameters)" in card and "strong LLM" not in card
    assert "/cache/" not in card  # not the path of the machine that built it
    assert f'load_dataset("parquet", data_files="{tmp_path / "unknown"}/data/train-*.parquet"' in card
    publish(run / "generate", tmp_path / "psf", license="psf-2.0", repo_id="me/qs", skip_judge=True)
    meta = yaml.safe_load((tmp_path / "psf" / "README.md").read_text().split("---")[1])
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other", "psf-2.0", "https://docs.python.org/3/license.html")
    assert 'load_dataset("me/qs", split="train")' in (tmp_path / "psf" / "README.md").read_text()
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "unknown" / "data" / "train-*.parquet"),
                               split="train")
    assert ds.num_rows == 1
