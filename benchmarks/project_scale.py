"""LongBlocks' LLM stages at the paper's scale, projected: requests, tokens, server-hours and wall time
of generate, judge and respond (three responders) for the published 193,894 rows on N GPU servers.

Nothing here is measured: it is arithmetic over a published vLLM serving figure and over stated
assumptions, each a flag, so a reader can put in their own numbers (and a measured one replaces
an assumed one when the GPU campaign or a real run gives it):

    python benchmarks/project_scale.py                       # the defaults below
    python benchmarks/project_scale.py --servers 16,64 --prefill-cost 0.2

The serving figure. Lambda's published `vllm bench serve` of Qwen3-Coder-Next (80B total, 3B active:
the Qwen3-Next architecture of the paper's generator and judge) on 4 x H100, 8,192 input and 1,024
output tokens per request, 32 requests in flight: 1,810 and 2,180 output tokens/s in its two runs
(https://lambda.ai/inference-models/qwen/qwen3-coder-next). One server = those 4 GPUs.

The cost model. A request costs the server `prefill_cost * input + output` decode-token units,
`--prefill-cost` being what one prefilled token costs against one decoded token at this load
(an assumption: prefill runs as large matmuls, decode is bound by memory bandwidth; 0.1 by default,
0.05 and 0.2 shown beside it). The figure fixes the rate of units per second:
output/s x (prefill_cost x 8192 + 1024) / 1024. Long prompts also cost attention quadratic in
their length; Qwen3-Next's linear-attention layers (3 of 4) keep that small, and the model
ignores it.

The pipeline's shape (flags): the published rows divided by the pairs asked per document
(`[generate] n_questions` = 3), the share of asked pairs generate writes and the share the judge
keeps give the documents to generate; every document is one generate request and one judge
request (all its pairs), every kept pair one request per responder, its document prefilled again
each time (no prefix caching: unreliable with Qwen3-Next's hybrid attention). Document length: the
published rows hold ~95 KB each (`shared/ANCHORS.md`), mostly the document: ~21k tokens at ~4 bytes
per token. Output lengths are a thinking model's reasoning plus its answer.
"""

from __future__ import annotations

import argparse

ROWS = 193_894
FIGURE_OUTPUT_PER_S = (1810.0, 2180.0)  # Lambda, Qwen3-Coder-Next on 4 x H100, 8192 in / 1024 out, 32 in flight
FIGURE_IN, FIGURE_OUT, FIGURE_GPUS = 8192, 1024, 4


def units_per_second(output_per_s: float, prefill_cost: float) -> float:
    """Decode-token units one server processes per second at the figure's load."""
    return output_per_s * (prefill_cost * FIGURE_IN + FIGURE_OUT) / FIGURE_OUT


def stages(args: argparse.Namespace) -> list[tuple[str, float, float, float, float]]:
    """(stage, requests, input tokens, output tokens, relative server speed) per LLM stage."""
    docs = args.rows / (args.n_questions * args.generate_yield * args.judge_keep)
    prompt_overhead = 600  # the instructions and format of each prompt, in tokens
    pair_tokens = 200  # one question and its answer, as the judge reads them
    rows = [
        ("generate", docs, docs * (args.doc_tokens + prompt_overhead), docs * args.generate_output, 1.0),
        ("judge", docs, docs * (args.doc_tokens + prompt_overhead + pair_tokens * args.n_questions * args.generate_yield),
         docs * args.judge_output, 1.0),
    ]
    for name, speed in (("respond: Qwen3-Next-80B-A3B", 1.0), ("respond: Nemotron-3-Nano-30B-A3B", 1.0),
                        ("respond: Qwen3.5-27B (dense)", args.dense_speed)):
        rows.append((name, args.rows, args.rows * (args.doc_tokens + prompt_overhead), args.rows * args.respond_output,
                     speed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS, help="published rows (LongBlocks: 193,894)")
    parser.add_argument("--n-questions", type=int, default=3, help="pairs asked per document ([generate] n_questions)")
    parser.add_argument("--generate-yield", type=float, default=0.9, help="share of asked pairs generate writes (assumed)")
    parser.add_argument("--judge-keep", type=float, default=0.6, help="share of written pairs the judge keeps (assumed)")
    parser.add_argument("--doc-tokens", type=int, default=21_000, help="mean document tokens (~95 KB per published row)")
    parser.add_argument("--generate-output", type=int, default=8_000, help="generator output tokens per document (assumed)")
    parser.add_argument("--judge-output", type=int, default=6_000, help="judge output tokens per document (assumed)")
    parser.add_argument("--respond-output", type=int, default=4_000, help="output tokens per answer (assumed)")
    parser.add_argument("--dense-speed", type=float, default=0.33, help="the dense 27B responder's speed against the "
                        "3B-active MoE models' per server (assumed: no published figure in our sources)")
    parser.add_argument("--prefill-cost", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                        help="one prefilled token's cost in decoded tokens (assumed; several: one table each)")
    parser.add_argument("--servers", default="8,32,128", help="4-GPU servers running the stages, comma-separated")
    args = parser.parse_args()
    servers = [int(s) for s in args.servers.split(",")]
    table = stages(args)
    docs = table[0][1]
    print(f"projection, not a measurement: {args.rows:,} rows from {docs:,.0f} documents of {args.doc_tokens:,} tokens; "
          f"serving figure {FIGURE_OUTPUT_PER_S[0]:,.0f}-{FIGURE_OUTPUT_PER_S[1]:,.0f} output tok/s per "
          f"{FIGURE_GPUS} x H100 at {FIGURE_IN:,} in / {FIGURE_OUT:,} out (Lambda, Qwen3-Coder-Next); stages run one "
          "after another, each on all the servers")
    for prefill_cost in args.prefill_cost:
        low, high = (units_per_second(f, prefill_cost) for f in FIGURE_OUTPUT_PER_S)
        print(f"\nprefill cost {prefill_cost} decode tokens per prompt token: {low:,.0f}-{high:,.0f} units/s per server\n")
        head = " | ".join(f"wall on {n} servers (h)" for n in servers)
        print(f"| stage | requests | input (B tokens) | output (B tokens) | GPU-hours | {head} |")
        print("|---|---|---|---|---|" + "---|" * len(servers))
        total_hours = [0.0, 0.0]
        for name, requests, tokens_in, tokens_out, speed in table:
            units = prefill_cost * tokens_in + tokens_out
            hours = [units / (rate * speed) / 3600 for rate in (high, low)]  # server-hours, best and worst figure
            total_hours = [t + h for t, h in zip(total_hours, hours)]
            walls = " | ".join(f"{hours[0] / n:,.1f}-{hours[1] / n:,.1f}" for n in servers)
            print(f"| {name} | {requests:,.0f} | {tokens_in / 1e9:.2f} | {tokens_out / 1e9:.2f} | "
                  f"{hours[0] * FIGURE_GPUS:,.0f}-{hours[1] * FIGURE_GPUS:,.0f} | {walls} |")
        walls = " | ".join(f"{total_hours[0] / n:,.1f}-{total_hours[1] / n:,.1f}" for n in servers)
        print(f"| all LLM stages | | | | {total_hours[0] * FIGURE_GPUS:,.0f}-{total_hours[1] * FIGURE_GPUS:,.0f} | {walls} |")


if __name__ == "__main__":
    main()
