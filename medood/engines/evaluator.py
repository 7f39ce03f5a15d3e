"""An evaluator that adds OOD scores to MONAI's ``SupervisedEvaluator`` output."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import Tensor

from medood.detectors.base import OODDetector
from medood.inferers.ood_inferer import OODSlidingWindowInferer
from medood.inferers.reduce import reduce_map
from medood.utils.enums import OODKeys

__all__ = ["OODEvaluator"]


class OODEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` whose output also holds ``ood_score`` for every item.

    The network is a detector (or any module) whose forward returns an anomaly map ``(B, 1, *S)`` (stitched by
    the inferer, usually :class:`~medood.inferers.OODSlidingWindowInferer`) or image scores ``(B,)``. The volume
    score is the inferer's reduction of the map over the foreground (the inferer's ``foreground_fn``, else the
    detector's ``foreground_mask``). Postprocessing (``Invertd``) and handlers run afterwards as usual.

    Ground-truth case labels stay in the batch (e.g. ``is_ood`` / ``is_anomalous``); thresholded decisions are
    the writer's business (:class:`~medood.handlers.OODResultWriter`, column ``flagged``).

    Args:
        *args: as ``SupervisedEvaluator`` (``device``, ``val_data_loader``, ``network``, ...).
        **kwargs: as ``SupervisedEvaluator``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # scores must be added while the output is still batched: decollation and postprocessing (Invertd)
        # run on MODEL_COMPLETED, after FORWARD_COMPLETED
        self.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._add_scores)

    def _foreground(self, inputs: Tensor) -> Tensor | None:
        if isinstance(self.inferer, OODSlidingWindowInferer) and self.inferer.foreground_fn is not None:
            return self.inferer.foreground(inputs)
        net = getattr(self.network, "module", self.network)
        if isinstance(net, OODDetector):
            return net.foreground_mask(inputs)
        return None

    def _add_scores(self, engine: Any) -> None:
        output = engine.state.output
        pred = output[Keys.PRED]
        if not isinstance(pred, Tensor):
            raise TypeError(f"OODEvaluator expects the network to return a tensor, got {type(pred).__name__}")
        with torch.no_grad():
            if pred.ndim == 1:
                score = pred.float()
            else:
                mask = self._foreground(output[Keys.IMAGE])
                if isinstance(self.inferer, OODSlidingWindowInferer):
                    score = self.inferer.volume_score(pred, mask)
                else:
                    score = reduce_map(pred, "max", mask=mask)
        output[OODKeys.SCORE.value] = score
