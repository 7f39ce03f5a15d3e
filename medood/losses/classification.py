"""Classification losses for :func:`medood.engines.classifier.train_classifier` (``loss_function=``).

The trainer calls ``loss_function(pred, label)`` where ``pred`` is the network's output: logits ``(B, C)``, or
for a multi-exit network a list / tuple of exit logits, the final exit last. The default is
``nn.CrossEntropyLoss()``; :class:`MultiExitLoss` trains every exit of a multi-exit network at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MultiExitLoss"]


class MultiExitLoss(nn.Module):
    """Weighted sum over the exits of a multi-exit classifier of one per-exit loss: ``sum_i w_i * loss(z_i, y)``.

    Args:
        weights: one weight per exit, in the order the network returns its exits. Defaults to 1 for every exit.
        loss: the per-exit loss ``loss(logits, label)``. Defaults to ``nn.CrossEntropyLoss()``.

    Raises:
        ValueError: a negative weight or no weight.

    Example::

        loss = MultiExitLoss(weights=[0.25, 0.25, 0.5])  # three exits, the final one counts double
        value = loss([z1, z2, z3], labels)
    """

    def __init__(self, weights: Sequence[float] | None = None, loss: nn.Module | None = None) -> None:
        super().__init__()
        if weights is not None:
            if len(weights) == 0:
                raise ValueError("weights must hold one weight per exit, got none")
            if any(w < 0 for w in weights):
                raise ValueError(f"exit weights must be >= 0, got {list(weights)}")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()

    def forward(self, pred: Sequence[Tensor] | Tensor, target: Tensor) -> Tensor:
        """The weighted sum of the exits' losses (a single tensor counts as one exit).

        Raises:
            ValueError: the number of exits differs from the number of weights.
        """
        exits = [pred] if isinstance(pred, Tensor) else list(pred)
        weights = self.weights if self.weights is not None else [1.0] * len(exits)
        if len(weights) != len(exits):
            raise ValueError(f"the network returned {len(exits)} exits but {len(weights)} weights were given")
        total = torch.zeros((), device=exits[0].device)
        for w, z in zip(weights, exits, strict=True):
            total = total + w * self.loss(z, target)
        return total
