"""The registry of bad-input kinds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Built = Path | tuple[Path, Path]


@dataclass(frozen=True)
class BadKind:
    """One kind of broken input: ``build(tmp)`` returns the input (or ``(input, file the error must name)``)."""

    family: str
    name: str
    problem: str  # regular expression the error message (after the path) must match
    build: Callable[[Path], Built]
    read: Callable[[Path], Any]

    @property
    def id(self) -> str:
        return f"{self.family}-{self.name}"


KINDS: list[BadKind] = []


def bad(family: str, name: str, problem: str, read: Callable[[Path], Any]) -> Callable:
    """Register the decorated builder as a bad kind."""

    def deco(build: Callable[[Path], Built]) -> Callable[[Path], Built]:
        KINDS.append(BadKind(family, name, problem, build, read))
        return build

    return deco
