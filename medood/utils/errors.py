"""The error every medood reader raises for bad input: it names the file and what is wrong."""

from __future__ import annotations

import os

__all__ = ["DataError", "printable_path"]


def printable_path(path: str | os.PathLike[str] | bytes) -> str:
    r"""Return ``path`` as text that any UTF-8 stream, log or CSV file can hold.

    File names that are not valid UTF-8 reach Python with lone surrogates (``'scan\udcff.nii'``); printing or
    writing them raises ``UnicodeEncodeError``. Their undecodable bytes are shown as ``\xff`` escapes instead,
    so the message still identifies the file.
    """
    raw = os.fsencode(path)
    return raw.decode("utf-8", errors="backslashreplace")


class DataError(ValueError):
    """Bad input data. The message is one line and always starts with the offending path.

    Args:
        path: the file or folder at fault.
        problem: what is wrong with it, phrased for a user ("truncated gzip stream", "contains 12 NaN voxels").
        hint: optional advice on how to fix it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, hint: str | None = None) -> None:
        self.path = os.fspath(path)
        self.problem = printable_path(_one_line(problem))
        self.hint = printable_path(_one_line(hint)) if hint else hint
        msg = f"{printable_path(self.path)}: {self.problem}"
        if self.hint:
            msg += f" ({self.hint})"
        super().__init__(msg)


def _one_line(text: str) -> str:
    """Collapse line breaks (e.g. from a library's multi-line message) so the error stays one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
