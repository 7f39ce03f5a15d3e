"""Load a script under ``scripts/`` as a module (its ``main`` is not run) for tests of its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str | Path, alias: str | None = None) -> ModuleType:
    """``scripts/<name>.py`` (or the file ``name``) executed as the module ``alias`` (default ``<stem>_under_test``).

    The module is in ``sys.modules`` only while it executes (dataclasses and pickling look it up there), so a
    script loaded twice gets two independent modules.
    """
    path = Path(name) if isinstance(name, Path) else SCRIPTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(alias or f"{path.stem}_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module
