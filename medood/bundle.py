"""Helpers that MONAI bundle configs call (``$medood.bundle.datalist(@dataset_dir, 'test')``).

Bundles hold configs only; anything a config needs beyond MONAI lives here, so it is tested and importable from
any working directory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medood.data.errors import DataError

__all__ = ["compact_weights", "datalist", "latest_checkpoint", "load_weights", "resume", "save_weights"]

logger = logging.getLogger(__name__)


def datalist(
    dataset_dir: str | os.PathLike[str], key: str = "test", contrast: str = "T1w", keep: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The cases a bundle processes.

    If ``dataset_dir`` holds a ``dataset.json`` (MONAI Decathlon style, as the demo data), the list under ``key``
    is used; each entry's ``contrast`` path (else its ``"image"``) becomes ``"image"``, and the case-level fields in
    ``keep`` (e.g. ``"is_anomalous"``, ``"label"``) are carried along (paths are made absolute). Otherwise every
    ``*.nii`` / ``*.nii.gz`` under ``dataset_dir`` (recursive, symlinks followed) is a case.

    Raises:
        DataError: the folder does not exist, the key or contrast is missing, or no scan is found.
    """
    root = Path(dataset_dir)
    js = root / "dataset.json"
    if not js.is_file():
        from medood.data.datalist import nifti_datalist

        return nifti_datalist(root)
    content = json.loads(js.read_text(encoding="utf-8"))
    if key not in content or not isinstance(content[key], list):
        lists = sorted(k for k, v in content.items() if isinstance(v, list))
        raise DataError(js, f"has no list {key!r}", f"lists: {lists}")
    out = []
    for entry in content[key]:
        rel = entry.get(contrast, entry.get("image"))
        if rel is None:
            raise DataError(js, f"an entry of {key!r} has neither {contrast!r} nor 'image': {entry}")
        item: dict[str, Any] = {"image": str((root / rel).resolve())}
        for k in keep:
            if k in entry:
                v = entry[k]
                item[k] = str((root / v).resolve()) if isinstance(v, str) and v.endswith((".nii", ".nii.gz")) else v
        if not Path(item["image"]).is_file():
            raise DataError(item["image"], f"is listed in {js} under {key!r} but does not exist")
        out.append(item)
    if not out:
        raise DataError(js, f"list {key!r} is empty")
    return out


def load_weights(
    network: nn.Module,
    path: str | os.PathLike[str],
    key: str = "model",
    prefixes: Sequence[str] | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load ``torch.load(path, weights_only=True)[key]`` into ``network``.

    Args:
        network: the module (detector) to load into.
        path: checkpoint file.
        key: entry of the checkpoint dict holding the state dict (``None``-like ``""`` = the file is the
            state dict). Defaults to ``"model"``.
        prefixes: load only parameters whose names start with one of these (e.g. ``["tokenizer."]`` to reuse
            a trained tokenizer); implies non-strict loading of the rest.
        strict: require an exact key match (when no prefixes are given). Defaults to True.

    Raises:
        FileNotFoundError: the checkpoint does not exist (the message says how to get it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: no trained weights. Train the bundle first (see its docs/README.md) "
            "or point ckpt_path at a checkpoint."
        )
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    # Ignite saves a single object's state dict without the key ({"model": net} -> net.state_dict())
    state = ckpt[key] if key and isinstance(ckpt, dict) and key in ckpt else ckpt
    if prefixes:
        state = {k: v for k, v in state.items() if any(k.startswith(pre) for pre in prefixes)}
        missing = [pre for pre in prefixes if not any(k.startswith(pre) for k in state)]
        if missing:
            raise KeyError(f"{p}: no parameters start with {missing}")
        network.load_state_dict(state, strict=False)
    else:
        network.load_state_dict(state, strict=strict)
    logger.info("loaded %d tensors from %s", len(state), p)
    return network


def save_weights(network: nn.Module, path: str | os.PathLike[str], key: str = "model") -> Path:
    """Atomically save ``{key: network.state_dict()}`` (the model-zoo checkpoint layout)."""
    from medood.handlers.detector_fit import save_detector

    return save_detector(network, path, key)


def latest_checkpoint(ckpt_dir: str | os.PathLike[str], prefix: str) -> Path:
    """The most recently written ``<prefix>*.pt`` in ``ckpt_dir``.

    Raises:
        FileNotFoundError: none exists.
    """
    files = sorted(Path(ckpt_dir).glob(f"{prefix}*.pt"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no checkpoint {prefix}*.pt in {ckpt_dir} to resume from")
    return files[-1]


def resume(trainer: Any, ckpt_dir: str | os.PathLike[str], prefix: str, objects: dict[str, Any]) -> Path:
    """Restore ``objects`` (model, optimizer, scheduler, trainer) from the latest ``<prefix>*.pt`` checkpoint.

    The trainer continues from the saved epoch when ``run()`` is called.
    """
    from ignite.handlers import Checkpoint

    path = latest_checkpoint(ckpt_dir, prefix)
    Checkpoint.load_objects(to_load=objects, checkpoint=torch.load(path, map_location="cpu", weights_only=True))
    logger.info("resumed %s from %s (epoch %d)", prefix, path, trainer.state.epoch)
    return path


def compact_weights(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float16, keep: Sequence[str] = ("calibration.",)
) -> Path:
    """Rewrite a checkpoint with its floating-point tensors stored in ``dtype`` (float16 halves the file).

    ``load_state_dict`` casts the values back to the network's dtype; integer buffers are kept as they are, and
    so are tensors whose names start with one of ``keep`` (by default the healthy calibration: thresholds keep
    full precision). Works on a bare state dict and on ``{"model": state_dict, ...}``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    from medood.utils.io import atomic_path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no checkpoint to compact")
    ckpt = torch.load(p, map_location="cpu", weights_only=True)

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
