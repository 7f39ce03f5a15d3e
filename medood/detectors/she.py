"""SHE (simplified Hopfield energy) of Zhang et al.: similarity to the stored pattern of the predicted class.

Algorithm (penultimate features ``f``, logits ``l``):

1. stored patterns: per class ``c``, the mean penultimate feature ``S_c`` of the training samples of class ``c``
   that the classifier classifies **correctly** (label ``c`` and ``argmax l = c``);
2. for a test input with predicted class ``y = argmax l``, the simplified Hopfield energy is the inner product
   ``SHE(x) = <f, S_y>`` (OpenOOD v1.5's default ``metric: inner_product``), higher for in-distribution inputs.

A class without any correctly classified training sample (possible on tiny or hard training sets) falls back to
the mean of all its training samples, with a warning; a class never seen in training gets a zero pattern. The
fit streams per-class sums (float64, memory ``O(C D)``).

Score: higher = more OOD: the detector returns ``-<f, S_y>``.

References:
    Zhang, Fu, Li, Hu, Cao & Sun, "Out-of-Distribution Detection based on In-Distribution Data Patterns
    Memorization with Modern Hopfield Energy", ICLR 2023, https://openreview.net/forum?id=KkazG4lgKL
    (code: https://github.com/zjs975584714/SHE_ood_detection; pytorch-ood 0.4.0 ``detector/she.py``;
    OpenOOD v1.5 ``openood/postprocessors/she_postprocessor.py``)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medood.detectors._stats import ClassSums, class_labels
from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["SHEDetector"]

logger = logging.getLogger(__name__)


@register_detector("she")
class SHEDetector(ClassifierDetector):
    """Inner product of the feature with the mean correctly-classified training feature of its predicted class.

    Args:
        model: the trained classifier; optional with ``fit_features`` / ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``); its input is the feature.
        use_predicted_labels: fit on ``argmax(logits)`` when a batch has no labels (every sample then counts as
            correctly classified); otherwise that is an error. Defaults to ``False``.
        weight: ``(C, D)`` head weight, to recompute logits from features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Attributes:
        patterns: ``(C, D)`` stored pattern ``S_c`` of every class of the head.

    Example::

        det = SHEDetector(model=classifier).fit(train_loader)  # batches {"image", "label"}
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    required_features = (FEATURES, LOGITS)
    patterns: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        use_predicted_labels: bool = False,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        self.use_predicted_labels = bool(use_predicted_labels)
        self.register_buffer("patterns", torch.empty(0, 0))
        self.reset_fit()

    def reset_fit(self) -> None:
        """Clear the per-class sums."""
        self._correct = ClassSums()
        self._all = ClassSums()
        self._num_classes = 0

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Add one batch: per-class sums of all samples and of the correctly classified ones."""
        f = flatten_features(self.get(features, FEATURES))
        logits = self.get(features, LOGITS)
        y = class_labels(logits, labels, type(self).__name__, self.use_predicted_labels).to(f.device)
        correct = logits.argmax(dim=1).to(f.device) == y
        self._num_classes = max(self._num_classes, logits.shape[1])
        self._all.update(f, y)
        if bool(correct.any()):  # a batch may hold no correctly classified sample
            self._correct.update(f[correct], y[correct])

    def finalize_fit(self) -> None:
        """One pattern per class (see the module docstring for classes without correct samples)."""
        if self._all.sums is None or self._all.counts is None:
            raise ValueError("SHEDetector.finalize_fit: no training features were seen")
        c = max(self._num_classes, self._all.sums.shape[0])
        patterns = self._all.sums.new_zeros(c, self._all.sums.shape[1])
        counts = self._all.counts
        patterns[: counts.shape[0]] = self._all.sums / counts.clamp_min(1)[:, None]
        correct = self._correct.counts
        if correct is not None and self._correct.sums is not None:
            have = correct > 0
            patterns[: correct.shape[0]][have] = self._correct.sums[have] / correct[have, None]
            missing = [i for i in range(c) if i >= correct.shape[0] or not bool(correct[i] > 0)]
        else:
            missing = list(range(c))
        if missing:
            logger.warning(
                "SHE: classes %s have no correctly classified training sample; using the mean of all their samples"
                " (zero for classes never seen)",
                missing,
            )
        self.patterns = patterns.float().contiguous().to(self.device)
        self.reset_fit()

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D), "logits": (B, C)}``: ``-<f, S_argmax(logits)>``."""
        self.check_fitted()
        f = flatten_features(self.get(features, FEATURES)).to(self.patterns)
        pred = self.get(features, LOGITS).argmax(dim=1).to(f.device)
        return OODOutput(image_score=-(f * self.patterns[pred]).sum(dim=1))
