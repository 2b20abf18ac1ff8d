"""Throughput of the `openai` backend against a fast local OpenAI-compatible server, compared in
the same run with a bare `AsyncOpenAI` + `asyncio.Semaphore` loop (target: within 10%).

    python benchmarks/bench_openai_backend.py --requests 4000 --concurrency 256,1024

The server (starlette + uvicorn, separate process, 127.0.0.1) answers every chat request at once
with a fixed completion, so the numbers measure client overhead, not a model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import time

SERVER = r'''
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
BODY = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Question: q?\nAnswer: a."},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
async def chat(request):
    await request.body()
    return JSONResponse(BODY)
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", backlog=4096)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"request {i}: write questions"}]


async def bare_loop(base_url: str, n: int, concurrency: int) -> float:
    from openai import AsyncOpenAI

    # Same timeout and retries as the backend under test: a fair baseline, not a fragile one.
    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=6, timeout=600.0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with sem:
            r = await client.chat.completions.create(model="m", messages=messages(i), temperature=0.6, top_p=0.95,
                                                     max_tokens=64, seed=0)
            return r.choices[0].message.content

    start = time.perf_counter()
    out = await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    await client.close()
    assert len(out) == n
    return n / elapsed


def ours(base_url: str, n: int, concurrency: int) -> float:
    from longblocks.backends import OpenAIBackend, Sampling

    backend = OpenAIBackend("m", base_url=base_url, concurrency=concurrency, timeout=600.0, max_retries=6,
                            sampling=Sampling(temperature=0.6, top_p=0.95, max_tokens=64, seed=0))
    start = time.perf_counter()
    done = sum(1 for _, c in backend.map_ordered(range(n), messages) if c.text)
    elapsed = time.perf_counter() - start
    backend.close()
    assert done == n
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", default="256,1024")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        print(f"device: CPU, {os.cpu_count()} cores, {platform.machine()}, python {platform.python_version()}; "
              f"server: uvicorn+starlette in a separate process; {args.requests} requests per run, best of {args.repeats}")
        print("\n| concurrency | bare AsyncOpenAI + semaphore (req/s) | longblocks openai backend (req/s) | ratio |\n|---|---|---|---|")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            bare = max(asyncio.run(bare_loop(base_url, args.requests, concurrency)) for _ in range(args.repeats))
            mine = max(ours(base_url, args.requests, concurrency) for _ in range(args.repeats))
            print(f"| {concurrency} | {bare:.0f} | {mine:.0f} | {mine / bare:.2f} |")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
