"""Shared base of the detectors that read intermediate feature maps of a host network (e.g. a segmentation net).

The host is *not* a submodule: the ``state_dict`` holds only what the detector fitted. Features are a mapping
``{layer name: (B, C, *S)}`` (the module names of ``model.named_modules()``; ``""`` is the network output), so a
bundle's own forward pass can feed the detector through hooks (:class:`medood.networks.FeatureRecorder`) and no
second pass is needed. Without explicit layers the detector takes the ``n_stages`` deepest encoder stages
(:func:`medood.networks.feature_maps.encoder_stages`, one probe pass).

Multi-layer detectors compute one distance per layer and combine them in :meth:`FeatureMapDetector.combine`, the
one place this is decided: ``"mean"`` averages the raw distances (MedicOOD's multi-layer average), ``"normalized"``
first standardises each layer's distance by the mean and standard deviation of that layer's distances on the
training data (leave-one-out where the method needs it), so a layer with a large distance scale does not dominate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from medood.detectors.base import OODDetector, OODOutput
from medood.networks.feature_maps import encoder_stages
from medood.networks.hooks import FeatureExtractor
from medood.utils.batch import as_plain_tensor

__all__ = ["COMBINE_MODES", "OUTPUT_LAYER", "REGIONS", "FeatureMapDetector", "region_mean"]

#: How per-layer distances become one score.
COMBINE_MODES = ("mean", "normalized")
#: The layer name of the network output (``FeatureExtractor`` hooks the root module).
OUTPUT_LAYER = ""


class FeatureMapDetector(OODDetector):
    """Base for detectors on named feature maps of a host network.

    Args:
        model: the host network (2D or 3D). Optional when only ``fit_features`` / ``score_features`` are used
            (then ``layers`` must be given).
        layers: module names (``":input"`` suffix for a module's input; ``""`` = the network output). ``None``
            takes the ``n_stages`` deepest encoder stages of ``model``.
        n_stages: encoder stages taken when ``layers`` is ``None``. Defaults to 2.
        combine: ``"mean"`` or ``"normalized"`` (see the module docstring). Defaults to ``"mean"``.

    Attributes:
        layers: the layer names, in the order of the per-layer distances.
        layer_mean: ``(L,)`` mean of each layer's training distances (``"normalized"``).
        layer_std: ``(L,)`` their standard deviation.
    """

    needs_model = True
    requires_training = False
    default_stages: ClassVar[int] = 2
    model: nn.Module | None
    layer_mean: Tensor
    layer_std: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        layers: str | Sequence[str] | None = None,
        n_stages: int | None = None,
        combine: str = "mean",
    ) -> None:
        super().__init__()
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        object.__setattr__(self, "model", model)  # the host network is not part of the detector's state
        if isinstance(layers, str):
            layers = [layers]
        if layers is None:
            if model is None:
                raise ValueError(f"{type(self).__name__} needs layer names when no model is given")
            layers = encoder_stages(model, n_stages or self.default_stages)
        if not layers:
            raise ValueError("layers must name at least one module")
        self.layers: list[str] = list(layers)
        self.combine_mode = combine
        self._extractor = FeatureExtractor(model, {k: k for k in self.layers}) if model is not None else None
        self.register_buffer("layer_mean", torch.zeros(len(self.layers), dtype=torch.float64))
        self.register_buffer("layer_std", torch.ones(len(self.layers), dtype=torch.float64))

    # ------------------------------------------------------------------ features
    def extract_features(self, x: Tensor) -> dict[str, Tensor]:
        """One pass through the host network: ``{layer: (B, C, *S)}`` (and ``"logits"``, the output)."""
        if self._extractor is None:
            raise ValueError(f"{type(self).__name__} was built without a model: use fit_features / score_features")
        return self._extractor(x)

    def layer_features(self, features: Mapping[str, Any]) -> list[Tensor]:
        """The feature maps of :attr:`layers`, in order, as float tensors.

        Raises:
            KeyError: a layer is missing from ``features`` (the message lists what is there).
        """
        out = []
        for name in self.layers:
            value = features.get(name)
            if value is None and name == OUTPUT_LAYER:
                value = features.get("logits")
            if not isinstance(value, Tensor):
                raise KeyError(f"{type(self).__name__} needs the feature map of layer {name!r}; got {sorted(features)}")
            out.append(as_plain_tensor(value).float())
        return out

    def _check_input(self, x: Tensor) -> None:
        if x.ndim < 3:
            raise ValueError(f"expected images (B, C, *spatial), got shape {tuple(x.shape)}")

    # ------------------------------------------------------------------ layers -> score
    def set_layer_statistics(self, train_distances: Tensor) -> None:
        """Store each layer's mean and standard deviation of ``(M, L)`` training distances."""
        d = train_distances.double().reshape(train_distances.shape[0], -1)
        self.layer_mean = d.mean(0).to(self.layer_mean.device)
        std = d.std(0) if d.shape[0] > 1 else torch.ones_like(d[0])
        self.layer_std = torch.where(std > 0, std, torch.ones_like(std)).to(self.layer_std.device)

    def combine(self, distances: Tensor) -> Tensor:
        """``(B, L)`` per-layer distances -> ``(B,)`` float32 scores (``combine_mode``)."""
        d = distances.double()
        if self.combine_mode == "normalized":
            d = (d - self.layer_mean.to(d)) / self.layer_std.to(d)
        return d.mean(dim=1).float()

    def score_layers(self, features: Mapping[str, Any]) -> Tensor:
        """``(B, L)`` per-layer distances (higher = more OOD). Subclasses implement it."""
        raise NotImplementedError

    def score_features(self, features: Mapping[str, Any]) -> OODOutput:
        """Score ``{layer: (B, C, *S)}``: the combined per-layer distance, plus the per-layer ones in ``extras``."""
        self.check_fitted()
        per_layer = self.score_layers(features)
        return OODOutput(image_score=self.combine(per_layer), extras={"layer_scores": per_layer.float()})


#: Where voxel-wise uncertainties are averaged.
REGIONS = ("volume", "foreground")


def region_mean(values: Tensor, probs: Tensor, region: str = "volume", background: int = 0) -> Tensor:
    """Average voxel values ``(B, *S)`` over the whole image or its predicted foreground -> ``(B,)``.

    Args:
        values: voxel-wise uncertainties (entropy, MC-dropout variance); ``(B,)`` for classifiers.
        probs: ``(B, K, *S)`` mean class probabilities; the foreground is ``argmax != background``.
        region: ``"volume"`` or ``"foreground"``. An image with no predicted foreground voxel is averaged over
            the whole image. Defaults to ``"volume"``.
        background: the background class index. Defaults to 0.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if values.ndim == 1:
        return values.float()
    v = values.flatten(1).double()
    if region == "volume":
        return v.mean(1).float()
    fg = (probs.argmax(1) != background).flatten(1)
    n = fg.sum(1)
    fg_mean = (v * fg).sum(1) / n.clamp_min(1)
    return torch.where(n > 0, fg_mean, v.mean(1)).float()
