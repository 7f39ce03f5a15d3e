"""ODIN of Liang et al.: temperature scaling plus a small input perturbation that raises the top softmax score.

Algorithm, per input ``x`` (needs the host model and input gradients):

1. ``y_hat = argmax f(x)``; loss ``L = CE(f(x) / T, y_hat)`` (minus the log temperature-scaled max-softmax);
2. ``x' = x - eps * sign(dL/dx)`` (a step that *increases* the temperature-scaled top probability; the sign is
   taken as in the NERO code, ``+1`` where the gradient is ``>= 0``);
3. ``S(x) = max_c softmax(f(x') / T)_c``, which rises more for in-distribution inputs.

Defaults follow the NERO code (``T = 100``, ``eps = 0.0005``), not the ODIN paper's ``T = 1000`` and tuned
``eps``. As in the NERO code the gradient is not divided by the input normalisation's standard deviation.

:meth:`ODINDetector.score` runs the perturbation (two forward passes and one backward pass per batch); the class
sets ``needs_input_grad = True``, so batch scorers (:func:`medood.detectors.posthoc.score_many`) call it on the
images.
:meth:`ODINDetector.score_features` cannot perturb precomputed features: it returns the temperature-scaled
MSP only (ODIN without input pre-processing) and logs a one-time warning.

Score: higher = more OOD, so the detector returns ``-S(x)``.

References:
    Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in Neural
    Networks", ICLR 2018, https://arxiv.org/abs/1706.02690 (code: https://github.com/facebookresearch/odin)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import LOGITS, LogitDetector
from medood.detectors.registry import register_detector
from medood.utils.batch import unpack_batch

__all__ = ["ODINDetector"]

logger = logging.getLogger(__name__)


@register_detector("odin")
class ODINDetector(LogitDetector):
    """Negative temperature-scaled max-softmax after ODIN's input perturbation.

    Args:
        model: the trained classifier; needed by :meth:`score` (``score_features`` works without it).
        head: name of its final linear layer (``None`` = the last ``nn.Linear``).
        temperature: softmax temperature ``T``. Defaults to 100 (the NERO code; the ODIN paper uses 1000).
        epsilon: perturbation magnitude, in the units of the model's input. Defaults to 0.0005 (NERO code).
        weight: ``(C, D)`` head weight, to recompute logits from features without a model.
        bias: ``(C,)`` head bias. Defaults to zeros.

    Example::

        det = ODINDetector(model=classifier)
        scores = det.score(images).image_score  # (B,), higher = more OOD; needs gradients w.r.t. images
    """

    requires_fit = False
    needs_input_grad = True
    required_features = (LOGITS,)
    model: nn.Module | None

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        temperature: float = 100.0,
        epsilon: float = 0.0005,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__(model=model, head=head, temperature=temperature, weight=weight, bias=bias)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)
        self._warned = False

    def _logits(self, x: Tensor) -> Tensor:
        if self.model is None:
            raise ValueError("ODINDetector.score needs the host model: build it with model=...")
        out = self.model(x)
        if not isinstance(out, Tensor):
            raise TypeError(f"ODIN needs a model that returns a logits tensor, got {type(out).__name__}")
        return out.float()

    def perturb(self, x: Tensor) -> Tensor:
        """ODIN's input pre-processing: ``x - eps * sign(d CE(f(x)/T, argmax f(x)) / dx)``.

        Gradients flow only to the input (the model's parameter ``.grad`` are left untouched), even when the
        caller is inside ``torch.no_grad()``.
        """
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            logits = self._logits(x_in)
            loss = F.cross_entropy(logits / self.temperature, logits.argmax(dim=1))
            (grad,) = torch.autograd.grad(loss, x_in)
        step = torch.where(grad >= 0, 1.0, -1.0).to(x.dtype)
        return (x.detach() - self.epsilon * step).detach()

    def score(self, batch: Tensor | Mapping[str, Any] | tuple | list) -> OODOutput:
        """Perturb the images, then score them (higher = more OOD)."""
        x, _ = unpack_batch(batch)
        as_tensor = getattr(x, "as_tensor", None)  # MONAI MetaTensor -> torch.Tensor
        x = as_tensor() if callable(as_tensor) else x
        self._check_input(x)
        self.check_fitted()
        if self.model is not None:
            param = next(self.model.parameters(), None)
            x = x.to(param.device if param is not None else self.device)
        x_pert = self.perturb(x)
        with torch.no_grad():
            logits = self._logits(x_pert)
        return OODOutput(image_score=self.scaled_msp(logits, self.temperature))

    @staticmethod
    def scaled_msp(logits: Tensor, temperature: float) -> Tensor:
        """``-max softmax(logits / T)`` of raw logits ``(B, C)``."""
        return -torch.softmax(logits.float() / temperature, dim=1).amax(dim=1)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Temperature-scaled MSP of precomputed logits, **without** the input perturbation.

        Precomputed features cannot be perturbed, so this is ODIN's temperature scaling only; use
        :meth:`score` on images for the full method.
        """
        if not self._warned:
            logger.warning(
                "ODINDetector.score_features cannot perturb the input: returning the temperature-scaled MSP "
                "(T=%g) only; call score(images) for full ODIN",
                self.temperature,
            )
            self._warned = True
        return OODOutput(image_score=self.scaled_msp(self.get(features, LOGITS), self.temperature))
