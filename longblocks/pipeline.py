"""A whole LongBlocks run declared in one TOML file (`pipelines/*.toml`): which source, which
stages with which parameters, where the run directory is. Must not implement stages: it only
composes the stage functions, in order, each resuming from its own directory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longblocks.dedup import DedupConfig, dedup
from longblocks.backends import RequestCache, Sampling, make_backend
from longblocks.errors import LongBlocksError
from longblocks.judge import filter_qa
from longblocks.qa import QUESTION_TYPES, GenerateConfig, generate_qa
from longblocks.sample import sample
from longblocks.select import SelectConfig, select
from longblocks.sources import resolve_source

STAGES = ("sample", "select", "dedup", "generate", "filter")


@dataclass
class SourceConfig:
    name: str
    languages: list[str] | None = None
    per_language: int | None = None
    quotas: dict[str, int] | None = None
    seed: int = 0
    text_field: str | None = None
    include: list[str] = field(default_factory=list)
    recursive: bool = True
    hub_id: str | None = None
    revision: str | None = None
    max_bytes: int | None = None

    def resolved_quotas(self) -> dict[str, int] | None:
        if self.quotas:
            return dict(self.quotas)
        if self.languages:
            if self.per_language is None:
                raise LongBlocksError("source.languages needs source.per_language (or give source.quotas)")
            return {lang: self.per_language for lang in self.languages}
        return None

    def source(self) -> Any:
        options: dict[str, Any] = {"include": self.include, "recursive": self.recursive, "revision": self.revision}
        if self.text_field:
            options["text_field"] = self.text_field
        if self.max_bytes:
            options["max_bytes"] = self.max_bytes
        if self.hub_id:
            options["hub_id"] = self.hub_id
        return resolve_source(self.name, **options)


@dataclass
class BackendConfig:
    """An LLM endpoint and its sampling; `model` empty means the stage is not run."""

    model: str = ""
    backend: str = "openai"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 64
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

    def build(self, stage_dir: Path) -> Any:
        sampling = Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, seed=self.seed,
                            extra=dict(self.extra))
        cache = RequestCache(Path(self.cache) if self.cache else stage_dir.parent / f"{stage_dir.name}.requests.sqlite")
        return make_backend(
            self.backend, self.model, base_url=self.base_url, api_key_env=self.api_key_env, sampling=sampling,
            concurrency=self.concurrency, timeout=self.timeout, max_retries=self.max_retries, cache=cache,
            tensor_parallel_size=self.tensor_parallel_size, max_model_len=self.max_model_len,
        )


@dataclass
class GenerateSection(BackendConfig):
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES))
    n_questions: int = 3


@dataclass
class FilterSection(BackendConfig):
    local_span_window: int = 0


@dataclass
class PipelineConfig:
    out: Path
    source: SourceConfig
    select: SelectConfig
    dedup: DedupConfig = field(default_factory=DedupConfig)
    dedup_workers: int = 1
    generate: GenerateSection = field(default_factory=GenerateSection)
    filter: FilterSection = field(default_factory=FilterSection)
    part_size: int = 1000


def _section(data: dict[str, Any], name: str, cls: type, **defaults: Any) -> Any:
    values = {**defaults, **data.get(name, {})}
    try:
        return cls(**values)
    except TypeError as exc:
        raise LongBlocksError(f"[{name}]: {exc}") from None


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Parse a pipeline file; `overrides` maps "section.key" to a value (from the command line)."""
    path = Path(path)
    if not path.is_file():
        raise LongBlocksError(f"pipeline file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise LongBlocksError(f"{path}: invalid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    unknown = set(data) - {"run", "source", *STAGES}
    if unknown:
        raise LongBlocksError(f"{path}: unknown section(s) {sorted(unknown)}; expected run, source, {', '.join(STAGES)}")
    run = data.get("run", {})
    if "out" not in run:
        raise LongBlocksError(f"{path}: [run] needs out = \"DIR\"")
    if "name" not in data.get("source", {}):
        raise LongBlocksError(f"{path}: [source] needs name = \"arxiv\" | ... | \"local:PATH\"")
    return PipelineConfig(
        out=Path(run["out"]),
        source=_section(data, "source", SourceConfig),
        select=_section(data, "select", SelectConfig, tokenizer="approx"),
        dedup=_section({"dedup": {k: v for k, v in data.get("dedup", {}).items() if k != "workers"}}, "dedup", DedupConfig),
        dedup_workers=int(data.get("dedup", {}).get("workers", 1)),
        generate=_section(data, "generate", GenerateSection),
        filter=_section(data, "filter", FilterSection),
        part_size=int(run.get("part_size", 1000)),
    )


ProgressFactory = Callable[[str, int | None], Callable[..., None]]


def phase_progress(make: ProgressFactory) -> Callable[..., None]:
    """Adapter for stages with phases, `on_progress(phase, advance, total, **stats)`: one bar per
    phase, the stats (pairs kept, requests in flight...) shown beside it."""
    bars: dict[str, Callable[..., None]] = {}

    def update(phase: str, advance: int, total: int | None, **stats: int) -> None:
        if phase not in bars:
            bars[phase] = make(phase, total)
        bars[phase](advance=advance, **stats)

    return update


def run_pipeline(cfg: PipelineConfig, *, overwrite: bool = False, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Run every stage in order; each stage's directory is `<out>/<stage>` and resumes on restart."""
    manifests: dict[str, Any] = {}
    quotas = cfg.source.resolved_quotas()
    source = cfg.source.source()
    sample_bar = progress("sample", sum(quotas.values()) if quotas else None) if progress else None
    manifests["sample"] = sample(
        source, cfg.out / "sample", quotas=quotas, seed=cfg.source.seed, part_size=cfg.part_size,
        overwrite=overwrite, on_progress=(lambda c: sample_bar(completed=c["kept"], **c)) if sample_bar else None,
    )
    select_bar: dict[str, Any] = {}
    manifests["select"] = select(
        cfg.out / "sample", cfg.out / "select", cfg.select, part_size=cfg.part_size, overwrite=overwrite,
        on_start=(lambda n: select_bar.update(advance=progress("select", n))) if progress else None,
        on_progress=(lambda n: select_bar["advance"](advance=n)) if progress else None,
    )
    manifests["dedup"] = dedup(
        cfg.out / "select", cfg.out / "dedup", cfg.dedup, workers=cfg.dedup_workers, part_size=cfg.part_size,
        overwrite=overwrite, on_progress=phase_progress(progress) if progress else None,
    )
    if not cfg.generate.model:
        return manifests  # no generator configured: the run ends with deduplicated documents
    gen = GenerateConfig(question_types=tuple(cfg.generate.question_types), n_questions=cfg.generate.n_questions)
    backend = cfg.generate.build(cfg.out / "generate")
    try:
        manifests["generate"] = generate_qa(
            cfg.out / "dedup", cfg.out / "generate", gen, backend, part_size=cfg.part_size, overwrite=overwrite,
            on_progress=phase_progress(progress) if progress else None,
        )
    finally:
        backend.close()
    if not cfg.filter.model or manifests["generate"]["outputs"]["kept"] == 0:
        return manifests
    judge = cfg.filter.build(cfg.out / "filter")
    try:
        manifests["filter"] = filter_qa(
            cfg.out / "generate", cfg.out / "filter", judge, local_span_window=cfg.filter.local_span_window,
            part_size=cfg.part_size, overwrite=overwrite, on_progress=phase_progress(progress) if progress else None,
        )
    finally:
        judge.close()
    return manifests
