"""An evaluator whose output holds each case's :class:`~medood.io.OODResult` (MONAI ``SupervisedEvaluator``)."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from torch import Tensor

from medood.inferers.ood_inferer import FOREGROUND_KEY, OODInferer
from medood.utils.enums import OODKeys

__all__ = ["RESULT_KEY", "OODEvaluator"]

#: the output key of each case's :class:`~medood.io.OODResult`
RESULT_KEY = "ood_result"


class OODEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` whose output holds, per item, ``ood_result`` (an :class:`~medood.io.OODResult`).

    The network is a detector (or a plain map network) run by the inferer, an
    :class:`~medood.inferers.OODInferer`: one :meth:`~medood.inferers.OODInferer.infer` call per batch gives the map
    (``pred``; the image scores ``(B,)`` for detectors without maps) and the image score (``ood_score``), with the
    batch's ``foreground`` (:class:`medood.transforms.Foregroundd`) when the preprocessing computed one. After the
    postprocessing (``Invertd``: maps on the input's grid), :meth:`~medood.inferers.OODInferer.case_result` turns
    each item into its result (case id, score, map, slice scores along the input file's voxel axes, label).
    Writers, calibration and metric handlers read ``ood_result`` (``ood_score`` stays for the metric handlers).

    Args:
        *args: as ``SupervisedEvaluator`` (``device``, ``val_data_loader``, ``network``, ...).
        label_key: the batch field with the ground truth (1 = OOD / anomalous) copied into the results.
        **kwargs: as ``SupervisedEvaluator``.
    """

    def __init__(self, *args: Any, label_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scorer = self.inferer if isinstance(self.inferer, OODInferer) else OODInferer()
        self.label_key = label_key
        self.inferer = self._forward  # type: ignore[assignment]  # MONAI calls engine.inferer(inputs, network)
        # the results are made after decollation and postprocessing, which MONAI registers on MODEL_COMPLETED
        self.add_event_handler(IterationEvents.MODEL_COMPLETED, self._add_results)

    def _forward(self, inputs: Tensor, network: Any, *args: Any, **kwargs: Any) -> Tensor:
        """One inferer pass: the engine output gets ``ood_score`` (and extras); returns the map or the scores."""
        batch = self.state.batch
        fg = batch.get(FOREGROUND_KEY) if isinstance(batch, dict) else None
        fg = fg.to(inputs.device) if isinstance(fg, Tensor) else None
        found = self.scorer.infer(inputs, network, *args, foreground=fg, with_slices=False, **kwargs)
        self.state.output[OODKeys.SCORE.value] = found.volume_score
        if fg is not None:  # decollated with the map, so the postprocessing (Invertd) can take it back too
            self.state.output[FOREGROUND_KEY] = batch[FOREGROUND_KEY]
        for name, value in (found.extras or {}).items():
            self.state.output[f"extra_{name}"] = value
        return found.anomaly_map if found.anomaly_map is not None else found.volume_score

    def _add_results(self, engine: Any) -> None:
        batched = isinstance(engine.state.output, dict)
        items = [engine.state.output] if batched else engine.state.output
        batch = engine.state.batch
        entries = batch if isinstance(batch, list) else [batch] * len(items)
        with torch.no_grad():
            for i, item in enumerate(items):
                if batched:  # no decollation (an evaluator without postprocessing): one result per batch row
                    continue
                extra = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
                item[RESULT_KEY] = self.scorer.case_result(item, extra, self.label_key)
