"""configs/quickstart-sft.toml and configs/quickstart-rl.toml as the README runs them, on the suite's
tiny model and a folder shaped like the quickstart's published one (README.md + data/): a few steps
each through `dgrpo-train`, the SFT student cut to its first layer by `model.keep_layers`, the RL run
starting from SFT's export with a local teacher."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conftest import ROOT, longblocks_parquet


def published_folder(root: Path) -> Path:
    longblocks_parquet(root / "data" / "train-00000-of-00001.parquet", 8, words=40)
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\n---\n")
    return root


def test_quickstart_configs_train_on_a_published_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    from trainer.cli import app

    data = published_folder(tmp_path / "publish")
    (tmp_path / "publish" / "working").mkdir()  # another config's files are not read as the default's
    (tmp_path / "publish" / "working" / "x.parquet").write_bytes(b"not parquet")
    source = f"--data.long=[{{path='{data}', target='answer'}}]"
    sft = CliRunner().invoke(app, [
        "sft", "--config", str(ROOT / "configs" / "quickstart-sft.toml"), f"--model.path={tiny_model_dir}",
        "--model.keep_layers=1", source, "--data.max_seq_len=256", "--optim.steps=2", "--optim.tokens_per_step=512",
        f"--run.out={tmp_path / 'sft'}", "--run.save_every=2"])
    assert sft.exit_code == 0, sft.output[-3000:]
    assert AutoConfig.from_pretrained(tmp_path / "sft" / "final").num_hidden_layers == 1
    rl = CliRunner().invoke(app, [
        "rl", "--config", str(ROOT / "configs" / "quickstart-rl.toml"), f"--model.path={tmp_path / 'sft' / 'final'}",
        f"--teacher.path={tiny_model_dir}", source, "--data.max_prompt_len=256", "--optim.steps=2",
        "--rollout.prompts_per_step=1", "--rollout.group_size=2", "--rollout.max_new_tokens=4",
        "--optim.micro_batch_rollouts=2", f"--run.out={tmp_path / 'rl'}", "--run.save_every=2"])
    assert rl.exit_code == 0, rl.output[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines() if line]
    assert len(metrics) == 2 and all(m["teacher_kl"] >= 0 for m in metrics)
    assert (tmp_path / "rl" / "final" / "config.json").exists()


def test_keep_layers_beyond_the_model_is_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    from trainer.cli import app

    data = published_folder(tmp_path / "publish")
    result = CliRunner().invoke(app, ["sft", "--config", str(ROOT / "configs" / "quickstart-sft.toml"),
                                      f"--model.path={tiny_model_dir}", f"--data.long=[{{path='{data}'}}]",
                                      f"--run.out={tmp_path / 'sft'}"])
    assert result.exit_code == 2 and "model.keep_layers = 6, but the model has 2 decoder layers" in result.output
