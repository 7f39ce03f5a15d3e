"""Ignite metric handlers for OOD detection and anomaly segmentation (MONAI ``IgniteMetricHandler`` wrappers).

Use them in MONAI evaluators and bundle configs like MONAI's ``ROCAUC``::

    key_val_metric:
      val_auroc: {_target_: medood.handlers.OODAUROC}
    additional_metrics:
      val_fpr95: {_target_: medood.handlers.OODFPR95}
      val_pixel_ap: {_target_: medood.handlers.VoxelAP, max_voxels_per_case: 10000}

By default each handler reads its inputs by key from the engine, in both the decollated form (a list of
per-item dicts, ``decollate=True``, MONAI's default) and batch dicts:

* image-level handlers: the score from ``ood_score`` (what :class:`medood.engines.OODEvaluator` adds; higher =
  more OOD) and the ground truth from ``is_ood`` (1 = OOD), looked up in ``engine.state.batch`` **first** and then
  in the output. The ground truth comes from the dataset, which MONAI keeps in the batch (thresholded decisions
  are never written under ``is_ood``: the result writer calls them ``flagged``). If the dataset names its labels
  differently (the brain demo: ``is_anomalous``), set ``label_key``.
* voxel handlers: the map from ``ood_map``, else ``pred`` (where ``OODEvaluator`` keeps the stitched map), and
  the lesion mask from ``label``, plus an optional foreground key; output first (post-transforms such as
  ``Invertd`` write there), then batch.

Pass ``output_transform`` (e.g. ``monai.handlers.from_engine(["pred", "label"])``) to read something else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import IgniteMetricHandler

from medood.metrics.ood import BestDiceMetric, OODScoreMetric, VoxelAPMetric
from medood.utils.enums import OODKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["OODAUROC", "OODFPR95", "BestDice", "EngineKeys", "OODAUPRIn", "OODAUPROut", "VoxelAP"]


class EngineKeys:
    """An ``output_transform`` reading keys from the engine output and batch.

    Args:
        keys: the inputs to read, in order. Each is a key or a tuple of alternative keys tried in turn;
            ``None`` entries are skipped.
        batch_first: keys looked up in ``engine.state.batch`` before ``engine.state.output`` (ground-truth
            labels); all others are looked up in the output first. Defaults to ``()``.

    Returns (when called):
        A tuple with one entry per input: a list of per-item values for decollated data, else the batch value.
    """

    def __init__(self, keys: Sequence[str | tuple[str, ...] | None], batch_first: Sequence[str] = ()) -> None:
        self.keys = [(k,) if isinstance(k, str) else tuple(k) for k in keys if k is not None]
        self.batch_first = {str(k) for k in batch_first}

    @staticmethod
    def _lookup(data: Any, key: str) -> tuple[bool, Any]:
        if isinstance(data, dict):
            return (key in data), data.get(key)
        if isinstance(data, (list, tuple)) and data and all(isinstance(d, dict) for d in data):
            if all(key in d for d in data):
                return True, [d[key] for d in data]
        return False, None

    @staticmethod
    def _available(data: Any) -> list[str]:
        if isinstance(data, dict):
            return sorted(map(str, data))
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], dict):
            return sorted(map(str, data[0]))
        return []

    def _read(self, names: tuple[str, ...], output: Any, batch: Any) -> Any:
        for name in names:
            sources = (batch, output) if name in self.batch_first else (output, batch)
            for data in sources:
                found, value = self._lookup(data, name)
                if found:
                    return value
        wanted = " or ".join(repr(n) for n in names)
        raise KeyError(
            f"metric input {wanted} is neither in engine.state.output (keys {self._available(output)}) "
            f"nor in engine.state.batch (keys {self._available(batch)}); add it with a post-transform, set the "
            "handler's *_key argument or pass output_transform=monai.handlers.from_engine([...])"
        )

    def __call__(self, output: Any, batch: Any = None) -> tuple[Any, ...]:
        """Read every input; raise ``KeyError`` naming the keys that are available."""
        return tuple(self._read(names, output, batch) for names in self.keys)


class _KeyedMetricHandler(IgniteMetricHandler):
    """``IgniteMetricHandler`` that reads by key (see the module docstring) and never unrolls lists."""

    def __init__(
        self,
        metric_fn: Any,
        keys: Sequence[str | tuple[str, ...] | None],
        output_transform: Callable | None,
        batch_first: Sequence[str] = (),
    ) -> None:
        transform = EngineKeys(keys, batch_first) if output_transform is None else output_transform
        super().__init__(metric_fn=metric_fn, output_transform=transform, save_details=False)
        self._skip_unrolling = True  # lists of per-item tensors go to the MONAI metric as they are

    def iteration_completed(self, engine: Engine) -> None:
        """Feed one iteration's data to the metric (key lookup may fall back to ``engine.state.batch``)."""
        if isinstance(self._output_transform, EngineKeys):
            self.update(self._output_transform(engine.state.output, engine.state.batch))
        else:
            super().iteration_completed(engine)

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add ``(y_pred, y)`` to the metric."""
        if len(output) != 2:
            raise ValueError(f"{type(self).__name__}: output must be (y_pred, y), got {len(output)} items")
        self.metric_fn(*output)


class _OODHandler(_KeyedMetricHandler):
    metric_name = "auroc"

    def __init__(
        self,
        output_transform: Callable | None = None,
        score_key: str = OODKeys.SCORE.value,
        label_key: str = OODKeys.IS_OOD.value,
        tpr: float = 0.95,
        fpr_positive: Literal["ood", "id"] = "id",
    ) -> None:
        metric = OODScoreMetric(self.metric_name, tpr=tpr, fpr_positive=fpr_positive)
        super().__init__(metric, (score_key, label_key), output_transform, batch_first=(label_key,))


class OODAUROC(_OODHandler):
    """Image-level AUROC with OOD positive (0.5 = chance).

    Args:
        output_transform: maps ``engine.state.output`` to ``(scores, is_ood)``; ``None`` reads ``score_key`` and
            ``label_key`` (the score from the output first, the label from the batch first). Defaults to ``None``.
        score_key: key of the image scores (higher = more OOD). Defaults to ``"ood_score"``.
        label_key: key of the labels (1 = OOD, 0 = ID). Defaults to ``"is_ood"``.
        tpr: unused (FPR handlers only). Defaults to 0.95.
        fpr_positive: unused (FPR handlers only). Defaults to ``"id"``.
    """

    metric_name = "auroc"


class OODAUPRIn(_OODHandler):
    """Image-level AUPR-In: average precision with ID positive on the negated scores.

    Args:
        output_transform: as in :class:`OODAUROC`. Defaults to ``None``.
        score_key: key of the image scores. Defaults to ``"ood_score"``.
        label_key: key of the labels (1 = OOD). Defaults to ``"is_ood"``.
        tpr: unused. Defaults to 0.95.
        fpr_positive: unused. Defaults to ``"id"``.
    """

    metric_name = "aupr_in"


class OODAUPROut(_OODHandler):
    """Image-level AUPR-Out: average precision with OOD positive.

    Args:
        output_transform: as in :class:`OODAUROC`. Defaults to ``None``.
        score_key: key of the image scores. Defaults to ``"ood_score"``.
        label_key: key of the labels (1 = OOD). Defaults to ``"is_ood"``.
        tpr: unused. Defaults to 0.95.
        fpr_positive: unused. Defaults to ``"id"``.
    """

    metric_name = "aupr_out"


class OODFPR95(_OODHandler):
    """Image-level FPR at 95 % TPR (lower is better).

    With ``fpr_positive="id"`` (default) it is the fraction of OOD images accepted when 95 % of the ID images are
    accepted (the literature's FPR95, OpenOOD / NERO); with ``"ood"`` the fraction of ID images flagged when 95 %
    of the OOD images are flagged. See :func:`medood.metrics.fpr_at_tpr`.

    Args:
        output_transform: as in :class:`OODAUROC`. Defaults to ``None``.
        score_key: key of the image scores. Defaults to ``"ood_score"``.
        label_key: key of the labels (1 = OOD). Defaults to ``"is_ood"``.
        tpr: target true-positive rate. Defaults to 0.95.
        fpr_positive: ``"id"`` or ``"ood"``. Defaults to ``"id"``.
    """

    metric_name = "fpr95"


def _map_keys(map_key: str) -> str | tuple[str, ...]:
    """``ood_map`` falls back to ``pred``, where ``OODEvaluator`` keeps the stitched map."""
    return (map_key, "pred") if map_key == OODKeys.MAP.value else map_key


class _VoxelHandler(_KeyedMetricHandler):
    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add ``(maps, masks)`` or ``(maps, masks, foreground)``."""
        if len(output) not in (2, 3):
            raise ValueError(f"{type(self).__name__}: output must have 2 or 3 items, got {len(output)}")
        self.metric_fn(output[0], output[1], foreground=output[2] if len(output) == 3 else None)


class VoxelAP(_VoxelHandler):
    """Pooled voxel-level average precision over all cases of the run (MOOD's pixel metric).

    Args:
        max_voxels_per_case: seeded random voxels kept per case (``None`` = all). Defaults to 100 000.
        seed: sub-sampling seed. Defaults to 0.
        output_transform: maps the engine output to ``(maps, masks)`` or ``(maps, masks, foreground)``;
            ``None`` reads ``map_key``, ``mask_key`` and ``foreground_key``. Defaults to ``None``.
        map_key: key of the anomaly maps ``(1, *spatial)`` per item; the default falls back to ``"pred"``.
            Defaults to ``"ood_map"``.
        mask_key: key of the lesion masks. Defaults to ``"label"``.
        foreground_key: optional key of foreground (brain) masks restricting the voxels. Defaults to ``None``.
    """

    def __init__(
        self,
        max_voxels_per_case: int | None = 100_000,
        seed: int = 0,
        output_transform: Callable | None = None,
        map_key: str = OODKeys.MAP.value,
        mask_key: str = OODKeys.LABEL.value,
        foreground_key: str | None = None,
    ) -> None:
        metric = VoxelAPMetric(max_voxels_per_case=max_voxels_per_case, seed=seed)
        super().__init__(metric, (_map_keys(map_key), mask_key, foreground_key), output_transform)


class BestDice(_VoxelHandler):
    """The oracle best pooled Dice over thresholds, chosen on the test labels (an upper bound, as papers report).

    After a run, ``handler.metric_fn.threshold`` holds the threshold that achieved it.

    Args:
        max_voxels_per_case: seeded random voxels kept per case (``None`` = all). Defaults to 100 000.
        seed: sub-sampling seed. Defaults to 0.
        n_thresholds: ``None`` = exact over distinct scores, else quantile thresholds. Defaults to ``None``.
        output_transform: as in :class:`VoxelAP`. Defaults to ``None``.
        map_key: key of the anomaly maps (the default falls back to ``"pred"``). Defaults to ``"ood_map"``.
        mask_key: key of the lesion masks. Defaults to ``"label"``.
        foreground_key: optional key of foreground masks. Defaults to ``None``.
    """

    def __init__(
        self,
        max_voxels_per_case: int | None = 100_000,
        seed: int = 0,
        n_thresholds: int | None = None,
        output_transform: Callable | None = None,
        map_key: str = OODKeys.MAP.value,
        mask_key: str = OODKeys.LABEL.value,
        foreground_key: str | None = None,
    ) -> None:
        metric = BestDiceMetric(max_voxels_per_case=max_voxels_per_case, seed=seed, n_thresholds=n_thresholds)
        super().__init__(metric, (_map_keys(map_key), mask_key, foreground_key), output_transform)
