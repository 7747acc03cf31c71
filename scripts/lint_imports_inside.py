"""Imports inside functions in the library: allowed only for optional or heavy modules, each with a reason.

Prints each (file:line, module, reason) and the count; exits 1 when one has no reason (a `# ...` comment on its
line) or when there are more than LIMIT. `make lint` runs it after ruff and import-linter.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 15


def inside_imports(path: Path) -> list[tuple[int, str, str]]:
    text = path.read_text()
    lines = text.splitlines()
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    module = sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name
                    line = lines[sub.lineno - 1]
                    reason = line.split("#", 1)[1].strip() if "#" in line else ""
                    out.append((sub.lineno, module or "", reason))
    return sorted(set(out))


def main() -> int:
    found = [(path, *item) for path in sorted((ROOT / "locality_core").rglob("*.py")) for item in inside_imports(path)]
    for path, line, module, reason in found:
        print(f"{path.relative_to(ROOT)}:{line}  {module}  ({reason or 'NO REASON GIVEN'})")
    missing = [f for f in found if not f[3]]
    print(f"{len(found)} imports inside functions in locality_core (at most {LIMIT}), {len(missing)} without a reason")
    return 1 if missing or len(found) > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
