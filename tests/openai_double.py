"""TEST DOUBLE: a scripted OpenAI-compatible chat server (starlette + uvicorn on 127.0.0.1). It is
not a model: it answers from a script keyed by a `[[mode:...]]` marker in the prompt, to drive
the parsing, judging, retry and cache logic over real HTTP. Real engines are tested elsewhere.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

GOOD = "Question: What links the opening and the end?\nAnswer: The first fact and the last fact together."
PAIRS = (
    "1. **Question:** Which two results are compared across sections?\n**Answer:** The early and the late result.\n\n"
    "2. Question: How does the method change from start to end?\nAnswer: It grows more precise.\n"
)
MODES = {
    "good": lambda n: (PAIRS, "stop"),
    "malformed": lambda n: ("I cannot write questions about this.", "stop"),
    "truncated": lambda n: (PAIRS + "Question: And what then?\nAnswer: It was", "length"),
    "thinking": lambda n: ("<think>Let me plan the questions... Question: fake?\nAnswer: fake</think>\n" + GOOD, "stop"),
    "overthinking": lambda n: ("<think>I keep thinking and never stop", "length"),
    "german": lambda n: ("Frage: Wie hängen Anfang und Ende zusammen?\nAntwort: Durch das zentrale Motiv.", "stop"),
    "score7": lambda n: ("The answer names the right value.\nScore: 7", "stop"),
    "noscore": lambda n: ("It looks fine to me.", "stop"),
    "referential": lambda n: ("Question: What does the text above say about X?\nAnswer: Something.", "stop"),
}
_MARKER = re.compile(r"\[\[mode:([a-z0-9_]+)\]\]")


def judge_reply(prompt: str) -> str:
    blocks = []
    for number, question in re.findall(r"Pair (\d+):\nQuestion: (.*)", prompt):
        bad = "method change" in question
        blocks.append(
            f"**Pair {number}:**\nwell_formed: yes\ncomplete: yes\nsupported: {'no' if bad else 'yes'}\n"
            f"multi_span: yes\nself_contained: yes\nverdict: {'fail' if bad else 'pass'}\nreason: scripted"
        )
    return "\n\n".join(blocks)


class LocalServer:
    """A starlette app served by uvicorn on 127.0.0.1 in a daemon thread, as a context manager."""

    def serve(self, app: Starlette) -> None:
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.endpoint}/v1"

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ScriptedServer(LocalServer):
    """Counts requests per mode; `fail_first[mode] = (k, status)` fails the first k requests of a mode."""

    def __init__(self, *, delay: float = 0.0, slow_first: float = 0.0, models: list[str] | None = None,
                 max_model_len: int | None = None) -> None:
        # /v1/models: 404 unless `models` are given (then listed, with vLLM's max_model_len field)
        self.models_served, self.max_model_len = models, max_model_len
        self.requests: Counter[str] = Counter()
        self.prompts: list[str] = []
        self.judge_sampling: list[tuple[Any, ...]] = []  # (temperature, top_p, max_tokens, seed) per judge request
        self.bodies: list[dict[str, Any]] = []
        self.authorization: list[str | None] = []
        # "broken" is refused for good (400: not retried, a rejection); "down" is an outage (500: retried,
        # then left for the next run)
        self.fail_first: dict[str, tuple[int, int]] = {"rate_limited": (2, 429), "flaky": (1, 500), "broken": (10**6, 400),
                                                       "down": (10**6, 500)}
        self.delay, self.slow_first = delay, slow_first
        self.serve(Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                     Route("/v1/models", self.models)]))

    async def models(self, request: Request) -> JSONResponse:
        if self.models_served is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "max_model_len": self.max_model_len}
                                                        for m in self.models_served]})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.prompts.append(prompt)
        self.bodies.append(body)
        self.authorization.append(request.headers.get("authorization"))
        match = _MARKER.search(prompt)
        mode = match.group(1) if match else "good"
        judge = prompt.startswith("You are checking")
        key = f"judge:{mode}" if judge else mode
        self.requests[key] += 1
        if judge:
            self.judge_sampling.append(tuple(body.get(k) for k in ("temperature", "top_p", "max_tokens", "seed")))
        count = self.requests[key]
        assert body.get("max_tokens") and "temperature" in body, "sampling must be explicit"
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode == "slow" and count == 1:
            await asyncio.sleep(self.slow_first)  # longer than the client's timeout
        if not judge and mode in self.fail_first and count <= self.fail_first[mode][0]:
            status = self.fail_first[mode][1]
            return JSONResponse({"error": {"message": f"scripted {status}"}}, status_code=status,
                                headers={"retry-after": "0"} if status == 429 else None)
        if mode == "dying":  # an engine that dies: its first answer says why, the later ones only that it is gone
            first = count == 1
            return JSONResponse({"error": {"message": "EngineDeadError: the engine loop has died" if first
                                           else "Service Unavailable"}}, status_code=500 if first else 503)
        if mode == "notjson":  # a proxy's error page with status 200
            return PlainTextResponse("<html><body>502 Bad Gateway</body></html>")
        if mode == "nochoices":
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})
        if judge:
            content, finish, reasoning = judge_reply(prompt), "stop", None
        else:
            content, finish = MODES.get(mode, MODES["good"])(count)
            reasoning = "separate reasoning field" if mode == "good" else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        return JSONResponse({
            "id": f"cmpl-{len(self.prompts)}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split()),
                      "total_tokens": len(prompt.split()) + len(content.split())},
        })


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
