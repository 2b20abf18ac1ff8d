"""Both command lines, derived from the config dataclasses: every section key is a flag of its
command with the key's default and help (no mapping kept by hand, so a new field is a new flag), the
help of every command renders as written, an error names where its value came from, the printed
configs are complete TOML, and the reference pages are what the CLIs generate."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import ROOT, cli
from longblocks import cli as lb_cli
from longblocks.config import SECTIONS, STAGES, SelectConfig, load_pipeline
from longblocks.flags import ConfigOption, default_of, field_help, keys_of, list_item, render_toml, with_reference
from trainer import cli as tr_cli

HELP_ENV = {"COLUMNS": "200"}


def help_of(app: click.Group, *args: str) -> str:
    """The help as printed, re-flowed into one line (click wraps at spaces and after hyphens)."""
    result = CliRunner().invoke(app, [*args, "--help"], env=HELP_ENV)
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"-\n\s+", "-", result.output).split())


def config_options(command: click.Command) -> dict[tuple[str, ...], ConfigOption]:
    return {p.key.path: p for p in command.params if isinstance(p, ConfigOption)}


def test_both_console_scripts_show_help() -> None:
    lb = cli("longblocks", "--help")
    assert "sample" in lb.stdout and "select" in lb.stdout and "generate" in lb.stdout
    tr = cli("dgrpo-train", "--help")
    assert "sft" in tr.stdout and "rl" in tr.stdout and "config" in tr.stdout


def test_every_section_key_is_a_flag_with_its_default_and_help() -> None:
    """For every stage command, each field of each section it uses (but those it declares it does
    not use) is one flag whose default is the field's and whose help is the field's comment; and
    no flag is anything else. The same for every key of dgrpo-train's sft, rl and eval."""
    checked = 0
    for spec in lb_cli.COMMANDS:
        options = config_options(lb_cli.app.commands[spec.name])
        shown = help_of(lb_cli.app, spec.name)
        expected = set()
        for section, own, skip in spec.uses:
            cls = SECTIONS[section]
            helps = field_help(cls)
            for f in dataclasses.fields(cls):
                if not f.init or f.name in skip:
                    continue
                path = (section, f.name)
                expected.add(path)
                option = options[path]
                flag = f"--{f.name.replace('_', '-')}" if own else f"--{section}.{f.name.replace('_', '-')}"
                assert flag in option.opts, (spec.name, flag, option.opts)
                assert option.key.default == default_of(f), (spec.name, path)
                assert helps.get(f.name), f"{spec.name} {flag} has no help: comment the field in longblocks/config.py"
                assert option.help.startswith(helps[f.name]) and " ".join(helps[f.name].split()) in shown, (spec.name, flag)
                checked += 1
        assert set(options) == expected, (spec.name, set(options) ^ expected)
    for name, cls in tr_cli.CONFIGS.items():
        options = config_options(tr_cli.app.commands[name])
        keys = list(keys_of(cls))
        assert set(options) == {k.path for k in keys}
        for key in keys:
            assert options[key.path].help == key.help != "", (name, key.flag)
            assert f"--{key.flag.replace('_', '-')}" in options[key.path].opts
            checked += 1
    assert checked > 200
    assert {spec.name for spec in STAGES} <= set(lb_cli.app.commands)


def test_a_new_field_is_a_new_flag_help_and_toml_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a field to a section is the only edit: the stage command gets its flag (type, default,
    help from the comment), the value reaches the built section, and the printed TOML has the key."""

    @dataclasses.dataclass(frozen=True)
    class SelectWithProbe(SelectConfig):
        probe_ratio: float = 0.25  # a probe field this test adds

    monkeypatch.setitem(SECTIONS, "select", SelectWithProbe)
    spec = next(c for c in lb_cli.COMMANDS if c.name == "select")
    seen = {}
    command = lb_cli.stage_command(dataclasses.replace(spec, run=lambda sections, paths, flags: seen.update(sections)))
    option = config_options(command)[("select", "probe_ratio")]
    assert option.opts[0] == "--probe-ratio" and option.key.default == 0.25 and option.help == "a probe field this test adds"
    group = click.Group(commands={"select": command})
    assert "--probe-ratio FLOAT" in help_of(group, "select") and "a probe field this test adds [default: 0.25]" in \
        help_of(group, "select")
    result = CliRunner().invoke(group, ["select", "a", "b", "--probe-ratio=0.5", "--min-tokens", "7"])
    assert result.exit_code == 0, result.output
    assert seen["select"].probe_ratio == 0.5 and seen["select"].min_tokens == 7
    toml = render_toml([("select", SelectWithProbe)])
    assert "# a probe field this test adds\nprobe_ratio = 0.25" in toml


def test_help_of_every_command_renders_as_written() -> None:
    """Every command of both tools has help; section names in square brackets survive (no markup);
    filter names its sections, sft lists optim.lr with its default."""
    for app in (lb_cli.app, tr_cli.app):
        for name in app.commands:
            text = help_of(app, name)
            assert "Usage" in text and " (or )" not in text and "section is  " not in text, name
    filter_help = help_of(lb_cli.app, "filter")
    assert "[judge] (or [filter])" in filter_help and "longblocks judge" in filter_help and "LLM judge" in filter_help
    assert "--local-span-window INT" in filter_help and "[run] keys" in filter_help
    sft = help_of(tr_cli.app, "sft")
    assert "--optim.lr FLOAT" in sft and "peak learning rate (AdamW) [default: 1e-05]" in sft
    assert "configs/quickstart-sft.toml" in sft and "dgrpo-train config sft" in sft
    rl = help_of(tr_cli.app, "rl")
    assert "--objective.beta FLOAT" in rl and "--teacher.served.base-url TEXT" in rl
    assert "--lengths TEXT" in help_of(tr_cli.app, "eval")
    generate = help_of(lb_cli.app, "generate")
    assert "--judge.model TEXT" in generate and "--source, --source.name TEXT" in generate and "--select.min-tokens INT" in generate


def test_errors_say_whether_a_value_came_from_the_command_line_or_the_file(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    out = tmp_path / "o"
    flag = cli("longblocks", "select", str(docs), str(out), "--min-tokens=many", check=False)
    assert flag.returncode == 2 and flag.stderr.strip() == \
        "error: --min-tokens=many (command line): min_tokens must be an integer, got 'many'"
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[select]\nmin_tokens = "many"\n')
    from_file = cli("longblocks", "select", str(docs), str(out), "--config", str(pipeline), check=False)
    assert from_file.returncode == 2 and f"{pipeline} [select]: min_tokens must be an integer" in from_file.stderr
    assert "command line" not in from_file.stderr
    typo = cli("longblocks", "select", str(docs), str(out), "--min-tokenz=3", check=False)
    assert typo.returncode == 2 and typo.stderr.count("\n") == 1
    assert "unknown key 'min_tokenz'" in typo.stderr and "min_tokens" in typo.stderr
    assert not out.exists()


def test_printed_configs_are_complete_toml_that_builds(tmp_path: Path) -> None:
    """`dgrpo-train config sft|rl|eval` and `longblocks config` print every key; the TOML parses and,
    with the keys a run must set, builds the same config as the defaults."""
    from trainer.config import load_config

    must = {"sft": ["--model.path=m", "--data.long=[{path='x'}]"], "rl": ["--model.path=m", "--data.long=[{path='x'}]"],
            "eval": ["--model=m"]}
    for name, cls in tr_cli.CONFIGS.items():
        text = CliRunner().invoke(tr_cli.app, ["config", name]).output
        data = tomllib.loads(text)
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        assert load_config(cls, path, must[name]) == load_config(cls, None, must[name])
        for key in keys_of(cls):
            shown = f"[[{'.'.join(key.path)}]]" if list_item(key.hint) else f"{key.path[-1]} ="
            assert shown in text, (name, key.flag)
        assert data
    text = CliRunner().invoke(lb_cli.app, ["config"]).output
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    cfg = load_pipeline(path, ["--run.out=runs/x", "--source.name=local:docs"])
    assert cfg.select == SelectConfig() and not cfg.publish.enabled  # as printed: enabled = false
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text or f"[[{section}." in text or section == "respond", section
        for key in keys_of(cls, (section,)):
            shown = f"[[{'.'.join(key.path)}]]" if list_item(key.hint) else f"{key.path[-1]} ="
            assert shown in text, (section, key.flag)


def test_reference_pages_are_what_the_clis_generate() -> None:
    """docs/longblocks.md and docs/dgrpo-train.md list every command and key as the CLIs do
    (regenerate with `python docs/reference.py`)."""
    for prog, app in (("longblocks", lb_cli.app), ("dgrpo-train", tr_cli.app)):
        page = (ROOT / "docs" / f"{prog}.md").read_text()
        assert page == with_reference(page, prog, app), f"docs/{prog}.md is stale: python docs/reference.py"
        assert "`--optim.lr`" in page or "`--min-tokens`" in page


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
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    order = ["## Install", "## Quickstart", "## Train on what you made", "## Run at scale", "## Reference"]
    positions = [next(i for i, h in enumerate(headings) if h.startswith(o)) for o in order]
    assert positions == sorted(positions), headings


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
