"""Run configuration: dataclasses filled from a TOML or YAML file plus `--section.key=value`
overrides (`longblocks.options`, the same loader and checks as `longblocks run`), printed and saved
resolved. Must not hold defaults anywhere but these dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from longblocks.options import OptionError, apply_overrides, build, read_file

T = TypeVar("T")


class ConfigError(OptionError):
    """A configuration the user must fix; the CLI prints it as one line."""


DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")


def _choice(where: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclasses.dataclass
class ModelConfig:
    path: str = ""  # local folder or Hub id ({smollm2}: the prepared offline SmolLM2-135M-Instruct)
    tokenizer: str | None = None  # default: same as path
    trust_remote_code: bool = False  # run the model repository's own code (off unless asked)
    # The compute dtype (auto: bf16 on CUDA, fp32 on CPU). Parameters and optimizer state stay fp32
    # (master weights); forward and backward run in this dtype (autocast, or FSDP2's mixed precision).
    dtype: str = "auto"
    attn_implementation: str | None = None  # e.g. flash_attention_2 (varlen packing) or sdpa
    gradient_checkpointing: bool = True  # recompute activations in the backward pass (memory for time)
    # keep only the first N decoder layers (a smaller student cut from the model, sharing its tokenizer
    # and head; final/ is saved with N layers); 0: all
    keep_layers: int = 0
    cpu_offload: bool = False  # FSDP2 CPUOffloadPolicy: fp32 parameters, gradients and AdamW state live in host memory

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, DTYPES)
        if self.keep_layers < 0:
            raise ConfigError(f"model.keep_layers must be >= 0 (0: all layers), got {self.keep_layers}")


def _need_model(model: ModelConfig) -> None:
    if not model.path:
        raise ConfigError("model.path is required (a local folder or Hub id)")


@dataclasses.dataclass
class DataSource:
    path: str = ""  # parquet file/dir/glob, a longblocks stage or publish dir, or a Hub dataset id
    split: str = "train"  # the dataset split
    name: str | None = None  # Hub config
    target: str = "answer"  # LongBlocks rows: `answer` or a `response_<model>` column
    prompt: str = "{document}\n\n{question}"  # LongBlocks rows: the user turn, from the row's columns


def _mixture(where: str, short_fraction: float) -> None:
    if not 0.0 <= short_fraction < 1.0:
        raise ConfigError(f"{where}.short_fraction must be in [0, 1); got {short_fraction}")


@dataclasses.dataclass
class DataConfig:
    long: list[DataSource] = dataclasses.field(default_factory=list)  # long-context sources: [[data.long]]
    short: list[DataSource] = dataclasses.field(default_factory=list)  # short sources (any `messages` dataset): [[data.short]]
    short_fraction: float = 0.1  # of trained tokens, realized by the mixture sampler
    max_seq_len: int = 32768  # tokens per packed sequence
    overlong: str = "drop"  # drop | truncate (keep the first max_seq_len tokens)
    pack: bool = True  # pack several samples per sequence (position ids restart; no cross-sample attention)
    seed: int = 0  # the mixture's and the shuffle's seed

    def __post_init__(self) -> None:
        _mixture("data", self.short_fraction)
        _choice("data.overlong", self.overlong, ("drop", "truncate"))


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-5  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr x this
    warmup_steps: int = 10  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    max_grad_norm: float = 1.0  # gradient clipping by global norm
    steps: int = 100  # optimizer steps

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.steps < 1 or self.warmup_steps < 0:
            raise ConfigError("optim: lr must be > 0, steps >= 1, warmup_steps >= 0")


@dataclasses.dataclass
class SFTOptimConfig(OptimConfig):
    tokens_per_step: int = 65536  # gradient accumulation by token budget (sequence tokens)
    packs_multiple_of: int = 0  # sequences per step rounded to this multiple (0: the world size)


@dataclasses.dataclass
class RunConfig:
    out: str = "runs/sft"  # the run folder: checkpoints, metrics, final/ (re-running resumes from it)
    seed: int = 0  # seeds torch, sampling and data order
    save_every: int = 50  # checkpoint every this many steps
    log_every: int = 1  # metrics every this many steps
    tensorboard: bool = True  # also write TensorBoard events
    wandb: bool = False  # also log to Weights & Biases
    wandb_project: str = "dgrpo"  # the W&B project


@dataclasses.dataclass
class SFTConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: SFTOptimConfig = dataclasses.field(default_factory=SFTOptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _need_model(self.model)
        if not self.data.long:
            raise ConfigError("data.long is empty: give at least one [[data.long]] source")


# -- dGRPO ---------------------------------------------------------------------------------------
ESTIMATORS = ("full", "topk", "k1", "k2", "k3")  # full/topk: exact per-token KL from the policy head
COMBINES = ("loss", "advantage")
DIRECTIONS = ("reverse", "forward", "jsd")  # jsd: the generalized JSD through the policy head (exact)
AGGREGATIONS = ("seq-mean", "token-mean", "seq-sum-norm")
TOKEN_SELECTS = ("none", "entropy", "divergence", "overconfident", "tip")
# (estimator, combine, direction) whose expected gradient on the student's own tokens is the
# gradient of the divergence named by `direction` (derivations in objectives.py). Everything else
# is refused: k1 as a loss has zero expected gradient, the exact KL folded into the advantage too
# (it depends on the state only), k2 and k3 in the advantage follow no divergence, and k3 as a loss
# follows the forward KL, not the reverse.
TEACHER_TERMS = {
    ("full", "loss", "reverse"), ("full", "loss", "forward"),
    ("topk", "loss", "reverse"), ("topk", "loss", "forward"),
    ("full", "loss", "jsd"), ("topk", "loss", "jsd"),
    ("k2", "loss", "reverse"),
    ("k1", "advantage", "reverse"),
    ("k3", "loss", "forward"),
}
TEACHER_TERMS_HELP = ("full or topk with combine=loss (reverse, forward or jsd); k2 with combine=loss (reverse); "
                      "k1 with combine=advantage (reverse); k3 with combine=loss (forward)")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    beta: float = 0.0  # weight of the teacher KL; 0 is GRPO
    eps_low: float = 0.2  # the ratio's lower clip: 1 - eps_low
    eps_high: float = 0.2  # > eps_low is DAPO's clip-higher
    # Dual clip on negative advantages (verl's clip_ratio_c, 3 there): the surrogate is at least c x A,
    # so a token whose ratio ran far above 1 cannot push an unbounded loss. 0: off; otherwise > 1.
    clip_ratio_c: float = 0.0
    estimator: str = "full"  # full | topk | k1 | k2 | k3
    combine: str = "loss"  # loss (the paper) | advantage (A_it - beta * KL_it, detached)
    direction: str = "reverse"  # reverse: KL(student || teacher), the paper; forward: KL(teacher || student); jsd
    # Generalized JSD (GKD; TRL's convention): b KL(teacher || m) + (1 - b) KL(student || m), m = (1 - b) student
    # + b teacher; b in (0, 1), near 0 the forward KL, near 1 the reverse (each times b or 1 - b).
    jsd_beta: float = 0.5
    top_k: int = 20  # teacher log-probs kept per token for estimator = topk
    aggregation: str = "seq-mean"  # seq-mean (as written) | token-mean | seq-sum-norm
    norm_constant: float = 1.0  # seq-sum-norm: each sequence's sum is divided by this (e.g. max length)
    scale_std: bool = True  # divide group-centred rewards by the group's std
    # vOPD (on-policy distillation with a control variate): with k1 in the advantage, subtract the
    # exact per-token KL (the log-ratio's expectation under the student) from the sampled log-ratio.
    baseline: str = "none"  # none | exact_kl
    # TOPD / POPD (truncated / progressive distillation horizon): the teacher term on the first h
    # completion tokens only; h > 1 is tokens, 0 < h <= 1 a fraction of rollout.max_new_tokens, 0 all.
    # With horizon_steps > 0, h grows linearly from `horizon` to `horizon_final` over that many steps.
    horizon: float = 0.0
    horizon_final: float = 0.0  # POPD: the horizon reached after horizon_steps
    horizon_steps: int = 0  # POPD: steps over which the horizon grows (0: fixed)
    # G-OPD / ExOPD (reward scaling): the sampled-token reward lambda (log q - log ref) - (log p - log ref);
    # lambda > 1 extrapolates past the teacher. `reference` is the reference model's folder or Hub id
    # ("" = the student's initial weights, model.path); loaded (frozen) only when reward_scale != 1.
    reward_scale: float = 1.0
    reference: str = ""  # G-OPD: the reference model ("": the student's initial weights)
    # TIP (token importance): the teacher term only on a `token_fraction` of each micro-batch's tokens,
    # chosen by student entropy and teacher-student divergence: entropy (highest entropy), divergence
    # (highest divergence), overconfident (entropy at or below the median, highest divergence), tip
    # (half each of entropy and overconfident). REOPOLD's token-level dynamic sampling is `entropy`.
    token_select: str = "none"
    token_fraction: float = 1.0  # TIP: the fraction of each micro-batch's tokens the teacher term keeps
    # REOPOLD (relaxed OPD): mixture-based clipping of the sampled-token reward, a floor
    # r = max(log q/p, log(lambda / (1 - lambda))) with lambda in (0, 0.5] (1: off, plain log q/p);
    # with relax_steps > 0, the relaxations (mixture_clip, token_select) hold for the first
    # relax_steps steps (exploration), then plain OPD on every token (refinement).
    mixture_clip: float = 1.0
    relax_steps: int = 0  # REOPOLD: steps of exploration (mixture_clip, token_select) before plain OPD

    def __post_init__(self) -> None:
        _choice("objective.estimator", self.estimator, ESTIMATORS)
        _choice("objective.combine", self.combine, COMBINES)
        _choice("objective.direction", self.direction, DIRECTIONS)
        _choice("objective.aggregation", self.aggregation, AGGREGATIONS)
        if self.eps_low < 0 or self.eps_high < 0 or self.beta < 0 or self.norm_constant <= 0 or self.top_k < 1:
            raise ConfigError("objective: eps_low, eps_high and beta must be >= 0, norm_constant > 0, top_k >= 1")
        _choice("objective.baseline", self.baseline, ("none", "exact_kl"))
        if self.baseline == "exact_kl" and (self.estimator, self.combine) != ("k1", "advantage"):
            raise ConfigError("objective.baseline = 'exact_kl' (vOPD) is a control variate for the sampled log-ratio "
                              "in the advantage: it needs estimator = 'k1' and combine = 'advantage'")
        if self.horizon < 0 or self.horizon_final < 0 or self.horizon_steps < 0:
            raise ConfigError("objective.horizon, horizon_final and horizon_steps must be >= 0")
        if self.horizon_steps and not (0 < self.horizon and 0 < self.horizon_final):
            raise ConfigError("objective.horizon_steps > 0 (POPD) grows the horizon from horizon > 0 up to "
                              "horizon_final > 0 (compared in tokens, with rollout.max_new_tokens)")
        if not 0 < self.jsd_beta < 1:
            raise ConfigError("objective.jsd_beta must be in (0, 1); 0 and 1 are direction = 'forward' / 'reverse'")
        _choice("objective.token_select", self.token_select, TOKEN_SELECTS)
        if not 0 < self.token_fraction <= 1 or self.relax_steps < 0:
            raise ConfigError("objective.token_fraction must be in (0, 1], relax_steps >= 0")
        if not (0 < self.mixture_clip <= 0.5 or self.mixture_clip == 1):
            raise ConfigError("objective.mixture_clip (REOPOLD's lambda) must be in (0, 0.5] (the reward floor "
                              f"log(lambda / (1 - lambda)) <= 0) or 1 (off); got {self.mixture_clip}")
        if self.clip_ratio_c and self.clip_ratio_c <= 1:
            raise ConfigError(f"objective.clip_ratio_c (the dual clip) must be > 1, or 0 for off; got {self.clip_ratio_c}")
        if self.reward_scale <= 0:
            raise ConfigError("objective.reward_scale (G-OPD's lambda) must be > 0")
        sampled_reward = (self.estimator, self.combine) == ("k1", "advantage")
        for key, on in (("reward_scale", self.reward_scale != 1), ("mixture_clip", self.mixture_clip < 1)):
            if on and not sampled_reward:
                raise ConfigError(f"objective.{key} reshapes the sampled-token reward log q - log p: it needs "
                                  "estimator = 'k1' and combine = 'advantage'")
            if on and self.baseline != "none":
                raise ConfigError(f"objective.{key} and baseline = 'exact_kl' do not combine (the baseline is the "
                                  "expectation of the unscaled, unclipped log-ratio)")
        if self.reward_scale != 1 and self.mixture_clip < 1:
            raise ConfigError("objective.reward_scale (G-OPD) and mixture_clip (REOPOLD) are separate rewards; pick one")
        if self.relax_steps and self.mixture_clip == 1 and self.token_select == "none":
            raise ConfigError("objective.relax_steps schedules mixture_clip and token_select; neither is set")
        if (self.estimator, self.combine, self.direction) not in TEACHER_TERMS:
            raise ConfigError(
                f"objective: estimator={self.estimator}, combine={self.combine}, direction={self.direction} does not "
                f"follow the gradient of that KL; valid: {TEACHER_TERMS_HELP}")


    def horizon_at(self, step: int, max_new_tokens: int) -> int | None:
        """TOPD/POPD's h(step) in completion tokens (None: the whole rollout; `step` counts from 1):
        h <= 1 is a fraction of max_new_tokens, h > 1 a token count, growing linearly from horizon to
        horizon_final over horizon_steps."""
        if self.horizon == 0:
            return None

        def tokens(h: float) -> int:
            return max(1, round(h * max_new_tokens) if h <= 1 else int(h))

        start = tokens(self.horizon)
        if not self.horizon_steps:
            return min(start, max_new_tokens)
        final = tokens(self.horizon_final)
        grown = start + (final - start) * min(1.0, (step - 1) / self.horizon_steps)
        return min(int(round(grown)), max_new_tokens)


@dataclasses.dataclass
class ServedConfig:
    """An OpenAI-compatible endpoint scoring the student's tokens (vLLM's prompt_logprobs)."""

    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1
    model: str = ""  # the model name the server knows
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key (the key itself is never in a config)
    protocol: str = "prompt_logprobs"  # prompt_logprobs (vLLM) | echo (completions echo + logprobs)
    concurrency: int = 16  # requests in flight
    timeout: float = 600.0  # seconds per request
    max_retries: int = 6  # retries on 429, 5xx, connection errors and timeouts

    def __post_init__(self) -> None:
        _choice("teacher.served.protocol", self.protocol, ("prompt_logprobs", "echo"))


@dataclasses.dataclass
class TeacherConfig:
    source: str = "none"  # none | local | served | precomputed
    path: str = ""  # local: model folder or Hub id (same vocabulary as the student)
    dtype: str = "auto"  # local: loaded in this dtype (no master copy: the teacher is not trained)
    trust_remote_code: bool = False  # local: run the teacher repository's own code (off unless asked)
    served: ServedConfig = dataclasses.field(default_factory=ServedConfig)

    def __post_init__(self) -> None:
        _choice("teacher.source", self.source, ("none", "local", "served", "precomputed"))
        _choice("teacher.dtype", self.dtype, DTYPES)
        if self.source == "local" and not self.path:
            raise ConfigError("teacher.source = 'local' needs teacher.path")
        if self.source == "served" and not (self.served.base_url and self.served.model):
            raise ConfigError("teacher.source = 'served' needs teacher.served.base_url and teacher.served.model")


@dataclasses.dataclass
class RolloutConfig:
    engine: str = "hf"  # hf (transformers, our sampling loop, any device) | vllm (colocated vllm.LLM)
    prompts_per_step: int = 8  # prompts sampled per optimizer step
    group_size: int = 8  # G completions per prompt
    max_new_tokens: int = 1024  # completion tokens per rollout
    # The student's sampling temperature, and the temperature of both policies in the KL term: the
    # teacher is always scored at the temperature the student samples at.
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus sampling (1: off)
    top_k: int = 0  # 0: off
    old_logprobs: str = "recompute"  # recompute (training forward before the update) | behaviour (engine's)
    prompts_per_batch: int = 0  # hf engine: prompts sampled together (0: all of a rank's prompts of a step)
    vllm_gpu_memory_utilization: float = 0.3  # vllm: the engine's share of GPU memory
    vllm_max_model_len: int = 0  # 0: the model's
    save: bool = True  # write each step's rollouts to run.out/rollouts/ (replayable)

    def __post_init__(self) -> None:
        _choice("rollout.engine", self.engine, ("hf", "vllm"))
        _choice("rollout.old_logprobs", self.old_logprobs, ("recompute", "behaviour"))
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ConfigError("rollout: temperature >= 0, 0 < top_p <= 1, top_k >= 0, max_new_tokens >= 1")
        if self.old_logprobs == "behaviour" and (self.top_p < 1 or self.top_k > 0):
            raise ConfigError("rollout.old_logprobs = 'behaviour' needs the untruncated sampling distribution "
                              "(top_p = 1, top_k = 0); with top-p/top-k use recompute")


@dataclasses.dataclass
class RewardConfig:
    name: str = "exact_match"  # exact_match | token_f1 | string_match_all | string_match_part | judge | a label
    weight: float = 1.0  # its weight in the summed reward (0: on-policy distillation only)
    callable: str | None = None  # dotted path to fn(completion, reference, row) -> float
    judge_model: str = ""  # judge: the served model name
    judge_base_url: str | None = None  # judge: an OpenAI-compatible endpoint
    judge_api_key_env: str = "OPENAI_API_KEY"  # judge: the variable holding the API key
    judge_max_retries: int = 6  # judge: retries on 429, 5xx, connection errors and timeouts


@dataclasses.dataclass
class RLDataConfig:
    long: list[DataSource] = dataclasses.field(default_factory=list)  # long-context prompts
    short: list[DataSource] = dataclasses.field(default_factory=list)  # short prompts (regression guard)
    short_fraction: float = 0.1  # of prompt tokens, as the SFT mixture (0.1: the paper's 10/90)
    replay: str = ""  # parquet of stored rollouts (run.out/rollouts/*.parquet) to train on instead of sampling
    max_prompt_len: int = 8192  # prompts longer than this many tokens are left out
    seed: int = 0  # the prompt order's seed

    def __post_init__(self) -> None:
        _mixture("data", self.short_fraction)


@dataclasses.dataclass
class RLOptimConfig(OptimConfig):
    lr: float = 1e-6  # peak learning rate (AdamW)
    warmup_steps: int = 0  # linear warmup steps
    policy_epochs: int = 1  # passes over each step's rollouts (>1: rho moves away from 1 and clipping acts)
    micro_batch_rollouts: int = 8  # rollouts packed into one forward/backward


@dataclasses.dataclass
class RLConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    data: RLDataConfig = dataclasses.field(default_factory=RLDataConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    rewards: list[RewardConfig] = dataclasses.field(default_factory=lambda: [RewardConfig()])
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    optim: RLOptimConfig = dataclasses.field(default_factory=RLOptimConfig)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(out="runs/rl", save_every=20))

    def __post_init__(self) -> None:
        """Rules that join sections (each section checked its own values)."""
        _need_model(self.model)
        obj, teacher, rollout = self.objective, self.teacher, self.rollout
        if rollout.temperature <= 0:
            raise ConfigError("rollout.temperature must be > 0 for RL (the policy samples; 0 is greedy decoding)")
        if obj.horizon_steps:  # POPD grows the horizon: compare both ends in tokens (each may be a fraction)
            start = obj.horizon_at(1, rollout.max_new_tokens)
            final = obj.horizon_at(obj.horizon_steps + 1, rollout.max_new_tokens)
            if final is None or start is None or final < start:
                raise ConfigError(
                    f"objective.horizon = {obj.horizon} ({start} tokens) grows to horizon_final = {obj.horizon_final} "
                    f"({final} tokens of rollout.max_new_tokens = {rollout.max_new_tokens}): POPD's horizon must not "
                    "shrink (<= 1 is a fraction of max_new_tokens, > 1 a token count)")
        if rollout.group_size < 2 and any(r.weight for r in self.rewards):
            raise ConfigError("rollout.group_size must be >= 2 for group-relative advantages")
        if obj.beta > 0 and teacher.source == "none":
            raise ConfigError("objective.beta > 0 needs a teacher (teacher.source = local | served | precomputed)")
        if obj.baseline == "exact_kl" and teacher.source != "local":
            raise ConfigError("objective.baseline = 'exact_kl' (vOPD) needs the exact per-token KL from the teacher's "
                              "hidden states: teacher.source = 'local'")
        if obj.beta > 0 and obj.estimator == "full" and teacher.source != "local":
            raise ConfigError("objective.estimator = 'full' needs the teacher's hidden states: teacher.source = 'local' "
                              "(a served or precomputed teacher supports topk, k1, k2, k3)")
        if obj.beta > 0 and obj.estimator in ("k1", "k2", "k3") and (rollout.top_p < 1 or rollout.top_k > 0):
            raise ConfigError(
                f"objective.estimator = '{obj.estimator}' estimates the KL from tokens sampled from the student's whole "
                f"distribution, and rollout.top_p = {rollout.top_p} / top_k = {rollout.top_k} truncate it: the expected "
                "gradient is then not the KL's gradient. Sample with top_p = 1 and "
                "top_k = 0, or use estimator = 'full' or 'topk' (exact per state)")
        if obj.beta > 0 and teacher.source == "served" and rollout.temperature != 1.0:
            raise ConfigError("a served teacher returns log-probs at temperature 1, and the KL compares both policies "
                              "at the student's sampling temperature: set rollout.temperature = 1")
        if obj.beta > 0 and teacher.source == "served" and obj.estimator == "topk" and teacher.served.protocol == "echo":
            raise ConfigError("the echo protocol returns top-k keyed by text; use teacher.served.protocol = "
                              "'prompt_logprobs' for estimator = 'topk'")
        if teacher.source == "precomputed" and not self.data.replay:
            raise ConfigError("teacher.source = 'precomputed' reads log-probs stored with replayed rollouts: set data.replay")
        if not self.data.replay and not self.data.long:
            raise ConfigError("data.long is empty: give at least one [[data.long]] prompt source (or data.replay)")


@dataclasses.dataclass
class EvalConfig:
    """`dgrpo-train eval`: RULER's 13 synthetic tasks and ours, generated offline at each length in
    the model's own tokens, greedy decoding, scored as RULER scores them."""

    model: str = ""  # a save_pretrained folder (e.g. run.out/final) or Hub id ({smollm2}: the prepared SmolLM2)
    # ruler (RULER's 13: niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, vt, cwe, fwe,
    # qa_1, qa_2), extra (ours: short_arithmetic, short_recall, longblocks_qa), or a comma list of task names
    tasks: str = "ruler,extra"
    lengths: str = "4096,8192,16384"  # prompt lengths in the model's own tokens, comma-separated
    samples: int = 20  # samples per task and length
    engine: str = "hf"  # hf (transformers generate) | vllm
    out: str = "runs/eval"  # writes results.json, samples.jsonl and scores.png here
    seed: int = 0  # seeds every generated sample
    # RULER's essay haystack (Paul Graham's essays): local:PATH to .txt/.md files or PaulGrahamEssays.json;
    # "" or noise: the noise haystack (with a warning and a note in results.json)
    haystack: str = ""
    qa_source: str = ""  # RULER's QA data: squad=PATH (SQuAD v2 dev JSON, qa_1) and/or hotpotqa=PATH (HotpotQA, qa_2)
    qa_data: str = ""  # parquet with document/question/answer (our shards): longblocks_qa, and qa_1/qa_2 without qa_source
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    trust_remote_code: bool = False  # run the model repository's own code (off unless asked)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model is required: --model DIR (a save_pretrained folder, e.g. run.out/final) or a Hub id")
        _choice("engine", self.engine, ("hf", "vllm"))
        _choice("dtype", self.dtype, DTYPES)


def data_path(path: str) -> Path:
    """A local data source's path as read: a folder `longblocks publish` wrote (README.md + data/)
    is its default config's data/ (not `working/`); anything else as given."""
    folder = Path(path).expanduser()
    if (folder / "README.md").is_file() and (folder / "data").is_dir():
        return folder / "data"
    return folder


def looks_local(path: str) -> bool:
    """A path the user means as a local file or folder (not a Hub id such as org/name)."""
    return path.startswith((".", "/", "~")) or path.endswith(".parquet") or path.count("/") > 1 or Path(path).exists()


def check_paths(cfg: Any) -> None:
    """What a run reads and writes, checked before torch, the models or the data load: local model,
    tokenizer and data paths exist, and run.out can be a folder."""
    import glob

    models = [("model.path", cfg.model.path), ("model.tokenizer", cfg.model.tokenizer)]
    if isinstance(cfg, RLConfig):
        models += [("teacher.path", cfg.teacher.path), ("objective.reference", cfg.objective.reference)]
    for where, path in models:
        if path and "{smollm2}" in path:
            from longblocks.errors import LongBlocksError
            from longblocks.local_models import resolve_model

            try:
                resolve_model(path)
            except LongBlocksError as exc:
                raise ConfigError(f"{where} = {path!r}: {exc}") from None
            continue
        if path and looks_local(path) and not Path(path).expanduser().exists():
            raise ConfigError(f"{where} = {path!r}: no such local folder (a Hub model id looks like org/name)")
    for section in ("long", "short"):
        for i, source in enumerate(getattr(cfg.data, section)):
            if looks_local(source.path) and not Path(source.path).expanduser().exists() and not glob.glob(source.path):
                raise ConfigError(f"data.{section}[{i}].path = {source.path!r} does not exist")
            if Path(source.path).exists():  # every parquet footer readable (a 0-byte or truncated file named now)
                from longblocks.errors import LongBlocksError
                from longblocks.store import count_rows, input_files

                try:
                    count_rows(input_files(data_path(source.path)))
                except LongBlocksError as exc:
                    raise ConfigError(f"data.{section}[{i}]: {exc}") from None
    out = Path(cfg.run.out).expanduser()
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"run.out = {cfg.run.out!r}: {folder} is a file, not a folder")
            break


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """The config file (TOML or YAML; none: the defaults) with the overrides applied, every key and
    type checked (`longblocks.options.build`)."""
    data = apply_overrides(read_file(path), list(overrides))
    return build(cls, data, str(path) if path is not None else "config", ConfigError)


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
