"""Stage losses for :class:`~medood.engines.StepTrainer`: ``loss(network, inputs, targets) -> (loss, outputs)``."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ReconstructionLoss"]


class ReconstructionLoss(nn.Module):
    """Self-supervised reconstruction: ``mean |network(x) - x|`` (L1) or squared error (L2).

    Args:
        kind: ``"l1"`` or ``"l2"``. Defaults to ``"l1"``.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
        self.kind = kind

    def forward(self, network: nn.Module, inputs: Tensor, targets: Tensor | None = None) -> tuple[Tensor, dict]:
        """Reconstruct ``inputs`` and compare with them (``targets`` is ignored)."""
        recon = network(inputs)
        diff = recon - inputs
        loss = diff.abs().mean() if self.kind == "l1" else diff.pow(2).mean()
        return loss, {"pred": recon.detach()}
