"""Run configuration: dataclasses filled from a TOML or YAML file plus `--section.key=value`
overrides, printed and saved resolved. Must not hold defaults anywhere but these dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration the user must fix; the CLI prints it as one line."""


@dataclasses.dataclass
class ModelConfig:
    path: str = ""  # local folder or Hub id
    tokenizer: str | None = None  # default: same as path
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    attn_implementation: str | None = None  # e.g. flash_attention_2 (varlen packing) or sdpa
    gradient_checkpointing: bool = True


@dataclasses.dataclass
class DataSource:
    path: str = ""  # parquet file/dir/glob, a longblocks stage dir, or a Hub dataset id
    split: str = "train"
    name: str | None = None  # Hub config
    target: str = "answer"  # LongBlocks rows: `answer` or a `response_<model>` column
    prompt: str = "{document}\n\n{question}"


@dataclasses.dataclass
class DataConfig:
    long: list[DataSource] = dataclasses.field(default_factory=list)
    short: list[DataSource] = dataclasses.field(default_factory=list)
    short_fraction: float = 0.1  # of trained tokens, realized by the mixture sampler
    max_seq_len: int = 32768
    overlong: str = "drop"  # drop | truncate (keep the first max_seq_len tokens)
    pack: bool = True
    seed: int = 0


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0
    steps: int = 100


@dataclasses.dataclass
class SFTOptimConfig(OptimConfig):
    tokens_per_step: int = 65536  # gradient accumulation by token budget (sequence tokens)
    packs_multiple_of: int = 0  # sequences per step rounded to this multiple (0: the world size)


@dataclasses.dataclass
class RunConfig:
    out: str = "runs/sft"
    seed: int = 0
    save_every: int = 50
    log_every: int = 1
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "dgrpo"


@dataclasses.dataclass
class SFTConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: SFTOptimConfig = dataclasses.field(default_factory=SFTOptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


# -- dGRPO ---------------------------------------------------------------------------------------
ESTIMATORS = ("full", "topk", "k1", "k2", "k3")  # full/topk: exact per-token KL from the kernels
COMBINES = ("loss", "advantage")
AGGREGATIONS = ("seq-mean", "token-mean", "seq-sum-norm")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    beta: float = 0.0  # weight of KL(pi_theta || pi_teacher); 0 is GRPO
    eps_low: float = 0.2
    eps_high: float = 0.2  # > eps_low is DAPO's clip-higher
    estimator: str = "full"  # full | topk | k1 | k2 | k3
    combine: str = "loss"  # loss (the paper) | advantage (A_it - beta * KL_it)
    aggregation: str = "seq-mean"  # seq-mean (as written) | token-mean | seq-sum-norm
    norm_constant: float = 1.0  # seq-sum-norm: each sequence's sum is divided by this (e.g. max length)
    scale_std: bool = True  # divide group-centred rewards by the group's std

    def __post_init__(self) -> None:
        for name, value, allowed in (("estimator", self.estimator, ESTIMATORS), ("combine", self.combine, COMBINES),
                                     ("aggregation", self.aggregation, AGGREGATIONS)):
            if value not in allowed:
                raise ConfigError(f"objective.{name} must be one of {allowed}, got {value!r}")
        if self.eps_low < 0 or self.eps_high < 0 or self.beta < 0 or self.norm_constant <= 0:
            raise ConfigError("objective: eps_low, eps_high and beta must be >= 0, norm_constant > 0")


@dataclasses.dataclass
class TeacherConfig:
    source: str = "none"  # none | local | served | precomputed
    path: str = ""  # local: model folder or Hub id (same vocabulary as the student)
    dtype: str = "auto"
    trust_remote_code: bool = False
    base_url: str = ""  # served: e.g. http://127.0.0.1:8000/v1
    model: str = ""  # served: the model name the server knows
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key (the key itself is never in a config)
    protocol: str = "prompt_logprobs"  # served: prompt_logprobs (vLLM) | echo (completions echo + logprobs)
    concurrency: int = 16
    timeout: float = 600.0
    max_retries: int = 6
    top_k: int = 20  # teacher log-probs kept per token for the topk estimator
    kl_temperature: float = 1.0  # both distributions in the KL term
    direction: str = "reverse"  # reverse: KL(student || teacher), the paper; forward: KL(teacher || student)


@dataclasses.dataclass
class RolloutConfig:
    engine: str = "hf"  # hf (transformers generate, any device) | vllm (colocated vllm.LLM)
    prompts_per_step: int = 8
    group_size: int = 8  # G completions per prompt
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    old_logprobs: str = "recompute"  # recompute (training forward before the update) | behaviour (engine's)
    vllm_gpu_memory_utilization: float = 0.3
    vllm_max_model_len: int = 0  # 0: the model's
    save: bool = True  # write each step's rollouts to run.out/rollouts/ (replayable)


@dataclasses.dataclass
class RewardConfig:
    name: str = "exact_match"  # exact_match | token_f1 | string_match_all | string_match_part | judge | a label
    weight: float = 1.0
    callable: str | None = None  # dotted path to fn(completion, reference, row) -> float
    judge_model: str = ""
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_max_retries: int = 6


@dataclasses.dataclass
class RLDataConfig:
    prompts: list[DataSource] = dataclasses.field(default_factory=list)
    replay: str = ""  # parquet of stored rollouts (run.out/rollouts/*.parquet) to train on instead of sampling
    max_prompt_len: int = 8192
    seed: int = 0


@dataclasses.dataclass
class RLOptimConfig(OptimConfig):
    lr: float = 1e-6
    warmup_steps: int = 0
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


def _build(cls: type[T], values: Any, where: str) -> T:
    if not dataclasses.is_dataclass(cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        elif origin is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            kwargs[name] = [_build(typing.get_args(hint)[0], v, f"{where}.{name}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`--optim.lr=3e-5` -> (["optim", "lr"], 3e-5); values are TOML, bare words are strings."""
    key, sep, raw = item.lstrip("-").partition("=")
    if not sep or not key:
        raise ConfigError(f"override must look like --section.key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return _build(cls, data, "config")


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
