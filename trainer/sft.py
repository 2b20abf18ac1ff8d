"""`dgrpo-train sft`: the supervised cold start on a token-level short/long mixture. Reads top to
bottom: setup, loop, checkpoint, export. Must not hold component logic (data, kernels,
checkpointing live in their own modules).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from rich.console import Console

from longblocks.progress import reporter

from trainer import checkpoint, distributed
from trainer.config import SFTConfig
from trainer.data import IGNORE, MixtureState, SFTData
from trainer.recipe import open_metrics, setup

console = Console(stderr=True)


@distributed.tears_down
def train(cfg: SFTConfig) -> dict[str, Any]:
    # -- setup ----------------------------------------------------------------------------------
    run = setup(cfg, optimizer_steps=cfg.optim.steps)
    rank, world, device, out = run.rank, run.world, run.device, run.out
    tokenizer, causal_lm, model, optimizer, scheduler = run.tokenizer, run.causal_lm, run.model, run.optimizer, run.scheduler
    data = SFTData(cfg.data, tokenizer)
    step = 0
    ckpt_root = out / "checkpoints"
    if (resumed := checkpoint.resume(ckpt_root, model=model, optimizer=optimizer, scheduler=scheduler,
                                     log=console.print if rank == 0 else lambda line: None)) is not None:
        last, state = resumed
        step = state["step"]
        data.state = MixtureState(**{**state["data"], "pending": tuple(state["data"]["pending"])
                                      if state["data"]["pending"] else None})
        if rank == 0:
            console.print(f"resumed from {last} (step {step})")
    metrics = open_metrics(cfg, rank, step)
    batches = data.micro_batches(cfg.optim.tokens_per_step, cfg.optim.packs_multiple_of or world)
    losses: list[float] = []

    # -- loop -----------------------------------------------------------------------------------
    with reporter(console, quiet=rank != 0) as progress:
        progress("sft", step, cfg.optim.steps, resumed=1)
        while step < cfg.optim.steps:
            started = time.perf_counter()
            packs = next(batches)
            trained = sum(sum(label != IGNORE for label in p["labels"][1:]) for p in packs)
            local_nll = torch.zeros((), device=device)
            model.train()
            for pack in packs[rank::world]:
                ids = torch.tensor([pack["input_ids"]], device=device)
                positions = torch.tensor([pack["position_ids"]], device=device)
                mask = torch.tensor([pack["labels"][1:]], device=device) != IGNORE
                with run.autocast():
                    logprobs = model(ids, positions, mask=mask).logprobs
                nll = -logprobs.sum()
                # Sum over every token of the global step / its trained tokens; FSDP averages the
                # ranks' gradients, hence the factor `world`.
                (nll * world / max(trained, 1)).backward()
                local_nll += nll.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = (distributed.all_reduce_sum(local_nll) / max(trained, 1)).item()
            losses.append(loss)
            seq_tokens = sum(len(p["input_ids"]) for p in packs)
            elapsed = time.perf_counter() - started
            record = {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                      "tokens": seq_tokens, "trained_tokens": trained, "tokens_per_s": seq_tokens / elapsed,
                      "short_fraction": data.realized_short_fraction(), "dropped_overlong": data.state.dropped_overlong,
                      "truncated": data.state.truncated}
            if device.type == "cuda":
                record["memory/peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            if step % cfg.run.log_every == 0 or step == cfg.optim.steps:
                metrics.log(step, record)
            progress("sft", 1, None, loss=loss, tokens_per_s=round(seq_tokens / elapsed))

            # -- checkpoint ---------------------------------------------------------------------
            if step % cfg.run.save_every == 0 or step == cfg.optim.steps:
                state = {"step": step, "data": data.state.__dict__}
                checkpoint.save(ckpt_root / f"step-{step}", model=model, optimizer=optimizer, scheduler=scheduler,
                                trainer_state=state)
                checkpoint.prune(ckpt_root, keep=2)

        progress("sft", 0, None, done=1)

    # -- export ---------------------------------------------------------------------------------
    final = checkpoint.export_pretrained(causal_lm, tokenizer, out / "final", run.compute_dtype)
    plot = metrics.close(("loss", "lr", "grad_norm"))
    summary = {"steps": step, "losses": losses, "short_fraction": data.realized_short_fraction(),
               "dropped_overlong": data.state.dropped_overlong, "truncated": data.state.truncated,
               "export": str(final), "plot": str(plot) if plot else None}
    if rank == 0:
        console.print(f"[green]sft done[/]: {step} steps, realized short fraction {summary['short_fraction']:.3f}, "
                      f"dropped over-long {summary['dropped_overlong']}, truncated {summary['truncated']} -> {final}")
    return summary
