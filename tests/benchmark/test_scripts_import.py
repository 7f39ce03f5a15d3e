"""Every Python script under scripts/ imports (a name moved into medood.benchmark breaks no script that used it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.scripts import SCRIPTS, load_script


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.stem)
def test_script_imports(path: Path, monkeypatch: Any) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # scripts import their siblings as scripts do when run
    module = load_script(path, f"{path.stem}_import_test")
    if '__name__ == "__main__"' in path.read_text():  # a command (not a helper module of one): its entry point
        assert callable(getattr(module, "main", None)), f"{path.name}: no main()"
