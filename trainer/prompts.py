"""RL inputs: a seeded, resumable stream of chat-templated prompts with their reference answers,
drawn as a token-level short/long mixture (as SFT's), and the stored-rollout format: each step's
rollouts written as parquet that a later run can replay (with precomputed teacher scores at the
temperature they were sampled at). Must not touch the model.
"""

from __future__ import annotations

import glob
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.batch import Rollout, Scored, TeacherScores
from trainer.config import ConfigError, RLDataConfig
from trainer.data import MixtureState, TokenMixture, example_from_row, template_ids

ROW_FIELDS = ("id", "question", "source", "language", "task", "length")  # kept with each prompt for rewards/logs


@dataclass
class Prompt:
    position: int  # place in the stream: the seed of its rollouts and the resume point
    prompt_ids: list[int]
    reference: list[str]
    row: dict[str, Any]


class PromptData:
    """Prompts from `data.long` and `data.short`, `short_fraction` of the prompt tokens short."""

    def __init__(self, cfg: RLDataConfig, tokenizer: Any) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        self.mixture = TokenMixture(cfg.long, cfg.short, cfg.short_fraction, cfg.seed, MixtureState())
        self.positions = 0  # prompts handed out: the seed of each prompt's rollouts

    @property
    def state(self) -> dict[str, Any]:
        return {"positions": self.positions, "mixture": self.mixture.state.__dict__}

    def load_state(self, state: dict[str, Any]) -> None:
        self.positions = state["positions"]
        mixture = dict(state["mixture"])
        mixture["pending"] = tuple(mixture["pending"]) if mixture.get("pending") else None
        self.mixture.state = MixtureState(**mixture)

    def realized_short_fraction(self) -> float:
        return self.mixture.realized_short_fraction()

    def next_prompts(self, n: int) -> list[Prompt]:
        out: list[Prompt] = []
        skipped = 0
        sizes = self.mixture.sizes
        while len(out) < n:
            if skipped > sizes["long"] + sizes["short"]:
                raise ConfigError(f"no prompt fits data.max_prompt_len={self.cfg.max_prompt_len} in a full pass")
            group = self.mixture.next_group()
            _, row, source = self.mixture.draw(group)
            example = example_from_row(row, source)
            ids = template_ids(self.tokenizer, example.prompt, add_generation_prompt=True)
            if len(ids) > self.cfg.max_prompt_len:
                self.mixture.state.dropped_overlong += 1
                skipped += 1
                continue
            self.mixture.count(group, len(ids))
            out.append(Prompt(self.positions, ids, example.references, {k: row[k] for k in ROW_FIELDS if k in row}))
            self.positions += 1
        return out


# -- stored rollouts -----------------------------------------------------------------------------
ROLLOUT_SCHEMA = pa.schema([
    ("step", pa.int64()), ("group", pa.string()), ("position", pa.int64()), ("row", pa.string()),
    ("reference", pa.list_(pa.string())), ("prompt_ids", pa.list_(pa.int32())),
    ("completion_ids", pa.list_(pa.int32())), ("completion", pa.string()),
    ("behaviour_logprobs", pa.list_(pa.float32())), ("finished", pa.bool_()), ("reward", pa.float64()),
    ("rewards", pa.string()), ("teacher_logprobs", pa.list_(pa.float32())),
    ("teacher_topk_ids", pa.list_(pa.list_(pa.int32()))), ("teacher_topk_logprobs", pa.list_(pa.list_(pa.float32()))),
    ("teacher_topk_tail", pa.list_(pa.float32())), ("temperature", pa.float64()),
])


def write_rollouts(path: Path, step: int, prompts: list[Prompt], groups: list[list[Rollout]], texts: list[str],
                   rewards: list[float], per_fn: dict[str, list[float]], teacher: list[Scored],
                   temperature: float) -> Path:
    """One parquet file per step (written to a temporary name, then renamed: a killed run leaves
    no partial file)."""
    rows = []
    i = 0
    for prompt, group in zip(prompts, groups):
        for rollout in group:
            scores = teacher[i] if isinstance(teacher[i], TeacherScores) else None
            rows.append({
                "step": step, "group": f"{step}-{prompt.position}", "position": prompt.position,
                "row": json.dumps(prompt.row, default=str), "reference": prompt.reference,
                "prompt_ids": rollout.prompt_ids, "completion_ids": rollout.completion_ids, "completion": texts[i],
                "behaviour_logprobs": rollout.behaviour_logprobs, "finished": rollout.finished, "reward": rewards[i],
                "rewards": json.dumps({k: v[i] for k, v in per_fn.items()}),
                "teacher_logprobs": scores.logprobs if scores else None,
                "teacher_topk_ids": scores.topk_ids if scores else None,
                "teacher_topk_logprobs": scores.topk_logprobs if scores else None,
                "teacher_topk_tail": scores.topk_tail if scores else None, "temperature": temperature,
            })
            i += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=ROLLOUT_SCHEMA), tmp)
    tmp.replace(path)
    return path


@dataclass
class ReplayGroup:
    prompt: Prompt
    rollouts: list[Rollout] = field(default_factory=list)


class ReplayData:
    """Groups of stored rollouts (by `group`), in a seeded order per epoch; `next_groups` has the
    same contract as sampling prompts and generating. Rows must have been sampled (and their
    teacher scored) at `temperature`; rows without behaviour log-probs are refused when
    `need_behaviour` (rollout.old_logprobs = behaviour), never filled with zeros."""

    def __init__(self, path: str, seed: int, *, temperature: float, need_behaviour: bool) -> None:
        files = sorted(glob.glob(str(Path(path) / "*.parquet"))) if Path(path).is_dir() else sorted(glob.glob(path))
        if not files:
            raise ConfigError(f"data.replay: no parquet files at {path}")
        tables = [pq.read_table(f) for f in files]
        origins = [f"{f} row {i}" for f, t in zip(files, tables) for i in range(t.num_rows)]
        table = pa.concat_tables(tables)
        missing = {"group", "prompt_ids", "completion_ids", "reference"} - set(table.column_names)
        if missing:
            raise ConfigError(f"data.replay: missing column(s) {sorted(missing)} (expected the format run.out/rollouts/ has)")
        if "temperature" in table.column_names:
            stored = {t for t in table.column("temperature").to_pylist() if t is not None}
            if stored and stored != {temperature}:
                raise ConfigError(f"data.replay: rollouts were sampled at temperature {sorted(stored)}, this run's "
                                  f"rollout.temperature is {temperature}: the KL would compare different policies")
        groups: dict[str, ReplayGroup] = {}
        for origin, record in zip(origins, table.to_pylist()):
            if record["group"] not in groups:
                row = json.loads(record["row"]) if record.get("row") else {}
                groups[record["group"]] = ReplayGroup(Prompt(len(groups), record["prompt_ids"], record["reference"], row))
            teacher = None
            if record.get("teacher_logprobs") is not None:
                teacher = TeacherScores(record["teacher_logprobs"], record.get("teacher_topk_ids"),
                                        record.get("teacher_topk_logprobs"), record.get("teacher_topk_tail"))
            behaviour = record.get("behaviour_logprobs")
            if behaviour is None and need_behaviour:
                raise ConfigError("data.replay: a row has no behaviour_logprobs, which rollout.old_logprobs = "
                                  "'behaviour' needs; use recompute")
            groups[record["group"]].rollouts.append(
                Rollout(record["prompt_ids"], record["completion_ids"], behaviour, bool(record.get("finished", True)), teacher,
                        origin))
        self.groups = list(groups.values())
        self.seed = seed
        self.position = 0

    @property
    def state(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state(self, state: dict[str, Any]) -> None:
        self.position = state["position"]

    def next_groups(self, n: int) -> list[ReplayGroup]:
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.position, len(self.groups))
            order = list(range(len(self.groups)))
            random.Random(f"{self.seed}-replay-{epoch}").shuffle(order)
            group = self.groups[order[offset]]
            out.append(ReplayGroup(Prompt(self.position, group.prompt.prompt_ids, group.prompt.reference,
                                          group.prompt.row), group.rollouts))
            self.position += 1
        return out
