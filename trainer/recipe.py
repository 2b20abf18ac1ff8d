"""What both recipes do before their loop: process group, seeds, the resolved config saved to
run.out, tokenizer, the student wrapped for fused log-probs (FSDP2-sharded under torchrun),
AdamW and a warmup + cosine schedule. Must not hold anything specific to SFT or RL.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from trainer import distributed
from trainer.config import ModelConfig, OptimConfig, RunConfig, to_dict
from trainer.metrics import MetricsLogger
from trainer.model import FusedLogprobLM, load_causal_lm, load_tokenizer, resolve_dtype

console = Console(stderr=True)


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Setup:
    rank: int
    world: int
    device: torch.device
    out: Path
    tokenizer: Any
    causal_lm: Any
    model: FusedLogprobLM
    optimizer: torch.optim.Optimizer
    scheduler: Any
    compute_dtype: torch.dtype
    sharded: bool

    def autocast(self) -> Any:
        """Where the forward/backward runs: in one process, autocast to the compute dtype over the
        fp32 master weights; under FSDP2 the mixed-precision policy casts (nothing more to do)."""
        if self.sharded or self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)


def setup(cfg: Any, *, optimizer_steps: int) -> Setup:
    """`cfg` has `model: ModelConfig`, `optim: OptimConfig`, `run: RunConfig` sections."""
    model_cfg, optim, run = cfg.model, cfg.optim, cfg.run
    assert isinstance(model_cfg, ModelConfig) and isinstance(optim, OptimConfig) and isinstance(run, RunConfig)
    rank, world, device = distributed.init(single_process_group=model_cfg.cpu_offload)
    seed_everything(run.seed)
    out = Path(run.out)
    tokenizer = load_tokenizer(model_cfg)
    causal_lm = load_causal_lm(model_cfg, device)  # fp32 master weights
    if rank == 0:  # only a run that starts leaves its resolved config behind
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        console.print_json(json.dumps(to_dict(cfg)))
    compute_dtype = resolve_dtype(model_cfg.dtype, device)
    model = FusedLogprobLM(causal_lm)
    sharded = world > 1 or model_cfg.cpu_offload
    if sharded:
        distributed.shard(model, causal_lm.get_decoder().layers, compute_dtype=compute_dtype,
                          cpu_offload=model_cfg.cpu_offload)
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(
        s, warmup=optim.warmup_steps, total=optimizer_steps, min_ratio=optim.min_lr_ratio))
    return Setup(rank, world, device, out, tokenizer, causal_lm, model, optimizer, scheduler, compute_dtype, sharded)


def open_metrics(cfg: Any, rank: int, resumed_step: int) -> MetricsLogger:
    """The run's metrics sinks (rank 0 writes), without lines a killed run logged past `resumed_step`."""
    metrics = MetricsLogger(Path(cfg.run.out), enabled=rank == 0, tensorboard=cfg.run.tensorboard,
                            wandb=cfg.run.wandb, project=cfg.run.wandb_project, config=to_dict(cfg))
    metrics.truncate_after(resumed_step)
    return metrics

