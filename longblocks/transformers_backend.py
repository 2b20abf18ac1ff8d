"""The in-process `transformers` backend: the model's own chat template and `generate`, batches of
requests left-padded together, behind the same interface as the `openai` and `vllm` backends
(`map_ordered`, the sqlite request cache, `describe`, `stats`). The engine for a machine without
vLLM or a server (CPU, macOS). Must not parse task outputs: callers do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any, TypeVar

from longblocks.completions import BackendStats, BatchedBackend, Completion, Messages, RequestCache, Sampling
from longblocks.errors import LongBlocksError
from longblocks.text import split_reasoning

T = TypeVar("T")

class TransformersBackend(BatchedBackend):
    """`AutoModelForCausalLM` + `AutoTokenizer` from a local folder or Hub id, sampling with the
    request's explicit settings (never the model's generation_config defaults)."""

    name = "transformers"

    def __init__(self, model: str, *, sampling: Sampling = Sampling(), batch_size: int = 4, cache: RequestCache | None = None,
                 max_model_len: int | None = None, dtype: str = "auto", device: str | None = None,
                 trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model, self.sampling, self.batch_size = model, sampling, max(1, batch_size)
        self.cache = cache or RequestCache(None)
        self.stats = BackendStats()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code, padding_side="left")
            self.lm = AutoModelForCausalLM.from_pretrained(
                model, dtype=dtype if dtype != "auto" else ("auto" if self.device == "cuda" else torch.float32),
                trust_remote_code=trust_remote_code).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise LongBlocksError(f"cannot load {model!r} with transformers: {str(exc).splitlines()[0]}") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_model_len = max_model_len or getattr(self.lm.config, "max_position_embeddings", None)
        configured = self.lm.generation_config.eos_token_id
        self._eos = ({*configured} if isinstance(configured, list) else {configured, self.tokenizer.eos_token_id}) - {None}

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "sampling": asdict(self.sampling),
                "batch_size": self.batch_size, "device": self.device, "model_size": model_size(self.lm)}

    def choose(self, items: Iterable[T], to_messages: Callable[[T], Messages],
               choices: tuple[str, ...]) -> Iterator[tuple[T, dict[str, float] | str]]:
        """A constrained choice per item: the probability of each choice as the reply's first token
        (its spellings with and without a leading space or capital summed), normalised over the
        choices; or an error string. Answered from / stored in the request cache like completions."""
        return self._map(items, to_messages, f"{self.model}#choice:{'|'.join(choices)}",
                         lambda batch: self._choice_probs(batch, choices),
                         lambda probs: Completion(text=json.dumps(probs), finish_reason="choice") if isinstance(probs, dict) else None,
                         lambda cached: json.loads(cached.text))

    def _choice_probs(self, batch: list[Messages], choices: tuple[str, ...]) -> list[dict[str, float] | str]:
        """Requests that share a long prefix of tokens (one document's checks) pay for it once: the
        prefix runs alone into a KV cache, repeated for the group's suffixes, which run together.
        The tokens are each full prompt's own, so the scores equal scoring each prompt alone."""
        prompts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        out: list[dict[str, float] | str] = []
        start = 0
        while start < len(ids):
            end = start + 1
            while end < len(ids) and _shared(ids[start], ids[end]) >= len(ids[start]) // 2:
                end += 1
            out += self._score_group(ids[start:end], choices)
            start = end
        return out

    def _score_group(self, group: list[list[int]], choices: tuple[str, ...]) -> list[dict[str, float] | str]:
        import torch

        shared = min(_shared(group[0], other) for other in group) if len(group) > 1 else 0
        shared = min(shared, min(len(t) for t in group) - 1)  # every prompt keeps a token to score after
        head, tails = group[0][:shared], [t[shared:] for t in group]
        longest = max(len(t) for t in group)
        if self.max_model_len and longest > self.max_model_len:
            return [f"prompt of {longest} tokens does not fit the model's {self.max_model_len} positions"] * len(group)
        self.stats.sent += len(group)
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=self.device)  # right padding
        mask = torch.tensor([[1] * (len(head) + len(t)) + [0] * (width - len(t)) for t in tails], device=self.device)
        with torch.no_grad():
            cache = None
            if head:
                cache = self.lm(input_ids=torch.tensor([head], device=self.device), use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(group))
            positions = (len(head) + torch.arange(width, device=self.device)).expand(len(group), -1)
            logits = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=cache is not None).logits.float()
        self.stats.finished += len(group)  # a document's checks at a time: progress moves inside a window
        last = logits[torch.arange(len(group)), torch.tensor([len(t) - 1 for t in tails])].log_softmax(-1)
        scores = torch.stack([torch.logsumexp(last[:, self._first_tokens(c)], -1) for c in choices], -1)
        return [dict(zip(choices, row)) for row in scores.softmax(-1).tolist()]

    def _first_tokens(self, choice: str) -> list[int]:
        spellings = {choice, choice.capitalize(), " " + choice, " " + choice.capitalize()}
        return sorted({self.tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in spellings})

    def _generate(self, batch: list[Messages]) -> list[Completion]:
        if not batch:
            return []
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        prompts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        limit = self.max_model_len or 10**9
        fits = [i for i, n in enumerate(lengths) if n + 1 <= limit]
        out = [Completion(error=f"prompt of {n} tokens does not fit the model's {limit} positions") for n in lengths]
        if not fits:
            self.stats.failed += len(batch)
            return out
        s = self.sampling
        encoded = self.tokenizer([prompts[i] for i in fits], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
        room = min(s.max_tokens, limit - encoded["input_ids"].shape[1])
        options: dict[str, Any] = {"max_new_tokens": max(room, 1), "do_sample": s.temperature > 0,
                                   "pad_token_id": self.tokenizer.pad_token_id}
        if s.temperature > 0:
            options.update(temperature=s.temperature, top_p=s.top_p, top_k=s.extra.get("top_k", 0))
        if "repetition_penalty" in s.extra:  # vLLM's and transformers' name for the same processor
            options["repetition_penalty"] = float(s.extra["repetition_penalty"])
        if s.seed is not None:
            torch.manual_seed(s.seed)
        self.stats.sent += len(fits)
        self.stats.in_flight = len(fits)
        try:
            with torch.no_grad():  # a fresh GenerationConfig: the model's own defaults never apply silently
                config = GenerationConfig(**options, eos_token_id=sorted(self._eos), bos_token_id=None)
                generated = self.lm.generate(**encoded, generation_config=config,
                                             stopping_criteria=StoppingCriteriaList([TokenCounter(self.stats, self._eos)]))
        except (RuntimeError, ValueError) as exc:  # out of memory, a bad prompt: recorded, not raised
            self.stats.failed += len(fits)
            self.stats.finished += len(fits)
            for i in fits:
                out[i] = Completion(error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return out
        finally:
            self.stats.in_flight = 0
        self.stats.finished += len(fits)
        eos = self._eos
        for row, i in enumerate(fits):
            new = generated[row, encoded["input_ids"].shape[1]:].tolist()
            ended = next((k for k, t in enumerate(new) if t in eos), None)
            tokens = new if ended is None else new[:ended]
            text, thought = split_reasoning(self.tokenizer.decode(tokens, skip_special_tokens=True))
            out[i] = Completion(text=text, reasoning=thought, finish_reason="stop" if ended is not None else "length",
                                prompt_tokens=lengths[i], completion_tokens=len(tokens))
        return out



class TokenCounter:
    """A stopping criterion that never stops: called after each decode step, it counts the tokens
    the rows still generating produced, so progress moves while one `generate` call runs."""

    def __init__(self, stats: BackendStats, eos: set[int]) -> None:
        self.stats, self.eos, self.done = stats, eos, None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1]
        ended = torch.isin(last, torch.tensor(sorted(self.eos), device=last.device)) if self.eos else \
            torch.zeros_like(last, dtype=torch.bool)
        running = ~self.done if self.done is not None else torch.ones_like(ended)
        self.stats.tokens += int(running.sum())
        self.done = ended if self.done is None else self.done | ended
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def model_size(model: Any) -> str:
    """A model's size as people say it: 135M, 1.7B."""
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _shared(a: list[int], b: list[int]) -> int:
    """How many leading tokens two prompts share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
