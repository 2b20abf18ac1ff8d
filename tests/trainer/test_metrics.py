"""metrics.jsonl on resume: lines past the checkpoint go, and so does a last line a killed run was
writing when it died (it is rerun and logged again), instead of a JSONDecodeError."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.metrics import MetricsLogger


def test_a_torn_last_line_and_lines_past_the_checkpoint_are_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "loss": 0.1')  # killed mid-write
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, wandb=False, project="p", config={})
    logger.truncate_after(4)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:4]
    logger.log(5, {"loss": 0.2})
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 5, "loss": 0.2}
