"""Re-export of :class:`medood.utils.errors.DataError` (kept where the data layer's users look for it)."""

from __future__ import annotations

from medood.utils.errors import DataError

__all__ = ["DataError"]
