"""Which implementation a fused op runs: Triton on CUDA (or on CPU under TRITON_INTERPRET=1),
chunked PyTorch otherwise. Must not import triton where it is absent.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(backend: str, tensor: torch.Tensor) -> str:
    """`auto` is Triton on CUDA tensors and chunked torch elsewhere; `triton` on CPU needs the
    interpreter (TRITON_INTERPRET=1 set before triton is imported)."""
    backend = os.environ.get("DGRPO_KERNEL_BACKEND", backend)
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' but triton is not installed")
        if not tensor.is_cuda and not interpret_mode():
            raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before importing triton")
    return backend
