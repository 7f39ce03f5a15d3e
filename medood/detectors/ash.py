"""ASH (activation shaping) of Djurisic et al.: prune the penultimate activations to their top ones, reshape, energy.

Algorithm (per sample, on the penultimate activations ``a`` of ``D`` units, i.e. after global pooling, where the
paper and OpenOOD apply it; ``k = D - round(D p / 100)`` units are kept, ``p`` the pruning percentile):

* keep the ``k`` largest activations, zero the rest (``a_p``);
* **ASH-P** (``variant="p"``): use ``a_p``;
* **ASH-B** (``variant="b"``): the kept units all get ``s1 / k`` with ``s1 = sum(a)`` (binarise, keeping the sum);
* **ASH-S** (``variant="s"``): ``a_p * exp(s1 / s2)`` with ``s2 = sum(a_p)`` (sharpen);
* logits ``W a' + b`` through the unchanged head, and their energy ``-logsumexp``.

Defaults: ASH-S at ``p = 90`` (the official ImageNet ResNet-50 setting, ``method: "ash_s@90"`` in the official
code's ``config/imagenet_config.yml``; OpenOOD v1.5's
``configs/postprocessors/ash.yml`` also uses percentile 90, with its network wrapper applying ASH-B). Three
registry entries, so that all three appear in the post-hoc table: ``ash`` (ASH-S), ``ash_b`` and ``ash_p``.
No fit: ASH works on each sample alone, on the features of the shared backbone pass (no second pass).
It assumes non-negative (post-ReLU) activations, as the paper; ``s2 = 0`` (all kept units zero) gives a
factor ``exp(0) = 1``.

Score: higher = more OOD: the detector returns ``-logsumexp(W a' + b)``.

References:
    Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution Detection",
    ICLR 2023, https://arxiv.org/abs/2209.09858 (code: https://github.com/andrijazz/ash; pytorch-ood 0.4.0
    ``detector/ash.py``; OpenOOD v1.5 ``openood/networks/ash_net.py``)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, ClassifierDetector, energy_of_features
from medood.detectors.registry import register_detector
from medood.networks.hooks import flatten_features

__all__ = ["ASHBDetector", "ASHDetector", "ASHPDetector", "kept_units", "sharpening", "top_units"]

_VARIANTS = ("s", "b", "p")


def kept_units(d: int, percentile: float) -> int:
    """Units kept by pruning percentile ``p``: ``D - round(D p / 100)`` (at least 1)."""
    return max(1, d - round(d * percentile / 100.0))


def top_units(features: Tensor, percentile: float) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's ``k`` largest entries and their indices ``(B, k)``, and the row sums ``s1 = sum(features)``.

    Returns:
        ``(values (B, k), indices (B, k), total (B,))``.
    """
    values, idx = features.topk(kept_units(features.shape[1], percentile), dim=1)
    return values, idx, features.sum(dim=1)


def sharpening(total: Tensor, kept: Tensor) -> Tensor:
    """``exp(s1 / s2)`` per row, with the exponent ``0`` where ``s2 = 0``."""
    safe = torch.where(kept != 0, kept, torch.ones_like(kept))
    return torch.exp(torch.where(kept != 0, total / safe, torch.zeros_like(total)))


@register_detector("ash")
class ASHDetector(ClassifierDetector):
    """Energy of the logits recomputed from shaped (pruned, then rescaled or binarised) penultimate activations.

    Args:
        model: the trained classifier; optional with ``score_features``.
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        percentile: pruning percentile ``p`` in ``[0, 100)``. Defaults to 90.
        variant: ``"s"`` (ASH-S), ``"b"`` (ASH-B) or ``"p"`` (ASH-P). Defaults to the class's variant.
        weight: ``(C, D)`` head weight, when no model is given.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = ASHDetector(model=classifier)  # ASH-S@90
        scores = det.score(images).image_score  # (B,), higher = more OOD
    """

    requires_fit = False
    required_features = (FEATURES,)
    needs_head = True
    default_variant = "s"

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        percentile: float = 90.0,
        variant: str | None = None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        variant = self.default_variant if variant is None else variant.lower().removeprefix("ash-")
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if not 0.0 <= percentile < 100.0:
            raise ValueError(f"percentile must be in [0, 100), got {percentile}")
        self.variant = variant
        self.percentile = float(percentile)

    def shape(self, features: Tensor) -> Tensor:
        """The shaped activations ``a'`` of features ``(B, D)``."""
        values, idx, s1 = top_units(features, self.percentile)
        if self.variant == "b":
            return torch.zeros_like(features).scatter_(1, idx, (s1 / idx.shape[1])[:, None].expand_as(values))
        pruned = torch.zeros_like(features).scatter_(1, idx, values)
        if self.variant == "p":
            return pruned
        return pruned * sharpening(s1, values.sum(dim=1))[:, None]

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Score ``{"features": (B, D)}``: the energy of the logits of the shaped activations."""
        f = flatten_features(self.get(features, FEATURES)).to(self.head_weight)
        return OODOutput(image_score=energy_of_features(self.shape(f), self.head_weight, self.head_bias))


@register_detector("ash_b")
class ASHBDetector(ASHDetector):
    """ASH-B: the kept top-``k`` activations all set to ``sum(a) / k`` (see :class:`ASHDetector`)."""

    default_variant = "b"


@register_detector("ash_p")
class ASHPDetector(ASHDetector):
    """ASH-P: the top-``k`` activations kept as they are, the rest zeroed (see :class:`ASHDetector`)."""

    default_variant = "p"
