"""The page of ``scripts/diagnose_mecam.py`` (``docs/benchmarks/mecam_diagnosis.md``), every sentence from its JSON."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["markdown"]


def markdown(res: dict[str, Any]) -> str:
    """The page of the diagnosis JSON ``res``."""
    return "# MECAM diagnosis on validation data\n\n```\n" + json.dumps(res, indent=1)[:2000] + "\n```\n"
