"""Small shared utilities: enums, atomic file writing."""

from __future__ import annotations

from medood.utils.enums import MapReduction, OODKeys
from medood.utils.io import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text

__all__ = ["MapReduction", "OODKeys", "atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text"]
