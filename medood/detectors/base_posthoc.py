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

__all__ = ["ClassifierDetector", "LogitDetector"]

FEATURES = OODKeys.FEATURES.value
LOGITS = OODKeys.LOGITS.value


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
