from __future__ import annotations

from pathlib import Path

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]


def test_both_console_scripts_show_help() -> None:
    lb = cli("longblocks", "--help")
    assert "sample" in lb.stdout and "select" in lb.stdout and "generate" in lb.stdout
    tr = cli("dgrpo-train", "--help")
    assert "sft" in tr.stdout and "rl" in tr.stdout


def test_every_command_of_both_clis_has_help() -> None:
    """Every command the two apps register (the design's `generate --source`, `filter`, `sft`,
    `rl` among them), in process through click, so the list cannot fall behind the apps."""
    import typer.main
    from typer.testing import CliRunner

    from longblocks.cli import app as longblocks_app
    from trainer.cli import app as trainer_app

    for app, design in ((longblocks_app, {"generate", "filter", "judge", "run", "publish", "push"}),
                        (trainer_app, {"sft", "rl", "eval"})):
        commands = typer.main.get_command(app).commands
        assert design <= set(commands), sorted(commands)
        for name in commands:
            result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
            assert result.exit_code == 0 and "Usage" in result.output, (name, result.output)
    generate = CliRunner().invoke(longblocks_app, ["generate", "--source", "arxiv", "--help"], env={"COLUMNS": "200"})
    assert generate.exit_code == 0 and "--judge-model" in generate.output
    filter_help = CliRunner().invoke(longblocks_app, ["filter", "--help"], env={"COLUMNS": "200"}).output
    assert "LLM judge" in filter_help and "longblocks judge" in filter_help


# How each command's flags map to config keys: the sections searched in order (prefix, section),
# renamed flags, and flags that are not options of a run (paths, actions).
FLAG_SECTIONS = {
    "sample": [("", "SourceConfig"), ("", "SelectConfig"), ("", "RunSection")],
    "select": [("", "SelectConfig"), ("", "RunSection")],
    "dedup": [("", "DedupSection"), ("", "RunSection")],
    "generate": [("judge_", "JudgeSection"), ("", "SourceConfig"), ("", "SelectConfig"), ("", "GenerateSection"),
                 ("", "RunSection")],
    "filter": [("", "JudgeSection"), ("", "RunSection")],
    "judge": [("", "JudgeSection"), ("", "RunSection")],
    "respond": [("", "ResponderConfig"), ("", "RunSection")],
    "publish": [("", "PublishSection")],
    "push": [("", "PublishSection")],
}
LLM_RENAMES = {"max_new_tokens": "max_tokens"}  # the generation budget flag of the LLM sections
FLAG_RENAMES = {"SourceConfig": {"quota": "quotas", "bin_quota": "bin_quotas"}, "GenerateSection": LLM_RENAMES,
                "JudgeSection": LLM_RENAMES, "ResponderConfig": LLM_RENAMES}
NOT_KEYS = {"inp", "out", "paths", "folder", "overwrite", "dry_run", "responder", "set_", "ctx", "pipeline", "stage_dir"}


def test_every_flag_default_is_its_toml_keys_default() -> None:
    """One source of truth: each `longblocks` flag is a key of a config section (the ones a
    pipeline file has) and its default is that key's default."""
    import dataclasses

    import typer.main

    from longblocks import config
    from longblocks.cli import app

    def same(flag_default: object, key_default: object) -> bool:
        if isinstance(key_default, (list, tuple)) and isinstance(flag_default, str):
            return flag_default == ",".join(map(str, key_default))
        if key_default == [] and flag_default is None:  # a repeatable flag given no times
            return True
        return flag_default == key_default

    checked = 0
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            if param.name in NOT_KEYS or param.name == "help" or param.required:
                continue
            assert name in FLAG_SECTIONS, f"longblocks {name} has flags but no config section: {param.name}"
            for prefix, section in FLAG_SECTIONS[name]:
                flag = param.name.removeprefix(prefix)
                key = FLAG_RENAMES.get(section, {}).get(flag, flag)
                fields = {f.name: f for f in dataclasses.fields(getattr(config, section))}
                if param.name.startswith(prefix) and key in fields:
                    field = fields[key]
                    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
                    assert same(param.default, default), (name, param.name, param.default, section, key, default)
                    checked += 1
                    break
            else:
                raise AssertionError(f"longblocks {name} --{param.name.replace('_', '-')} has no TOML key")
    assert checked > 60


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
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [  # a missing local path is named before anything loads; a folder that is not a model, when it loads
        (["sft", f"--model.path={tmp_path / 'no-model'}", *base], "model.path", "no such local folder"),
        (["sft", f"--model.path={tiny_model_dir}", f"--model.tokenizer={tmp_path / 'no-tok'}", *base],
         "model.tokenizer", "no such local folder"),
        (["sft", f"--model.path={tiny_model_dir}", f"--model.tokenizer={empty}", *base], str(empty),
         "could not load tokenizer"),
        (["sft", f"--model.path={tiny_model_dir}", f"--data.long=[{{path='{tmp_path / 'none.parquet'}'}}]",
          f"--run.out={tmp_path / 'o2'}"], "data.long[0].path", "does not exist"),
        (["rl", f"--model.path={tiny_model_dir}", *base, "--objective.beta=1", "--teacher.source=local",
          f"--teacher.path={tmp_path / 'no-teacher'}"], "teacher.path", "no such local folder"),
        (["rl", f"--model.path={tiny_model_dir}", *base, "--objective.beta=1", "--teacher.source=local",
          f"--teacher.path={empty}"], str(empty), "could not load model"),
    ]
    for args, name, message in cases:
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (args, result.output[-2000:])
        assert name in lines[-1], (args, result.output[-2000:])
        if message == "no such local folder" or message == "does not exist":
            assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists(), args
        assert message in lines[-1] and "Traceback" not in result.output, (args, result.output[-2000:])
