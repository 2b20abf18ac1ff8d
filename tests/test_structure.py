"""The house rules that keep both packages readable, checked on the source: no import circle (imports
inside functions count: a deferred import is still a dependency), no function over 100 lines, no
block of 10+ lines written twice."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("longblocks", "trainer")
MAX_FUNCTION_LINES = 100
DUPLICATE_LINES = 10


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Package modules `name` imports anywhere (module level or inside functions; not TYPE_CHECKING)."""
    found = set()
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(name.split(".")[: -node.level] + [node.module])
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_circle_in_the_packages() -> None:
    mods = modules()
    graph = {name: imports(path, name, set(mods)) for name, path in mods.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # a package importing its own submodules from __init__ is not a circle
    cycles = [c for c in cycles if not (len(c) == 3 and c[0] == c[2] and c[1].startswith(c[0] + "."))]
    assert not cycles, cycles


def test_no_function_over_100_lines() -> None:
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, long


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of lines that are code: no blanks, comments or docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node):
            first = node.body[0]
            docstrings.update(range(first.lineno, first.end_lineno + 1))
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if text and not text.startswith("#") and number not in docstrings:
            out.append((number, text))
    return out


def test_no_block_of_ten_lines_written_twice() -> None:
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in modules().values():
        lines = _code_lines(path)
        for i in range(len(lines) - DUPLICATE_LINES + 1):
            window = tuple(text for _, text in lines[i : i + DUPLICATE_LINES])
            seen[window].append(f"{path.relative_to(ROOT)}:{lines[i][0]}")
    repeated = {places[0]: places[1:] for places in seen.values() if len(places) > 1}
    assert not repeated, repeated
