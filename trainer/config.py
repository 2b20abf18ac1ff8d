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
    tokens_per_step: int = 65536  # gradient accumulation by token budget (sequence tokens)
    packs_multiple_of: int = 0  # sequences per step rounded to this multiple (0: the world size)
    steps: int = 100


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
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


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
