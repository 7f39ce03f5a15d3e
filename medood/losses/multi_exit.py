"""The multi-exit classification loss: a weighted sum of every exit's cross-entropy.

``L = sum_e w_e * CE(logits_e, y)``; MECAM trains its four exits with ``w = (0.25, 0.5, 0.75, 1.0)``
(methods.md §1.3). Two interfaces of the same loss:

* :class:`~medood.losses.classification.MultiExitLoss` ``(pred, label)``: for ``SupervisedTrainer``-style
  trainers whose network returns the exits' logits as a tuple, final exit last
  (:func:`medood.engines.classifier.train_classifier`);
* :class:`MultiExitStageLoss` ``(network, inputs, targets) -> (loss, outputs)``: the stage-loss interface of
  :class:`~medood.engines.StageTrainer`, used by a detector's declared training stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medood.losses.classification import MultiExitLoss

__all__ = ["MECAM_EXIT_WEIGHTS", "MultiExitStageLoss"]

#: The exit weights of the MECAM code, shallowest exit first.
MECAM_EXIT_WEIGHTS = (0.25, 0.5, 0.75, 1.0)


class MultiExitStageLoss(nn.Module):
    """The weighted multi-exit cross-entropy with the stage-loss interface ``loss(network, inputs, targets)``.

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
