"""`dgrpo-train rl`: dGRPO. Per step: sample G completions per prompt, score them (rewards, then the
teacher on the student's own tokens), form group-relative advantages, and take `policy_epochs`
optimizer steps on GRPO's clipped objective minus beta x KL(student || teacher). Reads top to
bottom: setup, loop (rollouts, update, sync, metrics, checkpoint), export; each phase is a short
function below. Must not hold component logic: the math is in `objectives.py`, batches in
`batch.py`, engines in `rollout.py`, teachers in `teacher.py`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console

from longblocks.progress import reporter

from trainer import checkpoint, distributed
from trainer import objectives
from trainer.batch import MicroBatch, Rollout, Scored, TeacherFailure, micro_batches
from trainer.config import ConfigError, RLConfig
from trainer.prompts import Prompt, PromptData, ReplayData, write_rollouts
from trainer.recipe import Setup, open_metrics, setup
from trainer.rewards import RewardResult, RewardSet
from trainer.rollout import HFEngine, VLLMEngine
from trainer.teacher import Teacher

console = Console(stderr=True)


@distributed.tears_down
def train(cfg: RLConfig) -> dict[str, Any]:
    # -- setup ----------------------------------------------------------------------------------
    if cfg.rollout.prompts_per_step % distributed.world_size():
        raise ConfigError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be a multiple of the "
                          f"world size {distributed.world_size()} (groups stay on one rank)")
    run = setup(cfg, optimizer_steps=cfg.optim.steps * cfg.optim.policy_epochs)
    teacher = Teacher(cfg, run.device)  # the teacher term's source (and G-OPD's reference model)
    rewards = RewardSet(cfg.rewards)
    source = ReplayData(cfg.data.replay, cfg.data.seed, temperature=cfg.rollout.temperature,
                        need_behaviour=cfg.rollout.old_logprobs == "behaviour") if cfg.data.replay \
        else PromptData(cfg.data, run.tokenizer)
    engine = None if cfg.data.replay else make_engine(cfg, run)
    step = 0
    if (resumed := checkpoint.resume(run.out / "checkpoints", model=run.model, optimizer=run.optimizer,
                                     scheduler=run.scheduler,
                                     log=console.print if run.rank == 0 else lambda line: None)) is not None:
        last, state = resumed
        step = state["step"]
        source.load_state(state["data"])
        if engine is not None:
            engine.sync_weights(run.causal_lm)
        if run.rank == 0:
            console.print(f"resumed from {last} (step {step})")
    metrics = open_metrics(cfg, run.rank, step)
    history: list[dict[str, Any]] = []

    # -- loop -----------------------------------------------------------------------------------
    with reporter(console, quiet=run.rank != 0) as progress:
        progress("dgrpo", step, cfg.optim.steps, resumed=1)
        pure_opd = all(r.weight == 0 for r in cfg.rewards)
        while step < cfg.optim.steps:
            step += 1
            at = objectives.schedule(cfg.objective, step, cfg.rollout.max_new_tokens)  # TOPD/POPD, REOPOLD
            if engine is not None and pure_opd and at.horizon:  # nothing after the horizon is trained: do not sample it
                engine.sampling = dataclasses.replace(engine.sampling, max_new_tokens=at.horizon)
            batch = collect(cfg, run, source, engine, rewards, teacher)
            teacher_scored_nothing(cfg, batch, step)  # before the update: never a step without its teacher term
            update = policy_update(cfg, run, batch, teacher, at)
            if engine is not None:
                engine.sync_weights(run.causal_lm)
            record = step_metrics(cfg, run, batch, update, source)
            history.append(record)
            if step % cfg.run.log_every == 0 or step == cfg.optim.steps:
                metrics.log(step, record)
            if cfg.rollout.save:
                write_rollouts(run.out / "rollouts" / f"step-{step:06d}-rank{run.rank}.parquet", step, batch.prompts,
                               batch.groups, batch.texts, batch.scored.total, batch.scored.per_fn, batch.teacher_scores,
                               cfg.rollout.temperature)
            if run.rank == 0 and batch.scored.errors:
                console.print(f"[yellow]step {step}: reward failures[/] (rollouts excluded): {batch.scored.errors[0]}")
            failures = [t.reason for t in batch.teacher_scores if isinstance(t, TeacherFailure)]
            if run.rank == 0 and failures:
                console.print(f"[yellow]step {step}: {len(failures)} rollout(s) the teacher could not score[/] "
                              f"(excluded): {failures[0]}", highlight=False)
            progress("dgrpo", 1, None, reward=record["reward_mean"], kl=record["teacher_kl"])

            # -- checkpoint ---------------------------------------------------------------------
            if step % cfg.run.save_every == 0 or step == cfg.optim.steps:
                checkpoint.save(run.out / "checkpoints" / f"step-{step}", model=run.model, optimizer=run.optimizer,
                                scheduler=run.scheduler, trainer_state={"step": step, "data": source.state})
                checkpoint.prune(run.out / "checkpoints", keep=2)
        progress("dgrpo", 0, None, done=1)

    # -- export ---------------------------------------------------------------------------------
    final = checkpoint.export_pretrained(run.causal_lm, run.tokenizer, run.out / "final", run.compute_dtype)
    plot = metrics.close(("reward_mean", "teacher_kl", "entropy"))
    rewards.close()
    teacher.close()
    if run.rank == 0:
        console.print(f"[green]rl done[/]: {step} steps -> {final}")
    return {"steps": step, "history": history, "export": str(final), "plot": str(plot) if plot else None}


def make_engine(cfg: RLConfig, run: Setup) -> HFEngine | VLLMEngine:
    if cfg.rollout.engine == "vllm":
        return VLLMEngine(cfg.model.path, run.tokenizer, cfg.rollout, dtype=cfg.model.dtype,
                          gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                          max_model_len=cfg.rollout.vllm_max_model_len or None, seed=cfg.run.seed,
                          trust_remote_code=cfg.model.trust_remote_code)
    # Under FSDP2 sampling runs inside the root's forward (which gathers the root's parameters),
    # with every rank stepping until all finish; autocast gives the compute dtype in one process.
    def through_root(fn: Any) -> Any:
        with run.autocast():
            return run.model(None, run=fn) if run.sharded else fn(run.causal_lm)
    return HFEngine(run.causal_lm, run.tokenizer, cfg.rollout, synced=run.world > 1, run=through_root)


@dataclass
class StepBatch:
    """One step's rollouts on this rank, scored."""

    prompts: list[Prompt]
    groups: list[list[Rollout]]
    rollouts: list[Rollout]
    texts: list[str]
    scored: RewardResult
    teacher_scores: list[Scored]  # per rollout (see Teacher.score)
    valid: list[bool]  # reward finite, teacher scored, non-empty completion
    advantages: list[float]
    zero_variance_groups: int
    seconds: dict[str, float] = field(default_factory=dict)


def teacher_scored_nothing(cfg: RLConfig, batch: "StepBatch", step: int) -> None:
    """A step whose teacher scored none of its rollouts (a served teacher that refuses every request)
    is an error, not an update on the rewards alone saved as if dGRPO had run."""
    if cfg.objective.beta == 0 or not batch.teacher_scores:
        return
    failures = [t.reason for t in batch.teacher_scores if isinstance(t, TeacherFailure)]
    if len(failures) == len(batch.teacher_scores):
        raise ConfigError(f"step {step}: the teacher scored none of the {len(failures)} rollouts (first: "
                          f"{failures[0]}); fix the teacher (teacher.*) and run the same command again to resume")


def collect(cfg: RLConfig, run: Setup, source: PromptData | ReplayData, engine: HFEngine | VLLMEngine | None,
            rewards: RewardSet, teacher: Teacher) -> StepBatch:
    """Rollouts (sampled, or replayed), rewards, the teacher's scores and group advantages."""
    started = time.perf_counter()
    if isinstance(source, ReplayData):
        replayed = source.next_groups(cfg.rollout.prompts_per_step)[run.rank::run.world]
        prompts, groups = [g.prompt for g in replayed], [g.rollouts for g in replayed]
    else:
        prompts = source.next_prompts(cfg.rollout.prompts_per_step)[run.rank::run.world]
        groups = engine.generate([p.prompt_ids for p in prompts], [cfg.run.seed * 1_000_003 + p.position for p in prompts])
    rollouts = [r for group in groups for r in group]
    for prompt, group in zip(prompts, groups):
        for j, rollout in enumerate(group):
            rollout.origin = rollout.origin or f"prompt {prompt.position} sample {j}"
    seconds = {"rollout": time.perf_counter() - started}
    texts = run.tokenizer.batch_decode([r.completion_ids for r in rollouts], skip_special_tokens=True)
    owners = [p for p, group in zip(prompts, groups) for _ in group]
    scored = rewards.score(texts, [p.reference for p in owners], [p.row for p in owners])

    started = time.perf_counter()
    teacher_scores = teacher.score(rollouts)
    seconds["teacher"] = time.perf_counter() - started
    valid = [math.isfinite(reward) and not isinstance(t, TeacherFailure) and len(r.completion_ids) > 0
             for reward, t, r in zip(scored.total, teacher_scores, rollouts)]
    advantages, zero_variance = objectives.rollout_advantages(scored.total, valid, [len(g) for g in groups],
                                                              scale_std=cfg.objective.scale_std)
    return StepBatch(prompts, groups, rollouts, texts, scored, teacher_scores, valid, advantages, zero_variance, seconds)


@dataclass
class UpdateStats:
    sums: dict[str, float]  # summed over this step's last epoch and every rank
    grad_norm: float
    trained_tokens: int  # sequence tokens through forward/backward, all epochs and ranks
    seconds: float


def policy_update(cfg: RLConfig, run: Setup, batch: StepBatch, teacher: Teacher,
                  at: objectives.Schedule = objectives.Schedule()) -> UpdateStats:
    """`policy_epochs` optimizer steps over the step's rollouts, in micro-batches, on the loss
    `objectives.step_loss` gives at the step's schedule `at` (TOPD/POPD horizon, REOPOLD phase)."""
    started = time.perf_counter()
    obj, epochs, size = cfg.objective, cfg.optim.policy_epochs, cfg.optim.micro_batch_rollouts
    batches = micro_batches(batch.rollouts, batch.advantages, batch.valid, size, run.device)
    scores = [batch.teacher_scores[s:s + size] for s in range(0, len(batch.rollouts), size)]
    denominator = float(distributed.all_reduce_sum(torch.tensor(sum(objectives.normalizer(obj, mb.mask) for mb in batches),
                                                                dtype=torch.float64)))
    old = old_logprobs(cfg, run, batches)
    signals = {}
    keys = ("loss", "tokens", "kl_sum", "clip_low_sum", "clip_high_sum", "ratio_sum", "entropy_sum", "gap_sum", "gap_tokens",
            "distill_tokens")
    sums = {key: torch.zeros((), dtype=torch.float64, device=run.device) for key in keys}
    grad_norm = torch.zeros(())
    run.model.train()
    for epoch in range(epochs):
        for b, mb in enumerate(batches):
            if b not in signals or epochs == 1:
                signals[b] = teacher.signal(mb, scores[b])
            with run.autocast():
                out = run.model(mb.input_ids, mb.position_ids, temperature=cfg.rollout.temperature, mask=mb.target_mask,
                                entropy=True, teacher=signals[b])
            loss, stats = objectives.step_loss(obj, out, signals[b], mb, old[b], denominator, at)
            (loss * run.world).backward()  # FSDP averages gradients over ranks
            if epoch == epochs - 1:
                sums["loss"] += loss.detach().double()
                for key, value in stats.items():
                    sums[key] += value.double()
                known = (mb.mask & mb.has_behaviour[:, None]).float()
                sums["gap_sum"] += ((mb.tokens(out.logprobs.detach()) - mb.behaviour_logprobs).abs() * known).sum().double()
                sums["gap_tokens"] += known.sum().double()
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    trained = _sum(sum(int(mb.input_ids.numel()) for mb in batches) * epochs, run.device)
    return UpdateStats({k: float(distributed.all_reduce_sum(v)) for k, v in sums.items()}, float(grad_norm),
                       int(trained), time.perf_counter() - started)


def old_logprobs(cfg: RLConfig, run: Setup, batches: list[MicroBatch]) -> list[torch.Tensor | None]:
    """log pi_old per micro-batch: the engine's (behaviour), a training forward before the update
    (recompute, policy_epochs > 1), or None: with one epoch old = current (detached), rho = 1."""
    if cfg.rollout.old_logprobs == "behaviour":
        return [mb.behaviour_logprobs for mb in batches]
    if cfg.optim.policy_epochs == 1:
        return [None] * len(batches)
    with torch.no_grad(), run.autocast():
        return [mb.tokens(run.model(mb.input_ids, mb.position_ids, temperature=cfg.rollout.temperature,
                                    mask=mb.target_mask).logprobs) for mb in batches]


def step_metrics(cfg: RLConfig, run: Setup, batch: StepBatch, update: UpdateStats,
                 source: PromptData | ReplayData) -> dict[str, Any]:
    """The step's metrics, summed over ranks (see the README for their meaning)."""
    device, sums = run.device, update.sums
    record: dict[str, Any] = {}
    record["reward_mean"], record["reward_std"] = _mean_std(batch.scored.total, device)
    for name, values in batch.scored.per_fn.items():
        record[f"reward/{name}/mean"], record[f"reward/{name}/std"] = _mean_std(values, device)
        record[f"reward/{name}/failures"] = _sum(batch.scored.failures.get(name, 0), device)
    tokens = max(sums["tokens"], 1.0)
    lengths = [len(r.completion_ids) for r in batch.rollouts]
    completion_tokens = _sum(sum(lengths), device)
    rollouts = _sum(len(lengths), device)
    record.update({
        "groups/zero_variance_fraction": _sum(batch.zero_variance_groups, device) / _sum(len(batch.groups), device),
        "loss": sums["loss"], "teacher_kl": sums["kl_sum"] / tokens, "entropy": sums["entropy_sum"] / tokens,
        "clip/low_fraction": sums["clip_low_sum"] / tokens, "clip/high_fraction": sums["clip_high_sum"] / tokens,
        "clip/fraction": (sums["clip_low_sum"] + sums["clip_high_sum"]) / tokens, "ratio_mean": sums["ratio_sum"] / tokens,
        "teacher/trained_fraction": sums["distill_tokens"] / tokens,
        "rollout/logprob_gap": sums["gap_sum"] / sums["gap_tokens"] if sums["gap_tokens"] else math.nan,
        "response/length_mean": completion_tokens / rollouts,
        "response/truncated_fraction": _sum(sum(not r.finished for r in batch.rollouts), device) / rollouts,
        "excluded_rollouts": _sum(sum(not v for v in batch.valid), device),
        "teacher/failures": _sum(sum(isinstance(t, TeacherFailure) for t in batch.teacher_scores), device),
        "grad_norm": update.grad_norm, "lr": run.scheduler.get_last_lr()[0],
        "rollout/tokens_per_s": completion_tokens / max(batch.seconds["rollout"], 1e-9),
        "train/tokens_per_s": update.trained_tokens / max(update.seconds, 1e-9),
        "rollout/seconds": batch.seconds["rollout"], "teacher/seconds": batch.seconds["teacher"],
        "train/seconds": update.seconds,
    })
    if isinstance(source, PromptData):
        record["data/short_fraction"] = source.realized_short_fraction()
    if device.type == "cuda":
        record["memory/peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return record


def _sum(value: float, device: torch.device) -> float:
    return float(distributed.all_reduce_sum(torch.tensor(float(value), dtype=torch.float64, device=device)))


def _mean_std(values: list[float], device: torch.device) -> tuple[float, float]:
    """Mean and std over every rank's finite values."""
    kept = [v for v in values if math.isfinite(v)]
    t = torch.tensor([len(kept), sum(kept), sum(v * v for v in kept)], dtype=torch.float64, device=device)
    n, s, s2 = distributed.all_reduce_sum(t).tolist()
    if n == 0:
        return math.nan, math.nan
    mean = s / n
    return mean, math.sqrt(max(s2 / n - mean * mean, 0.0))
