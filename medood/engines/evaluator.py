"""An evaluator that adds the volume score and the slice scores to MONAI's ``SupervisedEvaluator`` output."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import Tensor

from medood.inferers.ood_inferer import OODInferer
from medood.utils.enums import OODKeys

__all__ = ["OODEvaluator"]


class OODEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` whose output also holds ``ood_score`` and ``slice_scores`` for every item.

    The network is a detector whose forward returns an anomaly map ``(B, 1, *S)`` (run by the inferer, an
    :class:`~medood.inferers.OODInferer`) or image scores ``(B,)``. The scores are computed once, here, by the
    inferer: the volume score from the map on the preprocessed grid (the detector's ``map_score`` over its
    foreground), the slice scores from each item's map after the postprocessing (``Invertd``), i.e. along the
    input file's voxel axes. Writers and metric handlers read them from the output.

    Ground-truth case labels stay in the batch (e.g. ``is_ood`` / ``is_anomalous``); thresholded decisions are
    the writer's business (:class:`~medood.handlers.OODResultWriter`, column ``flagged``).

    Args:
        *args: as ``SupervisedEvaluator`` (``device``, ``val_data_loader``, ``network``, ...).
        **kwargs: as ``SupervisedEvaluator``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scorer = self.inferer if isinstance(self.inferer, OODInferer) else OODInferer()
        # the volume score is added while the output is still batched (FORWARD_COMPLETED); the slice scores
        # after decollation and postprocessing, which MONAI registers on MODEL_COMPLETED before this handler
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._add_volume_scores)
        self.add_event_handler(IterationEvents.MODEL_COMPLETED, self._add_slice_scores)

    def _add_volume_scores(self, engine: Any) -> None:
        output = engine.state.output
        pred = output[Keys.PRED]
        if not isinstance(pred, Tensor):
            raise TypeError(f"OODEvaluator expects the network to return a tensor, got {type(pred).__name__}")
        with torch.no_grad():
            image = output[Keys.IMAGE]
            score = pred.float() if pred.ndim == 1 else self.scorer.inferred_score(pred, image, self.network)
        output[OODKeys.SCORE.value] = score

    def _add_slice_scores(self, engine: Any) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        with torch.no_grad():
            for item in items:
                pred = item.get(Keys.PRED)
                if not isinstance(pred, Tensor) or pred.ndim < 3:
                    continue
                batched = pred if isinstance(engine.state.output, dict) else pred[None]
                scores = self.scorer.slice_scores(torch.as_tensor(batched).float())
                item[OODKeys.SLICE_SCORES.value] = (
                    scores if isinstance(engine.state.output, dict) else {ax: v[0] for ax, v in scores.items()}
                )
