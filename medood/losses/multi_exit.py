"""The multi-exit classification loss: a weighted sum of every exit's cross-entropy.

``L = sum_e w_e * CE(logits_e, y)``; MECAM trains its four exits with ``w = (0.25, 0.5, 0.75, 1.0)``
(methods.md §1.3). Two interfaces of the same loss:

* :class:`MultiExitLoss` ``(pred, label)``: for ``SupervisedTrainer``-style trainers whose network returns the
  exits' logits as a tuple, final exit last (:func:`medood.engines.classifier.train_classifier`);
* :class:`MultiExitStageLoss` ``(network, inputs, targets) -> (loss, outputs)``: the stage-loss interface of
  :class:`~medood.engines.StageTrainer`, used by a detector's declared training stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MECAM_EXIT_WEIGHTS", "MultiExitLoss", "MultiExitStageLoss"]

#: The exit weights of the MECAM code, shallowest exit first.
MECAM_EXIT_WEIGHTS = (0.25, 0.5, 0.75, 1.0)


class MultiExitLoss(nn.Module):
    """``sum_e w_e * loss(logits_e, y)`` over the exits of a multi-exit classifier.

    Args:
        weights: one weight per exit, in the order the network returns them. Defaults to 1 for every exit.
        loss: the per-exit loss ``loss(logits, label)``. Defaults to ``nn.CrossEntropyLoss()``.

    Raises:
        ValueError: an empty or negative weight list.

    Example::

        loss = MultiExitLoss(weights=MECAM_EXIT_WEIGHTS)
        value = loss(network(images), labels)  # network returns 4 exit logits
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
        target = target.reshape(-1).long() if target.ndim > 1 and target.shape[-1] == 1 else target.long()
        total = torch.zeros((), device=exits[0].device)
        for w, z in zip(weights, exits, strict=True):
            total = total + w * self.loss(z, target)
        return total


class MultiExitStageLoss(nn.Module):
    """:class:`MultiExitLoss` with the stage-loss interface ``loss(network, inputs, targets) -> (loss, outputs)``.

    Args:
        weights: one weight per exit. Defaults to :data:`MECAM_EXIT_WEIGHTS`.
        label_smoothing: cross-entropy label smoothing. Defaults to 0.

    The outputs hold the final exit's logits (``pred``) and the batch accuracy of the final exit (``acc``).
    """

    def __init__(self, weights: Sequence[float] = MECAM_EXIT_WEIGHTS, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.criterion = MultiExitLoss(weights, nn.CrossEntropyLoss(label_smoothing=label_smoothing))

    def forward(self, network: nn.Module, inputs: Tensor, targets: Tensor | None = None) -> tuple[Tensor, dict]:
        """Run ``network(inputs)`` (a tuple of exit logits) and weigh every exit's cross-entropy with ``targets``.

        Raises:
            ValueError: no class labels in the batch.
        """
        if targets is None:
            raise ValueError("the multi-exit classifier trains on class labels: the batch needs a 'label' key")
        exits = network(inputs)
        loss = self.criterion(exits, targets)
        final = (exits if isinstance(exits, Tensor) else exits[-1]).detach()
        with torch.no_grad():
            acc = (final.argmax(1) == targets.reshape(-1).to(final.device)).float().mean()
        return loss, {"pred": final, "acc": acc}
