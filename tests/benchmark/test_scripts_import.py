"""Every Python script under scripts/ imports (a name moved into medood.benchmark breaks no script that used it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.stem)
def test_script_imports(path: Path, monkeypatch: Any) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # scripts import their siblings as scripts do when run
    spec = importlib.util.spec_from_file_location(f"{path.stem}_import_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    if '__name__ == "__main__"' in path.read_text():  # a command (not a helper module of one): its entry point
        assert callable(getattr(module, "main", None)), f"{path.name}: no main()"
