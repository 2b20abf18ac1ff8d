"""`longblocks` command line: wires arguments to the stage functions and shows progress.
Must not hold pipeline logic; every command calls one function of the package.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from longblocks.errors import LongBlocksError

app = typer.Typer(
    help="LongBlocks: build long-context QA datasets (sample -> select -> dedup -> generate -> judge -> publish). "
    "Every stage reads and writes a directory of parquet shards and resumes when re-run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """User errors become one red line and exit status 2; Ctrl-C says how to resume."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LongBlocksError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: committed parts are kept; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int | None], Callable[..., None]]]:
    """A factory of rich progress tasks: `bar = make("select", total); bar(advance=n, kept=..)`."""
    columns = [
        TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:

        def make(name: str, total: int | None) -> Callable[..., None]:
            task = progress.add_task(name, total=total, stats="")

            def update(*, advance: int = 0, completed: int | None = None, **stats: int) -> None:
                fields = "  ".join(f"{k} {v}" for k, v in stats.items())
                kwargs: dict[str, Any] = {"advance": advance}
                if completed is not None:
                    kwargs = {"completed": completed}
                progress.update(task, **kwargs, **({"stats": fields} if fields else {}))

            return update

        yield make


def parse_quotas(value: str | None) -> dict[str, int] | None:
    if not value:
        return None
    quotas = {}
    for item in value.split(","):
        lang, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise LongBlocksError(f"--quota expects LANG=N[,LANG=N...], got {item!r}")
        quotas[lang.strip()] = int(count)
    return quotas


def print_manifest(manifest: dict[str, Any], out: Path) -> None:
    rejected = manifest.get("rejected", {})
    console.print(
        f"[green]{manifest['stage']}[/]: kept {manifest['outputs']['kept']}, rejected {sum(rejected.values())} "
        f"of {manifest['inputs']['consumed']} -> {out}"
    )
    for reason, n in rejected.items():
        console.print(f"  rejected {reason}: {n}")


SourceOpt = Annotated[str, typer.Option("--source", "-s", help="Registry name (see `longblocks sources`) or local:PATH.")]
LanguagesOpt = Annotated[str | None, typer.Option(help="Comma-separated languages, e.g. en,de (with --per-language).")]
PerLanguageOpt = Annotated[int | None, typer.Option(help="Documents to keep per language.")]
QuotaOpt = Annotated[str | None, typer.Option(help="Per-language quotas, e.g. en=1000,de=200 (overrides --languages).")]
SeedOpt = Annotated[int, typer.Option(help="Sampling seed: same seed, same documents.")]
TextFieldOpt = Annotated[str | None, typer.Option(help="Column holding the text (default: the source's).")]
IncludeOpt = Annotated[list[str] | None, typer.Option(help="local: only files matching this glob (repeatable).")]
HubIdOpt = Annotated[str | None, typer.Option(help="Read the source from this dataset id or path instead (mirror).")]
PartSizeOpt = Annotated[int, typer.Option(help="Inputs per committed part (the resume granularity).")]
OverwriteOpt = Annotated[bool, typer.Option(help="Discard an existing output directory instead of resuming it.")]
TokenizerOpt = Annotated[str, typer.Option(help="Tokenizer for token counts: local path or Hub id (the student's), or 'approx'.")]
MinTokOpt = Annotated[int, typer.Option(help="Keep documents with at least this many tokens.")]
MaxTokOpt = Annotated[int, typer.Option(help="Keep documents with at most this many tokens.")]
RemoteCodeOpt = Annotated[bool, typer.Option(help="Allow the tokenizer's custom code (off by default).")]


def _source_config(source: str, languages: str | None, per_language: int | None, quota: str | None, seed: int,
                   text_field: str | None, include: list[str] | None, hub_id: str | None) -> Any:
    from longblocks.pipeline import SourceConfig

    return SourceConfig(
        name=source, languages=languages.split(",") if languages else None, per_language=per_language,
        quotas=parse_quotas(quota), seed=seed, text_field=text_field, include=include or [], hub_id=hub_id,
    )


@app.command()
@friendly_errors
def sources() -> None:
    """List the registered corpus sources with their Hub ids, languages and licenses."""
    from longblocks.sources import REGISTRY

    table = Table(title="LongBlocks sources (plus local:PATH for jsonl, parquet and folders of files)")
    for column in ("name", "hub dataset", "languages", "text field", "license", "notes"):
        table.add_column(column, overflow="fold")
    for spec in REGISTRY.values():
        langs = sorted(spec.languages)
        shown = ", ".join(langs[:8]) + (f" (+{len(langs) - 8})" if len(langs) > 8 else "")
        table.add_row(spec.name, spec.hub_id, shown, spec.text_field, spec.license, spec.notes)
    Console().print(table)


@app.command("sample")
@friendly_errors
def sample_cmd(
    source: SourceOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output stage directory.")],
    languages: LanguagesOpt = None,
    per_language: PerLanguageOpt = None,
    quota: QuotaOpt = None,
    seed: SeedOpt = 0,
    text_field: TextFieldOpt = None,
    include: IncludeOpt = None,
    hub_id: HubIdOpt = None,
    part_size: PartSizeOpt = 1000,
    overwrite: OverwriteOpt = False,
) -> None:
    """Sample documents from a source into OUT (parquet parts + rejected/ + manifest.json)."""
    from longblocks.sample import sample

    cfg = _source_config(source, languages, per_language, quota, seed, text_field, include, hub_id)
    quotas = cfg.resolved_quotas()
    resolved = cfg.source()
    with progress_bars() as make:
        bar = make("sample", sum(quotas.values()) if quotas else None)
        manifest = sample(resolved, out, quotas=quotas, seed=seed, part_size=part_size, overwrite=overwrite,
                          on_progress=lambda c: bar(completed=c["kept"], **c))
    print_manifest(manifest, out)


@app.command("select")
@friendly_errors
def select_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="Input: a stage directory or parquet shards.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output stage directory.")],
    tokenizer: TokenizerOpt,
    min_tokens: MinTokOpt = 4096,
    max_tokens: MaxTokOpt = 131072,
    part_size: PartSizeOpt = 1000,
    batch_size: Annotated[int, typer.Option(help="Documents tokenized per call.")] = 32,
    trust_remote_code: RemoteCodeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Keep documents within [--min-tokens, --max-tokens] that look self-contained; record why others go."""
    from longblocks.select import SelectConfig, select

    cfg = SelectConfig(tokenizer=tokenizer, min_tokens=min_tokens, max_tokens=max_tokens, trust_remote_code=trust_remote_code)
    with progress_bars() as make:
        bar: dict[str, Any] = {}
        manifest = select(inp, out, cfg, part_size=part_size, batch_size=batch_size, overwrite=overwrite,
                          on_start=lambda n: bar.update(update=make("select", n)),
                          on_progress=lambda n: bar["update"](advance=n))
    print_manifest(manifest, out)


@app.command("dedup")
@friendly_errors
def dedup_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="Input: a stage directory or parquet shards of documents.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output stage directory.")],
    threshold: Annotated[float, typer.Option(help="Exact Jaccard a candidate pair needs to count as a duplicate.")] = 0.8,
    ngram: Annotated[int, typer.Option(help="Shingle size in words (tokens for code).")] = 5,
    bands: Annotated[int, typer.Option(help="LSH bands.")] = 14,
    rows: Annotated[int, typer.Option(help="LSH rows per band (num_perm = bands x rows).")] = 8,
    seed: Annotated[int, typer.Option(help="MinHash permutation seed.")] = 1,
    workers: Annotated[int, typer.Option(help="Hashing processes (the survivors do not depend on it).")] = 1,
    lsh_storage: Annotated[str, typer.Option(help="memory, or redis for corpora beyond one machine.")] = "memory",
    redis_url: Annotated[str | None, typer.Option(help="Redis URL for --lsh-storage redis.")] = None,
    part_size: PartSizeOpt = 1000,
    overwrite: OverwriteOpt = False,
) -> None:
    """Remove near-duplicate documents: MinHash LSH candidates, exact Jaccard check, one survivor per cluster."""
    from longblocks.dedup import DedupConfig, dedup
    from longblocks.pipeline import phase_progress

    cfg = DedupConfig(ngram=ngram, bands=bands, rows=rows, seed=seed, threshold=threshold)
    with progress_bars() as make:
        manifest = dedup(inp, out, cfg, workers=workers, storage=lsh_storage, redis_url=redis_url,
                         part_size=part_size, overwrite=overwrite, on_progress=phase_progress(make))
    print_manifest(manifest, out)
    report = manifest["dedup"]
    console.print(f"  clusters {report['clusters']}, candidate pairs {report['candidate_pairs']}, "
                  f"verified {report['verified_pairs']} (datasketch {report['datasketch_version']}, {report['hashing_scheme']})")


@app.command()
@friendly_errors
def generate(
    source: SourceOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (one sub-directory per stage).")],
    languages: LanguagesOpt = None,
    per_language: PerLanguageOpt = None,
    quota: QuotaOpt = None,
    seed: SeedOpt = 0,
    text_field: TextFieldOpt = None,
    include: IncludeOpt = None,
    hub_id: HubIdOpt = None,
    tokenizer: TokenizerOpt = "approx",
    min_tokens: MinTokOpt = 4096,
    max_tokens: MaxTokOpt = 131072,
    part_size: PartSizeOpt = 1000,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run the pipeline stages available so far (sample -> select) for one source into a run directory."""
    from longblocks.pipeline import PipelineConfig, run_pipeline
    from longblocks.select import SelectConfig

    cfg = PipelineConfig(
        out=out,
        source=_source_config(source, languages, per_language, quota, seed, text_field, include, hub_id),
        select=SelectConfig(tokenizer=tokenizer, min_tokens=min_tokens, max_tokens=max_tokens),
        part_size=part_size,
    )
    with progress_bars() as make:
        manifests = run_pipeline(cfg, overwrite=overwrite, progress=make)
    for stage, manifest in manifests.items():
        print_manifest(manifest, out / stage)


@app.command()
@friendly_errors
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file, e.g. pipelines/quickstart.toml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: section.key=VALUE (TOML value).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run every stage a pipeline file declares; re-running resumes each stage where it stopped."""
    import tomllib

    from longblocks.pipeline import load_pipeline, run_pipeline

    overrides: dict[str, Any] = {}
    for item in set_ or []:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise LongBlocksError(f"--set expects section.key=VALUE, got {item!r}")
        try:
            overrides[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = raw  # a bare string
    cfg = load_pipeline(pipeline, overrides)
    with progress_bars() as make:
        manifests = run_pipeline(cfg, overwrite=overwrite, progress=make)
    for stage, manifest in manifests.items():
        print_manifest(manifest, cfg.out / stage)


@app.command()
@friendly_errors
def inspect(stage_dir: Annotated[Path, typer.Argument(help="A stage directory.")]) -> None:
    """Print a stage directory's manifest: counts kept and rejected per reason, parameters, versions."""
    from longblocks.store import MANIFEST, read_manifest

    if not (stage_dir / MANIFEST).exists():
        raise LongBlocksError(f"{stage_dir} has no {MANIFEST}: not a stage directory")
    manifest = read_manifest(stage_dir)
    print_manifest(manifest, stage_dir)
    Console().print_json(json.dumps({k: manifest[k] for k in ("status", "parameters", "versions")}))


if __name__ == "__main__":
    app()
