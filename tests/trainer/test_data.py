"""The trainer's data side: stage directories are read through the stage store (committed parts
only, so a killed stage's orphan part is never trained on), and one reading of a row serves SFT,
RL and eval."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import copy_task
from longblocks.records import qa_schema
from longblocks.store import Outcome, StageWriter
from trainer.config import ConfigError, DataConfig, DataSource, RLDataConfig
from trainer.data import SFTData, example_from_row, load_rows
from trainer.prompts import PromptData


def killed_stage(out: Path, committed: int, orphan: int) -> Path:
    """A generate stage directory as a SIGKILL between writing a part's data file and committing
    it leaves it: `committed` rows in parts the manifest lists, `orphan` rows in a data file it does not."""
    rows = copy_task.rows(committed + orphan, seed=3)
    records = [{**r, "doc_id": r["id"], "question_type": "multi_hop", "generator": "m", "judge_verdict": None,
                "judge_reasons": []} for r in rows]
    for r in records[committed:]:
        r["question"] = "ORPHAN " + r["question"]
    writer = StageWriter(out, stage="generate", schema=qa_schema(), params={}, part_size=committed)
    for r in records[:committed]:
        writer.add(Outcome(r["id"], kept=[r]))  # part-00000 is committed once `committed` inputs are in
    pq.write_table(pa.Table.from_pylist(records[committed:], schema=qa_schema()), out / "data" / "part-00001.parquet")
    return out


def test_a_killed_stage_is_trained_on_without_its_orphan_part(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    stage = killed_stage(tmp_path / "generate", committed=20, orphan=7)
    assert len(list((stage / "data").glob("*.parquet"))) == 2  # the orphan file is there...
    rows = load_rows(DataSource(path=str(stage)))
    assert len(rows) == 20 and not any(r["question"].startswith("ORPHAN") for r in rows)  # ...and never read
    tok = AutoTokenizer.from_pretrained(copy_task.tokenizer_dir(tmp_path / "tok"))
    sft = SFTData(DataConfig(long=[DataSource(path=str(stage))], short_fraction=0.0, max_seq_len=512), tok)
    texts = [tok.decode(sft.next_sample().input_ids) for _ in range(40)]  # two epochs
    assert texts and not any("ORPHAN" in t for t in texts)
    rl = PromptData(RLDataConfig(long=[DataSource(path=str(stage))], short_fraction=0.0), tok)
    assert not any("ORPHAN" in tok.decode(p.prompt_ids) for p in rl.next_prompts(40))


def test_sft_and_rl_train_on_a_killed_stage_directory(tmp_path: Path) -> None:
    from trainer.config import RLConfig, SFTConfig, load_config
    from trainer.rl import train as rl_train
    from trainer.sft import train as sft_train

    stage = killed_stage(tmp_path / "generate", committed=20, orphan=7)
    tok = copy_task.tokenizer_dir(tmp_path / "tok")
    model = copy_task.model_dir(tmp_path / "model", tok, seed=0)
    common = [f"--model.path={model}", f"--data.long=[{{path='{stage}'}}]", "--data.short_fraction=0.0",
              "--run.tensorboard=false", "--model.gradient_checkpointing=false", "--optim.steps=2"]
    sft = sft_train(load_config(SFTConfig, None, [*common, "--optim.tokens_per_step=256", "--data.max_seq_len=256",
                                                  f"--run.out={tmp_path / 'sft'}"]))
    assert sft["steps"] == 2
    rl = rl_train(load_config(RLConfig, None, [*common, "--rollout.prompts_per_step=4", "--rollout.group_size=2",
                                               "--rollout.max_new_tokens=3", f"--run.out={tmp_path / 'rl'}"]))
    stored = pq.read_table(tmp_path / "rl" / "rollouts").to_pylist()
    assert len(stored) == 16 and not any("ORPHAN" in r["row"] for r in stored)


def test_one_reading_of_a_row_for_sft_rl_and_eval() -> None:
    source = DataSource(path="x", target="response_Qwen3-Next-80B-A3B")
    longblocks = {"id": "1", "document": "DOC", "question": "Q?", "answer": "A", "response_Qwen3-Next-80B-A3B": "R"}
    example = example_from_row(longblocks, source)
    assert example.prompt == [{"role": "user", "content": "DOC\n\nQ?"}] and example.references == ["R"]
    assert example.messages[-1] == {"role": "assistant", "content": "R"}
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                         {"role": "assistant", "content": "A2"}]}
    example = example_from_row(chat, DataSource(path="x"))
    assert example.references == ["A2"] and len(example.prompt) == 4 and len(example.messages) == 5
    assert example_from_row({"prompt": "P", "answer": ["a", "b"]}, DataSource(path="x")).references == ["a", "b"]
    with pytest.raises(ConfigError, match="no target column 'response_Qwen3-Next-80B-A3B'"):
        example_from_row({"document": "D", "question": "Q", "answer": "A"}, source)
    with pytest.raises(ConfigError, match="rows need"):
        example_from_row({"text": "T"}, DataSource(path="x"))


def test_missing_data_paths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_rows(DataSource(path=str(tmp_path / "nope.parquet")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no parquet shards"):
        load_rows(DataSource(path=str(tmp_path / "empty")))
