"""`dgrpo-train rl`: dGRPO. Per step: sample G completions per prompt, score them (rewards, then the
teacher on the student's own tokens), form group-relative advantages, and take `policy_epochs`
optimizer steps on GRPO's clipped objective minus beta x KL(student || teacher). Reads top to
bottom: setup, loop (rollouts, rewards, teacher, update, sync, metrics, checkpoint), export.
Must not hold component logic: the math is in `objectives.py`, the rest in its own module.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from trainer import checkpoint, distributed
from trainer.config import ConfigError, RLConfig
from trainer.kernels import full_vocab_kl, topk_kl
from trainer.objectives import dgrpo_loss, group_advantages, normalizer
from trainer.prompts import PromptData, PromptState, ReplayData, write_rollouts
from trainer.rewards import RewardSet
from trainer.rollout import HFEngine, Rollout, VLLMEngine, pack_rollouts
from trainer.recipe import autocast as bf16_autocast
from trainer.recipe import open_metrics, setup
from trainer.teacher import TeacherScores, make_teacher

console = Console(stderr=True)


@dataclass
class MicroBatch:
    """Rollouts packed into one sequence plus [S, L] views of their completion tokens."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    index: torch.Tensor  # [S, L] target positions of each completion token (0 where padded)
    mask: torch.Tensor  # [S, L] trained tokens (False: padding, or an excluded rollout)
    target_mask: torch.Tensor  # [1, T-1] the same tokens as target positions (the kernels skip the rest)
    advantages: torch.Tensor  # [S]
    behaviour_logprobs: torch.Tensor  # [S, L]
    teacher_logprobs: torch.Tensor | None  # [S, L]
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None  # ([T-1, K] ids, [T-1, K] log-probs)


def make_micro_batch(rollouts: list[Rollout], advantages: list[float], valid: list[bool],
                     teacher: list[TeacherScores | str | None], device: torch.device) -> MicroBatch:
    packed = pack_rollouts(rollouts)
    length = max(1, max(len(r.completion_ids) for r in rollouts))
    index = torch.zeros(len(rollouts), length, dtype=torch.long)
    mask = torch.zeros(len(rollouts), length, dtype=torch.bool)
    behaviour = torch.zeros(len(rollouts), length)
    teacher_lp = torch.zeros(len(rollouts), length)
    scores = [t if isinstance(t, TeacherScores) else None for t in teacher]
    has_topk = any(s is not None and s.topk_ids is not None for s in scores)
    k = next((len(s.topk_ids[0]) for s in scores if s is not None and s.topk_ids), 1) if has_topk else 1
    topk_ids = torch.zeros(len(packed.input_ids) - 1, k, dtype=torch.long)
    topk_lp = torch.full((len(packed.input_ids) - 1, k), -1e4)  # masked rows; never enter the KL
    for i, ((start, end), rollout) in enumerate(zip(packed.spans, rollouts)):
        n = end - start
        index[i, :n] = torch.arange(start, end)
        mask[i, :n] = valid[i]
        behaviour[i, :n] = torch.tensor(rollout.behaviour_logprobs[:n])
        if scores[i] is not None:
            teacher_lp[i, :n] = torch.tensor(scores[i].logprobs)
            if has_topk and scores[i].topk_ids:
                topk_ids[start:end] = torch.tensor(scores[i].topk_ids)
                topk_lp[start:end] = torch.tensor(scores[i].topk_logprobs)
    target_mask = torch.zeros(len(packed.input_ids) - 1, dtype=torch.bool)
    target_mask[index[mask]] = True
    return MicroBatch(
        torch.tensor([packed.input_ids], device=device), torch.tensor([packed.position_ids], device=device),
        index.to(device), mask.to(device), target_mask[None].to(device), torch.tensor(advantages, device=device),
        behaviour.to(device),
        teacher_lp.to(device) if any(s is not None for s in scores) else None,
        (topk_ids.to(device), topk_lp.to(device)) if has_topk else None,
    )


def validate(cfg: RLConfig, world: int) -> None:
    if not cfg.model.path:
        raise ConfigError("model.path is required (a local folder or Hub id)")
    if cfg.rollout.prompts_per_step % world:
        raise ConfigError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be a multiple of the "
                          f"world size {world} (groups stay on one rank)")
    if cfg.rollout.group_size < 2 and any(r.weight for r in cfg.rewards):
        raise ConfigError("rollout.group_size must be >= 2 for group-relative advantages")
    if cfg.objective.beta > 0 and cfg.teacher.source == "none":
        raise ConfigError("objective.beta > 0 needs a teacher (teacher.source = local | served | precomputed)")
    if cfg.objective.beta > 0 and cfg.objective.estimator == "full" and cfg.teacher.source != "local":
        raise ConfigError("objective.estimator = 'full' needs the teacher's hidden states: teacher.source = 'local' "
                          "(a served or precomputed teacher supports topk, k1, k2, k3)")
    if cfg.teacher.direction not in ("reverse", "forward"):
        raise ConfigError("teacher.direction must be reverse or forward")
    if cfg.objective.estimator in ("k1", "k2", "k3") and cfg.teacher.direction != "reverse":
        raise ConfigError("k1/k2/k3 estimate the reverse KL only; use estimator full or topk for forward")
    if cfg.teacher.source == "precomputed" and not cfg.data.replay:
        raise ConfigError("teacher.source = 'precomputed' reads log-probs stored with replayed rollouts: set data.replay")
    if cfg.rollout.old_logprobs not in ("recompute", "behaviour"):
        raise ConfigError("rollout.old_logprobs must be recompute or behaviour")
    if cfg.rollout.engine not in ("hf", "vllm"):
        raise ConfigError("rollout.engine must be hf or vllm")


def train(cfg: RLConfig) -> dict[str, Any]:
    # -- setup ----------------------------------------------------------------------------------
    validate(cfg, distributed.world_size())
    epochs = cfg.optim.policy_epochs
    run = setup(cfg, optimizer_steps=cfg.optim.steps * epochs)
    rank, world, device, out = run.rank, run.world, run.device, run.out
    tokenizer, causal_lm, model, optimizer, scheduler = run.tokenizer, run.causal_lm, run.model, run.optimizer, run.scheduler
    obj, tcfg = cfg.objective, cfg.teacher
    teacher = make_teacher(tcfg, device)
    rewards = RewardSet(cfg.rewards)
    replay = ReplayData(cfg.data.replay, cfg.data.seed) if cfg.data.replay else None
    prompts = None if replay else PromptData(cfg.data, tokenizer)
    source_state = (replay or prompts).state
    engine: HFEngine | VLLMEngine | None = None
    if replay is None and cfg.rollout.engine == "hf":
        engine = HFEngine(causal_lm, tokenizer, cfg.rollout, synced_gpus=world > 1,
                          generate_fn=(lambda **kwargs: model(None, None, generate=kwargs)) if world > 1 else None)
    elif replay is None:
        engine = VLLMEngine(cfg.model.path, tokenizer, cfg.rollout, dtype=cfg.model.dtype,
                            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                            max_model_len=cfg.rollout.vllm_max_model_len or None, seed=cfg.run.seed,
                            trust_remote_code=cfg.model.trust_remote_code)
    step = 0
    ckpt_root = out / "checkpoints"
    if (last := checkpoint.latest(ckpt_root)) is not None:
        state = checkpoint.load(last, model=model, optimizer=optimizer, scheduler=scheduler)
        step = state["step"]
        source_state.__dict__.update(PromptState(**state["data"]).__dict__)
        if engine is not None:
            engine.sync_weights(causal_lm)
        if rank == 0:
            console.print(f"resumed from {last} (step {step})")
    metrics = open_metrics(cfg, rank, step)
    autocast = bf16_autocast(device)
    # The teacher scores rollouts up front for the sampled-token and top-k estimators; `full`
    # runs the local teacher inside each micro-batch (its hidden states feed the fused KL).
    score_up_front = teacher is not None and obj.beta > 0 and obj.estimator != "full"
    with_topk = obj.estimator == "topk" and obj.beta > 0
    history: list[dict[str, Any]] = []

    # -- loop -----------------------------------------------------------------------------------
    progress = Progress(TextColumn("[bold]dgrpo"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                        TimeRemainingColumn(), console=console, disable=rank != 0)
    with progress:
        task = progress.add_task("rl", total=cfg.optim.steps, completed=step, stats="")
        while step < cfg.optim.steps:
            step += 1
            record: dict[str, float] = {}

            # -- rollouts: this rank's share of the step's prompts, G completions each ----------
            started = time.perf_counter()
            if replay is not None:
                batch = replay.next_groups(cfg.rollout.prompts_per_step)[rank::world]
                step_prompts, groups = [g.prompt for g in batch], [g.rollouts for g in batch]
            else:
                step_prompts = prompts.next_prompts(cfg.rollout.prompts_per_step)[rank::world]
                seeds = [cfg.run.seed * 1_000_003 + p.position for p in step_prompts]
                groups = engine.generate([p.prompt_ids for p in step_prompts], seeds)
            rollouts = [r for group in groups for r in group]
            rollout_seconds = time.perf_counter() - started
            texts = tokenizer.batch_decode([r.completion_ids for r in rollouts], skip_special_tokens=True)

            # -- rewards: group-relative advantages over valid members ----------------------------
            owners = [p for p, group in zip(step_prompts, groups) for _ in group]
            scored = rewards.score(texts, [p.reference for p in owners], [p.row for p in owners])
            reward_ok = [math.isfinite(x) for x in scored.total]

            # -- teacher on the student's own tokens ---------------------------------------------
            started = time.perf_counter()
            teacher_scores: list[TeacherScores | str | None] = [None] * len(rollouts)
            if score_up_front:
                teacher_scores = teacher.score(rollouts, with_topk=with_topk, temperature=tcfg.kl_temperature)
            teacher_seconds = time.perf_counter() - started
            teacher_ok = [not isinstance(t, str) for t in teacher_scores] if obj.beta > 0 else [True] * len(rollouts)
            valid = [a and b and len(r.completion_ids) > 0 for a, b, r in zip(reward_ok, teacher_ok, rollouts)]
            group_size = cfg.rollout.group_size if replay is None else max(len(g) for g in groups)
            reward_matrix = torch.full((len(groups), group_size), 0.0)
            valid_matrix = torch.zeros((len(groups), group_size), dtype=torch.bool)
            i = 0
            for g, group in enumerate(groups):
                for j in range(len(group)):
                    reward_matrix[g, j] = scored.total[i] if reward_ok[i] else 0.0
                    valid_matrix[g, j] = valid[i]
                    i += 1
            advantage_matrix = group_advantages(reward_matrix, valid_matrix, scale_std=obj.scale_std)
            advantages = [float(advantage_matrix[g, j]) for g, group in enumerate(groups) for j in range(len(group))]

            # -- update: policy_epochs optimizer steps over this step's rollouts -----------------
            started = time.perf_counter()
            size = cfg.optim.micro_batch_rollouts
            batches = [make_micro_batch(rollouts[s:s + size], advantages[s:s + size], valid[s:s + size],
                                        teacher_scores[s:s + size], device) for s in range(0, len(rollouts), size)]
            denominator = float(distributed.all_reduce_sum(torch.tensor(
                sum(normalizer(obj, mb.mask) for mb in batches), dtype=torch.float64)))
            old_logprobs: list[torch.Tensor | None] = [None] * len(batches)
            if cfg.rollout.old_logprobs == "behaviour":
                old_logprobs = [mb.behaviour_logprobs for mb in batches]
            elif epochs > 1:  # with one epoch, old = current (detached): rho = 1 exactly, no extra forward
                with torch.no_grad(), autocast:
                    for b, mb in enumerate(batches):
                        flat = model(mb.input_ids, mb.position_ids, temperature=cfg.rollout.temperature,
                                     mask=mb.target_mask)[0]
                        old_logprobs[b] = flat[mb.index] * mb.mask
            sums = {key: torch.zeros((), dtype=torch.float64, device=device) for key in (
                "loss", "tokens", "kl_sum", "clip_low_sum", "clip_high_sum", "ratio_sum", "entropy_sum", "logprob_gap")}
            grad_norm = torch.zeros(())
            model.train()
            for epoch in range(epochs):
                for b, mb in enumerate(batches):
                    kl_fn = None
                    if obj.beta > 0 and obj.estimator == "full":
                        teacher_hidden = teacher.hidden_states(mb.input_ids, mb.position_ids)[0, :-1]
                        kl_fn = _full_kl(teacher_hidden, teacher.weight, tcfg.kl_temperature, tcfg.direction)
                    elif obj.beta > 0 and obj.estimator == "topk":
                        kl_fn = _topk_kl(*mb.teacher_topk, tcfg.kl_temperature, tcfg.direction)
                    with autocast:
                        out_ = model(mb.input_ids, mb.position_ids, temperature=cfg.rollout.temperature,
                                     mask=mb.target_mask, return_entropy=True, kl_fn=kl_fn)
                    flat_logprobs, flat_entropy = out_[0][0], out_[1][0]
                    logprobs = flat_logprobs[mb.index] * mb.mask
                    kl = out_[2][0][mb.index] if kl_fn is not None else None
                    old = old_logprobs[b] if old_logprobs[b] is not None else logprobs.detach()
                    loss, stats = dgrpo_loss(logprobs, old, mb.advantages, mb.mask, obj, kl=kl,
                                             teacher_logprobs=mb.teacher_logprobs, denominator=denominator)
                    (loss * world).backward()  # FSDP averages gradients over ranks
                    if epoch == epochs - 1:
                        sums["loss"] += loss.detach().double()
                        for key, value in stats.items():
                            sums[key] += value.double()
                        maskf = mb.mask.float()
                        sums["entropy_sum"] += (flat_entropy.detach()[mb.index] * maskf).sum().double()
                        sums["logprob_gap"] += ((logprobs.detach() - mb.behaviour_logprobs).abs() * maskf).sum().double()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if engine is not None:
                engine.sync_weights(causal_lm)
            train_seconds = time.perf_counter() - started

            # -- metrics (summed over ranks) -----------------------------------------------------
            for key in sums:
                distributed.all_reduce_sum(sums[key])
            totals = _reduce_rewards(scored.total, reward_ok, device)
            record.update(reward_mean=totals[0], reward_std=totals[1])
            for name, values in scored.per_fn.items():
                mean, std = _reduce_rewards(values, [math.isfinite(v) for v in values], device)
                record[f"reward/{name}/mean"], record[f"reward/{name}/std"] = mean, std
                record[f"reward/{name}/failures"] = _sum(scored.failures.get(name, 0), device)
            spread = (reward_matrix.masked_fill(~valid_matrix, float("nan")))
            zero_var = sum(1 for g in range(len(groups)) if _zero_variance(spread[g]))
            record["groups/zero_variance_fraction"] = _sum(zero_var, device) / _sum(len(groups), device)
            tokens = max(float(sums["tokens"]), 1.0)
            lengths = [len(r.completion_ids) for r in rollouts]
            completion_tokens = _sum(sum(lengths), device)
            record.update({
                "loss": float(sums["loss"]), "teacher_kl": float(sums["kl_sum"]) / tokens,
                "entropy": float(sums["entropy_sum"]) / tokens,
                "clip/low_fraction": float(sums["clip_low_sum"]) / tokens,
                "clip/high_fraction": float(sums["clip_high_sum"]) / tokens,
                "clip/fraction": float(sums["clip_low_sum"] + sums["clip_high_sum"]) / tokens,
                "ratio_mean": float(sums["ratio_sum"]) / tokens,
                "rollout/logprob_gap": float(sums["logprob_gap"]) / tokens,
                "response/length_mean": completion_tokens / _sum(len(lengths), device),
                "response/truncated_fraction": _sum(sum(not r.finished for r in rollouts), device) / _sum(len(rollouts), device),
                "excluded_rollouts": _sum(sum(not v for v in valid), device),
                "teacher/failures": _sum(sum(isinstance(t, str) for t in teacher_scores), device),
                "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                "rollout/tokens_per_s": completion_tokens / max(rollout_seconds, 1e-9),
                "train/tokens_per_s": _sum(sum(int(mb.input_ids.numel()) for mb in batches), device) * epochs
                / max(train_seconds, 1e-9),
                "rollout/seconds": rollout_seconds, "teacher/seconds": teacher_seconds, "train/seconds": train_seconds,
            })
            if device.type == "cuda":
                record["memory/peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            if rank == 0 and scored.errors:
                console.print(f"[yellow]step {step}: reward failures[/] (rollouts excluded): {scored.errors[0]}")
            history.append(record)
            if step % cfg.run.log_every == 0 or step == cfg.optim.steps:
                metrics.log(step, record)
            if cfg.rollout.save:
                write_rollouts(out / "rollouts" / f"step-{step:06d}-rank{rank}.parquet", step, step_prompts, groups,
                               texts, scored.total, scored.per_fn, teacher_scores)
            progress.update(task, completed=step, stats=f"reward {record['reward_mean']:.3f}  kl {record['teacher_kl']:.4f}")

            # -- checkpoint ---------------------------------------------------------------------
            if step % cfg.run.save_every == 0 or step == cfg.optim.steps:
                checkpoint.save(ckpt_root / f"step-{step}", model=model, optimizer=optimizer, scheduler=scheduler,
                                trainer_state={"step": step, "data": source_state.__dict__})
                checkpoint.prune(ckpt_root, keep=2)

    # -- export ---------------------------------------------------------------------------------
    final = checkpoint.export_pretrained(causal_lm, tokenizer, out / "final")
    plot = metrics.close(("reward_mean", "teacher_kl", "entropy"))
    rewards.close()
    if teacher is not None:
        teacher.close()
    if rank == 0:
        console.print(f"[green]rl done[/]: {step} steps -> {final}")
    distributed.shutdown()
    return {"steps": step, "history": history, "export": str(final), "plot": str(plot) if plot else None}


def _full_kl(teacher_hidden: torch.Tensor, teacher_weight: torch.Tensor, temperature: float, direction: str):  # noqa: ANN202
    def kl(hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return full_vocab_kl(hidden, weight, teacher_hidden, teacher_weight, temperature=temperature,
                             direction=direction, mask=mask)
    return kl


def _topk_kl(ids: torch.Tensor, logprobs: torch.Tensor, temperature: float, direction: str):  # noqa: ANN202
    def kl(hidden: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return topk_kl(hidden, weight, ids, logprobs, temperature=temperature, direction=direction, mask=mask)
    return kl


def _sum(value: float, device: torch.device) -> float:
    return float(distributed.all_reduce_sum(torch.tensor(float(value), dtype=torch.float64, device=device)))


def _reduce_rewards(values: list[float], ok: list[bool], device: torch.device) -> tuple[float, float]:
    """Mean and std over every rank's finite values."""
    kept = [v for v, good in zip(values, ok) if good]
    t = torch.tensor([len(kept), sum(kept), sum(v * v for v in kept)], dtype=torch.float64, device=device)
    n, s, s2 = distributed.all_reduce_sum(t).tolist()
    if n == 0:
        return math.nan, math.nan
    mean = s / n
    return mean, math.sqrt(max(s2 / n - mean * mean, 0.0))


def _zero_variance(rewards: torch.Tensor) -> bool:
    kept = rewards[~rewards.isnan()]
    return kept.numel() < 2 or bool((kept == kept[0]).all())

