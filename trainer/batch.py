"""The batch types of RL, in one room: a rollout (prompt, completion, behaviour log-probs, the
teacher's scores when stored with it), a teacher's scores or the reason it has none, rollouts packed
end to end, the micro-batch one forward/backward trains on, and the teacher signal that goes with
it. Must not run models: engines, teachers and the recipe fill them.
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
    reference_logprobs: list[float] | None = None  # G-OPD's reference model's log-prob of each sampled token


@dataclass(frozen=True)
class TeacherFailure:
    """Why a rollout has no teacher scores (the request failed, a stored row lacks them, a value is
    not finite); the rollout is excluded from the step and counted, never scored as zero."""

    reason: str


Scored = TeacherScores | TeacherFailure | None  # None: nothing scored ahead (no teacher, or one read in the head)


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including the end-of-sequence token when one was sampled
    behaviour_logprobs: list[float] | None  # log-prob of each token under the sampling policy (None: unknown)
    finished: bool  # False when max_new_tokens cut it
    teacher: TeacherScores | None = None  # replayed rollouts may carry precomputed teacher scores
    origin: str = ""  # where it came from, for messages: "prompt 12 sample 3", "rollouts/step-1.parquet row 7"


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
    spans: list[tuple[int, int]]  # each rollout's completion in target coordinates (see `Packed`)

    def tokens(self, per_target: torch.Tensor) -> torch.Tensor:
        """A per-target tensor [1, T-1] (or [T-1]) as [S, L] over completion tokens, 0 where padded."""
        return per_target.reshape(-1)[self.index] * self.mask


@dataclass
class TeacherSignal:
    """What the teacher term sees of the teacher on one micro-batch, built by `teacher.py`. `kind`:
    none (no teacher term), hidden (the local teacher's last hidden states and head: the policy
    head computes the exact KL), topk (its top-k log-probs per target position and the tail), or
    sampled (its log-prob of each sampled token: the k1/k2/k3 estimators). `valid` [S] marks the
    rollouts it scored; the others are excluded from the step (see `TeacherFailure`)."""

    kind: str
    valid: torch.Tensor  # [S] bool
    logprobs: torch.Tensor | None = None  # [S, L] the teacher's log-prob of each sampled token (kind sampled)
    hidden: torch.Tensor | None = None  # [T-1, Ht] (kind hidden)
    weight: torch.Tensor | None = None  # [V, Ht] the teacher's LM head (kind hidden)
    topk_ids: torch.Tensor | None = None  # [T-1, K] (kind topk)
    topk_logprobs: torch.Tensor | None = None  # [T-1, K]
    topk_tail: torch.Tensor | None = None  # [T-1] the log-mass outside the top-k (None: known only by the top-k)
    reference_logprobs: torch.Tensor | None = None  # [S, L] G-OPD's reference model on each sampled token
    direction: str = "reverse"  # the divergence the policy head computes (reverse | forward | jsd)
    jsd_beta: float = 0.5

    def head_arguments(self) -> dict[str, object]:
        """The policy head's teacher keyword arguments (none for kinds none and sampled)."""
        if self.kind == "hidden":
            return {"teacher_hidden": self.hidden, "teacher_weight": self.weight, "direction": self.direction,
                    "jsd_beta": self.jsd_beta}
        if self.kind == "topk":
            return {"teacher_topk_ids": self.topk_ids, "teacher_topk_logprobs": self.topk_logprobs,
                    "teacher_topk_tail": self.topk_tail, "direction": self.direction, "jsd_beta": self.jsd_beta}
        return {}


def make_micro_batch(rollouts: list[Rollout], advantages: list[float], valid: list[bool],
                     device: torch.device) -> MicroBatch:
    packed = pack_rollouts(rollouts)
    length = max(1, max(len(r.completion_ids) for r in rollouts))
    n = len(rollouts)
    index = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.bool)
    behaviour = torch.zeros(n, length)
    for i, ((start, end), rollout) in enumerate(zip(packed.spans, rollouts)):
        size = end - start
        index[i, :size] = torch.arange(start, end)
        mask[i, :size] = valid[i]
        if rollout.behaviour_logprobs is not None:
            behaviour[i, :size] = torch.tensor(rollout.behaviour_logprobs[:size])
    target_mask = torch.zeros(len(packed.input_ids) - 1, dtype=torch.bool)
    target_mask[index[mask]] = True
    return MicroBatch(
        torch.tensor([packed.input_ids], device=device), torch.tensor([packed.position_ids], device=device),
        index.to(device), mask.to(device), target_mask[None].to(device), torch.tensor(advantages, device=device),
        behaviour.to(device), torch.tensor([r.behaviour_logprobs is not None for r in rollouts], device=device),
        packed.spans,
    )


def micro_batches(rollouts: list[Rollout], advantages: list[float], valid: list[bool], size: int,
                  device: torch.device) -> list[MicroBatch]:
    """The step's rollouts in micro-batches of `size`, in order."""
    return [make_micro_batch(rollouts[s:s + size], advantages[s:s + size], valid[s:s + size], device)
            for s in range(0, len(rollouts), size)]
