"""The LLM stages at scale against a simulated fleet: generate, judge and respond (three responders)
on N documents through the real stages (`longblocks.pipeline.run`: prompts, request cache, parsing,
parquet parts, manifests), the client spreading requests over K local servers that behave like a
thinking model's: seconds-scale lognormal latency and long outputs (reasoning, then the answer).

    python benchmarks/bench_fleet.py --docs 10000 --servers 4     # the figures in RESULTS.md
    python benchmarks/bench_fleet.py --docs 200 --smoke           # the script runs

TEST DOUBLE, not a model: each server (starlette + uvicorn, its own process on 127.0.0.1) sleeps a
lognormal time (median `--median-s`, sigma `--sigma`; a function of the prompt, so reruns meet
the same latencies) and answers a scripted completion in the stage's format behind
`<think>...</think>` of `--think-chars` characters (~4 characters per token: 32,000 is ~8k
reasoning tokens); the judge passes one pair of each document's two and fails the other. Real
time is compressed: a real 80B thinking model takes minutes per request (8k tokens at ~60 tokens/s
per request when 32 share a server), the simulation seconds; what it measures is the client:
wall time against the ideal (requests x mean latency / requests in flight), client CPU per request
and the client's peak memory, with thousands of documents of realistic length (`--doc-words`).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _local_server import free_port, wait_for_port  # noqa: E402

RESPONDERS = ("Qwen3-Next-80B-A3B", "Qwen3.5-27B", "Nemotron-3-Nano-30B-A3B")  # LongBlocks' columns

SERVER = r'''
import asyncio, hashlib, json, math, random, re, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
PORT, MEDIAN, SIGMA, THINK = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
PAIRS = ("1. Question: Which two results, from the opening and the closing sections, are compared?\n"
         "Answer: The early measurement and the final one.\n\n"
         "2. Question: How does the method described at the start change by the end?\nAnswer: It grows more precise.\n")
def judge(prompt):
    blocks = []
    for number, question in re.findall(r"Pair (\d+):\nQuestion: (.*)", prompt):
        bad = "method described" in question
        blocks.append(f"**Pair {number}:**\nwell_formed: yes\ncomplete: yes\nsupported: {'no' if bad else 'yes'}\n"
                      f"multi_span: yes\nself_contained: yes\nverdict: {'fail' if bad else 'pass'}\nreason: simulated")
    return "\n\n".join(blocks)
async def chat(request):
    body = json.loads(await request.body())
    prompt = body["messages"][-1]["content"]
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest())
    await asyncio.sleep(rng.lognormvariate(math.log(MEDIAN), SIGMA))
    if prompt.startswith("You are checking"):
        answer = judge(prompt)
    elif "Question:" in prompt and "Answer" not in prompt[-400:]:
        answer = "The early measurement and the final one, read together."
    else:
        answer = PAIRS
    content = "<think>" + ("Let me find the evidence in the document. " * (THINK // 42 + 1))[:THINK] + "</think>\n" + answer
    return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                                   "total_tokens": (len(prompt) + len(content)) // 4}})
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="error", backlog=4096)
'''


def write_documents(path: Path, n: int, words: int) -> Path:
    """n documents of about `words` words each, every one different (no cache or dedup shortcut)."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from longblocks.records import DOCUMENT_SCHEMA, make_document

    vocab = [f"w{i}" for i in range(5000)]
    path.mkdir(parents=True)
    rows = []
    for i in range(n):
        rng = random.Random(i)
        text = f"Document {i}. " + " ".join(rng.choices(vocab, k=words))
        rows.append(make_document(source="bench", language="en", text=text))
    pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), path / "docs.parquet", row_group_size=500)
    return path


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--servers", type=int, default=4, help="simulated servers (processes), the client spreads over them")
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight per model, over all servers")
    parser.add_argument("--median-s", type=float, default=2.0, help="median latency per request (seconds)")
    parser.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma of the latency")
    parser.add_argument("--think-chars", type=int, default=32_000, help="reasoning characters per completion")
    parser.add_argument("--doc-words", type=int, default=16_000, help="words per document (~21k tokens)")
    parser.add_argument("--smoke", action="store_true", help="short latencies, documents and outputs")
    args = parser.parse_args()
    if args.smoke:
        args.median_s, args.think_chars, args.doc_words, args.concurrency = 0.02, 2000, 500, 32
    from longblocks.config import GenerateSection, JudgeSection, RespondSection, ResponderConfig
    from longblocks.pipeline import run

    ports = [free_port() for _ in range(args.servers)]
    servers = [subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(args.median_s), str(args.sigma),
                                 str(args.think_chars)], stderr=subprocess.DEVNULL) for port in ports]
    urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
    try:
        for port in ports:
            wait_for_port(port)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            docs = write_documents(work / "docs", args.docs, args.doc_words)
            endpoint = dict(model="m", base_url=urls, concurrency=args.concurrency, timeout=600.0, max_tokens=16384)
            mean = args.median_s * math.exp(args.sigma ** 2 / 2)  # of a lognormal
            steps = [
                ("generate", GenerateSection(**endpoint, question_types=["multi_hop"], n_questions=2), [docs]),
                ("judge", JudgeSection(**endpoint), [work / "generate"]),
                ("respond", RespondSection([ResponderConfig(name=n, **endpoint) for n in RESPONDERS]),
                 [work / "judge"]),
            ]
            print(f"device: CPU, {os.cpu_count()} cores, {platform.machine()}, python {platform.python_version()}; "
                  f"{args.docs:,} documents of {args.doc_words:,} words; {args.servers} simulated servers (TEST DOUBLE), "
                  f"latency lognormal median {args.median_s} s sigma {args.sigma} (mean {mean:.2f} s), "
                  f"{args.think_chars:,} reasoning characters per completion; {args.concurrency} in flight per model")
            print("\n| stage | requests | wall (s) | ideal (s) | wall / ideal | client CPU ms/req | servers' CPU ms/req "
                  "| client peak RSS (MB) | kept |\n|---|---|---|---|---|---|---|---|---|")
            for name, section, inputs in steps:
                cpu, children, start = cpu_seconds(), sum(_server_cpu(p) for p in servers), time.perf_counter()
                manifest = run(name, section, inputs, work / name)
                wall = time.perf_counter() - start
                requests = _requests(name, manifest, work)
                in_flight = args.concurrency * (len(RESPONDERS) if name == "respond" else 1)
                ideal = requests * mean / in_flight
                server_cpu = sum(_server_cpu(p) for p in servers) - children
                kept = manifest["outputs"]["kept"]
                print(f"| {name} | {requests:,} | {wall:.1f} | {ideal:.1f} | {wall / ideal:.2f} | "
                      f"{1000 * (cpu_seconds() - cpu) / requests:.2f} | {1000 * server_cpu / requests:.2f} | "
                      f"{peak_rss_mb():.0f} | {kept:,} |", flush=True)
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            p.wait(timeout=10)


def _server_cpu(process: subprocess.Popen) -> float:
    """CPU seconds (user + sys) a server process has used so far, from /proc."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _requests(name: str, manifest: dict, work: Path) -> int:
    """Requests a stage sent: one per document (generate; judge: one per document with all its
    pairs), one per pair and responder (respond)."""
    consumed = manifest["inputs"]["consumed"]
    if name == "judge":
        import pyarrow.parquet as pq

        return len(set(pq.read_table(work / "generate" / "data", columns=["doc_id"]).column("doc_id").to_pylist()))
    return consumed * (len(RESPONDERS) if name == "respond" else 1)


if __name__ == "__main__":
    main()
