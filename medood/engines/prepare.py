"""``prepare_batch`` callables for engines whose second input is not a label (slice positions, ...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from torch import Tensor

__all__ = ["PrepareKeys"]


class PrepareKeys:
    """Return ``(batch[input_key], batch[target_key])`` on ``device`` (MONAI ``prepare_batch`` interface).

    Args:
        input_key: the network input. Defaults to ``"image"``.
        target_key: the second value handed to the loss (``None`` = none; several keys = a dict of them, e.g. a
            target image with precomputed features). Defaults to ``"position"``.
    """

    def __init__(self, input_key: str = "image", target_key: str | Sequence[str] | None = "position") -> None:
        self.input_key, self.target_key = input_key, target_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[Tensor, Any]:
        """Pick and move the two tensors (the second a dict of tensors when several target keys are given)."""

        def move(t: Any) -> Any:
            if isinstance(t, MetaTensor):
                t = t.as_tensor()
            return t.to(device=device, non_blocking=non_blocking, **kwargs) if isinstance(t, Tensor) else t

        if self.input_key not in batchdata:
            raise KeyError(f"batch has no {self.input_key!r} key (keys: {sorted(batchdata)})")
        if self.target_key is None or isinstance(self.target_key, str):
            target = batchdata.get(self.target_key) if self.target_key is not None else None
            return move(batchdata[self.input_key]), move(target)
        missing = [k for k in self.target_key if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing} keys (keys: {sorted(batchdata)})")
        return move(batchdata[self.input_key]), {k: move(batchdata[k]) for k in self.target_key}
