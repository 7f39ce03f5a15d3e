"""Atomic file writing: write to a temporary file in the destination folder, then rename.

A crash or a bad input half-way through a run never leaves a truncated output file behind and never
replaces a good file with a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from medood.utils.errors import DataError

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text", "case_name", "read_json_object"]


def _umask_mode() -> int:
    """Mode a normally created file gets (0666 minus the process umask); mkstemp would leave 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _suffix_of(path: Path) -> str:
    """Return every extension of ``path`` (``.nii.gz`` stays whole, so writers that sniff it still work)."""
    return "".join(path.suffixes)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path`` and move it onto ``path`` when the block ends without error.

    Args:
        path: final destination.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding; ignored in binary mode. Defaults to ``"utf-8"``.

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', got {mode!r}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(
            fd, mode, encoding=None if "b" in mode else encoding, newline="" if "b" not in mode else None
        ) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path (same folder and extensions as ``path``) for writers that need a file name.

    The temporary file is renamed onto ``path`` when the block ends without error and removed otherwise.
    Use it with libraries that write by name (``nibabel.save``, ``PIL.Image.save``).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{_suffix_of(dest)}", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` to ``path`` and return the path."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` and return the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy a file or a folder to ``dest`` through a temporary sibling renamed into place; returns ``dest``."""
    source, target = Path(src), Path(dest)
    if not source.is_dir():
        with atomic_path(target) as tmp:
            shutil.copy2(source, tmp)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


_EXT = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd|\.png|\.jpe?g|\.tiff?|\.bmp|\.dcm|\.npz|\.npy)$", re.IGNORECASE)


def case_name(path: str | os.PathLike[str]) -> str:
    """The case identifier of an input file: its base name without image extensions."""
    name = Path(os.fspath(path)).name
    return _EXT.sub("", name) or name


def read_json_object(path: str | os.PathLike[str], hint: str | None = None) -> dict[str, Any]:
    """Read a JSON file that must hold an object (``dataset.json``, ``metadata.json``, ``thresholds.json``, ...).

    Raises:
        DataError: the file is missing, not UTF-8, not valid JSON (the message gives line and column), or holds
            another top-level value than an object; ``hint`` is added to the message.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "does not exist", hint)
    try:
        content = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(p, f"is not UTF-8 text: {e}", hint) from e
    except json.JSONDecodeError as e:
        raise DataError(p, f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}", hint) from e
    if not isinstance(content, dict):
        raise DataError(p, f"holds a JSON {type(content).__name__}, expected an object", hint)
    return content
