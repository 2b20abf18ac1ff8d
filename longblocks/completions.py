"""What every LLM backend shares: the explicit sampling sent with each request, the completion a
request comes back as, the persistent sqlite request cache (a re-run never pays twice), live
counters, the completion-order loop with its reorder buffer (`in_completion_order`: the openai and
vllm backends) and the windowed batching loop (the transformers backend). Must not talk to a model
or parse task outputs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from longblocks.errors import LongBlocksError

T = TypeVar("T")
R = TypeVar("R")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """Sent with every request, so a server's own defaults (vLLM: max_tokens=16, or the model's
    generation_config.json) never apply silently."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 16384
    seed: int | None = None  # sent only when set (see BackendConfig.seed)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"top_k": 20}: sent as extra_body


@dataclass
class Completion:
    text: str = ""  # the answer with any reasoning removed
    reasoning: str = ""
    finish_reason: str | None = None
    error: str | None = None  # set when the request failed (after retries)
    # the failure may pass (connection error, timeout, 429, 5xx): the input is left for a rerun to try
    # again, never recorded as a final rejection; deterministic failures (4xx) are rejections
    transient: bool = False
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0


class RequestCache:
    """sqlite table request-key -> completion; keyed by model, sampling and messages (never the
    API key). Written as each response arrives, so a killed run keeps what it paid for. The file is
    opened at the first request, so a command that fails before sending any leaves none behind."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def check(self) -> None:
        """An existing cache file that sqlite cannot read is one line naming it and the fix, before
        any request (not a traceback in the middle of a stage)."""
        if self.path is not None and self.path.exists():
            with self._lock:
                db = self._open()
                assert db is not None
                self._guard(lambda: db.execute("SELECT count(*) FROM completions").fetchone())

    def _guard(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except sqlite3.DatabaseError as exc:
            self.close()
            stage = self.path.parent / self.path.name.split(".")[0] if self.path else "its stage directory"
            raise LongBlocksError(
                f"{self.path} is not a readable request cache ({exc}): `longblocks repair {stage}` sets it aside "
                "(a new one fills as requests are answered again; committed parts are kept)") from None

    def _open(self) -> sqlite3.Connection | None:
        if self._db is None and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

            def connect() -> sqlite3.Connection:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: a commit survives the process being killed (what resume needs) without
                # an fsync per response; only a power loss can take back the last commits.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                return db

            self._db = self._guard(connect)
        return self._db

    @staticmethod
    def key(model: str, sampling: Sampling, messages: Messages) -> str:
        blob = json.dumps({"model": model, "sampling": asdict(sampling), "messages": messages}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            db = self._open()
            row = self._guard(lambda: db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()) \
                if db else None
        return Completion(**{**json.loads(row[0]), "cached": True}) if row else None

    def put(self, key: str, completion: Completion) -> None:
        if completion.error:
            return  # failures are not cached: a re-run tries them again
        value = json.dumps({k: v for k, v in asdict(completion).items() if k != "cached"})
        with self._lock:
            db = self._open()
            if db is not None:
                self._guard(lambda: db.execute("INSERT OR REPLACE INTO completions VALUES (?, ?)", (key, value)))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


@dataclass
class BackendStats:
    """Counters a backend keeps as it works; `live()` is what progress shows, so a long batch tells
    slow from stuck: requests finished and tokens generated rise while it runs."""

    sent: int = 0
    cached: int = 0
    failed: int = 0
    in_flight: int = 0
    finished: int = 0  # requests answered by the engine (not the cache), failures included
    tokens: int = 0  # completion tokens generated, counted as the engine reports them
    started: float = field(default_factory=time.monotonic)

    def live(self) -> dict[str, Any]:
        return live_status([self])


def live_status(stats: Iterable[BackendStats]) -> dict[str, Any]:
    """Progress fields of one or more backends (a stage's responders add up)."""
    stats = list(stats)
    elapsed = max(time.monotonic() - min(s.started for s in stats), 1e-9)
    tokens = sum(s.tokens for s in stats)
    return {"in_flight": sum(s.in_flight for s in stats), "finished": sum(s.finished for s in stats),
            "cached": sum(s.cached for s in stats), "tokens": tokens, "tok_per_s": round(tokens / elapsed, 1)}


def every_request_failed(stage: str, manifest: dict[str, Any], stats: Iterable[BackendStats]) -> None:
    """An LLM stage that kept nothing because every request it sent failed is an error (exit
    non-zero, one line with the first failure), not a success with nothing to pass on."""
    stats = list(stats)
    sent = sum(s.finished for s in stats)
    if manifest["outputs"]["kept"] == 0 and sent and sum(s.failed for s in stats) >= sent:
        reasons = {k: n for k, n in manifest["rejected"].items() if "failed" in k}
        raise LongBlocksError(f"{stage}: every one of the {sent} request(s) it sent failed ({reasons}; the details "
                              "are in its rejected/): check the endpoint, model name and limits, then run it with "
                              "--overwrite")


class Requests(Protocol):
    """An engine's requests as `in_completion_order` drives them: `start` hands one over (it must
    not wait for it), `finished` blocks until at least one started request is done and returns
    every one that is, `cancel` drops those still running (the caller stopped early)."""

    def start(self, index: int, messages: Messages) -> None: ...

    def finished(self) -> list[tuple[int, Completion]]: ...

    def cancel(self) -> None: ...


def in_completion_order(
    items: Iterable[T], to_messages: Callable[[T], Messages], requests: Requests, *, key_model: str,
    sampling: Sampling, cache: RequestCache, stats: BackendStats, slots: int, budget: int,
) -> Iterator[tuple[T, Completion]]:
    """Each item with its completion, in input order, while the engine takes requests in
    completion order: up to `slots` of them are started whatever one slow request does, and
    finished results wait in a reorder buffer until the ones before them are done. The buffer is
    bounded by memory, not by the slowest request: only once the prompts and answers it holds pass
    `budget` bytes does starting pause until the head finishes. Answers are cached as they
    arrive (a killed run keeps them); cached ones never reach the engine."""
    source = iter(items)
    exhausted = False
    running: dict[int, tuple[T, str]] = {}  # index -> (item, cache key)
    ready: dict[int, tuple[T, Completion]] = {}
    sizes: dict[int, int] = {}
    held = sent = head = 0
    try:
        while True:
            while not exhausted and len(running) < slots and held < budget:
                item = next(source, _END)
                if item is _END:
                    exhausted = True
                    break
                messages = to_messages(item)
                key = RequestCache.key(key_model, sampling, messages)
                sizes[sent] = sum(len(m.get("content") or "") for m in messages)
                held += sizes[sent]
                cached = cache.get(key)
                if cached is not None:
                    stats.cached += 1
                    ready[sent] = (item, cached)
                else:
                    running[sent] = (item, key)
                    requests.start(sent, messages)
                sent += 1
            while head in ready:  # in input order, as far as it goes
                held -= sizes.pop(head)
                item, completion = ready.pop(head)
                head += 1
                yield item, completion
            if not running:
                if exhausted:
                    return
                continue
            for index, completion in requests.finished():
                item, key = running.pop(index)
                stats.finished += 1
                cache.put(key, completion)
                answer = len(completion.text) + len(completion.reasoning)
                sizes[index] += answer
                held += answer
                ready[index] = (item, completion)
    finally:
        if running:
            requests.cancel()


_END = object()


class BatchedBackend:
    """In-process engines without a step API: windows of `batch_size` requests, the cached ones answered from the
    cache and the rest generated together by `_generate`, results in input order. Subclasses set
    `model`, `sampling`, `batch_size`, `cache`, `stats` and implement `_generate`."""

    name = "batched"
    model: str
    sampling: Sampling
    batch_size: int
    cache: RequestCache
    stats: BackendStats

    def _generate(self, batch: list[Messages]) -> list[Completion]:
        raise NotImplementedError

    def map_ordered(
        self, items: Iterable[T], to_messages: Callable[[T], Messages]
    ) -> Iterator[tuple[T, Completion]]:
        return self._map(items, to_messages, self.model, self._generate, lambda c: None if c.error else c, lambda c: c)

    def _map(self, items: Iterable[T], to_messages: Callable[[T], Messages], key_model: str,
             compute: Callable[[list[Messages]], list[R]], store: Callable[[R], Completion | None],
             load: Callable[[Completion], R]) -> Iterator[tuple[T, R]]:
        """Windows of `batch_size` requests keyed by `key_model`: the cached ones `load`ed from the
        cache, the rest `compute`d together and cached as `store` makes them (None: a failure, tried
        again on the next run); results in input order."""
        window: list[tuple[T, Messages, str]] = []
        for item in items:
            messages = to_messages(item)
            window.append((item, messages, RequestCache.key(key_model, self.sampling, messages)))
            if len(window) >= self.batch_size:
                yield from self._run(window, compute, store, load)
                window = []
        if window:
            yield from self._run(window, compute, store, load)

    def _run(self, window: list[tuple[T, Messages, str]], compute: Callable[[list[Messages]], list[R]],
             store: Callable[[R], Completion | None], load: Callable[[Completion], R]) -> Iterator[tuple[T, R]]:
        results: dict[int, R] = {}
        todo = []
        for i, (_, _, key) in enumerate(window):
            cached = self.cache.get(key)
            if cached is not None:
                self.stats.cached += 1
                results[i] = load(cached)
            else:
                todo.append(i)
        if todo:
            for i, result in zip(todo, compute([window[i][1] for i in todo])):
                entry = store(result)
                if entry is not None:
                    self.cache.put(window[i][2], entry)
                results[i] = result
        for i, (item, _, _) in enumerate(window):
            yield item, results[i]

    def close(self) -> None:
        self.cache.close()
