"""What a newcomer's mistakes get from both command lines: one line on stderr, exit status 2, no
traceback, the file, section and key named (the valid keys for an unknown one), and nothing
created for a run that never started. Config and paths are checked before torch loads: these runs
put a `torch` that cannot be imported first on the path, and still get their one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import cli


def one_line(result, *needles: str) -> str:  # noqa: ANN001
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-2000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.fixture
def no_torch(tmp_path: Path) -> dict[str, str]:
    """An environment where `import torch` fails: whatever runs there never imported it."""
    fake = tmp_path / "fake_torch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch must not load before the checks')\n")
    return {"PYTHONPATH": os.pathsep.join([str(fake), *sys.path])}


def data_file(tmp_path: Path) -> Path:
    from conftest import longblocks_parquet

    return longblocks_parquet(tmp_path / "lb.parquet", 4)


def test_trainer_config_mistakes_are_one_line_before_torch(tmp_path: Path, no_torch: dict[str, str]) -> None:
    data = data_file(tmp_path)
    config = tmp_path / "sft.toml"
    config.write_text(f'[model]\npath = "org/model"\n[[data.long]]\npath = "{data}"\n[optim]\nlr = 1e-5\n')
    out = tmp_path / "runs"
    line = one_line(cli("dgrpo-train", "sft", "--config", str(config), "--optim.lr=fast", f"--run.out={out}",
                        check=False, env=no_torch), "--optim.lr=fast (command line)", "lr must be a number", "'fast'")
    assert str(config) not in line, "a value from the command line is not the file's"
    config.write_text(config.read_text().replace("lr = 1e-5", 'lr = "fast"'))
    line = one_line(cli("dgrpo-train", "sft", "--config", str(config), f"--run.out={out}", check=False, env=no_torch),
                    f"{config} [optim]", "lr must be a number", "'fast'")
    assert "command line" not in line
    config.write_text(config.read_text().replace('lr = "fast"', "lr = 1e-5"))
    one_line(cli("dgrpo-train", "sft", "--config", str(config), "--optim.lrr=1", check=False, env=no_torch),
             "unknown key 'lrr'", "valid keys:", "lr", "warmup_steps")
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(cli("dgrpo-train", "sft", "--config", str(config), f"--run.out={afile}/out", check=False, env=no_torch),
             "run.out", "is a file, not a folder")
    one_line(cli("dgrpo-train", "rl", "--model.path=./no-such-model", f"--data.long=[{{path='{data}'}}]",
                 f"--run.out={out}", check=False, env=no_torch), "model.path", "./no-such-model", "no such local folder")
    one_line(cli("dgrpo-train", "sft", "--config", str(config), f"--data.long=[{{path='{tmp_path}/missing.parquet'}}]",
                 f"--run.out={out}", check=False, env=no_torch), "data.long[0].path", "missing.parquet", "does not exist")
    assert not out.exists(), "a run that never started left files behind"


def test_a_zero_byte_parquet_is_one_line_for_the_trainer(tmp_path: Path, tiny_model_dir: Path) -> None:
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    out = tmp_path / "runs"
    one_line(cli("dgrpo-train", "sft", f"--model.path={tiny_model_dir}", f"--data.long=[{{path='{empty}'}}]",
                 f"--run.out={out}", "--run.tensorboard=false", check=False), str(empty), "cannot be read")
    assert not (out / "config.json").exists()


def test_pipeline_file_mistakes_name_the_file_section_and_key(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    pipeline = tmp_path / "p.toml"
    base = f'[run]\nout = "{tmp_path / "run"}"\n[source]\nname = "local:{docs}"\n'
    pipeline.write_text(base + "[select]\nmin_tokenz = 3\n")
    one_line(cli("longblocks", "run", str(pipeline), check=False), str(pipeline), "[select]", "unknown key 'min_tokenz'",
             "valid keys:", "min_tokens", "max_tokens")
    pipeline.write_text(base + '[select]\nmin_tokens = "many"\n')
    one_line(cli("longblocks", "run", str(pipeline), check=False), "[select]", "min_tokens must be an integer", "'many'")
    pipeline.write_text(base)
    one_line(cli("longblocks", "run", str(pipeline), "--dedup.bands=x", check=False), "--dedup.bands=x (command line)",
             "bands must be an integer")
    assert not (tmp_path / "run").exists()


def test_an_output_under_a_file_and_a_model_that_cannot_load_create_nothing(tmp_path: Path) -> None:
    from conftest import longblocks_parquet

    afile = tmp_path / "afile"
    afile.write_text("x")
    shards = longblocks_parquet(tmp_path / "in" / "qa.parquet", 3)
    one_line(cli("longblocks", "select", str(shards.parent), str(afile / "o"), "--tokenizer", "approx", check=False),
             str(afile / "o"), "is a file, not a folder")
    out = tmp_path / "filtered"
    one_line(cli("longblocks", "filter", str(shards.parent), str(out), "--model", str(tmp_path / "no-model"),
                 "--backend", "transformers", check=False), "no-model")
    one_line(cli("longblocks", "filter", str(shards.parent), str(out), "--model", "m", "--backend", "transformers",
                 "--concurrency", "8", check=False), "concurrency", "does not apply to the transformers backend")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in"], "a failed command left files behind"
