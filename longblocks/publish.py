"""Publish a run as a Hub-ready dataset folder: `data/train-XXXXX-of-YYYYY.parquet` shards with the
published LongBlocks columns, and a `README.md` dataset card rendered from `data_cards/`.
Must not upload: `longblocks push` does that.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from longblocks.errors import LongBlocksError
from longblocks.records import PROVENANCE_COLUMNS, published_column_names, response_columns
from longblocks.sources import CODE_LANGUAGES, REGISTRY
from longblocks.config import STAGES
from longblocks.manifest import MANIFEST, LLMStats, SampleStats, lineage, read_manifest, stage_stats, unjudged
from longblocks.store import DATA_DIR, REJECTED_DIR, check_output_dir, check_parts, count_rows, directory_lock, input_files, read_batches

CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "data_cards" / "longblocks.md"
_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]


def parse_size(value: str | int) -> int:
    """'500MB', '2GB', '10KB' or a number of bytes."""
    if isinstance(value, int):
        return value
    text = value.strip().upper().replace("IB", "B")
    for suffix, factor in (("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("B", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def size_category(n: int) -> str:
    return next((label for limit, label in _SIZE_CATEGORIES if n < limit), "n>1T")


def _run_dir_and_stage(path: Path) -> tuple[Path, Path]:
    """(run directory, QA stage directory) from either a run directory or a stage directory."""
    if (path / MANIFEST).exists():
        return path.parent, path
    for stage in ("respond", "judge", "generate"):
        if (path / stage / MANIFEST).exists():
            return path, path / stage
    raise LongBlocksError(f"{path} is neither a QA stage directory nor a run directory with generate/, judge/ or respond/")


def _table_columns(files: list[Path], working: bool) -> list[str]:
    names = pq.ParquetFile(files[0]).schema_arrow.names
    missing = [c for c in published_column_names(pa.schema([pa.field(n, pa.string()) for n in names])) if c not in names]
    if missing:
        raise LongBlocksError(f"{files[0]} lacks published column(s) {missing}: is it a QA stage?")
    published = published_column_names(pq.ParquetFile(files[0]).schema_arrow)
    return published + [c for c in PROVENANCE_COLUMNS if c in names] if working else published


def write_shards(files: list[Path], out: Path, columns: list[str], *, max_shard_size: int, row_group_rows: int,
                 split: str = "train", subdir: str = "data") -> tuple[list[Path], int]:
    """Contiguous shards, as `datasets.push_to_hub` sizes them: ceil(arrow bytes / max) shards with
    rows split evenly, written in input order (two streaming passes, bounded memory); returns the
    shards and the Arrow bytes of the columns (the dataset_info's `num_bytes`)."""
    total_bytes = 0
    for batch in read_batches(files, columns=columns, batch_size=1024):
        total_bytes += batch.nbytes
    n_rows = count_rows(files)
    n_shards = max(1, math.ceil(total_bytes / max_shard_size)) if n_rows else 1
    n_shards = min(n_shards, max(n_rows, 1))
    bounds = [n_rows * i // n_shards for i in range(n_shards + 1)]
    target = out / subdir
    target.mkdir(parents=True, exist_ok=True)
    for stale in [*target.glob(f"{split}-*.parquet"), *target.glob(f".{split}-*.tmp")]:
        stale.unlink()  # an earlier publish's shards (another count) and a killed one's leftovers
    paths = [target / f"{split}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    schema = pq.ParquetFile(files[0]).schema_arrow
    schema = pa.schema([schema.field(c) for c in columns])
    shard, written, writer = 0, 0, None

    def open_writer(i: int) -> pq.ParquetWriter:
        return pq.ParquetWriter(_tmp(paths[i]), schema, compression="zstd", write_page_index=True)

    writer = open_writer(0)
    for batch in read_batches(files, columns=columns, batch_size=row_group_rows):
        table = pa.Table.from_batches([batch], schema=schema)
        while table.num_rows:
            room = bounds[shard + 1] - written
            if room == 0:
                writer.close()
                shard += 1
                writer = open_writer(shard)
                continue
            part = table.slice(0, room)
            writer.write_table(part, row_group_size=row_group_rows)
            written += part.num_rows
            table = table.slice(part.num_rows)
    writer.close()
    for i in range(shard + 1, n_shards):  # shards left empty only when there are no rows
        open_writer(i).close()
    for p in paths:
        os.replace(_tmp(p), p)
    return paths, total_bytes


def _empty_responses(stage_dir: Path, columns: list[str], empty: Counter[str]) -> list[dict[str, Any]]:
    """Each response column with empty rows, and why: the respond stage's rejections of that column
    by reason (a truncated, failed or empty answer is recorded there, its row kept)."""
    reasons: dict[str, Counter[str]] = {c: Counter() for c in columns}
    rejected = stage_dir / REJECTED_DIR
    if rejected.is_dir() and any(rejected.glob("*.parquet")):
        for row in pq.read_table(rejected, columns=["reason", "detail"]).to_pylist():
            column = row["detail"].split(" ")[1].rstrip(":") if " " in row["detail"] else ""
            if column in reasons:
                reasons[column][row["reason"]] += 1
    return [{"column": c, "empty": empty[c],
             "reasons": ", ".join(f"{r.removeprefix('response_').replace('_', ' ')} {n}" for r, n in reasons[c].most_common())}
            for c in columns if empty[c]]


def _tmp(path: Path) -> Path:
    """Where a shard is written until complete: hidden, so nothing lists or uploads it."""
    return path.with_name(f".{path.stem}.tmp")


def dataset_info(shards: list[Path], num_bytes: int) -> Any:
    """The `datasets.DatasetInfo` of one config's train split (features, examples, sizes), as
    `push_to_hub` computes it for the card's `dataset_info` (what the Hub's viewer reads)."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo

    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_bytes=num_bytes, num_examples=count_rows(shards)))
    return DatasetInfo(features=Features.from_arrow_schema(pq.ParquetFile(shards[0]).schema_arrow), splits=splits,
                       download_size=sum(p.stat().st_size for p in shards), dataset_size=num_bytes)


# License ids the Hub knows (its licenses page); another id goes in as `other` with a name and link.
HUB_LICENSES = {"apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-sa-3.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0",
                "cc0-1.0", "odc-by", "odbl", "pddl", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "bsd-3-clause", "bsd-2-clause",
                "gfdl", "other", "unknown"}
LICENSE_LINKS = {"psf-2.0": "https://docs.python.org/3/license.html"}


def _license(source_names: list[str], override: str | None) -> tuple[dict[str, str], str]:
    """The card's license fields and sentence: `override` ([publish] license / --license), else
    cc-by-sa-4.0 with a share-alike Hub source, cc-by-4.0 with other Hub sources, and `unknown` as
    soon as a local source's license was not stated."""
    specs = [REGISTRY[n] for n in source_names if n in REGISTRY]
    local = [n for n in source_names if n not in REGISTRY]
    share_alike = [s.name for s in specs if s.share_alike]
    if override:
        license_id = override
    elif local:
        license_id = "unknown"
    else:
        license_id = "cc-by-sa-4.0" if share_alike else "cc-by-4.0"
    parts = [f"{s.name}: {s.license}" for s in specs]
    parts += [f"{name}: {override or 'not stated (set [publish] license or --license)'}" for name in local]
    text = f"Released under {license_id}. Source licenses: {'; '.join(parts)}."
    if share_alike:
        text += f" Share-alike sources ({', '.join(share_alike)}) make the whole dataset share-alike."
        if override and "sa" not in override.lower():
            raise LongBlocksError(f"--license {override} conflicts with the share-alike sources {share_alike}")
    if license_id in HUB_LICENSES:
        return {"license": license_id}, text
    fields = {"license": "other", "license_name": license_id}
    if license_id in LICENSE_LINKS:
        fields["license_link"] = LICENSE_LINKS[license_id]
    return fields, text


def _flat(stats: LLMStats | None) -> dict[str, Any] | None:
    """The card's view of what answered: a model in a local folder by its folder's name (a card
    must not carry the path of the machine that built it)."""
    if stats is None:
        return None
    values = stats.flat()
    if values["model"].startswith(("/", "~", ".")):
        values["model"] = Path(values["model"]).name
    return values


def publish(
    in_path: str | Path, out_dir: str | Path, *, repo_id: str = "", pretty_name: str = "LongBlocks",
    max_shard_size: str | int = "500MB", row_group_rows: int = 100, working_config: bool = False,
    license: str | None = None, skip_judge: bool = False,
) -> dict[str, Any]:
    """Write shards and a dataset card to OUT; returns a summary (files, rows, card metadata). The
    stage published must be complete with every part as committed (checksums read), and downstream
    of the run's judge when it has one (unless `skip_judge`)."""
    run_dir, stage_dir = _run_dir_and_stage(Path(in_path))
    if not skip_judge:
        unjudged(stage_dir, "publish the judge's output (its respond stage, or judge/), or pass --skip-judge")
    published = read_manifest(stage_dir)
    if published.get("status") != "complete":
        raise LongBlocksError(f"{stage_dir} is incomplete (status {published.get('status')!r}): run its stage again "
                              "to finish it before publishing")
    check_parts(stage_dir, published, subdirs=(DATA_DIR,), checksums=True)  # every row there as committed
    files = input_files(stage_dir)
    out = Path(out_dir)
    check_output_dir(out)
    if repo_id:
        from longblocks.push import check_repo_id

        check_repo_id(repo_id)
    # one publish per folder (another one at once is refused, never interleaved); the lock file sits
    # beside the folder, which is uploaded as it is
    with directory_lock(out, lock=out.resolve().parent / f".{out.resolve().name}.lock"):
        return _publish(run_dir, stage_dir, files, out, repo_id=repo_id, pretty_name=pretty_name,
                        max_shard_size=max_shard_size, row_group_rows=row_group_rows, working_config=working_config,
                        license=license)


def _publish(run_dir: Path, stage_dir: Path, files: list[Path], out: Path, *, repo_id: str, pretty_name: str,
             max_shard_size: str | int, row_group_rows: int, working_config: bool, license: str | None) -> dict[str, Any]:
    from huggingface_hub import DatasetCard, DatasetCardData

    columns = _table_columns(files, working=False)
    max_bytes = parse_size(max_shard_size)
    shards, num_bytes = write_shards(files, out, columns, max_shard_size=max_bytes, row_group_rows=row_group_rows)
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}], "default": True}]
    infos = {"default": dataset_info(shards, num_bytes)}
    if working_config:
        working, working_bytes = write_shards(files, out, _table_columns(files, working=True), max_shard_size=max_bytes,
                                              row_group_rows=row_group_rows, subdir="working")
        configs.append({"config_name": "working", "data_files": [{"split": "train", "path": "working/train-*"}]})
        infos["working"] = dataset_info(working, working_bytes)

    stats: dict[str, Counter[str]] = {"source": Counter(), "language": Counter(), "question_type": Counter()}
    doc_ids = set()
    answers = response_columns(columns)
    empty: Counter[str] = Counter()
    for path in files:
        table = pq.read_table(path, columns=["source", "language", "question_type", "doc_id", *answers])
        for key in stats:
            stats[key].update(table[key].to_pylist())
        doc_ids.update(table["doc_id"].to_pylist())
        for column in answers:
            empty[column] += sum(1 for value in table[column].to_pylist() if not value)
    n_rows = sum(stats["source"].values())
    manifests = {s.name: read_manifest(run_dir / s.name) for s in STAGES if (run_dir / s.name / MANIFEST).exists()}
    typed = {s: stage_stats(m) for s, m in manifests.items()}
    source_names = sorted(stats["source"])
    code = {lang for lang in stats["language"] if lang in CODE_LANGUAGES}  # programming languages: tags, body
    license_fields, license_text = _license(source_names, license)
    source_datasets = sorted({REGISTRY[n].hub_id for n in source_names if n in REGISTRY})
    card_data = DatasetCardData(
        language=sorted(l for l in stats["language"] if len(l) in (2, 3) and l not in CODE_LANGUAGES) or None,
        **license_fields,
        annotations_creators=["machine-generated"], language_creators=["found"],
        task_categories=["question-answering", "text-generation"], size_categories=[size_category(n_rows)],
        source_datasets=source_datasets or None, pretty_name=pretty_name, configs=configs,
        tags=["long-context", "synthetic", "longblocks", *(["code", *sorted(code)] if code else [])],
    )
    sources = [{"name": n, "rows": c, "license": REGISTRY[n].license if n in REGISTRY else (license or "not stated")}
               for n, c in stats["source"].most_common()]
    stages = [{"name": s, "consumed": m["inputs"]["consumed"], "kept": m["outputs"]["kept"],
               "rejected": ", ".join(f"{r} {n}" for r, n in m.get("rejected", {}).items())} for s, m in manifests.items()]
    final = manifests.get("respond") or manifests.get("judge") or manifests.get("generate") or {}
    sample = typed.get("sample") or SampleStats()
    from datasets.info import DatasetInfosDict

    DatasetInfosDict(infos).to_dataset_card_data(card_data)  # `dataset_info`, as push_to_hub writes it
    card = DatasetCard.from_template(
        card_data, template_path=str(CARD_TEMPLATE), pretty_name=pretty_name, repo_id=repo_id, folder=str(out),
        n_rows=n_rows,
        n_documents=len(doc_ids), sources=sources, languages=stats["language"].most_common(),
        question_types=stats["question_type"].most_common(), stages=stages,
        dedup=typed.get("dedup"), generation=_flat(typed.get("generate")),
        judge=_flat(typed.get("judge")) if "judge" in lineage(stage_dir) else None,  # only what was judged says so
        license_text=license_text, response_columns=answers,
        empty_responses=_empty_responses(stage_dir, answers, empty),
        length_bins=[(k, n, sample.unmet.get(k, 0)) for k, n in sample.kept_by_quota.items() if "/" in k],
        versions=final.get("versions", {"longblocks": "?"}),
    )
    card.save(out / "README.md")
    return {"rows": n_rows, "shards": [str(p.relative_to(out)) for p in shards], "license": license_fields.get("license_name", license_fields["license"]),
            "columns": columns}
