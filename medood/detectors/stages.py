"""Training stages declared as data: what a trained detector asks :mod:`medood.engines` to train.

A detector that owns networks (autoencoder, VQ-VAE tokenizer, token transformers, ...) returns its stages from
:meth:`~medood.detectors.base.OODDetector.training_stages`, in order. Each names the submodule it trains, the
stage loss (a class of :mod:`medood.losses` with the ``loss(network, inputs, targets) -> (loss, outputs)``
interface), the batch keys and what the stage trains on, plus the defaults ``detector.fit`` uses. The engines
(:class:`~medood.engines.StageTrainer`, :func:`~medood.engines.fit.fit_detector`) turn a stage into an Ignite
trainer; the bundles' stage configs build the same :class:`~medood.engines.StageTrainer` with their own
optimiser, schedule, validation and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["STAGE_DATA", "DeclaresStages", "TrainingStage"]

#: What a stage can train on. ``images``: the loader's batches as they are; ``slices``: the 2D foreground slices
#: of the images with their normalised position (``{"image", "position"}``), padded to the detector's stride;
#: ``tokens``: those slices tokenized once by the detector's (already trained) tokenizer (``{"tokens",
#: "position"}``); ``ood_pairs``: the images with a ``"target"`` each (themselves) plus auxiliary OOD images
#: with their nearest same-class in-distribution image as target (the heatmap decoder;
#: :func:`medood.engines.heatmap.ood_pairs`).
STAGE_DATA = ("images", "slices", "tokens", "ood_pairs")


@dataclass(frozen=True)
class TrainingStage:
    """One training stage of a detector.

    Attributes:
        name: the stage name (``"tokenizer"``, ``"detector"``, ``"inpainter"``, ``"prior"``, ``"autoencoder"``).
        network: attribute path of the trained submodule in the detector (``"tokenizer"``, ``"net"``).
        loss: the loss class; called as ``loss(**loss_kwargs)``.
        loss_kwargs: its constructor arguments.
        data: one of :data:`STAGE_DATA`.
        input_key: batch key of the network input. Defaults to ``"image"``.
        target_key: batch key handed second to the loss (``None`` = nothing; several keys = a dict of them).
            Defaults to ``None``.
        epochs: epochs ``detector.fit`` runs. Defaults to 20.
        lr: Adam learning rate of ``detector.fit``. Defaults to 1e-3.
        batch_size: batch size of the ``slices`` / ``tokens`` / ``ood_pairs`` data ``detector.fit`` builds.
            Defaults to 32.
        optimizer_kwargs: further Adam arguments of ``detector.fit`` (e.g. ``{"betas": (0.5, 0.999)}``).
            Defaults to none.
    """

    name: str
    network: str
    loss: Callable[..., nn.Module]
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data: str = "images"
    input_key: str = "image"
    target_key: str | tuple[str, ...] | None = None
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data not in STAGE_DATA:
            raise ValueError(f"stage {self.name!r}: data must be one of {STAGE_DATA}, got {self.data!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"stage {self.name!r}: epochs and batch_size must be >= 1 and lr > 0")

    def make_loss(self, **overrides: Any) -> nn.Module:
        """A new loss instance (``loss_kwargs`` updated with ``overrides``, e.g. a validation seed)."""
        return self.loss(**{**dict(self.loss_kwargs), **overrides})


class DeclaresStages(nn.Module):
    """Mixin of :class:`~medood.detectors.base.OODDetector`: the stage declarations and their lookup."""

    def training_stages(self) -> tuple[TrainingStage, ...]:
        """The training stages of the detector's own networks, in order (none for post-hoc detectors)."""
        return ()

    def stage(self, name: str) -> TrainingStage:
        """The declared stage called ``name`` (``KeyError`` listing the stages if there is none)."""
        stages = {st.name: st for st in self.training_stages()}
        if name not in stages:
            raise KeyError(f"{type(self).__name__} has no training stage {name!r}; stages: {list(stages)}")
        return stages[name]

    def stage_network(self, name: str) -> nn.Module:
        """The submodule that stage ``name`` trains."""
        module: nn.Module = self
        for part in self.stage(name).network.split("."):
            module = getattr(module, part)
        return module
