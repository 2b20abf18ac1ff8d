"""The policy head against Liger-Kernel, naive PyTorch and the cuBLAS GEMMs it runs, all measured
in the same run: time and peak extra memory of forward+backward for
  (a) the sampled-token log-prob alone (advantage-weighted)    vs Liger FusedLinearCrossEntropy
  (b) the full-vocabulary reverse KL to a teacher head          vs Liger FusedLinearJSD(beta=1)
  (c) the dGRPO head: log-prob + entropy + full KL in one call  vs Liger GRPO loss + Liger JSD
  (d) the generalized JSD (b = 0.5) to a teacher head           vs Liger FusedLinearJSD(beta=0.5)
"GEMMs" is the same set of cuBLAS GEMMs our recompute design runs (student: X W^T twice, dZ W,
dZ^T X; teacher: Xt Wt^T twice), bf16 in / fp32 out, timed alone: the practical roofline.
"3-GEMM" is the student's three GEMMs of a design that needs no recompute.

    python benchmarks/bench_kernels.py --json out/kernels.json   # H=2048, V=151936, N=4k..64k, bf16
    python benchmarks/bench_kernels.py --device cpu --smoke      # tiny shapes, checks the script runs

Liger is optional (carry the `liger-kernel` wheel); a missing baseline prints as "n/a".
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.kernels import policy_head


def timed(fn: Callable[[], None], device: str, warmup: int, iters: int) -> tuple[float, float]:
    """(milliseconds per call, peak extra GiB over what was allocated before)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters, (torch.cuda.max_memory_allocated() - base) / 2**30
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1000 / iters, float("nan")


def guarded(fn: Callable[[], tuple[float, float]]) -> tuple[float, float] | str:
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM"
    except Exception as exc:  # a baseline that breaks is reported, not fatal
        return f"error: {type(exc).__name__}: {str(exc)[:80]}"


def mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_cuda and a.dtype != torch.float32:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def liger_ops() -> dict[str, object]:
    """Liger's ops as ANCHORS.md measured them (chunked losses with compiled=False: compiled=True
    crashed inside torch.compile on that stack)."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss, LigerFusedLinearJSDLoss
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return {}
    return {"flce": LigerFusedLinearCrossEntropyLoss(reduction="sum"),
            "jsd": LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=1.0, compiled=False),
            "jsd_half": LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=False),
            "grpo": LigerFusedLinearGRPOLoss(beta=0.04, use_ref_model=True, compiled=False, chunk_size=1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="4096,16384,32768,65536")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--teacher-hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--naive-max-n", type=int, default=16384, help="skip naive PyTorch above this N (it OOMs)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU check of the script)")
    parser.add_argument("--plan", default="", help="only these cases at these N, e.g. anchors: a@16384,a@65536,"
                        "b@32768,c@32768 (case letter @ N); default every case at every --n")
    args = parser.parse_args()
    if args.plan == "anchors":  # the figures the anchors compare: log-prob at 16k and 64k, full KL and the head at 32k
        args.plan = "a@16384,a@65536,b@32768,c@32768"
    plan = {(item.split("@")[0], int(item.split("@")[1])) for item in args.plan.split(",") if item}
    if args.smoke:
        args.n, args.hidden, args.teacher_hidden, args.vocab, args.warmup, args.iters = "64,128", 64, 96, 1031, 1, 1
        plan = {(letter, 64 if n <= 16384 else 128) for letter, n in plan}
    if plan:
        args.n = ",".join(str(n) for n in sorted({n for _, n in plan}))
    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({platform.machine()})"
    header = {"device": name, "torch": torch.__version__, "hidden": args.hidden, "teacher_hidden": args.teacher_hidden,
              "vocab": args.vocab, "dtype": str(dtype)}
    print(f"device: {name}; torch {torch.__version__}; H={args.hidden} Ht={args.teacher_hidden} V={args.vocab} {dtype}")
    liger = liger_ops()
    records: list[dict[str, object]] = []

    gen = torch.Generator(device=dev).manual_seed(0)
    weight = (torch.randn(args.vocab, args.hidden, device=dev, generator=gen) * 0.02).to(dtype).requires_grad_()
    t_weight = (torch.randn(args.vocab, args.teacher_hidden, device=dev, generator=gen) * 0.02).to(dtype)

    def fmt(result: tuple[float, float] | str, ref_ms: float | None = None) -> str:
        if isinstance(result, str):
            return result
        ms, gib = result
        ratio = f" ({ms / ref_ms:.2f}x ours)" if ref_ms else ""
        return f"{ms:.1f} ms, {gib:.2f} GiB{ratio}"

    print("\n| case | N | ours | Liger | naive PyTorch | GEMMs (ours run) | GEMMs / ours | 3-GEMM / ours |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        hidden = torch.randn(n, args.hidden, device=dev, generator=gen).to(dtype).requires_grad_()
        t_hidden = torch.randn(n, args.teacher_hidden, device=dev, generator=gen).to(dtype)
        targets = torch.randint(0, args.vocab, (n,), device=dev, generator=gen)
        adv = torch.randn(n, device=dev, generator=gen)
        x, w, xt, wt = hidden.detach(), weight.detach(), t_hidden, t_weight

        def student_gemms(recompute: bool = True) -> None:
            z = mm32(x, w.T)
            if recompute:
                z = mm32(x, w.T)
            dz = z.to(dtype)
            _ = mm32(dz, w)
            _ = mm32(dz.T, x)

        def teacher_gemms() -> None:
            _ = mm32(xt, wt.T)
            _ = mm32(xt, wt.T)

        cases: dict[str, dict[str, Callable[[], None]]] = {
            "(a) log-prob": {
                "ours": lambda: (policy_head(hidden, weight, targets).logprobs * adv).sum().backward(),
                "liger": (lambda: liger["flce"](weight, hidden, targets).backward()) if liger else None,
                "naive": lambda: (torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, targets[:, None])[:, 0]
                                  * adv).sum().backward(),
                "gemms": student_gemms,
            },
            "(b) full KL": {
                "ours": lambda: (policy_head(hidden, weight, None, teacher_hidden=t_hidden, teacher_weight=t_weight).kl
                                 * adv).sum().backward(),
                "liger": (lambda: liger["jsd"](hidden, weight, t_hidden, t_weight, targets).backward()) if liger else None,
                "naive": lambda: naive_kl(hidden, weight, t_hidden, t_weight, adv),
                "gemms": lambda: (student_gemms(), teacher_gemms()),
            },
            "(c) dGRPO head": {
                "ours": lambda: dgrpo_head(hidden, weight, targets, t_hidden, t_weight, adv),
                "liger": (lambda: liger_pair(liger, hidden, weight, targets, t_hidden, t_weight, adv)) if liger else None,
                "naive": None,
                "gemms": lambda: (student_gemms(), teacher_gemms()),
            },
            "(d) JSD b=0.5": {
                "ours": lambda: (policy_head(hidden, weight, None, teacher_hidden=t_hidden, teacher_weight=t_weight,
                                             direction="jsd", jsd_beta=0.5).kl * adv).sum().backward(),
                "liger": (lambda: liger["jsd_half"](hidden, weight, t_hidden, t_weight, targets).backward()) if liger else None,
                "naive": None,
                "gemms": lambda: (student_gemms(), teacher_gemms()),
            },
        }
        for case, fns in cases.items():
            if plan and (case[1], n) not in plan:
                continue
            row: dict[str, tuple[float, float] | str] = {}
            for impl in ("ours", "liger", "naive", "gemms"):
                fn = fns[impl]
                if fn is None or (impl == "naive" and n > args.naive_max_n):
                    row[impl] = "n/a"
                else:
                    row[impl] = guarded(lambda fn=fn: timed(fn, dev, args.warmup, args.iters))
                    weight.grad = hidden.grad = None
                result = row[impl]
                records.append({**header, "case": case, "n": n, "impl": impl,
                                **({"ms": result[0], "gib": result[1]} if not isinstance(result, str) else {"error": result})})
            three = guarded(lambda: timed(lambda: student_gemms(recompute=False), dev, args.warmup, args.iters))
            ours = row["ours"]
            ref = ours[0] if not isinstance(ours, str) else None
            frac = f"{row['gemms'][0] / ref:.0%}" if ref and not isinstance(row["gemms"], str) else "-"
            frac3 = f"{three[0] / ref:.0%}" if ref and not isinstance(three, str) and case.startswith("(a)") else "-"
            print(f"| {case} | {n} | {fmt(ours)} | {fmt(row['liger'], ref)} | {fmt(row['naive'], ref)} | "
                  f"{fmt(row['gemms'])} | {frac} | {frac3} |")
        del hidden, t_hidden
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))


def naive_kl(hidden: torch.Tensor, weight: torch.Tensor, t_hidden: torch.Tensor, t_weight: torch.Tensor,
             adv: torch.Tensor) -> None:
    s = torch.log_softmax((hidden @ weight.T).float(), -1)
    t = torch.log_softmax((t_hidden @ t_weight.T).float(), -1)
    ((s.exp() * (s - t)).sum(-1) * adv).sum().backward()


def dgrpo_head(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, t_hidden: torch.Tensor,
               t_weight: torch.Tensor, adv: torch.Tensor) -> None:
    out = policy_head(hidden, weight, targets, teacher_hidden=t_hidden, teacher_weight=t_weight, entropy=True)
    ((out.logprobs * adv).sum() + 0.01 * out.entropy.sum() + 0.1 * out.kl.sum()).backward()


def liger_pair(liger: dict[str, object], hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               t_hidden: torch.Tensor, t_weight: torch.Tensor, adv: torch.Tensor) -> None:
    """What a trainer would run with Liger for the same loss: its GRPO loss (TRL's) for the clipped
    surrogate with a reference term, then its JSD for the teacher, each paying the student's GEMM."""
    n = hidden.shape[0]
    ref_logps = torch.zeros(1, n, device=hidden.device)
    loss, _ = liger["grpo"](hidden[None], weight, targets[None], torch.ones(1, n, device=hidden.device), adv[:1],
                            ref_per_token_logps=ref_logps)
    (loss + liger["jsd"](hidden, weight, t_hidden, t_weight, targets)).backward()


if __name__ == "__main__":
    main()
