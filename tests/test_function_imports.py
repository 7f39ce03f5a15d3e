"""No ``import medood...`` inside a function (the layers hold at import time, and a cycle cannot hide in a function),
except the CLI's lazy imports and the few listed here with their reason."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medood"
#: file -> why a function-level import of medood stays there
ALLOWED = {
    "detectors/registry.py": "importing medood.detectors on first lookup registers every detector module",
    "monailabel/server.py": "the optional MONAI Label extra is imported only when the server starts",
}


def _function_imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if any(n == "medood" or n.startswith("medood.") for n in names):
                    found.append((fn.name, node.lineno))
    return found


def test_no_medood_import_inside_a_function() -> None:
    bad = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/") or rel in ALLOWED:
            continue
        hits = _function_imports(path)
        if hits:
            bad[rel] = hits
    assert not bad, f"import medood at module level (or list the file in ALLOWED with its reason): {bad}"
    assert all((PACKAGE / rel).is_file() for rel in ALLOWED), "ALLOWED names a file that no longer exists"
