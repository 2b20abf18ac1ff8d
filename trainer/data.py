"""Training data: rows (LongBlocks-shaped parquet, our stage shards, chat datasets with `messages`)
-> one `Example` per row (the reading SFT, RL and eval share) -> a seeded token-level short/long
mixture -> for SFT, chat-templated ids with a loss mask on assistant tokens, packed into sequences
whose position ids restart per sample. Must not touch the model: it yields plain token lists.
"""

from __future__ import annotations

import glob
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, DataConfig, DataSource, data_path, looks_local

IGNORE = -100


def load_rows(source: DataSource) -> Any:
    """Random-access rows (`len`, `rows[i]`, `column_names`) of a longblocks stage directory (its
    committed parts only: a killed stage's orphan parts are never read), a published folder (its
    data/), a folder, file or glob of parquet, or a Hub dataset id (through `datasets`, imported only then)."""
    from longblocks.errors import LongBlocksError
    from longblocks.store import ParquetRows, input_files

    path = data_path(source.path)
    if path.exists():
        try:
            return ParquetRows(input_files(path))
        except LongBlocksError as exc:
            raise ConfigError(str(exc)) from None
    if glob.glob(source.path):
        return ParquetRows([Path(p) for p in sorted(glob.glob(source.path))])
    if looks_local(source.path):
        raise ConfigError(f"data path {source.path} does not exist")
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{source.path!r} is not a local path; reading Hub datasets needs `pip install datasets`") from None
    try:
        return datasets.load_dataset(source.path, name=source.name, split=source.split)
    except Exception as exc:  # datasets raises many types (not found, offline, bad config)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"could not load dataset {source.path!r}: {first}") from None


@dataclass
class Example:
    """One training row as chat: `prompt` (messages up to the answer), `references` (the answers
    a reward compares against) and `messages` (the whole conversation SFT trains on)."""

    prompt: list[dict[str, str]]
    references: list[str]
    messages: list[dict[str, str]]


def example_from_row(row: dict[str, Any], source: DataSource) -> Example:
    """The one reading of a row, for SFT, RL and eval: a chat row (`messages`: the last assistant
    turn is the reference), a LongBlocks row (`document` + `question` through `source.prompt`;
    the reference is `source.target`, `answer` or a `response_<model>` column), or a `prompt` row."""
    if row.get("messages"):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise ConfigError(f"{source.path}: a `messages` row without an assistant turn")
        return Example(messages[:last], [messages[last]["content"]], messages)
    if "document" in row and "question" in row:
        text = source.prompt.format(**row)
    elif "prompt" in row:
        text = row["prompt"]
    else:
        raise ConfigError(f"{source.path}: rows need `messages`, LongBlocks columns (document, question, answer) "
                          f"or `prompt`; this one has {sorted(row)}")
    if source.target not in row:
        raise ConfigError(f"{source.path}: no target column {source.target!r}; it has {sorted(row)}")
    reference = row[source.target]
    references = [str(r) for r in reference] if isinstance(reference, (list, tuple)) else [str(reference or "")]
    prompt = [{"role": "user", "content": text}]
    return Example(prompt, references, prompt + [{"role": "assistant", "content": references[0]}])


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


class TokenMixture:
    """A seeded stream over two groups of sources ("long", "short") that keeps `short_fraction` of
    the drawn tokens in the short group: each draw comes from the group behind its share (a group
    without rows is never drawn). Rows are visited in a fresh seeded permutation per epoch. Shared
    by the SFT samples and the RL prompts."""

    def __init__(self, long: list[DataSource], short: list[DataSource], short_fraction: float, seed: int,
                 state: MixtureState) -> None:
        self.groups: dict[str, list[tuple[Any, DataSource]]] = {
            "long": [(load_rows(s), s) for s in long], "short": [(load_rows(s), s) for s in short]}
        self.sizes = {g: sum(len(rows) for rows, _ in srcs) for g, srcs in self.groups.items()}
        if self.sizes["long"] == 0:
            raise ConfigError("data.long has no rows")
        self.short_fraction, self.seed, self.state = short_fraction, seed, state
        self._orders: dict[tuple[str, int], list[int]] = {}

    def next_group(self) -> str:
        total = sum(self.state.tokens.values())
        behind = self.state.tokens["short"] < self.short_fraction * max(total, 1)
        return "short" if behind and self.sizes["short"] else "long"

    def draw(self, group: str) -> tuple[int, dict[str, Any], DataSource]:
        """(position, row, source) of the group's next row in its stream."""
        position = self.state.positions[group]
        self.state.positions[group] += 1
        return position, *self.row(group, position)

    def row(self, group: str, position: int) -> tuple[dict[str, Any], DataSource]:
        epoch, offset = divmod(position, self.sizes[group])
        if (group, epoch) not in self._orders:
            order = list(range(self.sizes[group]))
            random.Random(f"{self.seed}-{group}-{epoch}").shuffle(order)
            if len(self._orders) > 4:
                self._orders.pop(next(iter(self._orders)))
            self._orders[(group, epoch)] = order
        index = self._orders[(group, epoch)][offset]
        for rows, source in self.groups[group]:
            if index < len(rows):
                return rows[index], source
            index -= len(rows)
        raise IndexError(index)

    def count(self, group: str, tokens: int) -> None:
        self.state.tokens[group] += tokens

    def realized_short_fraction(self) -> float:
        total = sum(self.state.tokens.values())
        return self.state.tokens["short"] / total if total else 0.0


class SFTData:
    """Token-level mixture of short and long samples, packed into sequences of <= max_seq_len."""

    def __init__(self, cfg: DataConfig, tokenizer: Any) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        self.mixture = TokenMixture(cfg.long, cfg.short, cfg.short_fraction, cfg.seed, MixtureState())

    @property
    def state(self) -> MixtureState:
        return self.mixture.state

    @state.setter
    def state(self, value: MixtureState) -> None:
        self.mixture.state = value

    def _load(self, group: str, position: int) -> Sample | None:
        row, source = self.mixture.row(group, position)
        tokenized = tokenize_chat(self.tokenizer, example_from_row(row, source).messages)
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
        """Draw from the group that is behind its token share."""
        failures = 0
        sizes = self.mixture.sizes
        while True:
            if failures > sizes["long"] + sizes["short"]:
                raise ConfigError(
                    f"no usable sample in a full pass over the data: {self.state.dropped_overlong} over "
                    f"max_seq_len={self.cfg.max_seq_len} (overlong={self.cfg.overlong!r}), "
                    f"{self.state.dropped_template} without assistant tokens"
                )
            group = self.mixture.next_group()
            position = self.state.positions[group]
            self.state.positions[group] += 1
            sample = self._load(group, position)
            if sample is not None:
                self.mixture.count(group, len(sample.input_ids))
                return sample
            failures += 1

    def realized_short_fraction(self) -> float:
        return self.mixture.realized_short_fraction()

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
