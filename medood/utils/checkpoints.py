"""The one place medood reads and writes checkpoints.

Every checkpoint is a plain dict of tensors and plain Python values (``{"model": state_dict, ...}``, the
model-zoo layout), written atomically (temporary file + rename) and read with ``torch.load(weights_only=True)``
only, so a file from an unknown source can never run code: a pickle with any other object is refused with a
:class:`~medood.utils.errors.DataError` that names the file.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medood.utils.errors import DataError
from medood.utils.io import atomic_path

__all__ = [
    "compact_checkpoint",
    "load_checkpoint",
    "load_state",
    "pickle_globals",
    "refusal",
    "save_checkpoint",
    "save_state",
]

logger = logging.getLogger(__name__)


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {k: _cpu(v) for k, v in value.items()}
    return value


def save_checkpoint(content: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically write ``content`` (tensors moved to the CPU) to ``path``; the folder is created.

    Args:
        content: a dict of tensors, state dicts and plain values (``{"model": net.state_dict(), "config": {...}}``).
        path: destination file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        torch.save(_cpu(dict(content)), tmp)
    logger.debug("wrote checkpoint %s", p)
    return p


def save_state(module: nn.Module, path: str | os.PathLike[str], key: str = "model", **extra: Any) -> Path:
    """Atomically save ``{key: module.state_dict(), **extra}`` (loadable with ``weights_only=True``)."""
    return save_checkpoint({key: module.state_dict(), **extra}, path)


def load_checkpoint(path: str | os.PathLike[str], hint: str | None = None) -> Any:
    """Read a checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Args:
        path: the file.
        hint: what to tell the user when the file is missing (e.g. how to train it).

    Raises:
        DataError: the file is missing, unreadable or holds objects other than tensors and plain values
            (a pickle that could run code is refused, never executed).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "checkpoint does not exist", hint)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = pickle_globals(p) or re.findall(r"GLOBAL ([\w.]+)", str(e))
        if code:
            raise refusal(p, code) from e
        raise DataError(p, "is not a readable torch checkpoint (neither a torch archive nor a pickle)") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(p, f"is not a readable torch checkpoint ({type(e).__name__}: {first})") from e


#: Globals a plain weights file may name: torch's tensor rebuilders, storages, dtypes and plain containers.
_SAFE_GLOBAL = re.compile(
    r"^(torch\._utils\._rebuild_\w+|torch\.\w*Storage|torch\.(float|half|bfloat|int|uint|bool|complex)\w*|"
    r"torch\.(Size|device|dtype|_tensor\._rebuild_from_type_v2|Tensor|nn\.parameter\.Parameter)|"
    r"collections\.OrderedDict|builtins\.(set|frozenset|tuple|list|dict|slice|bytearray|complex)|"
    r"numpy\.(core\.multiarray|_core\.multiarray)\._reconstruct|numpy\.ndarray|numpy\.dtype|numpy\.dtypes\.\w+|"
    r"_codecs\.encode|torch\.serialization\._get_layout)$"
)


def _pickles(path: Path) -> list[bytes]:
    """The pickle streams of a torch file: ``*/data.pkl`` of a zip archive, or the legacy file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith(".pkl") and zf.getinfo(n).file_size < 1 << 26]
    with open(path, "rb") as f:
        return [f.read(1 << 26)]


def pickle_globals(path: str | os.PathLike[str]) -> list[str]:
    """The Python objects (``module.name``) a torch file's pickles would import that a weights file never needs.

    The opcodes are only listed (:mod:`pickletools`), nothing is unpickled. Legacy (non-zip) files hold several
    pickles one after the other; every one is scanned. Unreadable streams give what was found before the damage.
    """
    found: list[str] = []
    for raw in _pickles(Path(path)):
        stream = io.BytesIO(raw)
        while stream.tell() < len(raw):
            strings: list[str] = []
            try:
                for op, arg, _ in pickletools.genops(stream):
                    if isinstance(arg, str):
                        strings = [*strings[-1:], arg]
                    name = None
                    if op.name == "GLOBAL" and isinstance(arg, str):
                        name = arg.replace(" ", ".")
                    elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                        name = ".".join(strings)
                    if name and not _SAFE_GLOBAL.match(name) and name not in found:
                        found.append(name)
                    if op.name == "STOP":
                        break
            except Exception:  # damaged or not a pickle: what was found so far
                break
    return found


def refusal(path: str | os.PathLike[str], code: Sequence[str] = ()) -> DataError:
    """The one refusal of a pickle that would build Python objects: names them, says nothing ran."""
    what = f": {', '.join(code[:4])}{', ...' if len(code) > 4 else ''}" if code else ""
    return DataError(
        path,
        f"refused: it holds Python objects (code{what}) — load only weights you trust",
        "read with torch.load(weights_only=True), nothing ran; re-save it as a plain state dict",
    )


def load_state(
    module: nn.Module,
    path: str | os.PathLike[str],
    key: str | None = "model",
    prefixes: tuple[str, ...] | list[str] | None = None,
    strict: bool = True,
    hint: str | None = None,
) -> nn.Module:
    """Load ``checkpoint[key]`` (or the whole file when it is a bare state dict) into ``module``.

    Args:
        module: where to load.
        path: the checkpoint.
        key: the entry holding the state dict; ``None`` = the file is the state dict. Ignite's ``CheckpointSaver``
            writes a single object's state dict without the key, which is accepted too. Defaults to ``"model"``.
        prefixes: load only entries whose names start with one of these (non-strict for the rest).
        strict: exact key match when no prefixes are given. Defaults to True.
        hint: as :func:`load_checkpoint`.

    Raises:
        DataError: as :func:`load_checkpoint`, or none of ``prefixes`` is in the file.
    """
    ckpt = load_checkpoint(path, hint)
    state = ckpt[key] if key and isinstance(ckpt, dict) and key in ckpt else ckpt
    if not isinstance(state, Mapping):
        raise DataError(path, f"holds no state dict (type {type(state).__name__})")
    if prefixes:
        state = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
        missing = [pre for pre in prefixes if not any(k.startswith(pre) for k in state)]
        if missing:
            raise DataError(path, f"no parameters start with {missing}")
        module.load_state_dict(state, strict=False)
    else:
        module.load_state_dict(state, strict=strict)
    logger.info("loaded %d tensors from %s", len(state), path)
    return module


def compact_checkpoint(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float16, keep: Sequence[str] = ("calibration.",)
) -> Path:
    """Rewrite a checkpoint with its floating-point tensors stored in ``dtype`` (float16 halves the file).

    ``load_state_dict`` casts the values back to the network's dtype; integer buffers are kept as they are, and
    so are tensors whose names start with one of ``keep`` (by default the healthy calibration: thresholds keep
    full precision). Works on a bare state dict and on ``{"model": state_dict, ...}``.

    Raises:
        DataError: the checkpoint does not exist or is not a weights-only checkpoint.
    """
    p = Path(path)
    ckpt = load_checkpoint(p)

    def cast(state: dict) -> dict:
        return {
            k: v.to(dtype)
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not k.startswith(tuple(keep))
            else v
            for k, v in state.items()
        }

    ckpt = {**ckpt, "model": cast(ckpt["model"])} if isinstance(ckpt.get("model"), dict) else cast(ckpt)
    with atomic_path(p) as tmp:
        torch.save(ckpt, tmp)
    logger.info("stored the floating-point tensors of %s as %s", p, dtype)
    return p
