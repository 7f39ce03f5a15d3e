"""Importing a script (tests import several) never changes the process environment: no module-level
``os.environ`` write in ``scripts/*.py`` or ``medood/`` (one leaked ``MEDOOD_RUN_MODE=overwrite`` made every later
run in the test process clear other runs' folders)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_level_env_writes(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = {
        id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)
    }
    hits = []
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        text = ast.unparse(node) if isinstance(node, ast.Call | ast.Assign) else ""
        if isinstance(node, ast.Call) and (
            "os.environ.setdefault" in text or "os.putenv" in text or "os.environ.update" in text
        ):
            hits.append(node.lineno)
        if isinstance(node, ast.Assign) and any("os.environ[" in ast.unparse(t) for t in node.targets):
            hits.append(node.lineno)
    return hits


def test_no_module_level_environment_write() -> None:
    files = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "medood").rglob("*.py"))
    bad = {str(p.relative_to(ROOT)): hits for p in files if (hits := _module_level_env_writes(p))}
    assert not bad, f"set the environment inside main(), not at import: {bad}"


def test_the_scan_finds_a_module_level_write(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text('import os\nos.environ.setdefault("A", "1")\ndef main():\n    os.environ["B"] = "2"\n')
    assert _module_level_env_writes(script) == [2]
