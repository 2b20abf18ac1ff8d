"""Teacher sources for the distillation term, scored on the student's own rollouts at the
student's sampling temperature: `local` (a colocated model without gradients; its last hidden
states feed the policy head's exact KL, or give its top-k in chunks of tokens), `served` (an
OpenAI-compatible endpoint returning log-probs of the student's tokens: vLLM's `prompt_logprobs`,
with the teacher's top-k, or the `echo` + `logprobs` completions style; temperature 1 only), and
`precomputed` (scores stored with replayed rollouts). Must not compute the objective.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from trainer.batch import MicroBatch, Rollout, TeacherScores, pack_rollouts
from trainer.config import ModelConfig, ServedConfig, TeacherConfig
from trainer.kernels import policy_head, topk_logprobs

Scored = TeacherScores | str  # a rollout's scores, or why they could not be had (the rollout is excluded)


class LocalTeacher:
    name = "local"

    def __init__(self, cfg: TeacherConfig, device: torch.device) -> None:
        from trainer.model import load_causal_lm

        model_cfg = ModelConfig(path=cfg.path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                                gradient_checkpointing=False)
        self.lm = load_causal_lm(model_cfg, device, master_weights=False).eval().requires_grad_(False)
        self.rollouts_per_pass = 8

    @property
    def weight(self) -> torch.Tensor:
        return self.lm.get_output_embeddings().weight

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

    def head_inputs(self, mb: MicroBatch) -> dict[str, Any]:
        """The policy head's teacher arguments for the exact KL on a micro-batch's positions."""
        return {"teacher_hidden": self.hidden_states(mb.input_ids, mb.position_ids)[0, :-1],
                "teacher_weight": self.weight}

    @torch.no_grad()
    def score(self, rollouts: Sequence[Rollout], *, top_k: int, temperature: float) -> list[Scored]:
        """Log-prob of each sampled token and, with `top_k` > 0, the top-k with its exact tail."""
        scores: list[Scored] = []
        device = self.weight.device
        for first in range(0, len(rollouts), self.rollouts_per_pass):
            packed = pack_rollouts(rollouts[first : first + self.rollouts_per_pass])
            ids = torch.tensor([packed.input_ids], device=device)
            hidden = self.hidden_states(ids, torch.tensor([packed.position_ids], device=device))[0, :-1]
            targets = ids[0, 1:]
            for start, end in packed.spans:
                h = hidden[start:end]
                logprobs = policy_head(h, self.weight, targets[start:end], temperature=temperature).logprobs
                if top_k:
                    top_ids, top_lp, tail = topk_logprobs(h, self.weight, top_k, temperature=temperature)
                    scores.append(TeacherScores(logprobs.tolist(), top_ids.tolist(), top_lp.tolist(), tail.tolist()))
                else:
                    scores.append(TeacherScores(logprobs.tolist()))
        return scores

    def close(self) -> None:
        pass


class ServedTeacher:
    """Scores `prompt + completion` token ids in one completions request per rollout (no new
    tokens are of interest) and reads the log-prob of every completion token. Retries on
    429/5xx/timeouts come from the `openai` client; a rollout whose scoring fails for good is
    reported (the recipe excludes it), never scored as zero."""

    name = "served"

    def __init__(self, cfg: ServedConfig) -> None:
        import openai

        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                    timeout=cfg.timeout, max_retries=cfg.max_retries)
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency)

    def _request(self, rollout: Rollout, top_k: int) -> TeacherScores:
        ids = list(rollout.prompt_ids) + list(rollout.completion_ids)
        start = len(rollout.prompt_ids)
        if self.cfg.protocol == "prompt_logprobs":
            response = self.client.completions.create(model=self.cfg.model, prompt=ids, max_tokens=1, temperature=0.0,
                                                      extra_body={"prompt_logprobs": top_k})
            entries = (response.choices[0].model_extra or {}).get("prompt_logprobs")
            if not entries or len(entries) != len(ids):
                raise ValueError(f"server returned {len(entries or [])} prompt_logprobs for {len(ids)} tokens")
            logprobs, topk_ids, topk_lp = [], [], []
            for position in range(start, len(ids)):
                entry = {int(t): v["logprob"] if isinstance(v, dict) else float(v) for t, v in entries[position].items()}
                logprobs.append(entry[ids[position]])
                if top_k:
                    ranked = sorted(entry.items(), key=lambda kv: -kv[1])[:top_k]
                    topk_ids.append([t for t, _ in ranked])
                    topk_lp.append([lp for _, lp in ranked])
            return TeacherScores(logprobs, topk_ids or None, topk_lp or None)
        response = self.client.completions.create(model=self.cfg.model, prompt=ids, max_tokens=0, temperature=0.0,
                                                  echo=True, logprobs=0)
        echoed = response.choices[0].logprobs.token_logprobs
        if echoed is None or len(echoed) < len(ids):
            raise ValueError(f"server echoed {len(echoed or [])} log-probs for {len(ids)} tokens")
        return TeacherScores([float(x) for x in echoed[start : len(ids)]])

    def score(self, rollouts: Sequence[Rollout], *, top_k: int, temperature: float) -> list[Scored]:
        """A TeacherScores per rollout, or the error message for one that could not be scored.
        The server scores at temperature 1 (the config refuses any other sampling temperature)."""
        def one(rollout: Rollout) -> Scored:
            try:
                scores = self._request(rollout, top_k)
            except Exception as exc:  # noqa: BLE001 - recorded and the rollout excluded
                return f"{type(exc).__name__}: {str(exc)[:200]}"
            if any(not math.isfinite(x) for x in scores.logprobs):
                return "non-finite teacher log-prob"
            return scores

        return list(self.pool.map(one, rollouts))

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


class PrecomputedTeacher:
    """Scores stored with replayed rollouts (`teacher_logprobs`, optional `teacher_topk_ids` /
    `teacher_topk_logprobs` / `teacher_topk_tail` columns), e.g. written by an earlier run at the
    same temperature (the replay reader checks it)."""

    name = "precomputed"

    def score(self, rollouts: Sequence[Rollout], *, top_k: int, temperature: float) -> list[Scored]:
        out: list[Scored] = []
        for rollout in rollouts:
            scores = rollout.teacher
            if scores is None or len(scores.logprobs) != len(rollout.completion_ids):
                out.append("no teacher_logprobs of the completion's length in the replayed row")
            elif top_k and scores.topk_ids is None:
                out.append("estimator topk needs teacher_topk_ids/teacher_topk_logprobs columns")
            else:
                out.append(scores)
        return out

    def close(self) -> None:
        pass


Teacher = LocalTeacher | ServedTeacher | PrecomputedTeacher


def make_teacher(cfg: TeacherConfig, device: torch.device) -> Teacher | None:
    if cfg.source == "local":
        return LocalTeacher(cfg, device)
    if cfg.source == "served":
        return ServedTeacher(cfg.served)
    if cfg.source == "precomputed":
        return PrecomputedTeacher()
    return None
