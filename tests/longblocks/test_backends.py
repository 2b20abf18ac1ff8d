"""The openai backend over real HTTP to the scripted TEST DOUBLE server: under a slow request new
requests keep going out while one is pending, results still come back in input order, and only a
reorder buffer past its memory bound pauses sending; what goes on the wire (the key from the
environment, sampling in the body); answers that are not a chat completion become errors."""

from __future__ import annotations

import re
import sys
import types
from types import SimpleNamespace

import pytest

from longblocks.backends import OpenAIBackend, Sampling
from openai_double import ScriptedServer

PROMPTS = ["[[mode:slow]] the first request takes two seconds"] + [f"[[mode:good]] request {i}" for i in range(40)]


def run(server: ScriptedServer, **options: int) -> tuple[list[str], int]:
    """(items in the order they came back, requests the server had seen when the first came back)."""
    backend = OpenAIBackend("m", base_url=server.base_url, concurrency=4, max_retries=0, timeout=30,
                            sampling=Sampling(max_tokens=32))
    order, seen_at_first = [], None
    for item, completion in backend.map_ordered(PROMPTS, lambda p: [{"role": "user", "content": p}], **options):
        assert completion.error is None and completion.text
        seen_at_first = len(server.prompts) if seen_at_first is None else seen_at_first
        order.append(item)
    backend.close()
    return order, seen_at_first


def test_new_requests_are_sent_while_a_slow_one_is_pending_and_results_keep_input_order() -> None:
    with ScriptedServer(slow_first=2.0) as server:
        order, seen = run(server)
    assert order == PROMPTS
    # every other request went out (4 at a time) and came back during the slow one's two seconds;
    # waiting on the oldest request would have sent only a window of 2 x concurrency = 8 of them
    assert seen == len(PROMPTS)


def test_the_reorder_buffer_is_bounded_by_memory() -> None:
    with ScriptedServer(slow_first=2.0) as server:
        order, seen = run(server, buffer_bytes=10 * len(PROMPTS[1]))  # about ten prompts' worth
    assert order == PROMPTS
    assert seen < 16  # sending paused once the finished results behind the slow one filled the buffer


def test_the_request_carries_the_key_from_the_environment_and_the_sampling_in_its_body(monkeypatch) -> None:
    monkeypatch.setenv("LB_TEST_KEY", "sk-test-wire-1234")
    sampling = Sampling(temperature=0.6, top_p=0.95, max_tokens=32, seed=7, extra={"top_k": 20, "repetition_penalty": 1.05})
    with ScriptedServer() as server:
        backend = OpenAIBackend("served-model", base_url=server.base_url, api_key_env="LB_TEST_KEY", sampling=sampling,
                                concurrency=2, max_retries=0, timeout=30)
        [(_, completion)] = backend.map_ordered(["[[mode:good]] hello"], lambda p: [{"role": "user", "content": p}])
        backend.close()
    assert server.authorization == ["Bearer sk-test-wire-1234"]
    body = server.bodies[0]
    assert body["messages"] == [{"role": "user", "content": "[[mode:good]] hello"}]
    assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "seed", "top_k", "repetition_penalty")} == {
        "model": "served-model", "temperature": 0.6, "top_p": 0.95, "max_tokens": 32, "seed": 7, "top_k": 20,
        "repetition_penalty": 1.05}
    # the answer read from the JSON: text, the server's separate reasoning field, finish reason, usage
    assert completion.error is None and completion.text.startswith("1. **Question:**")
    assert completion.reasoning == "separate reasoning field" and completion.finish_reason == "stop"
    assert completion.prompt_tokens == 2 and completion.completion_tokens > 0


@pytest.mark.parametrize(("mode", "error"), [("notjson", "response is not JSON"), ("nochoices", "response without choices")])
def test_an_answer_that_is_not_a_chat_completion_is_retried_then_recorded(mode: str, error: str) -> None:
    with ScriptedServer() as server:
        backend = OpenAIBackend("m", base_url=server.base_url, concurrency=2, max_retries=2, backoff=0.01, timeout=30,
                                sampling=Sampling(max_tokens=32))
        results = list(backend.map_ordered([f"[[mode:{mode}]] x", "[[mode:good]] y"],
                                           lambda p: [{"role": "user", "content": p}]))
        backend.close()
    (_, bad), (_, good) = results
    assert bad.error.startswith(f"after 3 attempt(s): {error}")
    assert server.requests[mode] == 3 and good.error is None and good.text


class _Engine:
    """TEST DOUBLE of a `vllm.LLM`'s engine (the step API `LLM.generate` drives: `add_request`,
    `step`, `abort_request`): at most `max_num_seqs` requests run per step, each finishes after a
    number of steps its prompt names (`[[steps:N]]`, default 2) and answers with its own prompt's
    last line; a prompt over `max_model_len` tokens is refused as vLLM refuses it. It is not a
    model: the real engine is covered in test_real_engine.py."""

    max_num_seqs, max_model_len = 4, 300

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        self.tokenizer = tokenizer
        self.queue: list[str] = []
        self.left: dict[str, int] = {}
        self.prompts: dict[str, list[int]] = {}
        self.added: list[str] = []
        self.finished: list[str] = []
        self.aborted: list[str] = []
        self.added_when_finished: dict[str, int] = {}

    def add_request(self, request_id: str, prompt: dict, params: object) -> None:
        ids = prompt["prompt_token_ids"]
        if len(ids) > self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                             f"{self.max_model_len}.")
        text = self.tokenizer.decode(ids)
        marker = re.search(r"\[\[steps:(\d+)\]\]", text)
        self.left[request_id] = int(marker.group(1)) if marker else 2
        self.prompts[request_id] = ids
        self.queue.append(request_id)
        self.added.append(request_id)

    def step(self) -> list[SimpleNamespace]:
        outputs = []
        for request_id in self.queue[: self.max_num_seqs]:
            self.left[request_id] -= 1
            done = self.left[request_id] == 0
            text = self.tokenizer.decode(self.prompts[request_id]).split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
            outputs.append(SimpleNamespace(request_id=request_id, finished=done, prompt_token_ids=self.prompts[request_id],
                                           outputs=[SimpleNamespace(text=f"echo: {text}", finish_reason="stop" if done else None,
                                                                    token_ids=[1, 2, 3])]))
            if done:
                self.finished.append(request_id)
                self.added_when_finished[request_id] = len(self.added)
        self.queue = [r for r in self.queue if self.left[r] > 0]
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self.queue)

    def abort_request(self, request_ids: list[str]) -> None:
        self.aborted += request_ids
        self.queue = [r for r in self.queue if r not in request_ids]


@pytest.fixture
def vllm_double(monkeypatch: pytest.MonkeyPatch, tiny_tokenizer_dir):  # noqa: ANN001, ANN201
    """`import vllm` gives a TEST DOUBLE module whose `LLM` loads the real tiny tokenizer (and its
    chat template) from the model folder and holds an `_Engine`."""
    from transformers import AutoTokenizer

    class LLM:
        def __init__(self, model: str, **kwargs: object) -> None:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.llm_engine = _Engine(self.tokenizer)

        def get_tokenizer(self):  # noqa: ANN202
            return self.tokenizer

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, lambda **kwargs: SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return tiny_tokenizer_dir


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def test_vllm_backend_refills_the_engine_as_requests_finish_and_keeps_input_order(vllm_double, tmp_path) -> None:  # noqa: ANN001
    from longblocks.backends import RequestCache, VLLMBackend

    prompts = ["[[steps:60]] a long generation"] + [f"request {i}" for i in range(30)] + ["too long " * 200]
    backend = VLLMBackend(str(vllm_double), batch_size=8, sampling=Sampling(max_tokens=32),
                          cache=RequestCache(tmp_path / "cache.sqlite"))
    engine = backend.llm.llm_engine
    results = list(backend.map_ordered(prompts, chat))
    assert [item for item, _ in results] == prompts
    for prompt, completion in results[:-1]:
        assert completion.error is None and completion.text == f"echo: {prompt}"
    assert "longer than the maximum model length" in results[-1][1].error
    # the long request held up nothing but itself: every other one was added and finished before it
    slow = engine.added[0]
    assert engine.finished[-1] == slow and engine.added_when_finished[slow] == len(prompts) - 1
    # windows of batch_size would have added at most 8 requests before the first window ended
    assert backend.stats.sent == len(prompts) - 1 and backend.stats.failed == 1 and backend.stats.in_flight == 0
    backend.close()

    again = VLLMBackend(str(vllm_double), batch_size=8, sampling=Sampling(max_tokens=32),
                        cache=RequestCache(tmp_path / "cache.sqlite"))
    assert [c.text for _, c in again.map_ordered(prompts[:-1], chat)] == [c.text for _, c in results[:-1]]
    assert again.llm.llm_engine.added == [] and again.stats.cached == len(prompts) - 1  # all from the cache
    again.close()


def test_vllm_backend_aborts_what_is_running_when_the_caller_stops(vllm_double) -> None:  # noqa: ANN001
    from longblocks.backends import VLLMBackend

    backend = VLLMBackend(str(vllm_double), batch_size=8, sampling=Sampling(max_tokens=32))
    engine = backend.llm.llm_engine
    results = backend.map_ordered(["first", "[[steps:50]] slow"] + [f"r{i}" for i in range(20)], chat)
    assert next(results)[1].text == "echo: first"
    results.close()
    assert engine.aborted and set(engine.aborted) == set(engine.added) - set(engine.finished)
    assert backend.stats.in_flight == 0


def test_vllm_backend_says_so_when_the_engine_drops_its_requests(vllm_double) -> None:  # noqa: ANN001
    from longblocks.backends import VLLMBackend
    from longblocks.errors import LongBlocksError

    backend = VLLMBackend(str(vllm_double), batch_size=8, sampling=Sampling(max_tokens=32))
    engine = backend.llm.llm_engine
    results = backend.map_ordered(["first", "second"], chat)
    engine.step = lambda: (engine.queue.clear(), [])[1]  # an engine that loses what it held: no spinning forever
    with pytest.raises(LongBlocksError, match="holds none of the 2 requests"):
        next(results)


def test_one_backend_waiting_drives_the_requests_of_the_others() -> None:
    # The respond stage chains its responders (each pulls from the one before) and a backend runs the
    # event loop only while its caller waits: with a loop per backend, the others' requests stood
    # still during each wait (three responders took 4x the ideal time in bench_fleet.py). On the one
    # loop they share, B's wait lets A's answer arrive.
    from longblocks import backends as module
    from longblocks.backends import _AsyncRequests

    # backends an earlier test in this process left open share the loop too: count them
    before = module._LOOPS.users if getattr(module._LOOPS, "loop", None) is not None else 0
    with ScriptedServer(delay=0.1) as fast, ScriptedServer(delay=1.5) as slow:
        a = OpenAIBackend("m", base_url=fast.base_url, concurrency=2, max_retries=0, timeout=30,
                          sampling=Sampling(max_tokens=32))
        b = OpenAIBackend("m", base_url=slow.base_url, concurrency=2, max_retries=0, timeout=30,
                          sampling=Sampling(max_tokens=32))
        on_a, on_b = _AsyncRequests(a), _AsyncRequests(b)
        on_a.start(0, [{"role": "user", "content": "[[mode:good]] to A"}])
        on_b.start(0, [{"role": "user", "content": "[[mode:good]] to B"}])
        assert [i for i, c in on_b.finished() if c.text] == [0]  # only B is waited on
        assert fast.prompts and not on_a.done.empty()  # ... and A's request went out and came back meanwhile
        assert [i for i, c in on_a.finished() if c.text] == [0]
        a.close()
        b.close()
    if before == 0:
        assert a._loop.is_closed()  # the last backend closed closes the loop they shared
    else:  # ... and one still open elsewhere keeps it, with our two released
        assert module._LOOPS.users == before and not a._loop.is_closed()
