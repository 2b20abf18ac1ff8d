"""The trainer half of the quickstart at reduced size (`python -m trainer.recipes.quickstart
--smoke`): a student cut from SmolLM2-135M-Instruct (its first two layers, the same tokenizer) is
SFT-ed on LongBlocks-shaped rows, then trained by dGRPO with the whole SmolLM2 as the local teacher;
the teacher KL falls over the steps, `eval` writes its table and the curves are drawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import longblocks_parquet

pytestmark = pytest.mark.slow


def test_trainer_quickstart_distills_the_teacher_into_the_cut_student(smollm2: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    from trainer.recipes.quickstart import main

    data = longblocks_parquet(tmp_path / "lb" / "data" / "train.parquet", 16, words=80)
    out = tmp_path / "run"
    main(["--data", str(data.parent.parent), "--out", str(out), "--teacher", str(smollm2), "--smoke", "--max-len", "512"])
    assert AutoConfig.from_pretrained(out / "student-init").num_hidden_layers == 2
    rl = [json.loads(line) for line in (out / "dgrpo" / "metrics.jsonl").read_text().splitlines() if line]
    kl = [row["teacher_kl"] for row in rl]
    assert len(kl) == 6 and kl[-1] < kl[0] and sum(kl[3:]) < sum(kl[:3]), kl
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["scores"]) == {"niah_single_1", "short_recall"}
    assert (out / "curves.png").stat().st_size > 0 and (out / "dgrpo" / "final" / "config.json").exists()
