"""Corpus sources: a registry of named Hub corpora read with `datasets` in streaming mode, plus
`local:PATH` for jsonl/parquet files and folders of text and source files; seeded sampling with
per-language quotas. Must not filter by length or quality: that is the select stage's job.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import random
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longblocks.config import SourceConfig
from longblocks.errors import LongBlocksError
from longblocks.records import content_id, make_document
from longblocks.store import Rejection

DEFAULT_MAX_BYTES = 16 * 1024 * 1024

# FineWeb2-HQ names its configs by ISO 639-3 code and script.
_FINEWEB2_HQ_CONFIGS = {
    "ar": "arb_Arab", "cs": "ces_Latn", "zh": "cmn_Hani", "da": "dan_Latn", "de": "deu_Latn",
    "el": "ell_Grek", "fa": "fas_Arab", "fr": "fra_Latn", "hu": "hun_Latn", "id": "ind_Latn",
    "it": "ita_Latn", "ja": "jpn_Jpan", "nl": "nld_Latn", "pl": "pol_Latn", "pt": "por_Latn",
    "ru": "rus_Cyrl", "es": "spa_Latn", "sv": "swe_Latn", "tr": "tur_Latn", "vi": "vie_Latn",
}
_ISO639_3 = {
    "eng": "en", "deu": "de", "fra": "fr", "spa": "es", "ita": "it", "por": "pt", "nld": "nl", "pol": "pl",
    "rus": "ru", "ukr": "uk", "ces": "cs", "swe": "sv", "dan": "da", "fin": "fi", "nor": "no", "hun": "hu",
    "ron": "ro", "tur": "tr", "ell": "el", "bul": "bg", "ara": "ar", "fas": "fa", "heb": "he", "hin": "hi",
    "jpn": "ja", "kor": "ko", "zho": "zh", "vie": "vi", "ind": "id", "cat": "ca", "lat": "la",
}
_WIKIPEDIA_LANGUAGES = (
    "en de fr es it pt nl pl ru uk cs sv da fi no hu ro tr el bg ar fa he hi ja ko zh vi id th ca"
).split()
# The splits of manu/project_gutenberg on the Hub, exactly.
_GUTENBERG_LANGUAGES = ("de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru", "sv", "zh")
_STACK_EDU_LANGUAGES = {
    "python": "Python", "c": "C", "cpp": "Cpp", "csharp": "CSharp", "go": "Go", "java": "Java",
    "javascript": "JavaScript", "markdown": "Markdown", "php": "PHP", "ruby": "Ruby", "rust": "Rust",
    "sql": "SQL", "shell": "Shell", "swift": "Swift", "typescript": "TypeScript",
}

CODE_EXTENSIONS = {
    ".py": "python", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".cs": "csharp",
    ".go": "go", ".java": "java", ".js": "javascript", ".ts": "typescript", ".php": "php", ".rb": "ruby",
    ".rs": "rust", ".sql": "sql", ".sh": "shell", ".swift": "swift", ".kt": "kotlin", ".scala": "scala",
}
TABLE_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
CODE_LANGUAGES = frozenset(CODE_EXTENSIONS.values())


def is_code(doc: dict[str, Any]) -> bool:
    """Source files get code-aware treatment (heuristics, shingling) instead of prose rules."""
    return doc.get("language") in CODE_LANGUAGES or doc.get("source") == "stack-edu"


@dataclass(frozen=True)
class Slice:
    """Where one language of a Hub source lives: a config name, a split, or a data_dir."""

    config: str | None = None
    split: str = "train"
    data_dir: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    name: str
    hub_id: str
    text_field: str
    license: str
    languages: dict[str, Slice]
    kind: str = "text"  # "text" or "code": code gets code-aware shingling and heuristics
    share_alike: bool = False
    id_field: str | None = None
    notes: str = ""


REGISTRY: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(
            name="arxiv",
            hub_id="common-pile/arxiv_papers",
            text_field="text",
            license="per paper: cc-by-4.0 / cc-by-sa-4.0 / cc0-1.0",
            languages={"en": Slice()},
            share_alike=True,
            id_field="id",
        ),
        SourceSpec(
            name="wikipedia",
            hub_id="wikimedia/wikipedia",
            text_field="text",
            license="cc-by-sa-3.0 and GFDL",
            languages={lang: Slice(config=f"20231101.{lang}") for lang in _WIKIPEDIA_LANGUAGES},
            share_alike=True,
            id_field="id",
        ),
        SourceSpec(
            name="stackexchange",
            hub_id="common-pile/stackexchange",
            text_field="text",
            license="cc-by-sa-4.0",
            languages={"en": Slice()},
            share_alike=True,
            id_field="id",
        ),
        SourceSpec(
            name="gutenberg",
            hub_id="manu/project_gutenberg",
            text_field="text",
            license="public domain (in the US)",
            languages={lang: Slice(split=lang) for lang in _GUTENBERG_LANGUAGES},
            id_field="id",
        ),
        SourceSpec(
            name="stack-edu",
            hub_id="HuggingFaceTB/stack-edu",
            text_field="text",
            license="per file: permissive licenses of the original repositories",
            languages={lang: Slice(config=cfg) for lang, cfg in _STACK_EDU_LANGUAGES.items()},
            kind="code",
            id_field="blob_id",
            notes="the Hub rows hold blob ids: contents are fetched from the Software Heritage S3 bucket "
                  "(boto3, anonymous; --stack-edu-contents local:PATH for blobs already downloaded)",
        ),
        SourceSpec(
            name="fineweb2-hq",
            hub_id="epfml/FineWeb2-HQ",
            text_field="text",
            license="odc-by",
            languages={lang: Slice(config=cfg) for lang, cfg in _FINEWEB2_HQ_CONFIGS.items()},
            id_field="id",
        ),
        SourceSpec(
            name="institutional-books",
            hub_id="institutional/institutional-books-1.0",
            text_field="text_by_page_gen",
            license="public domain books; Institutional Data Initiative terms of use",
            languages={lang: Slice() for lang in sorted(set(_ISO639_3.values()))},
            id_field="barcode_src",
            notes="gated: accept the terms on the Hub and set HF_TOKEN; language from `language_gen`",
        ),
    )
}

# Sources whose languages share one stream and are told apart by a column of the row, and the
# codes that column uses mapped to ours (Institutional Books labels books with ISO 639-3: `eng`).
_LANGUAGE_COLUMNS = {"institutional-books": "language_gen"}
_LANGUAGE_CODES = {"institutional-books": _ISO639_3}


@dataclass
class Candidate:
    """One item of a source stream: a document, or a rejection when the raw item is unusable."""

    document: dict[str, Any] | None = None
    rejection: Rejection | None = None


def check_text(text: str, *, max_bytes: int) -> tuple[str, str] | None:
    """Reason code and detail when a text cannot be a document at all, else None."""
    if not text or not text.strip():
        return "empty", "no non-whitespace characters"
    if "\x00" in text:
        return "binary", "contains NUL bytes"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return "too_large", f"{size} bytes > max_bytes={max_bytes}"
    return None


def _join_text(value: Any) -> Any:
    # Books are stored as lists of pages.
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    return value


@dataclass
class Source:
    """A resolved source: a registry entry or a local path, plus sampling options."""

    name: str
    spec: SourceSpec | None = None
    path: Path | None = None
    text_field: str = "text"
    language_field: str = "language"
    default_language: str = "en"
    include: Sequence[str] = ()
    recursive: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    shuffle_buffer: int = 1000
    revision: str | None = None
    source_label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Stack-Edu: where file contents come from (see longblocks.swh): s3 | s3://BUCKET | local:PATH
    contents: str = "s3"
    contents_concurrency: int = 16
    shard: tuple[int, int] = (0, 1)  # (rank, tasks): this task's share of the source's files (executors)

    @property
    def label(self) -> str:
        return self.source_label or (self.spec.name if self.spec else "local")

    @property
    def kind(self) -> str:
        return self.spec.kind if self.spec else "text"

    @property
    def language_codes(self) -> dict[str, str]:
        """The source's own language labels mapped to ours (empty: they already are ours)."""
        return _LANGUAGE_CODES.get(self.spec.name, {}) if self.spec else {}

    @property
    def license(self) -> str:
        return self.spec.license if self.spec else "as licensed by the local files"

    # -- streams ---------------------------------------------------------------------------------
    def stream(
        self, languages: Sequence[str] | None, seed: int, done: Callable[[str], bool] = lambda _: False
    ) -> Iterator[Candidate]:
        """Candidates in a seeded, reproducible order; for Hub sources, one language after another,
        moving on once `done(language)` says that language's quota is met."""
        if self.spec is not None:
            yield from self._hub_stream(languages, seed, done)
        else:
            yield from self._local_stream(seed)

    def _hub_stream(
        self, languages: Sequence[str] | None, seed: int, done: Callable[[str], bool]
    ) -> Iterator[Candidate]:
        assert self.spec is not None
        languages = list(languages or self.spec.languages)
        unknown = [lang for lang in languages if lang not in self.spec.languages]
        if unknown:
            raise LongBlocksError(
                f"source {self.spec.name!r} has no language(s) {unknown}; it has {sorted(self.spec.languages)}"
            )
        language_column = _LANGUAGE_COLUMNS.get(self.spec.name)
        slices: dict[Slice, list[str]] = {}
        for lang in languages:
            slices.setdefault(self.spec.languages[lang], []).append(lang)
        for data_slice, langs in slices.items():
            if all(done(lang) for lang in langs):
                continue
            dataset = open_hub_dataset(self.spec.hub_id, data_slice, revision=self.revision)
            rank, world = self.shard
            if world > 1:  # this task's files of the slice (datasets shards a streamed dataset by file)
                if dataset.num_shards < world:
                    raise LongBlocksError(f"source {self.spec.name!r} ({data_slice}) has {dataset.num_shards} file(s), "
                                          f"fewer than the {world} sample tasks: use fewer tasks for sample")
                dataset = dataset.shard(num_shards=world, index=rank)
            dataset = dataset.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
            if self.spec.name == "stack-edu":  # the Hub rows hold blob ids: fetch each file's text
                from longblocks.swh import ContentFetcher, default_cache, with_contents

                fetcher = ContentFetcher(self.contents, cache=default_cache(), concurrency=self.contents_concurrency)
                dataset = with_contents(dataset, fetcher, id_field=self.spec.id_field or "blob_id",
                                        text_field=self.text_field, batch=4 * self.contents_concurrency)
            for candidate in self._rows(
                dataset,
                origin=f"{self.spec.hub_id}:{data_slice.config or data_slice.split}",
                fixed_language=None if language_column else langs[0],
                language_column=language_column,
                id_field=self.spec.id_field,
            ):
                yield candidate
                if all(done(lang) for lang in langs):
                    break

    def _local_stream(self, seed: int) -> Iterator[Candidate]:
        assert self.path is not None
        files = self._local_files()
        if not files:
            raise LongBlocksError(f"no files found under {self.path} (include={list(self.include) or 'all'})")
        tables: dict[str, list[str]] = {}
        documents: list[Path] = []
        rank, world = self.shard
        for path in sorted(files)[rank::world]:  # this task's share of the files (all of them for one task)
            builder = TABLE_EXTENSIONS.get(path.suffix.lower())
            if builder:
                tables.setdefault(builder, []).append(str(path))
            else:
                documents.append(path)
        random.Random(seed).shuffle(documents)
        for path in documents:
            yield self._file_candidate(path)
        for builder, data_files in sorted(tables.items()):
            yield from self._table_rows(builder, data_files, seed)

    def _table_rows(self, builder: str, data_files: list[str], seed: int) -> Iterator[Candidate]:
        """Rows of table files (jsonl, parquet), each file streamed and shuffled on its own and the
        files drawn from in a seeded order; a file that cannot be read (truncated parquet, invalid
        JSON) is an `unreadable` rejection naming it and the error, and the other files go on."""
        import datasets

        def rows(path: str) -> Iterator[Candidate]:
            if builder == "json":  # row by row: a bad line is that line's rejection, the file's good lines kept
                dataset: Any = shuffled(json_rows(Path(path), self.label), seed, self.shuffle_buffer)
            else:
                dataset = datasets.load_dataset(builder, data_files=[path], split="train", streaming=True)
                dataset = dataset.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
            yield from self._rows(dataset, origin=path, fixed_language=None, language_column=self.language_field,
                                  id_field="id")

        rng = random.Random(seed)
        streams = {path: rows(path) for path in data_files}
        while streams:
            path = rng.choice(sorted(streams))
            try:
                candidate = next(streams[path])
            except StopIteration:
                del streams[path]
                continue
            except LongBlocksError:
                raise  # a configuration error (no such text column): not the file's fault
            except Exception as exc:  # noqa: BLE001 - datasets/Arrow raise many types for a damaged file
                del streams[path]
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                yield Candidate(rejection=Rejection(content_id("unreadable", self.label, path), "unreadable",
                                                    f"{path}: {type(exc).__name__}: {first}"))
                continue
            yield candidate

    def _local_files(self) -> list[Path]:
        assert self.path is not None
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise LongBlocksError(f"local source path {self.path} does not exist")
        walker = self.path.rglob("*") if self.recursive else self.path.glob("*")
        files = []
        for path in walker:
            rel = path.relative_to(self.path)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            if self.include and not any(fnmatch.fnmatch(path.name, pat) for pat in self.include):
                continue
            files.append(path)
        return sorted(files)

    def _file_candidate(self, path: Path) -> Candidate:
        assert self.path is not None
        rel = str(path.relative_to(self.path)) if self.path.is_dir() else path.name
        reject_id = content_id("file", self.label, rel)
        size = path.stat().st_size
        if size > self.max_bytes:
            return Candidate(rejection=Rejection(reject_id, "too_large", f"{rel}: {size} bytes > max_bytes={self.max_bytes}"))
        raw = path.read_bytes()
        if b"\x00" in raw[:8192]:
            return Candidate(rejection=Rejection(reject_id, "binary", f"{rel}: contains NUL bytes"))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Candidate(rejection=Rejection(reject_id, "not_utf8", f"{rel}: invalid UTF-8 at byte {exc.start}"))
        problem = check_text(text, max_bytes=self.max_bytes)
        if problem:
            return Candidate(rejection=Rejection(reject_id, problem[0], f"{rel}: {problem[1]}"))
        language = CODE_EXTENSIONS.get(path.suffix.lower(), self.default_language)
        meta = json.dumps({"path": rel, "origin": str(self.path)}, ensure_ascii=False)
        return Candidate(document=make_document(source=self.label, language=language, text=text, meta=meta))

    def _rows(
        self,
        dataset: Any,
        *,
        origin: str,
        fixed_language: str | None,
        language_column: str | None,
        id_field: str | None,
    ) -> Iterator[Candidate]:
        checked = False
        for index, row in enumerate(dataset):
            if isinstance(row, Rejection):  # a line of a json file that is not a row
                yield Candidate(rejection=row)
                continue
            if not checked:
                if self.text_field not in row:
                    raise LongBlocksError(
                        f"{origin}: no text field {self.text_field!r}; the rows have {sorted(row)} "
                        "(set text_field)"
                    )
                checked = True
            original_id = str(row.get(id_field)) if id_field and row.get(id_field) is not None else None
            reject_id = content_id("row", self.label, origin, original_id or str(index))
            text = _join_text(row.get(self.text_field))
            if row.get("_contents_error"):  # Stack-Edu: the blob could not be fetched
                reason, detail = row["_contents_error"]
                yield Candidate(rejection=Rejection(reject_id, reason, f"{origin}: {detail}"))
                continue
            if text is None:
                yield Candidate(rejection=Rejection(reject_id, "missing_text", f"{origin}: row {original_id or index} has no {self.text_field!r}"))
                continue
            if not isinstance(text, str):
                yield Candidate(rejection=Rejection(reject_id, "not_text", f"{origin}: {self.text_field!r} is {type(text).__name__}"))
                continue
            problem = check_text(text, max_bytes=self.max_bytes)
            if problem:
                yield Candidate(rejection=Rejection(reject_id, problem[0], f"{origin}: row {original_id or index}: {problem[1]}"))
                continue
            language = fixed_language or str(row.get(language_column or "", None) or self.default_language)
            language = self.language_codes.get(language, language)
            meta = {"origin": origin, "license": self.license}
            if original_id:
                meta["original_id"] = original_id
            for key in ("title", "url"):
                if isinstance(row.get(key), str):
                    meta[key] = row[key]
            yield Candidate(
                document=make_document(source=self.label, language=language, text=text, meta=json.dumps(meta, ensure_ascii=False))
            )


def open_hub_dataset(hub_id: str, data_slice: Slice, *, revision: str | None = None) -> Any:
    """`datasets.load_dataset(..., streaming=True)` for one slice; failures become one-line errors."""
    import datasets

    try:
        return datasets.load_dataset(
            hub_id,
            name=data_slice.config,
            data_dir=data_slice.data_dir,
            split=data_slice.split,
            streaming=True,
            revision=revision,
        )
    except Exception as exc:  # datasets raises many types for missing repos, configs and network errors
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LongBlocksError(
            f"could not open dataset {hub_id!r} (config={data_slice.config}, split={data_slice.split}): {first_line}"
        ) from None


def expand_path(value: str) -> str:
    """Placeholders usable in paths: {python_stdlib} is this interpreter's standard library folder,
    a corpus of long, self-contained, permissively licensed (PSF) documents on any machine."""
    return value.replace("{python_stdlib}", sysconfig.get_paths()["stdlib"])


def resolve_source(name: str, **options: Any) -> Source:
    """A registry name (`arxiv`, ...) or `local:PATH`; unknown names are a one-line error."""
    if name.startswith("local:"):
        path = Path(expand_path(name[len("local:") :])).expanduser()
        if not path.exists():
            raise LongBlocksError(f"local source path {path} does not exist")
        return Source(name=name, path=path, **options)
    if name not in REGISTRY:
        raise LongBlocksError(f"unknown source {name!r}; known sources: {', '.join(REGISTRY)}, or local:PATH")
    spec = REGISTRY[name]
    hub_id = options.pop("hub_id", None)
    if hub_id:  # a mirror or a local copy of the Hub dataset, read through the same code path
        spec = dataclasses.replace(spec, hub_id=hub_id)
    options.setdefault("text_field", spec.text_field)
    return Source(name=name, spec=spec, **options)


def open_source(cfg: SourceConfig) -> Source:
    """The Source a `[source]` section (or `longblocks sample`'s flags) names."""
    options: dict[str, Any] = {"include": cfg.include, "recursive": cfg.recursive, "revision": cfg.revision}
    if cfg.text_field:
        options["text_field"] = cfg.text_field
    if cfg.max_bytes:
        options["max_bytes"] = cfg.max_bytes
    if cfg.hub_id:
        options["hub_id"] = cfg.hub_id
    if cfg.name == "stack-edu":
        options.update(contents=cfg.stack_edu_contents, contents_concurrency=cfg.stack_edu_concurrency)
    return resolve_source(cfg.name, **options)


def json_rows(path: Path, label: str) -> Iterator[dict[str, Any] | Rejection]:
    """The rows of a .jsonl or .json file one at a time: a JSON array of objects (or {"data": [...]}),
    else JSON Lines. A line that is not UTF-8 or not a JSON object (or an array item that is not an
    object) is an `unreadable_line` rejection naming the file and line; the other rows are read."""
    def bad(where: str, error: str) -> Rejection:
        return Rejection(content_id("line", label, str(path), where), "unreadable_line", f"{path}:{where}: {error}")

    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            whole = None  # not one JSON document: JSON Lines
        if isinstance(whole, dict) and isinstance(whole.get("data"), list):
            whole = whole["data"]
        if isinstance(whole, list):
            for i, row in enumerate(whole):
                problem = f"not an object: {type(row).__name__}" if not isinstance(row, dict) else _unencodable(row)
                yield bad(f"item {i}", problem) if problem else row
            return
        if isinstance(whole, dict):
            yield whole
            return
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield bad(f"line {number}", f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            except ValueError as exc:
                yield bad(f"line {number}", f"not JSON ({str(exc).splitlines()[0][:200]})")
                continue
            if not isinstance(row, dict):
                yield bad(f"line {number}", f"not an object: {type(row).__name__}")
            elif problem := _unencodable(row):
                yield bad(f"line {number}", problem)
            else:
                yield row


def _unencodable(row: dict[str, Any]) -> str:
    """Why a decoded row cannot be stored as UTF-8 (JSON escapes allow a lone surrogate, \\ud800)."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"a lone surrogate ({exc.object[exc.start:exc.end]!a}) no UTF-8 text can hold"
    return ""


def shuffled(items: Iterator[Any], seed: int, buffer_size: int) -> Iterator[Any]:
    """A seeded buffer shuffle, as `datasets`' streaming shuffle draws: fill a buffer, then hand out
    a random slot and put the next item there (bounded memory, the same order for the same seed)."""
    rng = random.Random(seed)
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = rng.randrange(buffer_size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer
