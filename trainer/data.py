"""SFT data: rows (LongBlocks-shaped parquet, our stage shards, chat datasets with `messages`) ->
chat-templated token ids with a loss mask on assistant tokens -> a seeded token-level short/long
mixture -> packed sequences whose position ids restart per sample.
Must not touch the model: it yields plain token tensors.
"""

from __future__ import annotations

import glob
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, DataConfig, DataSource

IGNORE = -100


def load_rows(source: DataSource) -> Any:
    """A `datasets.Dataset` from a parquet file/dir/glob, a longblocks stage dir, or a Hub id."""
    import datasets

    path = Path(source.path)
    if (path / "manifest.json").exists():  # a longblocks stage directory: its committed parts
        files = sorted(str(p) for p in (path / "data").glob("*.parquet"))
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif path.is_file() or glob.glob(source.path):
        files = sorted(glob.glob(source.path))
    else:
        return datasets.load_dataset(source.path, name=source.name, split=source.split)
    if not files:
        raise ConfigError(f"no parquet files under {source.path}")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def to_messages(row: dict[str, Any], source: DataSource) -> list[dict[str, str]]:
    if "messages" in row and row["messages"]:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    if "document" in row and "question" in row:
        if source.target not in row:
            raise ConfigError(f"{source.path}: no target column {source.target!r}")
        prompt = source.prompt.format(document=row["document"], question=row["question"])
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row[source.target] or ""}]
    raise ConfigError(f"{source.path}: rows need `messages` or LongBlocks columns (document, question, answer)")


def template_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """The chat template's token ids (a plain list whatever the tokenizer returns)."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def tokenize_chat(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with labels = input_ids on assistant turns and IGNORE elsewhere. The
    assistant spans come from rendering the conversation prefix by prefix; a template whose
    prefixes are not prefixes of the whole (it rewrites history) returns None."""
    ids = template_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(template_ids(tokenizer, messages[:i], add_generation_prompt=True))
        end_ids = template_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if end_ids != ids[: len(end_ids)] or start > len(end_ids):
            return None
        labels[start : len(end_ids)] = ids[start : len(end_ids)]
    return ids, labels


@dataclass
class Sample:
    group: str  # "long" or "short"
    index: int  # row index in its group's concatenated sources
    input_ids: list[int]
    labels: list[int]


@dataclass
class MixtureState:
    """Everything needed to continue the sample stream exactly (saved in checkpoints)."""

    positions: dict[str, int] = field(default_factory=lambda: {"long": 0, "short": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"long": 0, "short": 0})
    dropped_overlong: int = 0
    dropped_template: int = 0
    truncated: int = 0
    pending: tuple[str, int] | None = None  # a drawn sample that did not fit in the last pack


class SFTData:
    """Token-level mixture of short and long samples, packed into sequences of <= max_seq_len."""

    def __init__(self, cfg: DataConfig, tokenizer: Any) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        if cfg.overlong not in ("drop", "truncate"):
            raise ConfigError(f"data.overlong must be drop or truncate, got {cfg.overlong!r}")
        if not 0.0 <= cfg.short_fraction < 1.0:
            raise ConfigError("data.short_fraction must be in [0, 1)")
        self.groups: dict[str, list[tuple[Any, DataSource]]] = {
            "long": [(load_rows(s), s) for s in cfg.long], "short": [(load_rows(s), s) for s in cfg.short]
        }
        self.sizes = {g: sum(len(rows) for rows, _ in srcs) for g, srcs in self.groups.items()}
        if self.sizes["long"] == 0:
            raise ConfigError("data.long has no rows")
        self._orders: dict[tuple[str, int], list[int]] = {}
        self.state = MixtureState()

    def _order(self, group: str, epoch: int) -> list[int]:
        """A fresh seeded permutation per group and epoch (the last few are kept)."""
        if (group, epoch) not in self._orders:
            order = list(range(self.sizes[group]))
            random.Random(f"{self.cfg.seed}-{group}-{epoch}").shuffle(order)
            if len(self._orders) > 4:
                self._orders.pop(next(iter(self._orders)))
            self._orders[(group, epoch)] = order
        return self._orders[(group, epoch)]

    def _row(self, group: str, index: int) -> tuple[dict[str, Any], DataSource]:
        for rows, source in self.groups[group]:
            if index < len(rows):
                return rows[index], source
            index -= len(rows)
        raise IndexError(index)

    def _load(self, group: str, position: int) -> Sample | None:
        epoch, offset = divmod(position, self.sizes[group])
        order = self._order(group, epoch)
        row, source = self._row(group, order[offset])
        tokenized = tokenize_chat(self.tokenizer, to_messages(row, source))
        if tokenized is None:
            self.state.dropped_template += 1
            return None
        ids, labels = tokenized
        if len(ids) > self.cfg.max_seq_len:
            if self.cfg.overlong == "drop":
                self.state.dropped_overlong += 1
                return None
            ids, labels = ids[: self.cfg.max_seq_len], labels[: self.cfg.max_seq_len]
            if all(label == IGNORE for label in labels):  # truncation removed every assistant token
                self.state.dropped_overlong += 1
                return None
            self.state.truncated += 1
        if all(label == IGNORE for label in labels):
            self.state.dropped_template += 1
            return None
        return Sample(group, position, ids, labels)

    def next_sample(self) -> Sample:
        """Draw from the group that is behind its token share (short until short_fraction of all
        drawn tokens, else long); a group without rows is never drawn."""
        failures = 0
        while True:
            if failures > self.sizes["long"] + self.sizes["short"]:
                raise ConfigError(
                    f"no usable sample in a full pass over the data: {self.state.dropped_overlong} over "
                    f"max_seq_len={self.cfg.max_seq_len} (overlong={self.cfg.overlong!r}), "
                    f"{self.state.dropped_template} without assistant tokens"
                )
            total = sum(self.state.tokens.values())
            short_behind = self.state.tokens["short"] < self.cfg.short_fraction * max(total, 1)
            group = "short" if short_behind and self.sizes["short"] else "long"
            position = self.state.positions[group]
            self.state.positions[group] += 1
            sample = self._load(group, position)
            if sample is not None:
                self.state.tokens[group] += len(sample.input_ids)
                return sample
            failures += 1

    def realized_short_fraction(self) -> float:
        total = sum(self.state.tokens.values())
        return self.state.tokens["short"] / total if total else 0.0

    def next_pack(self) -> dict[str, list[int]]:
        """One training sequence: samples packed until the next would overflow max_seq_len (or a
        single sample when packing is off). Labels at each sample's first token are ignored so no
        token is predicted across a sample boundary."""
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        while True:
            if self.state.pending is not None:
                group, position = self.state.pending
                sample = self._load(group, position)
                self.state.pending = None
                if sample is None:
                    continue
            else:
                sample = self.next_sample()
            if ids and len(ids) + len(sample.input_ids) > self.cfg.max_seq_len:
                self.state.pending = (sample.group, sample.index)
                break
            ids += sample.input_ids
            labels += [IGNORE] + sample.labels[1:]
            positions += list(range(len(sample.input_ids)))
            if not self.cfg.pack:
                break
        return {"input_ids": ids, "labels": labels, "position_ids": positions}

    def micro_batches(self, token_budget: int, multiple_of: int = 1) -> Iterator[list[dict[str, list[int]]]]:
        """Lists of packs whose total length reaches `token_budget` (one optimizer step each), with
        a pack count that is a multiple of `multiple_of` (every rank gets the same number)."""
        while True:
            step, size = [], 0
            while size < token_budget or len(step) % multiple_of:
                pack = self.next_pack()
                step.append(pack)
                size += len(pack["input_ids"])
            yield step
