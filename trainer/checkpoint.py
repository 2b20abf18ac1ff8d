"""Checkpoints that resume exactly (model, optimizer, scheduler, RNG of every rank, data position)
with torch.distributed.checkpoint (sharded under FSDP2, plain in one process), and export as a
`save_pretrained` folder that transformers, vLLM and lm-evaluation-harness load.
Must not decide when to save: the recipes do.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

COMPLETE = "COMPLETE"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict[str, Any]:
    """Every generator's state in types `torch.load(weights_only=True)` reads (numpy's key array as a
    tensor): a checkpoint never needs unpickling arbitrary objects."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(cached)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         trainer_state: dict[str, Any]) -> Path:
    """Write `directory` (model/optimizer via DCP, scheduler, per-rank RNG, trainer state); a
    checkpoint counts only once its COMPLETE marker exists."""
    directory.mkdir(parents=True, exist_ok=True)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory / "dcp"))
    torch.save(rng_state(), directory / f"rng-rank{_rank()}.pt")
    if dist.is_initialized():
        dist.barrier()
    if _rank() == 0:
        torch.save(scheduler.state_dict(), directory / "scheduler.pt")
        (directory / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        (directory / COMPLETE).write_text("")
    if dist.is_initialized():
        dist.barrier()
    return directory


def complete(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, newest first."""
    done = [p for p in root.glob("step-*") if (p / COMPLETE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def latest(root: Path) -> Path | None:
    done = complete(root)
    return done[0] if done else None


def resume(root: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
           log: Any) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest complete checkpoint that reads (every rank agreeing); a damaged one (a
    truncated shard, a garbled file) is one line through `log` and the one before it is tried."""
    from trainer.config import ConfigError

    damaged: list[str] = []
    for directory in complete(root):
        try:
            state, problem = load(directory, model=model, optimizer=optimizer, scheduler=scheduler), ""
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 - DCP (a BaseException), pickle, JSON, OS
            state, problem = None, _first_line(exc)
        ok = torch.tensor([0 if problem else 1])
        if dist.is_initialized():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if int(ok) == 1 and state is not None:
            if damaged:
                log(f"[yellow]resuming from {directory}[/]: the newer {', '.join(damaged)} could not be read")
            return directory, state
        damaged.append(directory.name)
        log(f"[yellow]checkpoint {directory} cannot be read[/] ({problem or 'on another rank'}); trying the one before")
    if damaged:
        raise ConfigError(f"no checkpoint under {root} can be read ({', '.join(damaged)}): move {root} away to start "
                          "the run over")
    return None


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException):  # DCP wraps each rank's failure: name the first
        failures = list(getattr(exc, "failures", {}).values())
        exc = failures[0] if failures and isinstance(failures[0], BaseException) else exc
    text = next((line for line in str(exc).strip().splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:200]}"


def load(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(directory / "dcp"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(directory / f"rng-rank{_rank()}.pt", weights_only=True))
    return json.loads((directory / "trainer_state.json").read_text())


def prune(root: Path, keep: int) -> None:
    done = sorted((p for p in root.glob("step-*") if (p / COMPLETE).exists()), key=lambda p: int(p.name.split("-")[1]))
    if _rank() == 0:
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def export_pretrained(causal_lm: torch.nn.Module, tokenizer: Any, directory: Path, dtype: torch.dtype) -> Path:
    """A `save_pretrained` folder in the compute `dtype` (full weights gathered from every shard,
    cast from the fp32 master weights) plus the tokenizer."""
    full = get_model_state_dict(causal_lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        causal_lm.save_pretrained(directory, state_dict={k: v.to(dtype) for k, v in full.items()})
        config = copy.deepcopy(causal_lm.config)  # save_pretrained records the parameters' dtype (fp32)
        config.dtype = dtype
        config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    if dist.is_initialized():
        dist.barrier()
    return directory
