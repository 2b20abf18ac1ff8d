"""Fused log-prob / KL kernels: time and peak extra memory of forward+backward against naive
PyTorch and Liger-Kernel, plus the fraction of the cuBLAS GEMMs at the same shapes, all measured
in the same run. One command on the GPU machine:

    python benchmarks/bench_kernels.py                       # H=2048, V=151936, N=4k..64k, bf16
    python benchmarks/bench_kernels.py --device cpu --smoke  # tiny shapes, checks the script runs

Liger is optional (`pip install liger-kernel`); a missing baseline prints as "n/a".
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from trainer.kernels import full_vocab_kl, token_logprobs


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
        return f"error: {type(exc).__name__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="4096,16384,32768,65536")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--teacher-hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU check of the script)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.hidden, args.teacher_hidden, args.vocab, args.warmup, args.iters = "64,128", 64, 96, 1031, 1, 1
    dev = args.device
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({platform.machine()})"
    print(f"device: {name}; torch {torch.__version__}; H={args.hidden} Ht={args.teacher_hidden} V={args.vocab} {dtype}")
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, LigerFusedLinearJSDLoss
    except ImportError:
        LigerFusedLinearCrossEntropyLoss = LigerFusedLinearJSDLoss = None  # noqa: N806

    gen = torch.Generator(device=dev).manual_seed(0)
    weight = (torch.randn(args.vocab, args.hidden, device=dev, generator=gen) * 0.02).to(dtype).requires_grad_()
    t_weight = (torch.randn(args.vocab, args.teacher_hidden, device=dev, generator=gen) * 0.02).to(dtype)

    def fmt(result: tuple[float, float] | str, ref_ms: float | None = None) -> str:
        if isinstance(result, str):
            return result
        ms, gib = result
        ratio = f" ({ms / ref_ms:.2f}x ours)" if ref_ms else ""
        return f"{ms:.1f} ms, {gib:.2f} GiB{ratio}"

    print("\n| op | N | ours | naive PyTorch | Liger | cuBLAS GEMMs | ours / GEMMs |\n|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.n.split(",")):
        hidden = torch.randn(n, args.hidden, device=dev, generator=gen).to(dtype).requires_grad_()
        t_hidden = torch.randn(n, args.teacher_hidden, device=dev, generator=gen).to(dtype)
        targets = torch.randint(0, args.vocab, (n,), device=dev, generator=gen)
        adv = torch.randn(n, device=dev, generator=gen)

        def ours_lp() -> None:
            (token_logprobs(hidden, weight, targets) * adv).sum().backward()

        def naive_lp() -> None:
            lp = torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, targets[:, None])[:, 0]
            (lp * adv).sum().backward()

        def liger_lp() -> None:
            LigerFusedLinearCrossEntropyLoss(reduction="sum")(weight, hidden, targets).backward()

        def gemms_student() -> None:  # the three GEMMs of a forward+backward: X W^T, G W, G^T X
            z = hidden.detach() @ weight.detach().T
            _ = z @ weight.detach()
            _ = z.T @ hidden.detach()

        ours = guarded(lambda: timed(ours_lp, dev, args.warmup, args.iters))
        ref = ours[0] if not isinstance(ours, str) else None
        naive = guarded(lambda: timed(naive_lp, dev, args.warmup, args.iters))
        liger = guarded(lambda: timed(liger_lp, dev, args.warmup, args.iters)) if LigerFusedLinearCrossEntropyLoss else "n/a"
        gemm = guarded(lambda: timed(gemms_student, dev, args.warmup, args.iters))
        frac = f"{gemm[0] / ours[0]:.0%}" if not isinstance(gemm, str) and ref else "-"
        print(f"| token_logprobs | {n} | {fmt(ours)} | {fmt(naive, ref)} | {fmt(liger, ref)} | {fmt(gemm)} | {frac} |")

        def ours_kl() -> None:
            (full_vocab_kl(hidden, weight, t_hidden, t_weight) * adv).sum().backward()

        def naive_kl() -> None:
            s = torch.log_softmax((hidden @ weight.T).float(), -1)
            t = torch.log_softmax((t_hidden @ t_weight.T).float(), -1)
            ((s.exp() * (s - t)).sum(-1) * adv).sum().backward()

        def liger_kl() -> None:
            LigerFusedLinearJSDLoss(jsd_beta=1.0)(hidden, weight, t_hidden, t_weight).backward()

        def gemms_kl() -> None:
            gemms_student()
            _ = t_hidden @ t_weight.T

        ours = guarded(lambda: timed(ours_kl, dev, args.warmup, args.iters))
        ref = ours[0] if not isinstance(ours, str) else None
        naive = guarded(lambda: timed(naive_kl, dev, args.warmup, args.iters))
        liger = guarded(lambda: timed(liger_kl, dev, args.warmup, args.iters)) if LigerFusedLinearJSDLoss else "n/a"
        gemm = guarded(lambda: timed(gemms_kl, dev, args.warmup, args.iters))
        frac = f"{gemm[0] / ours[0]:.0%}" if not isinstance(gemm, str) and ref else "-"
        print(f"| full_vocab_kl | {n} | {fmt(ours)} | {fmt(naive, ref)} | {fmt(liger, ref)} | {fmt(gemm)} | {frac} |")
        del hidden, t_hidden
        weight.grad = None


if __name__ == "__main__":
    main()
