from __future__ import annotations

from pathlib import Path

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]


def test_both_console_scripts_show_help() -> None:
    lb = cli("longblocks", "--help")
    assert "sample" in lb.stdout and "select" in lb.stdout and "generate" in lb.stdout
    tr = cli("dgrpo-train", "--help")
    assert "sft" in tr.stdout and "rl" in tr.stdout


def test_every_longblocks_command_has_help() -> None:
    for command in ("sources", "sample", "select", "generate", "run", "inspect"):
        result = cli("longblocks", command, "--help")
        assert "Usage" in result.stdout, command


def test_sources_lists_every_registered_source_with_its_license() -> None:
    out = cli("longblocks", "sources", env={"COLUMNS": "250"}).stdout
    for name in ("arxiv", "wikipedia", "stackexchange", "gutenberg", "stack-edu", "fineweb2-hq", "institutional-books"):
        assert name in out
    assert "cc-by-sa-4.0" in out and "odc-by" in out


def test_readme_top_commands_are_the_ones_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.strip() for line in block.strip().splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 3, commands
    install, main_job, tests = commands
    assert install in ci and tests in ci
    assert main_job == "longblocks run pipelines/quickstart.toml"


def test_unknown_source_is_one_line_error(tmp_path: Path) -> None:
    result = cli("longblocks", "sample", "--source", "not-a-source", "--out", str(tmp_path / "o"), check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "unknown source 'not-a-source'" in lines[0] and "arxiv" in lines[0]


def test_sft_and_rl_without_a_model_are_one_line_errors() -> None:
    for command in ("sft", "rl"):
        result = cli("dgrpo-train", command, check=False)
        assert result.returncode == 2 and "model.path is required" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_teacher_tokenizer_and_data_are_one_line_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Every path the trainer loads, when wrong, ends in one red line naming it (no transformers
    or datasets traceback), in-process through the CLI's own error handling."""
    from typer.testing import CliRunner

    from conftest import longblocks_parquet
    from trainer.cli import app

    data = longblocks_parquet(tmp_path / "lb.parquet", 4)
    base = [f"--data.long=[{{path='{data}'}}]", f"--run.out={tmp_path / 'out'}", "--run.tensorboard=false"]
    cases = [
        (["sft", f"--model.path={tmp_path / 'no-model'}", *base], "could not load tokenizer"),
        (["sft", f"--model.path={tiny_model_dir}", f"--model.tokenizer={tmp_path / 'no-tok'}", *base],
         "could not load tokenizer"),
        (["sft", f"--model.path={tiny_model_dir}", f"--data.long=[{{path='{tmp_path / 'none.parquet'}'}}]",
          f"--run.out={tmp_path / 'o2'}"], "does not exist"),
        (["rl", f"--model.path={tiny_model_dir}", *base, "--objective.beta=1", "--teacher.source=local",
          f"--teacher.path={tmp_path / 'no-teacher'}"], "could not load model"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (args, result.output[-2000:])
        assert message in lines[-1] and "Traceback" not in result.output, (args, result.output[-2000:])
