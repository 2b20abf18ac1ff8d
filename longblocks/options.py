"""Options for both command lines, one way: config dataclasses filled from a TOML (or YAML) file,
then `--section.key=value` overrides (read as TOML for the field's type; bare words, `a,b` lists and
`k=v` tables too), every key and type checked against the dataclass with a one-line error that
names where the value came from (the file and section, or the flag as typed), the key and, for an
unknown key, the valid ones. Standard library only: `dgrpo-train` imports it on machines
without the pipeline's dependencies. Must not hold defaults: the dataclasses do.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class OptionError(ValueError):
    """A configuration the user must fix; both CLIs print it as one line and exit with status 2."""


@dataclass(frozen=True)
class CommandLineValue:
    """A value given on the command line, kept raw until its field's type is known (so `en,de`
    can fill a list and `approx` a string) and so an error names the flag, not the file."""

    raw: str
    flag: str  # as typed, e.g. "--optim.lr=fast"


def parse_override(item: str) -> tuple[list[str], CommandLineValue]:
    """`--optim.lr=3e-5` -> (["optim", "lr"], the raw value); values are read as TOML once the
    field's type is known (`coerce`)."""
    key, sep, raw = item.removeprefix("--").partition("=")
    if not sep or not key or "" in key.split("."):
        raise OptionError(f"an override looks like --section.key=value, got {item!r}")
    return key.split("."), CommandLineValue(raw, item if item.startswith("--") else f"--{item}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Each `--section.key=value` set into the file's tables (a later one wins)."""
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise OptionError(f"{item}: {'.'.join(keys[:-1])} is a value, not a section")
        node[keys[-1]] = value
    return data


def _toml(raw: str) -> tuple[bool, Any]:
    try:
        return True, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def _optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _scalar_item(hint: Any) -> Any | None:
    """The item type of a list or tuple of scalars (None for anything else)."""
    for candidate in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,):
        if typing.get_origin(candidate) in (list, tuple):
            args = [a for a in typing.get_args(candidate) if a is not Ellipsis]
            if args and not dataclasses.is_dataclass(args[0]):
                return args[0]
    return None


def coerce(raw: str, hint: Any) -> Any:
    """A command-line string as a value of type `hint`: TOML first (`3e-5`, `true`, `[1, 2]`,
    `{a = 1}`); then, for what TOML does not read, the forms a shell makes easy: a string as
    typed, `a,b,c` for a list, `k=v,k=v` for a table, `none` for an optional value."""
    ok, value = _toml(raw)
    if ok and _fits(value, hint):
        return value
    if _optional(hint) and raw.strip().lower() in ("none", "null"):
        return None
    if _fits(raw, hint):
        return raw
    item = _scalar_item(hint)
    if item is not None:
        values = [coerce(part.strip(), item) for part in raw.split(",") if part.strip()]
        return tuple(values) if typing.get_origin(hint) is tuple else values
    if (typing.get_origin(hint) or hint) is dict or any((typing.get_origin(a) or a) is dict
                                                          for a in typing.get_args(hint)):
        table = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            key, sep, val = part.partition("=")
            if not sep:
                return raw
            parsed, number = _toml(val.strip())
            table[key.strip()] = number if parsed else val.strip()
        return table
    return value if ok else raw


def read_file(path: str | Path | None) -> dict[str, Any]:
    """A TOML or YAML config file as a dict ({} for none); a bad file is one line naming it."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise OptionError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise OptionError(f"{path}: invalid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise OptionError(f"{path}: expected tables of key = value")
    return data


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table", tuple: "a list"}
    origin = typing.get_origin(hint) or hint
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    return names.get(origin, getattr(origin, "__name__", str(origin)))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a TOML value can fill a field of type `hint` (ints fill floats; bools fill only bools)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint) or (hint is Path and isinstance(value, str))
    return True


def build(cls: type[T], values: Any, where: str, error: type[Exception] = OptionError) -> T:
    """`cls(**values)` with every key and type checked, nested dataclasses (and lists of them)
    built the same way; `where` names the place for messages ("rl.toml [optim]"). A value from the
    command line (`CommandLineValue`) is read for its field's type, and an error about it names the
    flag as typed instead of the file."""
    if isinstance(values, CommandLineValue):
        where, values = _from_command_line(values, dict, where)
    if not isinstance(values, dict):
        raise error(f"{where}: expected a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        flags = [v.flag for k, v in values.items() if k in unknown and isinstance(v, CommandLineValue)]
        place = f"{flags[0]} (command line)" if flags else where
        raise error(f"{place}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                    f"valid keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    flags: list[str] = []
    for name, value in values.items():
        hint = hints[name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        place = where
        if isinstance(value, CommandLineValue):
            flags.append(value.flag)
            if dataclasses.is_dataclass(hint):
                kwargs[name] = build(hint, value, child(where, name), error)
                continue
            place, value = _from_command_line(value, hint, where)
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, child(where, name), error)
        elif origin is list and args and dataclasses.is_dataclass(args[0]):
            if isinstance(value, dict):  # one table given where a list of them goes
                value = [value]
            at = place if place != where else child(where, name)
            if not isinstance(value, list):
                raise error(f"{at}: expected a list of tables ([[{name}]]), got {value!r}")
            kwargs[name] = [build(args[0], v, f"{at}[{i}]", error) for i, v in enumerate(value)]
        elif not _fits(value, hint):
            raise error(f"{place}: {name} must be {_type_name(hint)}, got {value!r}")
        else:
            kwargs[name] = tuple(value) if origin is tuple else value
    try:
        return cls(**kwargs)
    except (error, TypeError, ValueError) as exc:  # a check of __post_init__: say where
        given = f" (with {', '.join(flags)} from the command line)" if flags else ""
        raise error(f"{where}{given}: {exc}") from None


def child(where: str, name: str) -> str:
    """Where a nested table is: "rl.toml [teacher]" -> "rl.toml [teacher.served]"."""
    if where.endswith("]"):
        return f"{where[:-1]}.{name}]"
    return f"{where} [{name}]" if where else f"[{name}]"


def _from_command_line(value: CommandLineValue, hint: Any, where: str) -> tuple[str, Any]:
    """Where a command-line value is named in errors, and the value read for `hint`."""
    return f"{value.flag} (command line)", coerce(value.raw, hint)
