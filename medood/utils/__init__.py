"""Small shared utilities: enums, errors, atomic file writing, checkpoints, boolean options."""

from __future__ import annotations

from medood.utils.checkpoints import compact_checkpoint, load_checkpoint, load_state, save_checkpoint, save_state
from medood.utils.config import as_flag
from medood.utils.enums import MapReduction, OODKeys
from medood.utils.errors import DataError
from medood.utils.io import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text

__all__ = [
    "DataError",
    "MapReduction",
    "OODKeys",
    "as_flag",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "compact_checkpoint",
    "load_checkpoint",
    "load_state",
    "save_checkpoint",
    "save_state",
]
