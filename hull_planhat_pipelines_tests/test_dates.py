"""The tests read the clock when each test starts, never when a module is imported.

The pipeline counts its partitions and windows from the UTC day it runs on. A date a test
module computed at import (a constant, or a default argument bound to one) is yesterday's for
every test that runs after midnight in a suite that crosses it, and those tests fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CLOCK = {"now", "today", "utcnow"}
"""``datetime.now()``, ``date.today()``, ``datetime.utcnow()``."""


def _read_at_import(node: ast.AST) -> Iterator[ast.Call]:
    """The clock reads evaluated when the module is imported: everything but the bodies of
    functions and lambdas (their decorators and default values included)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
        decorators = [] if isinstance(node, ast.Lambda) else node.decorator_list
        children: list[ast.AST] = [*defaults, *decorators]
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        if (
            isinstance(child, ast.Call)
            and isinstance(child.func, ast.Attribute)
            and child.func.attr in CLOCK
        ):
            yield child
        yield from _read_at_import(child)


def test_no_test_module_reads_the_date_at_import() -> None:
    modules = [p for p in TESTS.rglob("*.py") if "node_modules" not in p.parts]
    assert len(modules) > 20
    found = [
        f"{path.relative_to(TESTS)}:{call.lineno}"
        for path in modules
        for call in _read_at_import(ast.parse(path.read_text(), str(path)))
    ]
    assert found == [], "read the date in a fixture or the test instead"
