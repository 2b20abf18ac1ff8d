"""Throughput of the `openai` backend under a model's latencies, beside a bare completion-order
`AsyncOpenAI` loop measured in the same run, alone and through the real `generate` and `respond`
stages (parsing, parquet parts, manifests and the request cache included).

    python benchmarks/bench_openai_backend.py --latency lognormal --concurrency 64,256
    python benchmarks/bench_openai_backend.py --latency straggler --concurrency 64,256
    python benchmarks/bench_openai_backend.py --latency none            # client overhead only

The server (starlette + uvicorn, a separate process on 127.0.0.1) sleeps before each answer:
`lognormal`: median 50 ms, sigma 1 (a heavy tail: 1% of requests over 0.5 s); `straggler`: 50 ms,
and 2% of the requests 100x that (5 s); `none`: no sleep. The latency of a request is a function of
its prompt, so every contender meets the same latencies. The bare loop keeps `concurrency`
requests in flight and takes results as they complete, in no order: the best a client can do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _local_server import free_port, wait_for_port  # noqa: E402

SERVER = r'''
import asyncio, hashlib, json, math, random, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
LATENCY = sys.argv[2]
ANSWER = "Question: Which two facts, far apart, explain the result?\nAnswer: The first and the last fact together."
def delay(prompt):
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest())
    if LATENCY == "lognormal":
        return rng.lognormvariate(math.log(0.05), 1.0)
    if LATENCY == "straggler":
        return 5.0 if rng.random() < 0.02 else 0.05
    return 0.0
async def chat(request):
    body = json.loads(await request.body())
    wait = delay(json.dumps(body["messages"]))
    if wait:
        await asyncio.sleep(wait)
    return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", backlog=4096)
'''


def documents(n: int, seed: int) -> list[dict]:
    from longblocks.records import make_document

    return [make_document(source="bench", language="en", text=f"Document {seed}-{i}. " + "Some long text. " * 40)
            for i in range(n)]


def write_docs(path: Path, docs: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longblocks.records import DOCUMENT_SCHEMA

    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(docs, schema=DOCUMENT_SCHEMA), path / "docs.parquet")
    return path


def measured(fn) -> tuple[float, float]:  # noqa: ANN001
    """(what `fn` returns, the CPU seconds (user + sys) this process spent in it)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    value = fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return value, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def spread(values: list[float], fmt: str) -> str:
    """`median [min-max]`, or the value alone for one repeat."""
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{median:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def sampling():  # noqa: ANN201
    from longblocks.backends import Sampling

    return Sampling(temperature=0.6, top_p=0.95, max_tokens=64, seed=0)


async def bare_loop(base_url: str, prompts: list[list[dict]], concurrency: int) -> float:
    """`concurrency` requests in flight, results taken as they complete: requests per second."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=6, timeout=600.0)
    sem = asyncio.Semaphore(concurrency)
    s = sampling()

    async def one(messages: list[dict]) -> str:
        async with sem:
            r = await client.chat.completions.create(model="m", messages=messages, temperature=s.temperature,
                                                     top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)
            return r.choices[0].message.content

    start = time.perf_counter()
    done = 0
    for finished in asyncio.as_completed([one(m) for m in prompts]):
        done += bool(await finished)
    elapsed = time.perf_counter() - start
    await client.close()
    assert done == len(prompts)
    return len(prompts) / elapsed


def backend_alone(base_url: str, prompts: list[list[dict]], concurrency: int) -> float:
    from longblocks.backends import OpenAIBackend

    backend = OpenAIBackend("m", base_url=base_url, concurrency=concurrency, timeout=600.0, max_retries=6,
                            sampling=sampling())
    start = time.perf_counter()
    done = sum(1 for _, c in backend.map_ordered(prompts, lambda m: m) if c.text)
    elapsed = time.perf_counter() - start
    backend.close()
    assert done == len(prompts)
    return len(prompts) / elapsed


def through_stage(stage: str, base_url: str, docs_dir: Path, n: int, concurrency: int, work: Path) -> float:
    """Requests per second of a whole stage run (no request cache hits: a fresh directory)."""
    from longblocks.config import GenerateSection, RespondSection, ResponderConfig
    from longblocks.pipeline import run

    endpoint = dict(model="m", base_url=base_url, concurrency=concurrency, timeout=600.0, temperature=0.6,
                    top_p=0.95, max_tokens=64)
    start = time.perf_counter()
    if stage == "generate":
        manifest = run("generate", GenerateSection(**endpoint, question_types=["summary"], n_questions=1), [docs_dir],
                       work / "generate", part_size=500)
    else:
        manifest = run("respond", RespondSection([ResponderConfig(name="bench", **endpoint)]), [docs_dir],
                       work / "respond", part_size=500)
    elapsed = time.perf_counter() - start
    assert manifest["inputs"]["consumed"] == n, manifest["inputs"]
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", choices=("none", "lognormal", "straggler"), default="lognormal")
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--concurrency", default="64,256")
    parser.add_argument("--repeats", type=int, default=3, help="each side measured this many times, alternating "
                        "bare and ours; the median and the range are reported (the 2 cores are shared with the server)")
    parser.add_argument("--paths", default="backend,generate,respond", help="what runs our side: the backend "
                        "alone, and the generate and respond stages")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), args.latency], stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_port(port, seconds=10)
        print(f"device: CPU, {os.cpu_count()} cores, {platform.machine()}, python {platform.python_version()}; "
              f"server: uvicorn+starlette in a separate process, latency {args.latency}; {args.requests} requests "
              f"per measurement, {args.repeats} repeats alternating bare and ours, median [min-max]; ratio = ours / bare "
              f"per repeat; CPU = the client process's user+sys seconds per request (the server's excluded); "
              f"bare = AsyncOpenAI + semaphore, results in completion order")
        print("\n| latency | concurrency | ours | bare loop (req/s) | ours (req/s) | ratio | bare CPU ms/req "
              "| ours CPU ms/req |\n|---|---|---|---|---|---|---|---|")
        for run, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                docs = documents(args.requests, seed=run)
                docs_dir = write_docs(work / "docs", docs)
                from longblocks.qa import generation_messages
                from longblocks.respond import respond_messages

                for path in args.paths.split(","):
                    if path == "respond":  # the respond stage reads QA records: a generate stage's output
                        generate_dir = work / "qa" / "generate"
                        if not generate_dir.exists():
                            through_stage("generate", base_url, docs_dir, args.requests, concurrency, work / "qa")
                        import pyarrow.parquet as pq

                        records = pq.read_table(generate_dir / "data").to_pylist()
                        prompts = [respond_messages(r) for r in records]
                    else:
                        prompts = [generation_messages(d, "summary", 1) for d in docs]
                    bare, mine = [], []  # (requests/s, client CPU s) per repeat
                    for repeat in range(args.repeats):  # a fresh stage directory each time: no cache hits
                        bare.append(measured(lambda: asyncio.run(bare_loop(base_url, prompts, concurrency))))
                        if path == "backend":
                            mine.append(measured(lambda: backend_alone(base_url, prompts, concurrency)))
                        elif path == "generate":
                            mine.append(measured(lambda: through_stage(
                                "generate", base_url, docs_dir, args.requests, concurrency, work / f"gen-run-{repeat}")))
                        else:
                            mine.append(measured(lambda: through_stage(
                                "respond", base_url, generate_dir, len(records), concurrency,
                                work / f"respond-run-{repeat}")))
                    n = len(prompts)
                    ratios = [m[0] / b[0] for b, m in zip(bare, mine)]
                    print(f"| {args.latency} | {concurrency} | {path} | {spread([b[0] for b in bare], '.0f')} | "
                          f"{spread([m[0] for m in mine], '.0f')} | {spread(ratios, '.2f')} | "
                          f"{spread([1000 * b[1] / n for b in bare], '.2f')} | {spread([1000 * m[1] / n for m in mine], '.2f')} |",
                          flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
