"""RL inputs: a seeded, resumable stream of chat-templated prompts with their reference answers
(LongBlocks rows, our QA shards, or chat rows whose last assistant turn is the reference), and the
stored-rollout format: each step's rollouts written as parquet that a later run can replay
(with precomputed teacher log-probs). Must not touch the model.
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

from trainer.config import ConfigError, DataSource, RLDataConfig
from trainer.data import template_ids, load_rows
from trainer.rollout import Rollout
from trainer.teacher import TeacherScores

ROW_FIELDS = ("id", "question", "source", "language", "task", "length")  # kept with each prompt for rewards/logs


@dataclass
class Prompt:
    position: int  # place in the stream: the seed of its rollouts and the resume point
    prompt_ids: list[int]
    reference: list[str]
    row: dict[str, Any]


def prompt_and_reference(row: dict[str, Any], source: DataSource) -> tuple[list[dict[str, str]], list[str]]:
    """(messages up to the answer, reference answers)."""
    if row.get("messages"):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise ConfigError(f"{source.path}: a `messages` row without an assistant turn to use as reference")
        return messages[:last], [messages[last]["content"]]
    if "document" in row and "question" in row:
        text = source.prompt.format(**row)
    elif "prompt" in row:
        text = row["prompt"]
    else:
        raise ConfigError(f"{source.path}: rows need `messages`, LongBlocks columns (document, question, answer) or `prompt`")
    if source.target not in row:
        raise ConfigError(f"{source.path}: no reference column {source.target!r}")
    reference = row[source.target]
    references = [str(r) for r in reference] if isinstance(reference, (list, tuple)) else [str(reference or "")]
    return [{"role": "user", "content": text}], references


@dataclass
class PromptState:
    position: int = 0
    dropped_overlong: int = 0


class PromptData:
    def __init__(self, cfg: RLDataConfig, tokenizer: Any) -> None:
        if not cfg.prompts:
            raise ConfigError("data.prompts is empty: give at least one [[data.prompts]] source (or data.replay)")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.sources = [(load_rows(s), s) for s in cfg.prompts]
        self.size = sum(len(rows) for rows, _ in self.sources)
        if self.size == 0:
            raise ConfigError("data.prompts has no rows")
        self.state = PromptState()
        self._orders: dict[int, list[int]] = {}

    def _row(self, position: int) -> tuple[dict[str, Any], DataSource]:
        epoch, offset = divmod(position, self.size)
        if epoch not in self._orders:
            order = list(range(self.size))
            random.Random(f"{self.cfg.seed}-prompts-{epoch}").shuffle(order)
            self._orders = {epoch: order}
        index = self._orders[epoch][offset]
        for rows, source in self.sources:
            if index < len(rows):
                return rows[index], source
            index -= len(rows)
        raise IndexError(index)

    def next_prompts(self, n: int) -> list[Prompt]:
        out: list[Prompt] = []
        skipped = 0
        while len(out) < n:
            if skipped > self.size:
                raise ConfigError(f"no prompt fits data.max_prompt_len={self.cfg.max_prompt_len} in a full pass")
            position = self.state.position
            self.state.position += 1
            row, source = self._row(position)
            messages, reference = prompt_and_reference(row, source)
            ids = template_ids(self.tokenizer, messages, add_generation_prompt=True)
            if len(ids) > self.cfg.max_prompt_len:
                self.state.dropped_overlong += 1
                skipped += 1
                continue
            out.append(Prompt(position, ids, reference, {k: row[k] for k in ROW_FIELDS if k in row}))
        return out


# -- stored rollouts -----------------------------------------------------------------------------
ROLLOUT_SCHEMA = pa.schema([
    ("step", pa.int64()), ("group", pa.string()), ("position", pa.int64()), ("row", pa.string()),
    ("reference", pa.list_(pa.string())), ("prompt_ids", pa.list_(pa.int32())),
    ("completion_ids", pa.list_(pa.int32())), ("completion", pa.string()),
    ("behaviour_logprobs", pa.list_(pa.float32())), ("finished", pa.bool_()), ("reward", pa.float64()),
    ("rewards", pa.string()), ("teacher_logprobs", pa.list_(pa.float32())),
    ("teacher_topk_ids", pa.list_(pa.list_(pa.int32()))), ("teacher_topk_logprobs", pa.list_(pa.list_(pa.float32()))),
])


def write_rollouts(path: Path, step: int, prompts: list[Prompt], groups: list[list[Rollout]], texts: list[str],
                   rewards: list[float], per_fn: dict[str, list[float]], teacher: list[TeacherScores | str | None]) -> Path:
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
    same contract as sampling prompts and generating."""

    def __init__(self, path: str, seed: int) -> None:
        files = sorted(glob.glob(str(Path(path) / "*.parquet"))) if Path(path).is_dir() else sorted(glob.glob(path))
        if not files:
            raise ConfigError(f"data.replay: no parquet files at {path}")
        table = pa.concat_tables([pq.read_table(f) for f in files])
        missing = {"group", "prompt_ids", "completion_ids", "reference"} - set(table.column_names)
        if missing:
            raise ConfigError(f"data.replay: missing column(s) {sorted(missing)} (expected the format run.out/rollouts/ has)")
        groups: dict[str, ReplayGroup] = {}
        for record in table.to_pylist():
            if record["group"] not in groups:
                row = json.loads(record["row"]) if record.get("row") else {}
                groups[record["group"]] = ReplayGroup(Prompt(len(groups), record["prompt_ids"], record["reference"], row))
            teacher = None
            if record.get("teacher_logprobs") is not None:
                teacher = TeacherScores(record["teacher_logprobs"], record.get("teacher_topk_ids"),
                                        record.get("teacher_topk_logprobs"))
            behaviour = record.get("behaviour_logprobs") or [0.0] * len(record["completion_ids"])
            groups[record["group"]].rollouts.append(
                Rollout(record["prompt_ids"], record["completion_ids"], behaviour, bool(record.get("finished", True)), teacher))
        self.groups = list(groups.values())
        self.seed = seed
        self.state = PromptState()

    def next_groups(self, n: int) -> list[ReplayGroup]:
        out = []
        for _ in range(n):
            epoch, offset = divmod(self.state.position, len(self.groups))
            order = list(range(len(self.groups)))
            random.Random(f"{self.seed}-replay-{epoch}").shuffle(order)
            group = self.groups[order[offset]]
            out.append(ReplayGroup(Prompt(self.state.position, group.prompt.prompt_ids, group.prompt.reference,
                                          group.prompt.row), group.rollouts))
            self.state.position += 1
        return out
