"""Command lines derived from config dataclasses, as transformers' HfArgumentParser derives its
flags: one flag per field, its type, default and help taken from the field and the comment beside
(or above) it; a help page that lists every key under its section; the complete, commented TOML of
a config; a Markdown reference. Both `longblocks` and `dgrpo-train` build their commands here, and
every value goes through `options.build` as a file's does, so a flag and a TOML key cannot differ.
Must not hold defaults or know any command: the dataclasses and the two CLIs do.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import click

from longblocks.options import CommandLineValue


# -- what a dataclass says about its fields --------------------------------------------------------
@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's help: its `metadata["help"]`, else the comments above and beside it in the
    class's source (a subclass's comment wins over its base's)."""
    helps: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        helps.update(_comments(klass))
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            helps[f.name] = f.metadata["help"]
    return helps


def _comments(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # no source (a frozen app): no help, never an error
        return {}
    comments: dict[int, str] = {}
    alone: set[int] = set()  # lines that hold only a comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
            if token.line.strip().startswith("#"):
                alone.add(token.start[0])
    node = ast.parse(source).body[0]
    helps: dict[str, str] = {}
    for item in getattr(node, "body", []):
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            above: list[str] = []
            line = item.lineno - 1
            while line in alone:
                above.insert(0, comments[line])
                line -= 1
            beside = [comments[n] for n in range(item.lineno, (item.end_lineno or item.lineno) + 1)
                      if n in comments and n not in alone]
            if above or beside:
                helps[item.target.id] = " ".join(above + beside)
    return helps


def section_help(cls: type) -> str:
    """The first paragraph of a section's docstring (dataclasses without one get a generated
    signature as __doc__, which is not help)."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _args(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def list_item(hint: Any) -> Any | None:
    """The dataclass of a `list[Dataclass]` field (its TOML is `[[section.key]]`), else None."""
    if typing.get_origin(hint) is list:
        args = typing.get_args(hint)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def type_name(hint: Any) -> str:
    """A field's type as the help shows it: INT, FLOAT, TEXT, BOOL, LIST (a,b or [..]), TABLE (k=v,..)."""
    names = []
    for arg in _args(hint):
        origin = typing.get_origin(arg) or arg
        if list_item(arg) is not None:
            names.append("TABLES")
        elif origin in (list, tuple):
            names.append("LIST")
        elif origin is dict:
            names.append("TABLE")
        else:
            names.append({int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL"}.get(origin, "TEXT"))
    return "|".join(dict.fromkeys(names))


def toml_value(value: Any) -> str:
    """A default as TOML writes it (None has no TOML form: unset)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if dataclasses.is_dataclass(value):
        return toml_value({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return json.dumps(str(value))


def shown_default(value: Any) -> str:
    """A default as the help shows it (what one would type)."""
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)) and value and not any(dataclasses.is_dataclass(v) for v in value):
        return ",".join(map(str, value))
    if isinstance(value, str):
        return value if value else '""'
    return toml_value(value)


# -- one flag per field ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One key of a config: where it goes (`path`, the TOML keys), its flag and its field."""

    path: tuple[str, ...]
    flag: str  # without the leading dashes, e.g. "optim.lr" or "min-tokens"
    hint: Any
    default: Any
    help: str
    section: str  # the [table] it lives in ("" for the top level)


def keys_of(cls: type, path: tuple[str, ...] = (), flag_prefix: str = "", skip: Sequence[str] = ()) -> Iterator[Key]:
    """Every key of a config dataclass, nested dataclasses flattened to dotted keys; a list of
    tables (`[[data.long]]`) is one key whose value is the whole list."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    section = ".".join(path)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from keys_of(hint, (*path, f.name), f"{flag_prefix}{f.name}.")
            continue
        help_text = helps.get(f.name, "")
        item = list_item(hint)
        if item is not None:
            help_text = (f"{help_text} " if help_text else "") + \
                f"A list of tables, each with: {', '.join(x.name for x in dataclasses.fields(item) if x.init)}."
        yield Key((*path, f.name), f"{flag_prefix}{f.name}", hint, default_of(f), help_text, section)


def flag_names(flag: str) -> list[str]:
    """`min_tokens` -> --min-tokens (and --min_tokens, as the TOML key is spelled)."""
    dashed = f"--{flag.replace('_', '-')}"
    return [dashed] if "_" not in flag else [dashed, f"--{flag}"]


class ConfigOption(click.Option):
    """A flag for one config key. Its value stays the raw string until `options.build` reads it for
    the field's type; booleans may be given bare (`--trust-remote-code`) or as `=true|false`."""

    def __init__(self, key: Key, aliases: Sequence[str] = ()) -> None:
        self.key = key
        is_bool = _args(key.hint) == [bool]
        decls = [*aliases, *flag_names(key.flag), "cfg__" + "__".join(key.path)]
        extra: dict[str, Any] = {"is_flag": False, "flag_value": "true"} if is_bool else {}
        super().__init__(decls, type=str, default=None, metavar=type_name(key.hint), help=key.help,
                         show_default=False, **extra)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str]:
        names = ", ".join(n for n in self.opts if not n.startswith("--") or "_" not in n)
        default = f"[default: {shown_default(self.key.default)}]"
        return f"{names} {self.metavar}", f"{self.help} {default}" if self.help else default

    def override(self, raw: str) -> tuple[tuple[str, ...], CommandLineValue]:
        return self.key.path, CommandLineValue(raw, f"{self.opts[0]}={raw}")


def set_values(data: dict[str, Any], values: dict[str, Any], params: Sequence[click.Parameter]) -> dict[str, Any]:
    """The flags given (not None) set into a config's tables, as `options.apply_overrides` does."""
    for param in params:
        if isinstance(param, ConfigOption) and values.get(param.name) is not None:
            path, value = param.override(values[param.name])
            node = data
            for key in path[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise click.UsageError(f"{param.opts[0]}: {'.'.join(path[:-1])} is a value, not a section")
            node[path[-1]] = value
    return data


@contextlib.contextmanager
def one_line_errors(*errors: type[BaseException], interrupted: str = "") -> Iterator[None]:
    """What the user must fix (`errors`) is one red line and exit status 2; Ctrl-C is one line
    (`interrupted`) and status 130."""
    try:
        yield
    except errors as exc:
        click.echo(click.style("error:", fg="red", bold=True) + f" {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        click.echo(click.style("interrupted", fg="yellow") + (f": {interrupted}" if interrupted else ""), err=True)
        raise SystemExit(130) from None


class OneLineUsageError(click.UsageError):
    """A command-line mistake as one line (`error: ...`, exit status 2), as our other errors are."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class ConfigCommand(click.Command):
    """A command whose help lists its arguments, its own options, then its keys under their
    sections, as written (no markup)."""

    def __init__(self, *args: Any, sections: dict[str, str] | None = None,
                 arguments: Sequence[tuple[str, str]] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections or {}  # section -> its heading
        self.arguments = list(arguments)  # (metavar, help)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            raise OneLineUsageError(self.unknown_key(exc.option_name), ctx) from None
        except click.UsageError as exc:
            raise OneLineUsageError(f"{exc.format_message()} (see {ctx.command_path} --help)", ctx) from None

    def unknown_key(self, flag: str) -> str:
        """`--optim.lrr` -> the section's valid keys, as a file's unknown key is reported."""
        keys = [p.key for p in self.params if isinstance(p, ConfigOption)]
        name = flag.lstrip("-").split("=")[0].replace("-", "_")
        prefix = name.rpartition(".")[0]
        siblings = [k.flag.rpartition(".")[2] for k in keys if k.flag.rpartition(".")[0] == prefix]
        if not siblings:
            sections = sorted({k.flag.rpartition(".")[0] for k in keys if "." in k.flag})
            return f"{flag}: no such option or section" + (f"; sections: {', '.join(sections)}" if sections else "")
        return f"{flag}: unknown key {name.rpartition('.')[2]!r}; valid keys: {', '.join(siblings)}"

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(self.arguments)
        plain = [p.get_help_record(ctx) for p in self.get_params(ctx)
                 if isinstance(p, click.Option) and not isinstance(p, ConfigOption)]
        with formatter.section("Options"):
            formatter.write_dl([r for r in plain if r])
        grouped: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if isinstance(param, ConfigOption):
                grouped.setdefault(param.key.section, []).append(param.get_help_record(ctx))
        for section, records in grouped.items():
            with formatter.section(self.sections.get(section) or (f"[{section}] keys" if section else "Keys")):
                formatter.write_dl(records)


@dataclass(frozen=True)
class Table:
    """A config dataclass whose keys a command takes as flags: at `path` in the file (() for the top
    level), as `--key` when `own` (the command's own table) else `--path.key`; `skip`: keys that
    mean nothing to the command. A table's `name` key may also be given as `--<table>`."""

    cls: type
    path: tuple[str, ...] = ()
    own: bool = True
    skip: tuple[str, ...] = ()
    heading: str = ""


def config_command(name: str, help_text: str, tables: Sequence[Table], run: Callable[..., Any], *,
                   read: Callable[[Any], dict[str, Any]], errors: tuple[type[Exception], ...], interrupted: str = "",
                   params: Sequence[click.Parameter] = (), arguments: Sequence[tuple[str, str]] = (),
                   config_help: str = "A config file; flags override it.") -> ConfigCommand:
    """A command with `params`, `--config FILE` and one flag per key of `tables`: it reads the file
    (`read`), sets the flags given into its tables and calls `run(data, config, **other_values)`,
    with `errors` as one line (and Ctrl-C as `interrupted`)."""
    options: list[click.Parameter] = [*params, click.Option(["--config", "-c"], type=click.Path(path_type=Path),
                                                            default=None, help=config_help)]
    for table in tables:
        prefix = "" if table.own or not table.path else ".".join(table.path) + "."
        for key in keys_of(table.cls, table.path, prefix, table.skip):
            named = key.path[-1] == "name" and key.hint is str and len(key.path) > 1
            options.append(ConfigOption(key, [f"--{key.path[-2]}"] if named else []))

    def callback(config: Path | None, **values: Any) -> None:
        with one_line_errors(*errors, interrupted=interrupted):
            data = set_values(read(config), values, options)
            run(data, config, **{k: v for k, v in values.items() if not k.startswith("cfg__")})

    return ConfigCommand(name, params=options, callback=callback, help=help_text, arguments=arguments,
                         sections={".".join(t.path): t.heading for t in tables if t.heading},
                         short_help=help_text.split(". ")[0].split(" (")[0])


# -- a config as commented TOML and as a Markdown table -------------------------------------------
def render_toml(sections: Sequence[tuple[str, type]], *, header: str = "") -> str:
    """The complete, commented TOML of a config: each section's keys with their defaults and help
    (an unset default commented out); `("", cls)` puts a class's scalar keys at the top level and
    its dataclass fields in their own tables."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, cls in sections:
        lines += _render_table(name, cls)
    return "\n".join(lines).strip("\n") + "\n"


def _render_table(name: str, cls: type, array: bool = False, example: bool = False, value: Any = None) -> list[str]:
    """One table's lines; `value` (an instance) gives the defaults where a field's default is a
    configured instance (RLConfig's run.out is runs/rl, not RunConfig's runs/sft)."""
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    out: list[str] = []
    hash_ = "# " if example else ""
    tables: list[tuple[str, type, Any]] = []
    scalars: list[tuple[dataclasses.Field[Any], Any]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        default = getattr(value, f.name) if value is not None else default_of(f)
        if dataclasses.is_dataclass(hint) or list_item(hint) is not None:
            tables.append((f.name, hint, default))
        else:
            scalars.append((f, default))
    if name and (scalars or not tables):
        doc = section_help(cls)
        out += ["", *(f"# {line}" for line in textwrap.wrap(doc, 96))] if doc and not array else [""]
        out.append(f"{hash_}[[{name}]]" if array else f"{hash_}[{name}]")
    for f, default in scalars:
        for line in textwrap.wrap(helps.get(f.name, ""), 96):
            out.append(f"# {line}")
        if default is None:
            out.append(f"# {f.name} =    # unset by default")
        else:
            out.append(f"{hash_}{f.name} = {toml_value(default)}")
    for key, hint, default in tables:
        path = f"{name}.{key}" if name else key
        item = list_item(hint)
        if item is None:
            out += _render_table(path, hint, example=example, value=default)
        elif default:
            for entry in default:
                out += _render_value_table(path, item, entry)
        else:
            out += ["", f"# {path}: {helps.get(key, '')} (a list of tables; none by default), e.g.".rstrip()]
            out += _render_table(path, item, array=True, example=True)[1:]
    return out


def _render_value_table(path: str, cls: type, value: Any) -> list[str]:
    out = ["", f"[[{path}]]"]
    for f in dataclasses.fields(cls):
        current = getattr(value, f.name)
        if f.init and current is not None and current != default_of(f):
            out.append(f"{f.name} = {toml_value(current)}")
    return out


def markdown_keys(keys: Sequence[Key], flags: Sequence[str] = ()) -> str:
    """A Markdown table of keys: flag (its first name, or `flags`), type, default, help."""
    rows = ["| flag | type | default | what it does |", "|---|---|---|---|"]
    for i, key in enumerate(keys):
        flag = flags[i] if flags else flag_names(key.flag)[0]
        rows.append(f"| `{flag}` | {type_name(key.hint)} | `{shown_default(key.default)}` | {_cell(key.help)} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def command_reference(prog: str, group: click.Group) -> str:
    """Every command of a CLI: usage, help and, for config commands, its keys by section."""
    out: list[str] = []
    ctx = click.Context(group, info_name=prog)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        out += [f"### `{prog} {name}`", "", "```", command.get_usage(sub), "```", ""]
        out += [inspect.cleandoc(command.help or ""), ""]
        plain = [p for p in command.params if not isinstance(p, ConfigOption) and p.param_type_name == "option"]
        if plain:
            out += ["| option | what it does |", "|---|---|"]
            out += [f"| `{', '.join(p.opts)}` | {_cell(getattr(p, 'help', '') or '')} |" for p in plain]
            out.append("")
        sections: dict[str, list[ConfigOption]] = {}
        for param in command.params:
            if isinstance(param, ConfigOption):
                sections.setdefault(param.key.section, []).append(param)
        for section, options in sections.items():
            heading = getattr(command, "sections", {}).get(section) or (f"[{section}] keys" if section else "keys")
            out += [f"**{heading}**", "", markdown_keys([o.key for o in options], [o.opts[0] for o in options]), ""]
    return "\n".join(out).rstrip() + "\n"


GENERATED = ("<!-- generated by `python docs/reference.py`: begin -->", "<!-- generated: end -->")


def with_reference(page: str, prog: str, group: click.Group) -> str:
    """`page` with its generated part (between the GENERATED markers) rewritten from the CLI."""
    head, _, rest = page.partition(GENERATED[0])
    _, _, tail = rest.partition(GENERATED[1])
    return f"{head}{GENERATED[0]}\n\n{command_reference(prog, group)}\n{GENERATED[1]}{tail}"
