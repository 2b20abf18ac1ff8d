"""Process-group setup and FSDP2 sharding for runs under torchrun; a single process otherwise.
Must not change numerics: one process and N processes see the same global batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initializes the process group under torchrun (nccl on CUDA,
    gloo on CPU)."""
    if "RANK" not in os.environ or dist.is_initialized():
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    else:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def world_size() -> int:
    """The world size before or after `init` (WORLD_SIZE under torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def shard(model: nn.Module, decoder_layers: nn.ModuleList) -> nn.Module:
    """FSDP2: each decoder layer its own group, then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

