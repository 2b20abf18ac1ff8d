"""The teacher side of the teacher term: `Teacher` scores a step's rollouts once (what the objective
needs ahead of the update) and builds one `TeacherSignal` per micro-batch. Its source is `local` (a
colocated frozen model: its last hidden states feed the policy head's exact KL, or give its top-k
in chunks of tokens), `served` (an OpenAI-compatible endpoint returning log-probs of the student's
tokens: vLLM's `prompt_logprobs` with the teacher's top-k, or the `echo` + `logprobs` style;
temperature 1 only) or `precomputed` (scores stored with replayed rollouts); G-OPD's reference model
is a frozen model too. Scores come back as values: `TeacherScores`, or `TeacherFailure` with the
rollout's origin, never an error string and never a non-finite number. Must not compute the objective.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from trainer.batch import MicroBatch, Rollout, Scored, TeacherFailure, TeacherScores, TeacherSignal, pack_rollouts
from trainer.config import ModelConfig, RLConfig, ServedConfig
from trainer.kernels import policy_head, topk_logprobs
from trainer.objectives import signal_kind


class FrozenModel:
    """A colocated causal LM without gradients (the local teacher, or G-OPD's reference model)."""

    rollouts_per_pass = 8

    def __init__(self, path: str, dtype: str, trust_remote_code: bool, device: torch.device) -> None:
        from trainer.model import load_causal_lm

        model_cfg = ModelConfig(path=path, dtype=dtype, trust_remote_code=trust_remote_code, gradient_checkpointing=False)
        self.lm = load_causal_lm(model_cfg, device, master_weights=False).eval().requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        return self.lm.get_output_embeddings().weight

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state

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
    429/5xx/timeouts come from the `openai` client; a rollout whose scoring fails for good is a
    `TeacherFailure` (the recipe excludes it), never scored as zero."""

    def __init__(self, cfg: ServedConfig) -> None:
        import openai

        self.cfg = cfg
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                    timeout=cfg.timeout, max_retries=cfg.max_retries)
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency)

    def check(self, top_k: int, tokens: int) -> None:
        """Before the first step, once: the server serves this model, holds `tokens` (prompt and
        completion) in its max_model_len, and takes `top_k` prompt log-probs (vLLM's --max-logprobs,
        20 by default): a limit is one line now, not every request refused at every step."""
        import openai

        from trainer.config import ConfigError

        url = self.cfg.base_url
        try:
            models = {m.id: m for m in self.client.models.list().data}
        except openai.APIConnectionError as exc:
            raise ConfigError(f"teacher.served.base_url = {url!r}: cannot reach the server ({exc})") from None
        except openai.APIStatusError:
            models = {}  # a server without /models: nothing to check there
        if models and self.cfg.model not in models:
            raise ConfigError(f"teacher.served.model = {self.cfg.model!r}: {url} serves {sorted(models)}")
        limit = (models[self.cfg.model].model_extra or {}).get("max_model_len") if models else None
        if limit and tokens > limit:
            raise ConfigError(f"a rollout of up to {tokens} tokens (data.max_prompt_len + rollout.max_new_tokens) does "
                              f"not fit the served teacher's max_model_len = {limit} at {url}")
        if self.cfg.protocol == "prompt_logprobs" and top_k:
            try:
                self.client.with_options(max_retries=0).completions.create(
                    model=self.cfg.model, prompt=[0, 1], max_tokens=1, temperature=0.0, extra_body={"prompt_logprobs": top_k})
            except openai.BadRequestError as exc:
                if "logprob" not in str(exc).lower():
                    return  # refused for another reason: the steps' own requests say which
                raise ConfigError(f"the served teacher at {url} refuses prompt_logprobs = {top_k} (objective.top_k): "
                                  f"{str(exc)[:160]}; vLLM allows --max-logprobs (20 by default): lower objective.top_k "
                                  f"or restart the server with --max-logprobs {top_k}") from None
            except (openai.APIStatusError, openai.APIConnectionError):
                pass  # a failure that may pass: the steps' own requests retry it

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
        """Scores per rollout, or why there are none. The server scores at temperature 1 (the
        config refuses any other sampling temperature)."""
        def one(rollout: Rollout) -> Scored:
            try:
                return self._request(rollout, top_k)
            except Exception as exc:  # noqa: BLE001 - recorded and the rollout excluded
                return TeacherFailure(f"{type(exc).__name__}: {str(exc)[:200]}")

        return list(self.pool.map(one, rollouts))

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


class PrecomputedTeacher:
    """Scores stored with replayed rollouts (`teacher_logprobs`, optional `teacher_topk_ids` /
    `teacher_topk_logprobs` / `teacher_topk_tail` columns), e.g. written by an earlier run at the
    same temperature (the replay reader checks it)."""

    def score(self, rollouts: Sequence[Rollout], *, top_k: int, temperature: float) -> list[Scored]:
        out: list[Scored] = []
        for rollout in rollouts:
            scores = rollout.teacher
            if scores is None or len(scores.logprobs) != len(rollout.completion_ids):
                out.append(TeacherFailure("no teacher_logprobs of the completion's length in the replayed row"))
            elif top_k and scores.topk_ids is None:
                out.append(TeacherFailure("estimator topk needs teacher_topk_ids/teacher_topk_logprobs columns"))
            else:
                out.append(scores)
        return out

    def close(self) -> None:
        pass


Source = FrozenModel | ServedTeacher | PrecomputedTeacher


LOGPROB_SLACK = 1e-4  # a served log-prob may round a little above 0; more is not a log-probability


def _not_finite(scores: TeacherScores) -> str | None:
    """Where a score is not a log-probability: not a finite number (a -inf log-prob makes the KL,
    and the loss, infinite) or above 0 (a served "log-prob" that is a logit or a score)."""
    for name in ("logprobs", "topk_tail", "reference_logprobs"):
        values = getattr(scores, name) or []
        bad = next((t for t, x in enumerate(values) if x is None or not math.isfinite(x) or x > LOGPROB_SLACK), None)
        if bad is not None:
            kind = "non-finite" if values[bad] is None or not math.isfinite(values[bad]) else "positive"
            return f"{kind} {'teacher' if name != 'reference_logprobs' else 'reference'} log-prob " \
                   f"({values[bad]}) at completion token {bad}"
    for t, row in enumerate(scores.topk_logprobs or []):
        if any(x is None or not math.isfinite(x) or x > LOGPROB_SLACK for x in row):
            return f"non-finite or positive teacher top-k log-prob at completion token {t}"
    return None


class Teacher:
    """The teacher term's inputs for a run: which signal the objective needs (objectives.signal_kind),
    the source that gives it and, for G-OPD (objective.reward_scale != 1), the frozen reference model."""

    def __init__(self, cfg: RLConfig, device: torch.device) -> None:
        self.kind = signal_kind(cfg.objective)
        self.top_k = cfg.objective.top_k if self.kind == "topk" else 0
        self.temperature = cfg.rollout.temperature
        self.direction, self.jsd_beta = cfg.objective.direction, cfg.objective.jsd_beta
        t = cfg.teacher
        self.source: Source | None = None
        if self.kind != "none":
            self.source = {"local": lambda: FrozenModel(t.path, t.dtype, t.trust_remote_code, device),
                           "served": lambda: ServedTeacher(t.served), "precomputed": PrecomputedTeacher}[t.source]()
        if isinstance(self.source, ServedTeacher):
            self.source.check(self.top_k, cfg.data.max_prompt_len + cfg.rollout.max_new_tokens)
        self.reference: FrozenModel | None = None
        if self.kind != "none" and cfg.objective.reward_scale != 1:
            self.reference = FrozenModel(cfg.objective.reference or cfg.model.path, t.dtype, cfg.model.trust_remote_code,
                                         device)

    def score(self, rollouts: Sequence[Rollout]) -> list[Scored]:
        """Per rollout, what the signal needs ahead of the update: the teacher's log-prob of each
        sampled token (and its top-k), G-OPD's reference log-probs; None where nothing is needed
        (no teacher, or a local teacher read inside the policy head)."""
        scored: list[Scored] = [None] * len(rollouts)
        if self.kind in ("topk", "sampled"):
            scored = self.source.score(rollouts, top_k=self.top_k, temperature=self.temperature)
        if self.reference is not None:
            ref = self.reference.score(rollouts, top_k=0, temperature=self.temperature)
            scored = [s if isinstance(s, TeacherFailure) else
                      TeacherScores(s.logprobs if s else [], s.topk_ids if s else None, s.topk_logprobs if s else None,
                                    s.topk_tail if s else None, reference_logprobs=r.logprobs)
                      for s, r in zip(scored, ref)]
        out: list[Scored] = []
        for rollout, s in zip(rollouts, scored):
            problem = _not_finite(s) if isinstance(s, TeacherScores) else None
            if isinstance(s, TeacherFailure) or problem:
                where = rollout.origin or "a rollout"
                s = TeacherFailure(f"{where}: {problem or s.reason}")
            out.append(s)
        return out

    def signal(self, mb: MicroBatch, scored: Sequence[Scored]) -> TeacherSignal:
        """The micro-batch's teacher signal from its rollouts' scores (`scored`, in the micro-batch's order)."""
        device = mb.input_ids.device
        valid = torch.tensor([not isinstance(s, TeacherFailure) for s in scored], dtype=torch.bool, device=device)
        signal = TeacherSignal(self.kind, valid, direction=self.direction, jsd_beta=self.jsd_beta)
        if self.kind == "none":
            return signal
        scores = [s if isinstance(s, TeacherScores) else None for s in scored]
        if self.kind == "hidden":
            signal.hidden = self.source.hidden_states(mb.input_ids, mb.position_ids)[0, :-1]
            signal.weight = self.source.weight
        if self.kind == "sampled":
            signal.logprobs = _per_token(mb, [s.logprobs if s else None for s in scores])
        if self.reference is not None:
            signal.reference_logprobs = _per_token(mb, [s.reference_logprobs if s else None for s in scores])
        if self.kind == "topk":
            targets = mb.input_ids.shape[1] - 1
            k = next((len(s.topk_ids[0]) for s in scores if s and s.topk_ids), 1)  # no scored rollout: all masked
            ids = torch.zeros(targets, k, dtype=torch.long)
            logprobs = torch.full((targets, k), -1e4)  # rows outside completions never enter the KL (masked)
            tail = torch.zeros(targets)
            with_tail = all(s.topk_tail is not None for s in scores if s)
            for s, (start, end) in zip(scores, mb.spans):
                if s is not None and s.topk_ids:
                    ids[start:end] = torch.tensor(s.topk_ids)
                    logprobs[start:end] = torch.tensor(s.topk_logprobs)
                    if with_tail:
                        tail[start:end] = torch.tensor(s.topk_tail)
            signal.topk_ids, signal.topk_logprobs = ids.to(device), logprobs.to(device)
            signal.topk_tail = tail.to(device) if with_tail else None
        return signal

    def close(self) -> None:
        for part in (self.source, self.reference):
            if part is not None:
                part.close()


def _per_token(mb: MicroBatch, rows: list[list[float] | None]) -> torch.Tensor:
    """Per-rollout lists as an [S, L] tensor over completion tokens (0 where absent or padded)."""
    out = torch.zeros(mb.mask.shape)
    for i, values in enumerate(rows):
        if values:
            out[i, : len(values)] = torch.tensor(values)
    return out.to(mb.mask.device)
