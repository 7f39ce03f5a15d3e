"""Heatmap-based OOD detection (Hornauer & Belagiannis, WACV 2023): a decoder explains a frozen classifier.

Algorithm:

1. the host classifier is trained and **fixed**; its penultimate features ``z`` are min-max normalised with
   ``min(0, min z)`` and ``max(0, max z)`` over the ID training set (fitted statistics);
2. a decoder (:class:`~medood.networks.nets.HeatmapDecoder`) reads the normalised ``z`` and the one-hot
   **predicted** class and paints a residual ``h`` in ``[-1, 1]`` on the classifier's input grid;
3. it is trained (stage ``decoder``) on the ID training images with target ``t = x`` and on auxiliary OOD images
   with target ``t`` = the ID training image of the same predicted class whose features are nearest (Euclidean),
   with ``loss = mean_b sum (1 + 5 |t|) (x + h - t)^2`` (:class:`~medood.losses.HeatmapLoss`), Adam 2e-4,
   betas (0.5, 0.999); so ``h = 0`` on ID images and ``h ~ t - x`` (to the closest ID image) on OOD ones;
4. map = channel-max ``|h|`` ``(B, 1, *S)``; image score = its mean over pixels (``score_reduction = "mean"``,
   the official formula, applied by :meth:`map_score`).

Auxiliary OOD data: 80M Tiny Images / Places365 do not apply to clinical images. ``fit`` derives them from the ID
training images with strong synthetic corruptions (``aux_corruptions``, :mod:`medood.transforms.corruptions`);
:func:`medood.engines.fit.train_heatmap_decoder` and the bundles add other organs / modalities. Never use the
evaluation OOD sets.

Differences from the official code: the feature range is the true minimum / maximum over all training features
(the official ``get_norm_values`` reads the first sample of each batch only); the decoder grows with the input
size (``decoder={"scale": 2}``: a coarser grid); the map is ``(B, 1, *S)`` as every medood map.

Options (off by default, the official default configuration): ``n_decoders`` trains that many decoders (stages
``decoder``, ``decoder_1``, ...; independent initialisations; or all in one stage ``decoders``, as the bundles do) and
averages their maps (official results: 5);
``feature_layers`` concatenates the pooled outputs of further classifier modules to ``z`` (the official ``fw_layers``;
the joint vector also picks the nearest ID target; needs the detector's own classifier pass, not a shared one).

Score: higher = more OOD (a larger residual is needed to make the input look like its closest ID image). Cost: one
classifier pass (shared with every post-hoc detector by ``score_many``) plus one decoder pass.

References:
    Hornauer & Belagiannis, "Heatmap-based Out-of-Distribution Detection", WACV 2023,
    https://arxiv.org/abs/2211.08115 (code: https://github.com/jhornauer/heatmap_ood, Apache-2.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.utils import ensure_tuple_rep
from torch import Tensor, nn

from medood.detectors.base import OODOutput
from medood.detectors.base_posthoc import FEATURES, LOGITS, ClassifierDetector
from medood.detectors.heatmap_stages import DecoderStages
from medood.detectors.registry import register_detector
from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.networks.nets.heatmap_decoder import HeatmapDecoder
from medood.transforms.corruptions import CORRUPTIONS, Corrupt

__all__ = ["DEFAULT_AUX_CORRUPTIONS", "HeatmapDetector"]


#: Corruptions ``fit`` uses as auxiliary OOD data by default (those that apply to any number of channels).
DEFAULT_AUX_CORRUPTIONS: tuple[str, ...] = ("noise", "blur", "bias", "shuffle", "contrast", "gibbs", "motion")


@register_detector("heatmap")
class HeatmapDetector(DecoderStages, ClassifierDetector):
    """Heatmap decoder on a frozen classifier (trained; produces maps; 2D and 3D).

    Args:
        model: the trained classifier (frozen: put in eval mode here and never updated). Optional when only
            ``score_features`` is used (then give ``in_features`` and ``num_classes``, or ``weight``).
        head: name of its final linear layer (``None`` = the last ``nn.Linear``); its input is ``z``.
        image_size: the classifier's input size, which the decoder paints (an int = every axis). Defaults to 64.
        spatial_dims: 2 or 3. Defaults to 2.
        in_channels: image channels (3 = RGB, 1 = MRI). Defaults to 3.
        in_features, num_classes: ``D`` and ``C``; read from the head when a model or ``weight`` is given.
        decoder: :class:`~medood.networks.nets.HeatmapDecoder` options (``scale``, ``channels``,
            ``base_channels``, ``max_channels``, ``latent_channels``, ``norm``). Defaults to its defaults.
        loss_weight: ``w`` of the loss weighting ``1 + w |t|``. Defaults to 5.0.
        loss_input_range: ``(lo, hi)`` of the images, mapped to ``[-1, 1]`` inside the loss (the official code's
            range, so ``1 + w |t|`` weights dark and bright pixels alike; :class:`~medood.losses.HeatmapLoss`).
            Defaults to ``None``: images as given (``[0, 1]``: the weight grows with brightness only).
        aux_corruptions: corruptions of the ID images, auxiliary OOD data of ``fit``. Defaults to the default ones.
        aux_per_image: corrupted copies per ID training image. Defaults to 1.
        corruption_options: per-corruption overrides of :data:`~medood.transforms.corruptions.CORRUPTIONS`.
        mask_background: corruptions keep all-zero voxels at 0 (skull-stripped MRI). Defaults to False.
        epochs: decoder training epochs of ``fit``. Defaults to 150 (the paper).
        lr: Adam learning rate. Defaults to 2e-4 (the paper; betas (0.5, 0.999)).
        batch_size: training batch size of ``fit``. Defaults to 200 (the paper).
        seed: seed of the auxiliary corruptions and of the training order. Defaults to 0.
        weight, bias: ``(C, D)`` head weight and ``(C,)`` bias, without a model.
        n_decoders: decoders trained and averaged (the official ensemble: 5). Defaults to 1.
        feature_layers: classifier modules whose pooled outputs join ``z`` (needs ``model``). Defaults to none.
        target_space: where an auxiliary image's nearest ID target is searched: ``"features"`` (the paper: the
            classifier's features, same predicted class) or ``"pixels"`` (the images, any class; in-memory pairs).

    Example::

        det = HeatmapDetector(model=classifier, image_size=64, in_channels=3, epochs=50).fit(train_loader)
        out = det.score(images)  # out.image_score (B,), out.anomaly_map (B, 1, 64, 64), higher = more OOD
    """

    requires_training = True
    produces_map = True
    required_features = (FEATURES, LOGITS)
    score_reduction = "mean"
    feature_min: Tensor
    feature_max: Tensor

    def __init__(
        self,
        model: nn.Module | None = None,
        head: str | nn.Linear | None = None,
        image_size: Sequence[int] | int = 64,
        spatial_dims: int = 2,
        in_channels: int = 3,
        in_features: int | None = None,
        num_classes: int | None = None,
        decoder: Mapping[str, Any] | None = None,
        loss_weight: float = 5.0,
        loss_input_range: tuple[float, float] | None = None,
        aux_corruptions: Sequence[str] = DEFAULT_AUX_CORRUPTIONS,
        aux_per_image: int = 1,
        corruption_options: Mapping[str, Mapping[str, Any]] | None = None,
        mask_background: bool = False,
        epochs: int = 150,
        lr: float = 2e-4,
        batch_size: int = 200,
        seed: int = 0,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        n_decoders: int = 1,
        feature_layers: Sequence[str] = (),
        target_space: str = "features",
    ) -> None:
        super().__init__(model=model, head=head, weight=weight, bias=bias)
        if n_decoders < 1:
            raise ValueError(f"n_decoders must be >= 1, got {n_decoders}")
        if model is not None:
            model.eval()  # the classifier is frozen: batch-norm statistics and dropout must not change
        if self.has_head:
            num_classes, in_features = (int(s) for s in self.head_weight.shape)
        if in_features is None or num_classes is None:
            raise ValueError("HeatmapDetector needs the classifier: pass model=, weight= or in_features/num_classes")
        unknown = sorted(set(aux_corruptions) - set(CORRUPTIONS))
        if target_space not in ("features", "pixels"):
            raise ValueError(f"target_space must be 'features' or 'pixels', got {target_space!r}")
        if unknown or aux_per_image < 0:
            raise ValueError(f"aux_corruptions must be in {sorted(CORRUPTIONS)} (got {unknown}); aux_per_image >= 0")
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.image_size = tuple(int(s) for s in ensure_tuple_rep(image_size, spatial_dims))
        self.feature_layers = tuple(feature_layers)
        if self.feature_layers:
            in_features = self._hook_layers(model, head)
        self.decoder_in_features, opts = int(in_features), dict(decoder or {})
        decoders = [HeatmapDecoder(spatial_dims, in_features, num_classes, in_channels, self.image_size, **opts)
                    for _ in range(n_decoders)]  # fmt: skip
        self.decoder, self.extra_decoders = decoders[0], nn.ModuleList(decoders[1:])
        self.loss_weight = float(loss_weight)
        self.loss_input_range = None if loss_input_range is None else tuple(loss_input_range)
        self.aux_corruptions, self.aux_per_image = tuple(aux_corruptions), int(aux_per_image)
        self.target_space = target_space
        self.corrupt = Corrupt(corruption_options, mask_background)
        self.epochs, self.lr, self.batch_size, self.seed = epochs, lr, batch_size, seed
        self.register_buffer("feature_min", torch.zeros(()))
        self.register_buffer("feature_max", torch.zeros(()))
        self._running: list[float] = [0.0, 0.0]

    def _hook_layers(self, model: nn.Module | None, head: str | nn.Linear | None) -> int:
        """Hook ``feature_layers`` besides the head's input; the decoder's input size (one probe pass)."""
        if model is None or self._extractor is None:
            raise ValueError("feature_layers need the classifier: pass model=")
        if isinstance(head, nn.Linear):
            name = next(n for n, m in model.named_modules() if m is head)
        else:
            name = find_linear_head(model, head)[0]
        self._extractor.remove()
        self._extractor = FeatureExtractor(model, {FEATURES: f"{name}:input", **{n: n for n in self.feature_layers}})
        with torch.no_grad():
            probe = self.extract_features(torch.zeros(1, self.in_channels, *self.image_size))
        return int(probe[FEATURES].shape[1])

    @property
    def needs_own_pass(self) -> bool:
        """With ``feature_layers`` the decoder reads more than a shared pass's penultimate features."""
        return bool(self.feature_layers)

    def extract_features(self, x: Tensor) -> dict[str, Tensor]:
        """The classifier pass; with ``feature_layers`` the features are ``[z, pooled layer outputs]``."""
        feats = super().extract_features(x)
        if self.feature_layers:
            pooled = [flatten_features(feats.pop(n)).float() for n in self.feature_layers]
            feats[FEATURES] = torch.cat([feats[FEATURES], *pooled], dim=1)
        return feats

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """A narrow decoder for 16-pixel toy images: 60 epochs at a high learning rate, 2 corruptions per image."""
        return {
            "image_size": 16, "spatial_dims": spatial_dims, "in_channels": 1, "epochs": 60, "lr": 5e-3,
            "batch_size": 16, "aux_per_image": 2, "decoder": {"base_channels": 8, "max_channels": 16},
        }  # fmt: skip

    # ------------------------------------------------------------------ fitting
    def reset_fit(self) -> None:
        """Start a new running feature range (the official minimum and maximum start at 0)."""
        self._running = [0.0, 0.0]

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Update the running minimum and maximum of the ID training features."""
        z = flatten_features(self.get(features, FEATURES))
        self._running = [min(self._running[0], float(z.min())), max(self._running[1], float(z.max()))]

    def finalize_fit(self) -> None:
        """Store the feature range (``ValueError`` when every training feature is 0: nothing to normalise)."""
        lo, hi = self._running
        if hi <= lo:
            raise ValueError("the classifier's penultimate features are all 0 on the training data")
        self.feature_min.fill_(lo)
        self.feature_max.fill_(hi)

    def fit_feature_range(self, features: Tensor) -> None:
        """Fit the feature range on precomputed ID training features ``(N, D)`` (e.g. of a bundle's pass)."""
        self.reset_fit()
        self.partial_fit_features({FEATURES: features})
        self.finalize_fit()

    def fit(
        self, loader: Iterable[Any], trainer: Callable[..., Any] | None = None, **train_options: Any
    ) -> HeatmapDetector:
        """Fit the feature range, then train the decoder on the ID images and their corrupted copies.

        Args:
            loader: ID training batches (re-iterable); labels are not needed (targets use predicted classes).
            trainer: the training step (:func:`medood.engines.fit_detector`), see :meth:`OODDetector.fit`.
            **train_options: forwarded to ``trainer`` (``epochs``, ``lr``, ``device``, ...).
        """
        self.fit_statistics(loader)  # the decoder's input normalisation must exist before it is trained
        self.train_stages(loader, trainer, **train_options)
        return self.mark_fitted()  # type: ignore[return-value]

    # ------------------------------------------------------------------ scoring
    def normalise(self, z: Tensor) -> Tensor:
        """Min-max normalised penultimate features ``(z - min) / (max - min)`` (the fitted ID training range)."""
        lo, hi = self.feature_min.to(z.device), self.feature_max.to(z.device)
        return (flatten_features(z) - lo) / (hi - lo).clamp_min(1e-12)

    def decoder_inputs(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(normalised z (B, D), predicted class (B,))`` from ``{"features", "logits"}``."""
        return self.normalise(self.get(features, FEATURES)), self.get(features, LOGITS).argmax(1)

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The frozen classifier's decoder inputs for images ``x``: ``(normalised z, predicted class)``."""
        return self.decoder_inputs(self.extract_features(x))

    def residuals(self, features: Mapping[str, Tensor]) -> list[Tensor]:
        """Each decoder's residual ``h`` ``(B, in_channels, *image_size)`` in ``[-1, 1]``."""
        z, y = self.decoder_inputs(features)
        if z.shape[1] != self.decoder_in_features:
            raise ValueError(f"the decoder reads {self.decoder_in_features} features, got {z.shape[1]} (a multi-layer "
                             "detector needs its own extract_features pass)")  # fmt: skip
        return [dec(z.to(self.feature_min.device), y.to(self.feature_min.device)) for dec in self.decoders]

    def residual(self, features: Mapping[str, Tensor]) -> Tensor:
        """The decoders' mean residual ``h`` ``(B, in_channels, *image_size)`` in ``[-1, 1]``."""
        return torch.stack(self.residuals(features)).mean(0)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Map ``max_c |h|`` ``(B, 1, *S)`` (mean over the decoders), its mean the score; extras: the mean ``h``."""
        self.check_fitted()
        hs = self.residuals(features)
        amap = torch.stack([h.abs().amax(1, keepdim=True) for h in hs]).mean(0).float()
        return OODOutput(self.map_score(amap, amap), amap, {"residual": torch.stack(hs).mean(0)})  # map stands for x

    def predict_map(self, x: Tensor) -> Tensor:
        """The ``(B, 1, *S)`` map, with a ``MetaTensor`` input's metadata (so the bundles' ``Invertd`` maps it back)."""
        amap = super().predict_map(x)
        if not isinstance(x, MetaTensor):
            return amap
        out = MetaTensor(amap)
        out.copy_meta_from(x)
        return out

    def _check_input(self, x: Tensor) -> None:
        if tuple(x.shape[2:]) != self.image_size:
            raise ValueError(
                f"the heatmap decoder paints {self.image_size} images (the classifier's input size); got "
                f"a batch of shape {tuple(x.shape)}: resize the inputs as the classifier's preprocessing"
            )
