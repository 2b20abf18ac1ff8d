"""Every option of the pipeline in one light module: each stage's dataclass with its defaults and
its own validation, the `[section]`s of a pipeline file, and `load_pipeline`. Values only: sources
(`sources.open_source`) and backends (`backends.build_backend`) are built where they live. The
command line takes its defaults from here (a test compares every flag with its TOML key). Must not
run stages or import heavy libraries (the CLI imports it for `--help`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from longblocks.errors import LongBlocksError
from longblocks.options import apply_overrides, build, read_file

QUESTION_TYPES = ("summary", "multi_part_retrieval", "multi_hop", "comprehensive", "classification")
PART_SIZE = 500  # inputs per committed part (the resume granularity): the one default of every stage


@dataclass(frozen=True)
class SelectConfig:
    """`[select]`: keep documents inside [min_tokens, max_tokens] that look self-contained."""

    tokenizer: str = "approx"  # token counts: local path or Hub id (the student's), or approx (words and punctuation; demos)
    min_tokens: int = 4096  # keep documents with at least this many tokens
    max_tokens: int = 131072  # keep documents with at most this many tokens
    max_repeated_line_fraction: float = 0.3  # prose: reject as boilerplate above this fraction of repeated lines
    min_alpha_fraction: float = 0.5  # prose: reject below this fraction of letters among visible characters
    max_mean_line_length: int = 400  # code: reject as minified above this mean line length
    trust_remote_code: bool = False  # run the tokenizer repository's own code (off unless asked)
    # Length bins in tokens, as edges: [8k, 16k), [16k, 32k), [32k, 64k), [64k, 128k]; quotas per bin
    # (`[source] bin_quotas`) count documents by the bin their token count falls in.
    bins: tuple[int, ...] = (8192, 16384, 32768, 65536, 131072)
    batch_size: int = 32  # documents tokenized per call (the output does not depend on it)

    def __post_init__(self) -> None:
        if self.min_tokens < 0 or self.max_tokens < self.min_tokens:
            raise LongBlocksError(f"need 0 <= min_tokens <= max_tokens, got [{self.min_tokens}, {self.max_tokens}]")
        object.__setattr__(self, "bins", tuple(self.bins))
        if len(self.bins) < 2 or list(self.bins) != sorted(set(self.bins)):
            raise LongBlocksError(f"select.bins must be at least two increasing token counts, got {list(self.bins)}")

    def bin_labels(self) -> list[str]:
        return [f"{_k(lo)}-{_k(hi)}" for lo, hi in zip(self.bins, self.bins[1:])]

    def bin_of(self, n_tokens: int) -> str | None:
        """The label of the bin `n_tokens` falls in (the last bin includes its upper edge)."""
        for label, lo, hi in zip(self.bin_labels(), self.bins, self.bins[1:]):
            if lo <= n_tokens < hi or (hi == self.bins[-1] and n_tokens == hi):
                return label
        return None


def _k(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


@dataclass(frozen=True)
class DedupConfig:
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1
    threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.bands < 1 or self.rows < 1:
            raise LongBlocksError("ngram, bands and rows must be positive")
        if not 0.0 < self.threshold <= 1.0:
            raise LongBlocksError(f"threshold must be in (0, 1], got {self.threshold}")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def detection_probability_at_threshold(self) -> float:
        """P(candidate) for a pair at exactly `threshold` Jaccard: 1 - (1 - s^r)^b."""
        return 1.0 - (1.0 - self.threshold**self.rows) ** self.bands


@dataclass
class SourceConfig:
    """`[source]`: the corpus documents are sampled from, with a seed and per-language quotas."""

    name: str = ""  # a registry name (`longblocks sources`) or local:PATH (jsonl, json, parquet, text files)
    languages: list[str] | None = None  # languages to sample, e.g. en,de (with per_language)
    per_language: int | None = None  # documents to keep per language
    quotas: dict[str, int] | None = None  # documents per language, e.g. en=1000,de=200 (instead of the two above)
    # Per length bin, for each language: {"32k-64k" = 1000}; the quota counts documents that pass
    # selection (sampling selects as it streams), keyed "language/bin".
    bin_quotas: dict[str, int] | None = None
    seed: int = 0  # sampling seed: the same seed draws the same documents
    text_field: str | None = None  # the column holding the text (default: the source's)
    include: list[str] = field(default_factory=list)  # local: only files matching these globs
    recursive: bool = True  # local: also read the folder's subfolders
    hub_id: str | None = None  # read the source from this dataset id or path instead (a mirror)
    revision: str | None = None  # the Hub dataset's revision (branch, tag or commit)
    max_bytes: int | None = None  # reject raw documents larger than this many bytes (default: the source's)
    # Stack-Edu only: where file contents come from: s3 (Software Heritage's bucket) | s3://BUCKET | local:PATH
    stack_edu_contents: str = "s3"
    stack_edu_concurrency: int = 16  # Stack-Edu only: contents fetched at once

    def resolved_quotas(self) -> dict[str, int] | None:
        if self.bin_quotas:
            languages = self.languages or sorted(self.quotas or ())
            if not languages:
                raise LongBlocksError("source.bin_quotas needs source.languages")
            return {f"{lang}/{label}": n for lang in languages for label, n in self.bin_quotas.items()}
        if self.quotas:
            return dict(self.quotas)
        if self.languages:
            if self.per_language is None:
                raise LongBlocksError("source.languages needs source.per_language (or give source.quotas)")
            return {lang: self.per_language for lang in self.languages}
        return None


@dataclass
class BackendConfig:
    """An LLM endpoint and its sampling; `model` empty means the stage is not run."""

    model: str = ""  # served model name (openai), or a path or Hub id (transformers, vllm); empty: not run
    backend: str = "openai"  # openai (any OpenAI-compatible server) | transformers (in-process, CPU too) | vllm (in-process, GPU)
    base_url: str | list[str] | None = None  # openai: server URL, e.g. http://127.0.0.1:8000/v1; several: replicas, requests spread over them
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the API key (never logged or stored)
    concurrency: int = 64  # openai: requests in flight
    batch_size: int = 8  # transformers: requests generated together; vllm: requests in the engine at once
    timeout: float = 1800.0  # seconds per request (thinking models write long outputs)
    max_retries: int = 6  # retries on 429, 5xx, connection errors and timeouts, with backoff
    temperature: float = 0.6  # sampling temperature (always sent)
    top_p: float = 0.95  # nucleus sampling top_p
    max_tokens: int = 16384  # max_tokens per completion, reasoning included
    # the sampling seed, sent only when set (none by default): vLLM's CPU engine dies on a seeded request
    # whose prompt is prefilled in more than one chunk, and a seed makes one request repeatable, not a run
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more sampling fields sent as they are, e.g. top_k=20 (vLLM)
    tensor_parallel_size: int = 1  # vllm: GPUs per model
    max_model_len: int | None = None  # vllm: the engine's context length (default: the model's)
    cache: str | None = None  # the sqlite request cache (default: STAGE.requests.sqlite beside the stage directory)


@dataclass
class GenerateSection(BackendConfig):
    """`[generate]`: the generator's endpoint and sampling, and the pairs each document is asked for."""

    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))  # spread over documents, one per document
    n_questions: int = 3  # pairs asked per document (one request per document)
    code_qa_language: str = "en"  # the natural language of pairs about source code

    def __post_init__(self) -> None:
        unknown = [t for t in self.question_types if t not in QUESTION_TYPES]
        if unknown or not self.question_types:
            raise LongBlocksError(f"unknown question type(s) {unknown}; choose from {', '.join(QUESTION_TYPES)}")
        if self.n_questions < 1:
            raise LongBlocksError("n_questions must be at least 1")


@dataclass
class JudgeSection(BackendConfig):
    """The judge's endpoint and sampling, the same in every command that runs it (`filter`, `run`,
    `generate --judge.model`): temperature and top_p of the thinking-mode settings on the card of
    the paper's judge model (Qwen3-Next-80B-A3B-Thinking); its top_k=20 goes in `extra` for
    servers that take it (vLLM)."""

    temperature: float = 0.6  # the judge's sampling temperature
    top_p: float = 0.95  # the judge's nucleus sampling top_p
    max_tokens: int = 16384  # the judge's max_tokens per completion, reasoning included
    local_span_window: int = 0  # also reject answers whose words all fit in one window of this many document words (0: off)
    mode: str = "text"  # text: verdicts parsed from one completion; choice: constrained yes/no per check


@dataclass
class ResponderConfig(BackendConfig):
    """One model answering every question over its document; `name` is its column suffix
    (`response_<name>`; default: the model's basename, as LongBlocks names its columns)."""

    name: str = ""  # the column suffix: response_NAME (default: the model's basename)

    def __post_init__(self) -> None:
        if not self.model:
            raise LongBlocksError("a responder needs model = \"...\"")
        from longblocks.records import response_name

        try:
            self.name = response_name(self.name or self.model.replace("{smollm2}", "SmolLM2-135M-Instruct"))
        except ValueError as exc:
            raise LongBlocksError(str(exc)) from None


@dataclass
class RespondSection:
    """The responders of the respond stage (none: the stage is not run)."""

    responders: list[ResponderConfig] = field(default_factory=list)  # each answers every question: [[respond.responders]]
    # answer a generate stage although a judge stage beside it holds what the judge kept (refused otherwise)
    skip_judge: bool = False

    def __post_init__(self) -> None:
        self.responders = [r if isinstance(r, ResponderConfig) else ResponderConfig(**r) for r in self.responders]
        names = [r.name for r in self.responders]
        if len(set(names)) != len(names):
            raise LongBlocksError(f"respond: responder names must differ, got {names}")


@dataclass
class DedupSection:
    """`[dedup]`: the MinHash parameters (`DedupConfig`, what the survivors depend on) and how the
    work runs (hashing processes, where the LSH index lives), which does not change the output."""

    ngram: int = DedupConfig.ngram  # shingle size in words (tokens for code)
    bands: int = DedupConfig.bands  # LSH bands
    rows: int = DedupConfig.rows  # LSH rows per band (num_perm = bands x rows)
    seed: int = DedupConfig.seed  # MinHash permutation seed
    threshold: float = DedupConfig.threshold  # the exact Jaccard a candidate pair needs to count as a duplicate
    workers: int = 1  # hashing processes (the survivors do not depend on it)
    lsh_storage: str = "memory"  # memory | redis (datasketch's storage, for corpora beyond one machine)
    redis_url: str | None = None  # the Redis URL for lsh_storage = redis

    def __post_init__(self) -> None:
        self.config()  # its own checks
        if self.workers < 1:
            raise LongBlocksError("dedup.workers must be at least 1")
        if self.lsh_storage not in ("memory", "redis"):
            raise LongBlocksError(f"dedup.lsh_storage must be memory or redis, got {self.lsh_storage!r}")

    def config(self) -> DedupConfig:
        return DedupConfig(**{f.name: getattr(self, f.name) for f in fields(DedupConfig)})


@dataclass
class PublishSection:
    """Hub-ready shards and card written after the last stage, when the pipeline file has a
    `[publish]` section (`folder` empty: `<out>/publish`). `repo_id` is the Hub repo the card's
    loading snippet names (empty: the card shows how to load the folder) and `push` uploads to
    (token from HF_TOKEN). `license`: the dataset's (needed for local sources; else unknown)."""

    enabled: bool = False  # publish after the last stage: a file with a [publish] section does, unless it says false
    repo_id: str = ""  # the Hub dataset repo, ORG/NAME (empty: the card shows how to load the local folder)
    folder: str = ""  # where shards and card go (empty: OUT/publish)
    pretty_name: str = "LongBlocks"  # the dataset's name in the card
    max_shard_size: str = "500MB"  # Arrow bytes per shard, as `datasets` sizes them
    row_group_rows: int = 100  # rows per parquet row group (the Hub's viewer wants small ones)
    working_config: bool = False  # also a `working` config with the provenance columns
    # publish pairs the judge never saw although the run has a judge stage (refused otherwise; the card
    # then does not say the pairs were judged)
    skip_judge: bool = False
    # the license id (default: cc-by-sa-4.0 with share-alike sources, cc-by-4.0 with other Hub sources;
    # a local source's must be stated)
    license: str | None = None
    push: bool = False  # upload after writing (token from HF_TOKEN or `hf auth login`; HF_ENDPOINT honoured)
    private: bool = False  # create the Hub repo as private
    revision: str | None = None  # the branch to push to (default: main)
    max_commit_files: int = 50  # files per commit
    max_commit_size: str = "2GB"  # bytes per commit


EXECUTOR_KINDS = ("local", "ray", "slurm")
PER_STAGE = ("tasks", "cpus", "gpus", "memory_gb", "retries")


@dataclass
class ExecutorSection:
    """`[executor]`: where a run's stages run. `local` (the default) as one process, as always; with
    tasks > 1, or on `ray` or `slurm`, each stage runs as `tasks` shards of its input files, each
    into its own folder under the stage's, resumable one by one."""

    kind: str = "local"  # local | ray (Ray Core tasks) | slurm (a submitit job array per stage)
    tasks: int = 1  # tasks per stage (a stage with fewer input files has fewer)
    workers: int = 1  # local: tasks at once, in processes; ray: CPUs of a local cluster started for the run
    cpus: int = 1  # CPUs per task
    gpus: float = 0  # GPUs per task (an in-process vLLM stage: its tensor parallel size)
    memory_gb: float = 0  # memory per task (0: the engine's default)
    retries: int = 2  # a task whose worker or node died is run again, resuming from its committed parts
    address: str = ""  # ray: auto (an existing cluster) or ray://HOST:PORT; empty: a local cluster for the run
    slurm_cluster: str = ""  # slurm: empty for submitit's choice (Slurm where there is one); local, debug
    slurm_partition: str = ""  # slurm: the partition to submit to
    slurm_time_min: int = 240  # slurm: a job's time limit in minutes
    slurm_folder: str = ""  # slurm: submitit's logs and pickles (empty: OUT/<stage>/.slurm)
    # per-stage overrides of tasks, cpus, gpus, memory_gb, retries: { generate = { tasks = 4, gpus = 1 } }
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTOR_KINDS:
            raise LongBlocksError(f"executor.kind must be one of {', '.join(EXECUTOR_KINDS)}, got {self.kind!r}")
        if self.tasks < 1 or self.workers < 1 or self.retries < 0:
            raise LongBlocksError("executor: tasks and workers must be >= 1, retries >= 0")
        names = {spec.name for spec in STAGES}
        for stage, values in self.stages.items():
            if stage not in names:
                raise LongBlocksError(f"executor.stages: unknown stage {stage!r}; the stages are {', '.join(sorted(names))}")
            unknown = sorted(set(values) - set(PER_STAGE))
            if unknown:
                raise LongBlocksError(f"executor.stages.{stage}: unknown key(s) {unknown}; valid: {', '.join(PER_STAGE)}")

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The stage's tasks and resources: its overrides over the section's values."""
        return {key: self.stages.get(stage, {}).get(key, getattr(self, key)) for key in PER_STAGE}


@dataclass
class RunSection:
    """`[run]`: where the run goes and how often it commits."""

    out: str = ""  # the run directory: each stage writes OUT/<stage>
    part_size: int = PART_SIZE  # inputs per committed part (the resume granularity)

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise LongBlocksError("run.part_size must be at least 1")


@dataclass
class PipelineConfig:
    out: Path
    source: SourceConfig
    select: SelectConfig
    dedup: DedupSection = field(default_factory=DedupSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    judge: JudgeSection = field(default_factory=JudgeSection)
    respond: RespondSection = field(default_factory=RespondSection)
    publish: PublishSection = field(default_factory=PublishSection)
    part_size: int = PART_SIZE
    executor: ExecutorSection = field(default_factory=ExecutorSection)


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline, named here and nowhere else: `name` is its directory under the
    run, its manifest's `stage` and its command; `section` the pipeline file's table it is built
    from (`config`, by `<module>.stage(section)`); `also` other sections its builder takes;
    `reads`/`writes` what flows in and out (documents, QA records; none: a source); `runs_when`
    the section key that must be set for the pipeline to run it; `stats` the name of its manifest
    statistics' type in `longblocks.manifest`."""

    name: str
    section: str
    config: type
    module: str
    reads: str | None
    writes: str
    runs_when: str | None = None
    also: tuple[str, ...] = ()
    stats: str = ""

    def enabled(self, section: Any) -> bool:
        return self.runs_when is None or bool(getattr(section, self.runs_when))


STAGES: tuple[StageSpec, ...] = (
    StageSpec("sample", "source", SourceConfig, "longblocks.sample", None, "documents", also=("select",),
              stats="SampleStats"),
    StageSpec("select", "select", SelectConfig, "longblocks.select", "documents", "documents"),
    StageSpec("dedup", "dedup", DedupSection, "longblocks.dedup", "documents", "documents", stats="DedupStats"),
    StageSpec("generate", "generate", GenerateSection, "longblocks.qa", "documents", "qa", "model", stats="LLMStats"),
    StageSpec("judge", "judge", JudgeSection, "longblocks.judge", "qa", "qa", "model", stats="LLMStats"),
    StageSpec("respond", "respond", RespondSection, "longblocks.respond", "qa", "qa", "responders",
              stats="RespondStats"),
)


def stage_spec(name: str) -> StageSpec:
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise LongBlocksError(f"unknown stage {name!r}; the stages are {', '.join(s.name for s in STAGES)}")


def build_stage(name: str, section: Any, **extra: Any) -> Any:
    """The stage `name` built from its section by its module's one entry, `stage(section)`, and named
    here (`extra`: the other sections its builder takes, or a replacement for what it would build
    itself, such as a backend in tests). The module is imported only now (this one stays light)."""
    import importlib

    spec = stage_spec(name)
    stage = importlib.import_module(spec.module).stage(section, **extra)
    stage.name = spec.name
    return stage


SECTIONS: dict[str, type] = {"run": RunSection, **{spec.section: spec.config for spec in STAGES},
                             "publish": PublishSection, "executor": ExecutorSection}
ALIASES = {"filter": "judge"}  # the design's name for the judge stage


def pipeline_tables(path: str | Path) -> dict[str, Any]:
    """A pipeline file's tables by section name ([filter] read as [judge]); an unknown section, or
    the same section twice, is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise LongBlocksError(f"pipeline file {path} does not exist")
    try:
        data = read_file(path)
    except ValueError as exc:
        raise LongBlocksError(str(exc)) from None
    for alias, name in ALIASES.items():
        if alias in data:
            if name in data:
                raise LongBlocksError(f"{path}: [{alias}] and [{name}] are the same section; keep one")
            data[name] = data.pop(alias)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise LongBlocksError(f"{path}: unknown section(s) {unknown}; valid sections: {', '.join(SECTIONS)} "
                              f"([filter] is [judge])")
    return data


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """A pipeline file plus `--section.key=value` overrides, every section, key and type checked
    (one line naming the file and section, or the flag, and the key)."""
    path = Path(path)
    data = pipeline_tables(path)
    try:
        apply_overrides(data, list(overrides or []))
    except ValueError as exc:
        raise LongBlocksError(str(exc)) from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise LongBlocksError(f"unknown section(s) {unknown} on the command line; valid sections: {', '.join(SECTIONS)}")
    sections = {name: build(cls, data.get(name, {}), f"{path} [{name}]", LongBlocksError)
                for name, cls in SECTIONS.items() if name != "source" or "source" in data}
    if not sections["run"].out:
        raise LongBlocksError(f"{path}: [run] needs out = \"DIR\"")
    if "source" not in sections or not sections["source"].name:
        raise LongBlocksError(f"{path}: [source] needs name = \"arxiv\" | ... | \"local:PATH\"")
    run = sections.pop("run")
    if "publish" in data:
        sections["publish"].enabled = data["publish"].get("enabled", True)
    if sections["publish"].push and not sections["publish"].repo_id:
        raise LongBlocksError(f"{path} [publish]: push = true needs repo_id = \"ORG/NAME\"")
    if sections["publish"].repo_id:  # checked before any stage runs, not after hours of them
        from longblocks.push import check_repo_id

        try:
            check_repo_id(sections["publish"].repo_id)
        except LongBlocksError as exc:
            raise LongBlocksError(f"{path} [publish]: {exc}") from None
    return PipelineConfig(out=Path(run.out), part_size=run.part_size, **sections)
