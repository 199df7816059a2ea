"""Size rules for the package that ruff's statement counts (PLR0915) do not state in lines.

No function body in ``src/latentz`` is longer than 60 lines and no module longer than 450: a
reader sees a function on one screen and a module in one sitting. Layering and the torch-free
receive path are import-linter contracts in pyproject.toml (run by ``make test``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "latentz"
MAX_BODY_LINES = 60
MAX_MODULE_LINES = 450


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line."""
    body = node.body
    first = (
        body[1]
        if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        else body[0]
    )
    return (node.end_lineno or node.lineno) - first.lineno + 1


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_rules_see_the_package() -> None:
    assert len(modules()) > 40
    long_function = ast.parse("def f():\n" + "    x = 1\n" * 61)
    assert body_lines(long_function.body[0]) == 61  # type: ignore[arg-type]


def test_no_function_body_is_longer_than_60_lines() -> None:
    too_long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > MAX_BODY_LINES:
                too_long.append(
                    f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({body_lines(node)} lines)"
                )
    assert not too_long, too_long


def test_no_module_is_longer_than_450_lines() -> None:
    too_long = [
        f"{path.relative_to(REPO)} ({lines} lines)"
        for path in modules()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not too_long, too_long
