"""MONAI ``CumulativeIterationMetric`` wrappers of the OOD and voxel metrics.

Use them like MONAI's ``ROCAUCMetric``: call once per batch, ``aggregate()`` at the end, ``reset()`` between
runs. :class:`OODMetrics` keeps one score and one label per image; :class:`VoxelAPMetric` and
:class:`BestDiceMetric` keep a seeded random subset of voxels per case so memory stays bounded.

Example:
    >>> metric = OODMetrics()
    >>> for batch in loader:
    ...     metric(y_pred=detector.score(batch["image"]).image_score, y=batch["is_ood"])
    >>> metric.aggregate()  # {"auroc": ..., "aupr_in": ..., "aupr_out": ..., "fpr95": ...}
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric

from medood.metrics.functional import ap_from_counts, aupr_in, aupr_out, auroc, fpr_at_tpr, rank_counts
from medood.metrics.segmentation import VoxelPool, best_dice_from_split, iter_cases

__all__ = ["OOD_METRIC_NAMES", "BestDiceMetric", "OODMetrics", "OODScoreMetric", "VoxelAPMetric"]

#: The keys of :meth:`OODMetrics.aggregate`, in order.
OOD_METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95")


def _as_tensor(x: Any) -> Any:
    """Leave tensors and lists of tensors alone; turn numpy arrays, numbers and lists of numbers into tensors."""
    if isinstance(x, torch.Tensor) or x is None:
        return x
    if isinstance(x, (list, tuple)) and x and all(isinstance(i, torch.Tensor) for i in x):
        return x
    return torch.as_tensor(np.asarray(x))


def _one_per_item(t: torch.Tensor, name: str) -> torch.Tensor:
    """``(B,)``, ``(B, 1)`` or a scalar -> ``(B,)``; anything with more than one value per item is an error."""
    if t.ndim == 0:
        return t.reshape(1)
    if t.numel() != t.shape[0]:
        raise ValueError(f"{name}: expected one value per image, got shape {tuple(t.shape)}")
    return t.reshape(-1)


class OODMetrics(CumulativeIterationMetric):
    """Image-level OOD metrics accumulated over batches: AUROC, AUPR-In, AUPR-Out and FPR95.

    ``y_pred`` are scores (higher = more OOD), ``y`` the ``is_ood`` labels (1 = OOD), each a batch-first
    tensor ``(B,)`` / ``(B, 1)``, a list of per-image scalars (decollated engine output), a numpy array or a
    list of numbers.

    Args:
        tpr: the TPR of the FPR metric. Defaults to 0.95.
        fpr_positive: positive class of the FPR metric: ``"id"`` (FPR on OOD at 95 % ID recall; the literature's
            FPR95, OpenOOD / NERO) or ``"ood"`` (FPR on ID at 95 % OOD recall). See
            :func:`medood.metrics.fpr_at_tpr`. Defaults to ``"id"``.
    """

    def __init__(self, tpr: float = 0.95, fpr_positive: Literal["ood", "id"] = "id") -> None:
        super().__init__()
        if not 0.0 < tpr <= 1.0:
            raise ValueError(f"tpr must be in (0, 1], got {tpr}")
        if fpr_positive not in ("ood", "id"):
            raise ValueError(f"fpr_positive must be 'ood' or 'id', got {fpr_positive!r}")
        self.tpr = float(tpr)
        self.fpr_positive: Literal["ood", "id"] = fpr_positive

    def __call__(self, y_pred: Any, y: Any = None, **kwargs: Any) -> Any:
        """Add a batch of scores and labels (see the class docstring for the accepted formats)."""
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the is_ood labels as `y`")
        return super().__call__(y_pred=_as_tensor(y_pred), y=_as_tensor(y), **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the is_ood labels as `y`")
        scores, labels = _one_per_item(y_pred, "y_pred").double(), _one_per_item(y, "y").double()
        if scores.shape != labels.shape:
            raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels in this batch")
        return scores, labels

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        buf = self.get_buffer()
        if buf is None:
            raise ValueError(f"{type(self).__name__}: no data; call the metric on at least one batch first")
        scores, labels = buf
        return scores.reshape(-1).cpu().numpy(), labels.reshape(-1).cpu().numpy()

    def compute_one(self, name: str) -> float:
        """Compute one of :data:`OOD_METRIC_NAMES` from the accumulated data.

        Args:
            name: ``"auroc"``, ``"aupr_in"``, ``"aupr_out"`` or ``"fpr95"``.

        Returns:
            The metric value.
        """
        scores, labels = self._arrays()
        if name == "auroc":
            return auroc(scores, labels)
        if name == "aupr_in":
            return aupr_in(scores, labels)
        if name == "aupr_out":
            return aupr_out(scores, labels)
        if name == "fpr95":
            return fpr_at_tpr(scores, labels, self.tpr, positive=self.fpr_positive)
        raise ValueError(f"unknown OOD metric {name!r}; choose from {OOD_METRIC_NAMES}")

    def aggregate(self) -> dict[str, float]:  # type: ignore[override]
        """All four metrics ``{"auroc", "aupr_in", "aupr_out", "fpr95"}`` over everything accumulated.

        Raises:
            ValueError: with no data, or when the data hold only ID or only OOD images.
        """
        return {name: self.compute_one(name) for name in OOD_METRIC_NAMES}


class OODScoreMetric(OODMetrics):
    """One OOD metric as a float (what an Ignite handler records).

    Args:
        name: one of ``"auroc"``, ``"aupr_in"``, ``"aupr_out"``, ``"fpr95"``.
        tpr: as in :class:`OODMetrics`. Defaults to 0.95.
        fpr_positive: as in :class:`OODMetrics`. Defaults to ``"ood"``.
    """

    def __init__(self, name: str, tpr: float = 0.95, fpr_positive: Literal["ood", "id"] = "ood") -> None:
        if name not in OOD_METRIC_NAMES:
            raise ValueError(f"unknown OOD metric {name!r}; choose from {OOD_METRIC_NAMES}")
        super().__init__(tpr=tpr, fpr_positive=fpr_positive)
        self.name = name

    def aggregate(self) -> float:  # type: ignore[override]
        """The selected metric over everything accumulated."""
        return self.compute_one(self.name)


class _VoxelMetric(CumulativeIterationMetric):
    """Shared per-case voxel pooling for :class:`VoxelAPMetric` and :class:`BestDiceMetric`.

    The voxels live in a :class:`~medood.metrics.segmentation.VoxelPool`, not in MONAI's buffers (cases may
    differ in size), so this metric does not gather across distributed ranks.
    """

    def __init__(self, max_voxels_per_case: int | None = 100_000, seed: int = 0) -> None:
        self.pool = VoxelPool(max_voxels_per_case, seed)
        super().__init__()

    def reset(self) -> None:
        """Forget all cases (the sub-sampling seed sequence restarts)."""
        super().reset()
        if hasattr(self, "pool"):
            self.pool.reset()

    def __call__(self, y_pred: Any, y: Any = None, foreground: Any = None, **kwargs: Any) -> torch.Tensor:
        """Add a batch of maps and masks.

        Args:
            y_pred: maps ``(B, 1, *spatial)`` or a list of per-case maps ``(1, *spatial)``.
            y: lesion masks, same layout.
            foreground: optional foreground masks, same layout. Defaults to ``None``.
            kwargs: ignored.

        Returns:
            The number of voxels kept per case, ``(B,)``.
        """
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the lesion masks as `y`")
        kept = [self.pool.add_arrays(s, lesion, fg) for s, lesion, fg in iter_cases(y_pred, y, foreground)]
        return torch.tensor(kept, dtype=torch.long)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError("voxel metrics pool cases in __call__")  # pragma: no cover


class VoxelAPMetric(_VoxelMetric):
    """Pooled voxel-level average precision (MOOD's pixel metric), accumulated case by case.

    Args:
        max_voxels_per_case: seeded random subset of voxels kept per case (``None`` = all; memory then grows
            with the data). Defaults to 100 000.
        seed: sub-sampling seed; case ``i`` of a run uses ``(seed, i)``. Defaults to 0.
    """

    def aggregate(self) -> float:  # type: ignore[override]
        """AP over the pooled voxels of every case added since the last reset."""
        pos, neg = self.pool.split()
        return ap_from_counts(rank_counts(pos, neg, "voxels"))


class BestDiceMetric(_VoxelMetric):
    """The oracle best pooled Dice (threshold chosen on the test labels), accumulated case by case.

    Args:
        max_voxels_per_case: seeded random subset of voxels kept per case. Defaults to 100 000.
        seed: sub-sampling seed. Defaults to 0.
        n_thresholds: ``None`` = exact over distinct scores, else quantile thresholds. Defaults to ``None``.
    """

    def __init__(self, max_voxels_per_case: int | None = 100_000, seed: int = 0, n_thresholds: int | None = None):
        super().__init__(max_voxels_per_case, seed)
        self.n_thresholds = n_thresholds
        self.threshold: float | None = None

    def aggregate(self, return_threshold: bool = False) -> float | tuple[float, float]:  # type: ignore[override]
        """The best Dice (and, with ``return_threshold=True``, ``(dice, threshold)``); also sets ``threshold``."""
        pos, neg = self.pool.split()
        dice, threshold = best_dice_from_split(pos, neg, self.n_thresholds)
        self.threshold = threshold
        return (dice, threshold) if return_threshold else dice
