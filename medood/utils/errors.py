"""The error every medood reader raises for bad input: it names the file and what is wrong."""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data. The message always starts with the offending path.

    Args:
        path: the file or folder at fault.
        problem: what is wrong with it, phrased for a user ("truncated gzip stream", "contains 12 NaN voxels").
        hint: optional advice on how to fix it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str | None = None) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.hint = hint
        msg = f"{self.path}: {problem}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
