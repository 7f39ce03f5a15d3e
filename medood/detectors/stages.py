"""Training stages declared as data: what a trained detector asks :mod:`medood.engines` to train.

A detector that owns networks (autoencoder, VQ-VAE tokenizer, token transformers, ...) returns its stages from
:meth:`~medood.detectors.base.OODDetector.training_stages`, in order. Each names the submodule it trains, the
stage loss (a class of :mod:`medood.losses` with the ``loss(network, inputs, targets) -> (loss, outputs)``
interface), the batch keys, the **data builder** of its training batches (defined next to the method: the
restoration detectors' slices and tokens in :mod:`~medood.detectors.base_restoration`, the heatmap decoder's OOD
pairs in :mod:`~medood.detectors.heatmap_data`), plus the defaults of an in-memory fit. The engines
(:class:`~medood.engines.StageTrainer`, :func:`~medood.engines.fit.fit_detector`) turn a stage into an Ignite
trainer; ``detector.fit(loader, trainer=medood.engines.fit_detector)`` hands the stages to that function (the
detector layer never imports the engines, and nothing is registered globally); the bundles' stage configs build
the same :class:`~medood.engines.StageTrainer` with their own optimiser, schedule, validation and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DeclaresStages", "StageData", "Trainer", "TrainingStage", "chunk_batches", "image_batches"]

#: a stage's data builder: ``build_data(detector, stage, images, batch_size, device, **options)`` -> in-memory
#: training batches, from the loader's image batches ``[{"image": (B, C, *S)[, "label"]}, ...]``; ``options`` are
#: the fit's ``stage_options`` (e.g. the heatmap decoder's ``aux_images``), ignored by builders that need none.
StageData = Callable[..., list[dict[str, Tensor]]]
#: the training step a caller hands to ``detector.fit``: ``trainer(detector, loader, **options)`` trains the stages
#: (:func:`medood.engines.fit_detector`)
Trainer = Callable[..., Any]


def image_batches(
    detector: nn.Module, stage: TrainingStage, images: Sequence[Mapping[str, Tensor]], batch_size: int,
    device: torch.device | None = None, **options: Any,
) -> list[dict[str, Tensor]]:  # fmt: skip
    """The default data builder: the loader's batches as they are."""
    return [dict(b) for b in images]


def chunk_batches(columns: Mapping[str, Tensor], batch_size: int) -> list[dict[str, Tensor]]:
    """Batches of ``batch_size`` rows of equally long ``columns`` (``{key: (N, ...)}``), in order."""
    n = next(iter(columns.values())).shape[0]
    return [{k: v[i : i + batch_size] for k, v in columns.items()} for i in range(0, n, batch_size)]


@dataclass(frozen=True)
class TrainingStage:
    """One training stage of a detector.

    Attributes:
        name: the stage name (``"tokenizer"``, ``"detector"``, ``"inpainter"``, ``"prior"``, ``"autoencoder"``).
        network: attribute path of the trained submodule in the detector (``"tokenizer"``, ``"net"``).
        loss: the loss class; called as ``loss(**loss_kwargs)``.
        loss_kwargs: its constructor arguments.
        build_data: the stage's data builder (:data:`StageData`). Defaults to :func:`image_batches`.
        input_key: batch key of the network input. Defaults to ``"image"``.
        target_key: batch key handed second to the loss (``None`` = nothing; several keys = a dict of them).
            Defaults to ``None``.
        epochs: epochs ``detector.fit`` runs. Defaults to 20.
        lr: Adam learning rate of ``detector.fit``. Defaults to 1e-3.
        batch_size: batch size of the data ``build_data`` builds for an in-memory fit. Defaults to 32.
        optimizer_kwargs: further Adam arguments of ``detector.fit`` (e.g. ``{"betas": (0.5, 0.999)}``).
            Defaults to none.
    """

    name: str
    network: str
    loss: Callable[..., nn.Module]
    loss_kwargs: Mapping[str, Any] = field(default_factory=dict)
    build_data: StageData = image_batches
    input_key: str = "image"
    target_key: str | tuple[str, ...] | None = None
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.build_data):
            raise TypeError(f"stage {self.name!r}: build_data must be callable, got {self.build_data!r}")
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

    def train_stages(self, loader: Iterable[Any], trainer: Trainer | None, **train_options: Any) -> None:
        """Hand the declared stages to ``trainer`` (the caller's training step); eval mode afterwards.

        Raises:
            TypeError: no ``trainer`` given (the detector layer does not import the engines).
        """
        if trainer is None:
            raise TypeError(
                f"{type(self).__name__} trains networks ({[st.name for st in self.training_stages()]}): pass "
                "trainer=medood.engines.fit_detector to fit, or train its stages with medood.engines.StageTrainer"
            )
        trainer(self, loader, **train_options)
        self.eval()
