"""The heatmap decoders' training stages, declared as data (:class:`~medood.detectors.stages.TrainingStage`).

A mixin of :class:`~medood.detectors.heatmap.HeatmapDetector`: one stage per decoder (``decoder``, ``decoder_1``, ...)
on the pairs of :func:`~medood.detectors.heatmap_data.ood_pair_batches`, or all decoders in one stage ``decoders``
(:class:`~medood.networks.nets.HeatmapDecoderEnsemble`: what the bundles train).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from medood.detectors.heatmap_data import ood_pair_batches
from medood.detectors.stages import DeclaresStages, TrainingStage
from medood.losses import HeatmapLoss
from medood.losses.heatmap import TARGET_KEYS
from medood.networks.nets.heatmap_decoder import HeatmapDecoderEnsemble

__all__ = ["DecoderStages"]


class DecoderStages(DeclaresStages):
    """The decoder stages of a detector with ``decoder``, ``extra_decoders`` and the loss / optimiser settings."""

    decoder: nn.Module
    extra_decoders: nn.ModuleList
    loss_weight: float
    loss_input_range: tuple[float, ...] | None
    epochs: int
    lr: float
    batch_size: int

    @property
    def decoders(self) -> list[nn.Module]:
        """``decoder`` and the ``extra_decoders`` of the ensemble."""
        return [self.decoder, *self.extra_decoders]

    def training_stages(self) -> tuple[TrainingStage, ...]:
        """One stage per decoder, on ID images (target = itself) and auxiliary OOD images (nearest ID image).

        Batches hold ``image``, ``target`` and the classifier's ``features`` (normalised) and ``pred``, computed
        once when the targets are searched (:mod:`medood.detectors.heatmap_data`).
        """
        names = [("decoder", "decoder")] + [(f"decoder_{i + 1}", f"extra_decoders.{i}") for i in
                                            range(len(self.extra_decoders))]  # fmt: skip
        return tuple(
            TrainingStage(
                name, network, HeatmapLoss, {"weight": self.loss_weight, "input_range": self.loss_input_range},
                build_data=ood_pair_batches, target_key=TARGET_KEYS, epochs=self.epochs, lr=self.lr,
                batch_size=self.batch_size, optimizer_kwargs={"betas": (0.5, 0.999)},
            )
            for name, network in names
        )  # fmt: skip

    def stage(self, name: str) -> TrainingStage:
        """A declared stage, or ``"decoders"``: :attr:`decoder_ensemble` with the ``decoder`` stage's data and loss."""
        if name != "decoders":
            return super().stage(name)
        return dataclasses.replace(super().stage("decoder"), name="decoders", network="decoder_ensemble")

    @property
    def decoder_ensemble(self) -> HeatmapDecoderEnsemble:
        """Every decoder as one network (built on access, not a submodule: the state dict is unchanged)."""
        return HeatmapDecoderEnsemble(self.decoders)
