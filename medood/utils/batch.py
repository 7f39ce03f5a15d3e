"""Batch helpers: split loader batches into images and labels, drop MONAI metadata tracking."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from medood.utils.enums import OODKeys

__all__ = ["as_plain_tensor", "unpack_batch"]


def unpack_batch(
    batch: Tensor | Mapping[str, Any] | tuple | list,
    image_key: str = OODKeys.IMAGE,
    label_key: str = OODKeys.LABEL,
) -> tuple[Tensor, Tensor | None]:
    """Split a loader batch into ``(images, labels)``.

    Accepts a tensor, a MONAI-style dict (``{"image": ..., "label": ...}``) or an ``(images, labels)`` tuple.

    Raises:
        TypeError: the batch has none of these forms.
        KeyError: a dict batch has no ``image_key``.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        if image_key not in batch:
            raise KeyError(f"batch has no {image_key!r} key (keys: {sorted(map(str, batch))})")
        label = batch.get(label_key)
        return batch[image_key], label if isinstance(label, Tensor) else None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        label = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], label
    raise TypeError(f"cannot unpack a batch of type {type(batch).__name__}; expected a tensor, dict or tuple")


def as_plain_tensor(x: Tensor) -> Tensor:
    """Drop MONAI ``MetaTensor`` metadata tracking (scoring returns plain tensors)."""
    as_tensor = getattr(x, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else x
