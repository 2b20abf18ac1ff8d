"""The batch types of RL, in one room: a rollout (prompt, completion, behaviour log-probs, the
teacher's scores when stored with it), rollouts packed end to end, and the micro-batch one
forward/backward trains on. Must not run models: engines, teachers and the recipe fill them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class TeacherScores:
    """Per completion token of one rollout: the teacher's log-prob of the sampled token and, for
    the top-k estimator, its top-k ids, their log-probs and the log-mass outside them (exact from a
    local teacher; None when only the top-k is known, e.g. served)."""

    logprobs: list[float]
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    topk_tail: list[float] | None = None


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including the end-of-sequence token when one was sampled
    behaviour_logprobs: list[float] | None  # log-prob of each token under the sampling policy (None: unknown)
    finished: bool  # False when max_new_tokens cut it
    teacher: TeacherScores | None = None  # replayed rollouts may carry precomputed teacher scores


@dataclass
class Packed:
    """Rollouts laid end to end in one sequence (positions restart per rollout). `spans[i]` is
    rollout i's completion in target coordinates: target t is the token at t + 1."""

    input_ids: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)


def pack_rollouts(rollouts: Sequence[Rollout]) -> Packed:
    packed = Packed()
    for rollout in rollouts:
        offset = len(packed.input_ids)
        sequence = list(rollout.prompt_ids) + list(rollout.completion_ids)
        packed.input_ids += sequence
        packed.position_ids += range(len(sequence))
        packed.spans.append((offset + len(rollout.prompt_ids) - 1, offset + len(sequence) - 1))
    return packed


@dataclass
class MicroBatch:
    """Rollouts packed into one sequence plus [S, L] views of their completion tokens."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    index: torch.Tensor  # [S, L] target positions of each completion token (0 where padded)
    mask: torch.Tensor  # [S, L] trained tokens (False: padding, or an excluded rollout)
    target_mask: torch.Tensor  # [1, T-1] the same tokens as target positions (the head skips the rest)
    advantages: torch.Tensor  # [S]
    behaviour_logprobs: torch.Tensor  # [S, L] (0 where unknown)
    has_behaviour: torch.Tensor  # [S] the engine (or the replayed row) gave behaviour log-probs
    teacher_logprobs: torch.Tensor | None  # [S, L] the teacher's log-prob of each sampled token
    teacher_topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None  # [T-1, K] ids, log-probs; [T-1] tail
    reference_logprobs: torch.Tensor | None = None  # [S, L] a reference model's log-prob of each token (G-OPD)


def make_micro_batch(rollouts: list[Rollout], advantages: list[float], valid: list[bool],
                     teacher: list[TeacherScores | str | None], device: torch.device,
                     reference: list[TeacherScores | str | None] | None = None) -> MicroBatch:
    packed = pack_rollouts(rollouts)
    length = max(1, max(len(r.completion_ids) for r in rollouts))
    n = len(rollouts)
    index = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.bool)
    behaviour = torch.zeros(n, length)
    teacher_lp = torch.zeros(n, length)
    scores = [t if isinstance(t, TeacherScores) else None for t in teacher]
    topk = [s for s in scores if s is not None and s.topk_ids]
    k = len(topk[0].topk_ids[0]) if topk else 1
    targets = len(packed.input_ids) - 1
    topk_ids = torch.zeros(targets, k, dtype=torch.long)
    topk_lp = torch.full((targets, k), -1e4)  # rows outside completions never enter the KL (masked)
    with_tail = bool(topk) and all(s.topk_tail is not None for s in topk)
    topk_tail = torch.zeros(targets)
    for i, ((start, end), rollout) in enumerate(zip(packed.spans, rollouts)):
        size = end - start
        index[i, :size] = torch.arange(start, end)
        mask[i, :size] = valid[i]
        if rollout.behaviour_logprobs is not None:
            behaviour[i, :size] = torch.tensor(rollout.behaviour_logprobs[:size])
        if scores[i] is not None:
            teacher_lp[i, :size] = torch.tensor(scores[i].logprobs)
            if topk and scores[i].topk_ids:
                topk_ids[start:end] = torch.tensor(scores[i].topk_ids)
                topk_lp[start:end] = torch.tensor(scores[i].topk_logprobs)
                if with_tail:
                    topk_tail[start:end] = torch.tensor(scores[i].topk_tail)
    reference_lp = None
    if reference is not None:
        reference_lp = torch.zeros(n, length)
        for i, scored in enumerate(reference):
            if isinstance(scored, TeacherScores):
                reference_lp[i, : len(scored.logprobs)] = torch.tensor(scored.logprobs)
    target_mask = torch.zeros(targets, dtype=torch.bool)
    target_mask[index[mask]] = True
    return MicroBatch(
        torch.tensor([packed.input_ids], device=device), torch.tensor([packed.position_ids], device=device),
        index.to(device), mask.to(device), target_mask[None].to(device), torch.tensor(advantages, device=device),
        behaviour.to(device), torch.tensor([r.behaviour_logprobs is not None for r in rollouts], device=device),
        teacher_lp.to(device) if any(s is not None for s in scores) else None,
        (topk_ids.to(device), topk_lp.to(device), topk_tail.to(device) if with_tail else None) if topk else None,
        reference_lp.to(device) if reference_lp is not None else None,
    )


def micro_batches(rollouts: list[Rollout], advantages: list[float], valid: list[bool],
                  teacher: list[TeacherScores | str | None], size: int, device: torch.device,
                  reference: list[TeacherScores | str | None] | None = None) -> list[MicroBatch]:
    """The step's rollouts in micro-batches of `size`, in order (`reference`: G-OPD's reference scores)."""
    return [make_micro_batch(rollouts[s:s + size], advantages[s:s + size], valid[s:s + size], teacher[s:s + size], device,
                             None if reference is None else reference[s:s + size])
            for s in range(0, len(rollouts), size)]
