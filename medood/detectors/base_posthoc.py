"""Shared base of post-hoc detectors that sit on a trained classifier (MSP, Energy, NERO, ViM, ...).

The host classifier is *not* a submodule: a post-hoc detector's ``state_dict`` holds only what it fitted
(plus a copy of the head's weight and bias, which several methods need at scoring time). One backbone pass
through :class:`~medood.networks.hooks.FeatureExtractor` yields ``{"features": penultimate (B, D), "logits":
(B, C)}``, the keys every post-hoc detector consumes, so a single pass can feed them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from medood.detectors.base import OODDetector
from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.utils.enums import OODKeys

__all__ = ["ClassifierDetector", "LogitDetector", "MeanFeatureDetector", "RunningMean", "energy_of_features"]

FEATURES = OODKeys.FEATURES.value
LOGITS = OODKeys.LOGITS.value


class RunningMean:
    """Exact streaming mean of ``(B, D)`` rows (a float64 sum and a count; memory ``O(D)``)."""

    def __init__(self) -> None:
        self.n = 0
        self.total: Tensor | None = None

    def update(self, x: Tensor) -> None:
        """Add one batch ``(B, D)`` (an empty batch adds nothing)."""
        if x.shape[0] == 0:
            return
        s = x.detach().to(torch.float64).reshape(x.shape[0], -1).sum(dim=0)
        self.total = s if self.total is None else self.total + s
        self.n += x.shape[0]

    def mean(self, owner: str) -> Tensor:
        """The float64 mean; ``owner`` names the detector in the error when nothing was seen."""
        if self.total is None or self.n == 0:
            raise ValueError(f"{owner}.finalize_fit: no training features were seen")
        return self.total / self.n


def energy_of_features(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The energy OOD score ``-logsumexp(features @ W.T + b)`` of (possibly shaped) penultimate features ``(B, D)``.

    Shared by the detectors that modify the activations before the last layer (ReAct-like: DICE, ASH, SCALE).
    """
    return -torch.logsumexp(features @ weight.T + bias, dim=1)


class ClassifierDetector(OODDetector):
    """Base for post-hoc detectors on a classifier whose last layer is linear.

    Args:
        model: the trained classifier (2D or 3D). Optional when only ``fit_features`` / ``score_features``
            are used.
        head: name of the final ``nn.Linear`` in ``model.named_modules()``, or the layer itself; ``None``
            finds the last linear layer.
        weight: ``(C, D)`` head weight, when no model is given and the method needs it.
        bias: ``(C,)`` head bias, when no model is given. Defaults to zeros.

    Attributes:
        required_features: feature keys ``score_features`` reads.
        needs_head: the method needs the head's weight and bias.
    """

    requires_training = False
    required_features: ClassVar[tuple[str, ...]] = (LOGITS,)
    needs_head: ClassVar[bool] = False
    needs_model = True
    head_weight: Tensor
    head_bias: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # the host network is not part of the detector's state
        self._extractor: FeatureExtractor | None = None
        if model is not None:
            if isinstance(head, nn.Linear):
                linear = head
                head_name = next((n for n, m in model.named_modules() if m is head), None)
                if head_name is None:
                    raise ValueError("the given head layer is not a module of the given model")
            else:
                head_name, linear = find_linear_head(model, head)
            weight = linear.weight
            bias = linear.bias
            self._extractor = FeatureExtractor(model, {FEATURES: f"{head_name}:input"})
        if weight is not None:
            weight = weight.detach().float().clone()
            if weight.ndim != 2:
                raise ValueError(f"head weight must be (C, D), got shape {tuple(weight.shape)}")
            bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().clone().reshape(-1)
            if bias.shape[0] != weight.shape[0]:
                raise ValueError(f"head bias has {bias.shape[0]} entries but the weight has {weight.shape[0]} rows")
        elif self.needs_head:
            raise ValueError(f"{type(self).__name__} needs the classifier head: pass model=... or weight=/bias=")
        self.register_buffer("head_weight", weight if weight is not None else torch.empty(0, 0))
        self.register_buffer("head_bias", bias if bias is not None else torch.empty(0))

    # ------------------------------------------------------------------ features
    @property
    def has_head(self) -> bool:
        """Whether the head's weight and bias are known."""
        return self.head_weight.numel() > 0

    def extract_features(self, x: Tensor) -> dict[str, Tensor]:
        """One pass through the host classifier: ``{"features": (B, D), "logits": (B, C)}``."""
        if self._extractor is None:
            raise ValueError(f"{type(self).__name__} was built without a model: use fit_features / score_features")
        feats = self._extractor(x)
        feats[FEATURES] = flatten_features(feats[FEATURES]).float()
        feats[LOGITS] = feats[LOGITS].float()
        return feats

    def head_logits(self, features: Tensor) -> Tensor:
        """Logits recomputed from (possibly modified) penultimate features: ``features @ W.T + b``."""
        if not self.has_head:
            raise ValueError(f"{type(self).__name__} needs the classifier head weight to recompute logits")
        return features @ self.head_weight.T + self.head_bias

    def get(self, features: Mapping[str, Tensor], key: str) -> Tensor:
        """Fetch ``features[key]`` (logits are recomputed from the penultimate features when missing)."""
        if key in features:
            return features[key].float()
        if key == LOGITS and FEATURES in features and self.has_head:
            return self.head_logits(flatten_features(features[FEATURES].float()))
        raise KeyError(f"{type(self).__name__} needs the feature {key!r}; got {sorted(features)}")

    def _check_input(self, x: Tensor) -> None:
        # any classifier input (2D or 3D images, or a flat vector for toy models) is the host model's business
        if x.ndim < 2:
            raise ValueError(f"expected a batch (B, ...), got shape {tuple(x.shape)}")


class LogitDetector(ClassifierDetector):
    """Base of the training-free detectors that score a classifier's softmax / logits with a temperature.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        temperature: softmax temperature ``T``. Defaults to 1.
        weight: ``(C, D)`` head weight, to recompute logits from penultimate features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.
    """

    requires_fit = False

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        temperature: float = 1.0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)


class MeanFeatureDetector(ClassifierDetector):
    """Base of the detectors whose fit is the mean training feature (DICE, fDBD): a streaming running mean."""

    def reset_fit(self) -> None:
        """Clear the running mean."""
        self._mean = RunningMean()

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Add one batch of ``{"features": (B, D)}`` to the running mean (labels are not used)."""
        f = flatten_features(self.get(features, FEATURES))
        if self.has_head and f.shape[1] != self.head_weight.shape[1]:
            raise ValueError(f"features have {f.shape[1]} dims but the head expects {self.head_weight.shape[1]}")
        self._mean.update(f)

    def fitted_mean(self) -> Tensor:
        """The float64 mean of the features seen since :meth:`reset_fit`."""
        return self._mean.mean(type(self).__name__)
