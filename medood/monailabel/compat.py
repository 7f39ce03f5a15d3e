"""Import shims that let MONAI Label 0.8.5 run beside medood's torch 2.13.0 CPU build and pydicom 3.

Installed only by the MONAI Label app (:func:`install_shims`, called by the generated app's ``main.py`` and by
``medood label serve``), never by the library:

* ``torchvision``: ``monailabel.transform.post`` imports ``torchvision.utils.make_grid`` / ``save_image`` at
  module level (for debug image dumps medood never uses). PyPI's torchvision does not import beside torch
  2.13.0+cpu ("operator torchvision::nms does not exist"), so when ``import torchvision`` fails, a module
  ``torchvision.utils`` with small torch/PIL versions of those two functions is registered instead. Its
  ``__version__`` is ``"0.0.0"`` so that MONAI's ``optional_import`` version checks treat torchvision as absent.
* ``pydicom._storage_sopclass_uids``: ``pydicom_seg`` (imported by MONAI Label's infer endpoint) imports UIDs from
  this pydicom 2 module, which pydicom 3 removed; the shim forwards every name to ``pydicom.uid``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from medood.utils.io import atomic_path

__all__ = ["install_shims", "make_grid", "save_image"]

logger = logging.getLogger(__name__)

SHIM_VERSION = "0.0.0"


def make_grid(
    tensor: Tensor | Sequence[Tensor],
    nrow: int = 8,
    padding: int = 2,
    normalize: bool = False,
    value_range: tuple[float, float] | None = None,
    scale_each: bool = False,
    pad_value: float = 0.0,
) -> Tensor:
    """Tile a ``(B, C, H, W)`` batch (or a list of ``(C, H, W)``) into one ``(3, H', W')`` image.

    The torchvision function's behaviour for the arguments MONAI Label uses: one-channel images are repeated to
    three; ``normalize`` maps ``value_range`` (default: min and max, per image with ``scale_each``) to [0, 1].
    """
    t = torch.stack(list(tensor)) if not isinstance(tensor, Tensor) else tensor
    if t.ndim == 2:
        t = t[None]
    if t.ndim == 3:
        t = t[None]
    t = t.float().clone()
    if t.shape[1] == 1:
        t = t.repeat(1, 3, 1, 1)
    if normalize:
        items = list(t) if scale_each else [t]
        for x in items:
            lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
            x.clamp_(min=lo, max=hi).sub_(lo).div_(max(hi - lo, 1e-5))
    n, c, h, w = t.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = t.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = r * (h + padding) + padding, k * (w + padding) + padding
        grid[:, y : y + h, x : x + w] = t[i]
    return grid


def save_image(tensor: Tensor | Sequence[Tensor], fp: str | os.PathLike[str], **kwargs: object) -> None:
    """Write :func:`make_grid` of ``tensor`` (values in [0, 1]) as an 8-bit PNG."""
    from PIL import Image

    grid = make_grid(tensor, **kwargs)  # type: ignore[arg-type]
    arr = (grid.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_path(fp) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")


def _torchvision_works() -> bool:
    try:
        importlib.import_module("torchvision.utils")
    except Exception as e:  # ImportError, or RuntimeError from a torchvision built for another torch
        logger.info("torchvision unusable here (%s): using medood's torchvision.utils shim", e)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def _install_torchvision() -> bool:
    if _torchvision_works():
        return False
    package = types.ModuleType("torchvision")
    package.__version__ = SHIM_VERSION  # type: ignore[attr-defined]
    package.__doc__ = "medood shim: only torchvision.utils.make_grid / save_image (see medood.monailabel.compat)"
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = make_grid  # type: ignore[attr-defined]
    utils.save_image = save_image  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.utils"] = package, utils
    return True


def _install_pydicom_uids() -> bool:
    name = "pydicom._storage_sopclass_uids"
    try:
        importlib.import_module(name)
        return False
    except ImportError:
        pass
    import pydicom.uid

    module = types.ModuleType(name)
    module.__getattr__ = lambda attr: getattr(pydicom.uid, attr)  # type: ignore[method-assign]
    sys.modules[name] = module
    return True


def install_shims() -> list[str]:
    """Register the shims MONAI Label needs here; returns the names of those installed (idempotent)."""
    installed = []
    if _install_torchvision():
        installed.append("torchvision.utils")
    if _install_pydicom_uids():
        installed.append("pydicom._storage_sopclass_uids")
    return installed
