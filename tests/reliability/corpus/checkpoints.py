"""Checkpoints (``load_checkpoint``): a pickle that would run code, damaged files."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medood.utils.checkpoints import load_checkpoint
from tests.reliability.corpus.registry import bad


class RunsCode:
    """A pickle whose loading would create the file ``marker`` (stands for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


checkpoint = partial(bad, "checkpoint", read=load_checkpoint)


class CallsSystem:
    """The usual payload: unpickling calls ``os.system`` (here a harmless ``touch``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


REFUSED = r"refused: it holds Python objects \(code: {}\) — load only weights you trust"


@checkpoint("pickle_that_runs_code", REFUSED.format(r".*getattr.*"))
def _(tmp: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}, "payload": RunsCode(tmp / "pwned")}, tmp / "model.pt")
    return tmp / "model.pt"


@checkpoint("archive_calling_os_system", REFUSED.format(r"(posix|nt|os)\.system"))
def _(tmp: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}, "payload": CallsSystem(tmp / "pwned")}, tmp / "model.pt")
    return tmp / "model.pt"


@checkpoint("legacy_pickle_calling_os_system", REFUSED.format(r"(posix|nt|os)\.system"))
def _(tmp: Path) -> Path:
    content = {"model": {"w": torch.zeros(2)}, "payload": CallsSystem(tmp / "pwned")}
    torch.save(content, tmp / "model.pt", _use_new_zipfile_serialization=False)
    return tmp / "model.pt"


@checkpoint("builtin_eval_global", REFUSED.format(r"(__builtin__|builtins)\.eval"))
def _(tmp: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(2)}, "hook": eval}, tmp / "model.pt")
    return tmp / "model.pt"


@checkpoint("truncated", "not a readable torch checkpoint")
def _(tmp: Path) -> Path:
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp / "full.pt")
    raw = (tmp / "full.pt").read_bytes()
    (tmp / "model.pt").write_bytes(raw[: len(raw) // 2])
    return tmp / "model.pt"


@checkpoint("random_bytes", "not a readable torch checkpoint")
def _(tmp: Path) -> Path:
    (tmp / "model.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return tmp / "model.pt"


@checkpoint("missing", "checkpoint does not exist")
def _(tmp: Path) -> Path:
    return tmp / "model.pt"
