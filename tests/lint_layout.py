"""Size rules the linters do not have: no module over 500 lines, no function over 80 (edge_infer, converter).

Run by tests/run.sh after ruff and lint-imports; prints each offender and exits 1 when there is one."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def offenders(root: Path) -> list[str]:
    found = []
    for path in sorted(p for pkg in ("edge_infer", "converter") for p in (root / pkg).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(root)
        if (lines := text.count("\n")) > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno}: {node.name}() is {length} lines (at most "
                                 f"{MAX_FUNCTION_LINES})")
    return found


if __name__ == "__main__":
    problems = offenders(Path(__file__).resolve().parent.parent)
    for line in problems:
        print(f"layout: {line}")
    sys.exit(1 if problems else 0)
