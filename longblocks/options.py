"""Options for both command lines, one way: config dataclasses filled from a TOML (or YAML) file,
then `--section.key=value` overrides (values are TOML; bare words are strings), every key and type
checked against the dataclass with a one-line error that names the file, the section, the key and,
for an unknown key, the valid ones. Standard library only: `dgrpo-train` imports it on machines
without the pipeline's dependencies. Must not hold defaults: the dataclasses do.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class OptionError(ValueError):
    """A configuration the user must fix; both CLIs print it as one line and exit with status 2."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """`--optim.lr=3e-5` -> (["optim", "lr"], 3e-5); values are TOML, bare words are strings."""
    key, sep, raw = item.removeprefix("--").partition("=")
    if not sep or not key or "" in key.split("."):
        raise OptionError(f"an override looks like --section.key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise OptionError(f"{item}: {'.'.join(keys[:-1])} is a value, not a section")
        node[keys[-1]] = value
    return data


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
    built the same way; `where` names the place for messages ("rl.toml [optim]")."""
    if not isinstance(values, dict):
        raise error(f"{where}: expected a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise error(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                    f"valid keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, f"{where}.{name}", error)
        elif origin is list and args and dataclasses.is_dataclass(args[0]):
            if not isinstance(value, list):
                raise error(f"{where}.{name}: expected a list of tables ([[{name}]]), got {value!r}")
            kwargs[name] = [build(args[0], v, f"{where}.{name}[{i}]", error) for i, v in enumerate(value)]
        elif not _fits(value, hint):
            raise error(f"{where}: {name} must be {_type_name(hint)}, got {value!r}")
        else:
            kwargs[name] = tuple(value) if origin is tuple else value
    try:
        return cls(**kwargs)
    except (error, TypeError, ValueError) as exc:  # a check of __post_init__: say where
        raise error(f"{where}: {exc}") from None
