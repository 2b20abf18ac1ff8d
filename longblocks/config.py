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
from longblocks.manifest import STAGES
from longblocks.options import apply_overrides, build, read_file

QUESTION_TYPES = ("summary", "multi_part_retrieval", "multi_hop", "comprehensive", "classification")
PART_SIZE = 500  # inputs per committed part (the resume granularity): the one default of every stage


@dataclass(frozen=True)
class SelectConfig:
    tokenizer: str = "approx"  # local path or Hub id (the student's), or approx (words and punctuation; demos)
    min_tokens: int = 4096
    max_tokens: int = 131072
    max_repeated_line_fraction: float = 0.3
    min_alpha_fraction: float = 0.5
    max_mean_line_length: int = 400
    trust_remote_code: bool = False
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


@dataclass(frozen=True)
class GenerateConfig:
    question_types: tuple[str, ...] = QUESTION_TYPES
    n_questions: int = 3
    code_qa_language: str = "en"  # the natural language of QA pairs about source code

    def __post_init__(self) -> None:
        unknown = [t for t in self.question_types if t not in QUESTION_TYPES]
        if unknown or not self.question_types:
            raise LongBlocksError(f"unknown question type(s) {unknown}; choose from {', '.join(QUESTION_TYPES)}")
        if self.n_questions < 1:
            raise LongBlocksError("n_questions must be at least 1")


@dataclass
class SourceConfig:
    name: str = ""  # a registry name (`longblocks sources`) or local:PATH
    languages: list[str] | None = None
    per_language: int | None = None
    quotas: dict[str, int] | None = None
    # Per length bin, for each language: {"32k-64k" = 1000}; the quota counts documents that pass
    # selection (sampling selects as it streams), keyed "language/bin".
    bin_quotas: dict[str, int] | None = None
    seed: int = 0
    text_field: str | None = None
    include: list[str] = field(default_factory=list)
    recursive: bool = True
    hub_id: str | None = None
    revision: str | None = None
    max_bytes: int | None = None
    # Stack-Edu only: where file contents come from: s3 (Software Heritage's bucket) | s3://BUCKET | local:PATH
    stack_edu_contents: str = "s3"
    stack_edu_concurrency: int = 16

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

    model: str = ""
    backend: str = "openai"
    base_url: str | list[str] | None = None  # several: replicas of the model, requests spread over them
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 64  # openai: requests in flight
    batch_size: int = 8  # transformers: requests generated together; vllm: requests in the engine at once
    timeout: float = 1800.0
    max_retries: int = 6
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 16384
    seed: int | None = 0
    extra: dict[str, Any] = field(default_factory=dict)
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    cache: str | None = None  # sqlite path; default: requests.sqlite in the stage directory


@dataclass
class GenerateSection(BackendConfig):
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    n_questions: int = 3
    code_qa_language: str = "en"


@dataclass
class JudgeSection(BackendConfig):
    """The judge's endpoint and sampling, the same in every command that runs it (`filter`, `run`,
    `generate --judge-model`): temperature and top_p of the thinking-mode settings on the card of
    the paper's judge model (Qwen3-Next-80B-A3B-Thinking); its top_k=20 goes in `extra` for
    servers that take it (vLLM)."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 16384
    seed: int | None = 0
    local_span_window: int = 0
    mode: str = "text"  # text: verdicts parsed from one completion; choice: constrained yes/no per check


@dataclass
class ResponderConfig(BackendConfig):
    """One model answering every question over its document; `name` is its column suffix
    (`response_<name>`; default: the model's basename, as LongBlocks names its columns)."""

    name: str = ""

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

    responders: list[ResponderConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.responders = [r if isinstance(r, ResponderConfig) else ResponderConfig(**r) for r in self.responders]
        names = [r.name for r in self.responders]
        if len(set(names)) != len(names):
            raise LongBlocksError(f"respond: responder names must differ, got {names}")


@dataclass
class DedupSection:
    """`[dedup]`: the MinHash parameters (`DedupConfig`, what the survivors depend on) and how the
    work runs (hashing processes, where the LSH index lives), which does not change the output."""

    ngram: int = DedupConfig.ngram
    bands: int = DedupConfig.bands
    rows: int = DedupConfig.rows
    seed: int = DedupConfig.seed
    threshold: float = DedupConfig.threshold
    workers: int = 1
    lsh_storage: str = "memory"  # memory | redis (datasketch's storage, for corpora beyond one machine)
    redis_url: str | None = None

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

    enabled: bool = False  # true when the file has a [publish] section
    repo_id: str = ""
    folder: str = ""
    pretty_name: str = "LongBlocks"
    max_shard_size: str = "500MB"  # Arrow bytes per shard, as `datasets` sizes them
    row_group_rows: int = 100  # rows per parquet row group (the Hub's viewer wants small ones)
    working_config: bool = False  # also a `working` config with the provenance columns
    license: str | None = None
    push: bool = False
    private: bool = False
    revision: str | None = None  # the branch to push to (default: main)
    max_commit_files: int = 50
    max_commit_size: str = "2GB"


@dataclass
class RunSection:
    out: str = ""
    part_size: int = PART_SIZE

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


SECTIONS: dict[str, type] = {"run": RunSection, "source": SourceConfig, "select": SelectConfig,
                             "dedup": DedupSection, "generate": GenerateSection, "judge": JudgeSection,
                             "respond": RespondSection, "publish": PublishSection}
ALIASES = {"filter": "judge"}  # the design's name for the judge stage


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """A pipeline file plus `--section.key=value` overrides, every section, key and type checked
    (one line naming the file, the section and the key)."""
    path = Path(path)
    if not path.is_file():
        raise LongBlocksError(f"pipeline file {path} does not exist")
    try:
        data = apply_overrides(read_file(path), list(overrides or []))
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
    return PipelineConfig(out=Path(run.out), part_size=run.part_size, **sections)
