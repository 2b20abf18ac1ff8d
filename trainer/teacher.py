"""Teacher sources for the distillation term, scored on the student's own rollouts:
`local` (a colocated model without gradients; its last hidden states feed `full_vocab_kl`),
`served` (an OpenAI-compatible endpoint returning log-probs of the student's tokens: vLLM's
`prompt_logprobs`, with the teacher's top-k, or the `echo` + `logprobs` completions style), and
`precomputed` (log-probs stored with replayed rollouts). Must not compute the objective.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from trainer.config import ConfigError, ModelConfig, TeacherConfig
from trainer.kernels import token_logprobs
from trainer.rollout import Rollout, pack_rollouts


@dataclass
class TeacherScores:
    """Per completion token of one rollout: the teacher's log-prob of the sampled token and,
    when available, its top-k ids and log-probs."""

    logprobs: list[float]
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None


class LocalTeacher:
    name = "local"

    def __init__(self, cfg: TeacherConfig, device: torch.device) -> None:
        from trainer.model import load_causal_lm

        model_cfg = ModelConfig(path=cfg.path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                                gradient_checkpointing=False)
        self.lm = load_causal_lm(model_cfg, device).eval().requires_grad_(False)
        self.top_k = cfg.top_k
        self.rollouts_per_pass = 8

    @property
    def weight(self) -> torch.Tensor:
        return self.lm.get_output_embeddings().weight

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

    @torch.no_grad()
    def score(self, rollouts: Sequence[Rollout], *, with_topk: bool, temperature: float = 1.0) -> list[TeacherScores]:
        scores = []
        device = self.weight.device
        for first in range(0, len(rollouts), self.rollouts_per_pass):
            packed = pack_rollouts(rollouts[first : first + self.rollouts_per_pass])
            ids = torch.tensor([packed.input_ids], device=device)
            hidden = self.hidden_states(ids, torch.tensor([packed.position_ids], device=device))[0, :-1]
            targets = ids[0, 1:]
            for start, end in packed.spans:
                h = hidden[start:end]
                logprobs = token_logprobs(h, self.weight, targets[start:end], temperature=temperature)
                topk_ids = topk_lp = None
                if with_topk:
                    logits = (h.float() @ self.weight.float().T) / temperature  # one completion's rows only
                    top = torch.log_softmax(logits, -1).topk(self.top_k, -1)
                    topk_ids, topk_lp = top.indices.tolist(), top.values.tolist()
                scores.append(TeacherScores(logprobs.tolist(), topk_ids, topk_lp))
        return scores

    def close(self) -> None:
        pass


class ServedTeacher:
    """Scores `prompt + completion` token ids in one completions request per rollout (no new
    tokens are of interest) and reads the log-prob of every completion token. Retries on
    429/5xx/timeouts come from the `openai` client; a rollout whose scoring fails for good is
    reported (the recipe excludes it), never scored as zero."""

    name = "served"

    def __init__(self, cfg: TeacherConfig) -> None:
        import openai

        if not cfg.base_url or not cfg.model:
            raise ConfigError("teacher.source = 'served' needs teacher.base_url and teacher.model")
        if cfg.protocol not in ("prompt_logprobs", "echo"):
            raise ConfigError(f"teacher.protocol must be prompt_logprobs or echo, got {cfg.protocol!r}")
        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                    timeout=cfg.timeout, max_retries=cfg.max_retries)
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency)

    def _request(self, rollout: Rollout, with_topk: bool) -> TeacherScores:
        ids = list(rollout.prompt_ids) + list(rollout.completion_ids)
        k = self.cfg.top_k if with_topk else 0
        start = len(rollout.prompt_ids)
        if self.cfg.protocol == "prompt_logprobs":
            response = self.client.completions.create(model=self.cfg.model, prompt=ids, max_tokens=1, temperature=0.0,
                                                      extra_body={"prompt_logprobs": k})
            entries = (response.choices[0].model_extra or {}).get("prompt_logprobs")
            if not entries or len(entries) != len(ids):
                raise ValueError(f"server returned {len(entries or [])} prompt_logprobs for {len(ids)} tokens")
            logprobs, topk_ids, topk_lp = [], [], []
            for position in range(start, len(ids)):
                entry = {int(t): v["logprob"] if isinstance(v, dict) else float(v) for t, v in entries[position].items()}
                logprobs.append(entry[ids[position]])
                if with_topk:
                    ranked = sorted(entry.items(), key=lambda kv: -kv[1])[:k]
                    topk_ids.append([t for t, _ in ranked])
                    topk_lp.append([lp for _, lp in ranked])
            return TeacherScores(logprobs, topk_ids if with_topk else None, topk_lp if with_topk else None)
        response = self.client.completions.create(model=self.cfg.model, prompt=ids, max_tokens=0, temperature=0.0,
                                                  echo=True, logprobs=0)
        token_logprobs_ = response.choices[0].logprobs.token_logprobs
        if token_logprobs_ is None or len(token_logprobs_) < len(ids):
            raise ValueError(f"server echoed {len(token_logprobs_ or [])} log-probs for {len(ids)} tokens")
        return TeacherScores([float(x) for x in token_logprobs_[start : len(ids)]])

    def score(self, rollouts: Sequence[Rollout], *, with_topk: bool, temperature: float = 1.0) -> list[TeacherScores | str]:
        """A TeacherScores per rollout, or the error message for one that could not be scored."""
        if temperature != 1.0:
            raise ConfigError("a served teacher returns log-probs at temperature 1; set teacher KL temperature to 1")
        if with_topk and self.cfg.protocol == "echo":
            raise ConfigError("the echo protocol returns top-k keyed by text; use protocol = 'prompt_logprobs' for topk")

        def one(rollout: Rollout) -> TeacherScores | str:
            try:
                scores = self._request(rollout, with_topk)
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
    """Log-probs stored with replayed rollouts (`teacher_logprobs`, optional `teacher_topk_ids` /
    `teacher_topk_logprobs` columns), e.g. written by an earlier run or an offline scoring job."""

    name = "precomputed"

    def score(self, rollouts: Sequence[Rollout], *, with_topk: bool, temperature: float = 1.0) -> list[TeacherScores | str]:
        out: list[TeacherScores | str] = []
        for rollout in rollouts:
            scores = rollout.teacher
            if scores is None or len(scores.logprobs) != len(rollout.completion_ids):
                out.append("no teacher_logprobs of the completion's length in the replayed row")
            elif with_topk and scores.topk_ids is None:
                out.append("estimator topk needs teacher_topk_ids/teacher_topk_logprobs columns")
            else:
                out.append(scores)
        return out

    def close(self) -> None:
        pass


def make_teacher(cfg: TeacherConfig, device: torch.device) -> LocalTeacher | ServedTeacher | PrecomputedTeacher | None:
    if cfg.source == "none":
        return None
    if cfg.source == "local":
        if not cfg.path:
            raise ConfigError("teacher.source = 'local' needs teacher.path")
        return LocalTeacher(cfg, device)
    if cfg.source == "served":
        return ServedTeacher(cfg)
    if cfg.source == "precomputed":
        return PrecomputedTeacher()
    raise ConfigError(f"teacher.source must be none, local, served or precomputed, got {cfg.source!r}")

