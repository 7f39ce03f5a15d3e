"""Shared base of the token-restoration detectors (MIM-OOD, VQ-VAE + AR, plain VQ-VAE reconstruction).

All three work slice-wise on 2D slices of a volume with a VQ-VAE tokenizer and differ only in how they restore
a healthy version of each slice. This base turns volumes ``(B, C, H, W, D)`` into foreground slices with their
normalised position, pads them to the tokenizer's stride, asks the subclass for a per-slice residual, puts the
volume back together, smooths it (min-pool then mean-pool, as in the authors' LSR pipeline) and zeroes it
outside the eroded brain. 2D inputs ``(B, C, H, W)`` are single slices (position 0 unless given).

Training is declared, not run here: the tokenizer stage (VQ-VAE on foreground slices) plus the subclass's
token stages (:meth:`SliceRestorationDetector.training_stages`), each with its data builder defined here
(:func:`slice_batches`, :func:`token_batches`); :mod:`medood.engines` trains them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import Tensor

from medood.data.tokens import collect_slices
from medood.detectors.base import OODDetector, OODOutput
from medood.detectors.stages import TrainingStage, chunk_batches
from medood.losses import VQVAELoss
from medood.networks.nets.vq_tokenizer import SliceTokenizer
from medood.transforms.slices import slice_positions
from medood.utils.enums import OODKeys
from medood.utils.reduce import rim_eroded

__all__ = ["TRAINING_SLICE_FOREGROUND", "SliceRestorationDetector", "slice_batches", "token_batches"]

#: the smallest foreground fraction of a training slice (the tokenizer and token stages' data)
TRAINING_SLICE_FOREGROUND = 0.05


def _padded_slices(detector: SliceRestorationDetector, images: Sequence[Mapping[str, Tensor]]) -> tuple[Tensor, Tensor]:
    slices, positions = collect_slices(images, detector.slice_axis, min_foreground=TRAINING_SLICE_FOREGROUND)
    return detector.pad_slices(slices)[0], positions


def slice_batches(
    detector: SliceRestorationDetector, stage: TrainingStage, images: Sequence[Mapping[str, Tensor]],
    batch_size: int, device: torch.device | None = None, **options: Any,
) -> list[dict[str, Tensor]]:  # fmt: skip
    """The tokenizer stage's data: the images' foreground slices (padded) and positions ``{input_key, "position"}``."""
    slices, positions = _padded_slices(detector, images)
    return chunk_batches({stage.input_key: slices, "position": positions}, batch_size)


def token_batches(
    detector: SliceRestorationDetector, stage: TrainingStage, images: Sequence[Mapping[str, Tensor]],
    batch_size: int, device: torch.device | None = None, **options: Any,
) -> list[dict[str, Tensor]]:  # fmt: skip
    """The token stages' data: those slices tokenized once by the trained tokenizer ``{input_key, "position"}``."""
    slices, positions = _padded_slices(detector, images)
    grids = []
    with torch.no_grad():
        for i in range(0, slices.shape[0], batch_size):
            chunk = slices[i : i + batch_size].to(device)
            grids.append(detector.tokenize(chunk, positions[i : i + batch_size].to(device)).cpu())
    return chunk_batches({stage.input_key: torch.cat(grids), "position": positions}, batch_size)


def _pool(x: Tensor, kernel: int, kind: str) -> Tensor:
    if kernel <= 1:
        return x
    nd = x.ndim - 2
    pad = kernel // 2
    if kind == "min":
        if nd == 3:
            return -F.max_pool3d(-x, kernel, stride=1, padding=pad)
        return -F.max_pool2d(-x, kernel, stride=1, padding=pad)
    if nd == 3:
        return F.avg_pool3d(x, kernel, stride=1, padding=pad, count_include_pad=False)
    return F.avg_pool2d(x, kernel, stride=1, padding=pad, count_include_pad=False)


class SliceRestorationDetector(OODDetector):
    """Base class: slice-wise restoration with a VQ-VAE tokenizer.

    Args:
        tokenizer: a :class:`~medood.networks.nets.SliceTokenizer` or its constructor kwargs.
        slice_axis: spatial axis of 3D inputs along which 2D slices are taken (2 = axial in RAS). Defaults to 2.
        min_foreground: slices with a smaller non-zero fraction are not processed (map 0). Defaults to 0.01.
        minpool: min-pool kernel applied to the residual (removes isolated hot voxels). Defaults to 3.
        avgpool: mean-pool kernel applied after it. Defaults to 3.
        erode_mask: voxels of the brain (non-zero) mask removed from its rim before masking the map (the
            rim carries partial-volume residuals). Defaults to 1.
        score_reduction: image / volume score reduction over the brain (``"max"``, ``"mean"``, ``"topk"``, or
            ``"largest_region"``: :meth:`region_score` at level ``score_k``). Defaults to ``"topk"``.
        score_k: top-k count or fraction of brain voxels. Defaults to 0.001.
        score_erode: rim of the brain (6-connected erosion steps) left out of the volume score. Defaults to 0.
        slice_batch: slices processed per network call. Defaults to 64.
        fit_epochs: epochs of each declared stage when trained by ``fit`` (stage name -> epochs; the bundle's
            stage configs are the way to train on real data). Defaults to 30 per stage.
        fit_lr: learning rate of ``fit``. Defaults to 1e-3.
        fit_batch_size: slices / token grids per step in ``fit``. Defaults to 32.
    """

    requires_training = True
    produces_map = True
    supported_spatial_dims = (2, 3)

    def __init__(
        self,
        tokenizer: SliceTokenizer | Mapping[str, Any] | None = None,
        slice_axis: int = 2,
        min_foreground: float = 0.01,
        minpool: int = 3,
        avgpool: int = 3,
        erode_mask: int = 1,
        score_reduction: str = "topk",
        score_k: int | float = 0.001,
        score_erode: int = 0,
        slice_batch: int = 64,
        fit_epochs: Mapping[str, int] | None = None,
        fit_lr: float = 1e-3,
        fit_batch_size: int = 32,
    ) -> None:
        super().__init__()
        self.fit_epochs = dict(fit_epochs or {})
        self.fit_lr, self.fit_batch_size = fit_lr, fit_batch_size
        if tokenizer is None:
            tokenizer = {}
        self.tokenizer = tokenizer if isinstance(tokenizer, SliceTokenizer) else SliceTokenizer(**dict(tokenizer))
        if self.tokenizer.spatial_dims != 2:
            raise ValueError("the restoration detectors use a 2D (slice) tokenizer")
        self.slice_axis, self.min_foreground = slice_axis, min_foreground
        self.minpool, self.avgpool, self.erode_mask = minpool, avgpool, erode_mask
        self.score_reduction, self.score_k, self.score_erode = score_reduction, score_k, score_erode
        self.slice_batch = slice_batch

    # ------------------------------------------------------------------ subclass hook
    @abstractmethod
    def residual_slices(self, slices: Tensor, positions: Tensor) -> Tensor:
        """Residual ``(N, 1, h, w)`` of padded slices ``(N, C, h, w)`` (h, w divisible by the stride)."""

    # ------------------------------------------------------------------ geometry
    def pad_slices(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Zero-pad slices ``(N, C, h, w)`` to multiples of the tokenizer's stride; returns them and ``(h, w)``."""
        s = self.tokenizer.downsample
        h, w = x.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        return (F.pad(x, (0, pw, 0, ph)) if ph or pw else x), (h, w)

    def slices_of(self, x: Tensor) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """Foreground slices ``(N, C, H', W')``, their positions and ``(batch, slice)`` indices."""
        if x.ndim == 4:
            return x, torch.zeros(x.shape[0], device=x.device), [(b, 0) for b in range(x.shape[0])]
        ax = 2 + self.slice_axis
        slices: list[Tensor] = []
        positions: list[Tensor] = []
        index: list[tuple[int, int]] = []
        for b in range(x.shape[0]):
            vol = x[b]
            pos = slice_positions(vol, self.slice_axis).to(x.device)
            fg = (vol.abs().amax(0) > 0).float().movedim(self.slice_axis, 0).flatten(1).mean(1)
            keep = torch.nonzero(fg >= self.min_foreground).flatten().tolist()
            moved = x[b : b + 1].movedim(ax, 1)[0]  # (D, C, H', W')
            slices.append(moved[keep])
            positions.append(pos[keep])
            index.extend((b, z) for z in keep)
        return torch.cat(slices), torch.cat(positions), index

    def assemble(self, x: Tensor, res: Tensor, index: list[tuple[int, int]]) -> Tensor:
        """Put per-slice residuals ``(N, 1, H', W')`` back into a ``(B, 1, *S)`` map (zeros elsewhere)."""
        if x.ndim == 4:
            return res
        ax = 2 + self.slice_axis
        out = torch.zeros((x.shape[0], 1, *x.shape[2:]), device=x.device, dtype=torch.float32)
        moved = out.movedim(ax, 2)  # (B, 1, D, H', W') view
        for i, (b, z) in enumerate(index):
            moved[b, 0, z] = res[i, 0]
        return out

    # ------------------------------------------------------------------ map
    def foreground_mask(self, x: Tensor) -> Tensor:
        """The brain: voxels where any channel is non-zero (the volume score is reduced over them)."""
        return x.abs().amax(1, keepdim=True) > 0

    def map_support(self, x: Tensor) -> Tensor:
        """Where the map may be non-zero: the brain eroded by ``erode_mask`` voxels (its rim is partial volume)."""
        fg = self.foreground_mask(x).float()
        if self.erode_mask > 0:
            fg = _pool(fg, 2 * self.erode_mask + 1, "min")
        return fg > 0.5

    def predict_map(self, x: Tensor) -> Tensor:
        """Voxel-wise anomaly map ``(B, 1, *S)`` (float32, 0 outside the brain)."""
        x = x.float()
        self._check_input(x)
        return self.postprocess_map(self._per_slice(x, lambda s, p: {"r": self.residual_slices(s, p)})["r"], x)

    def postprocess_map(self, raw: Tensor, x: Tensor, minpool: int | None = None, avgpool: int | None = None) -> Tensor:
        """Min-pool then mean-pool a raw residual volume (default: the configured kernels), zeroed off the support."""
        mp, ap = self.minpool if minpool is None else minpool, self.avgpool if avgpool is None else avgpool
        return (_pool(_pool(raw, mp, "min"), ap, "mean") * self.map_support(x)).float()

    def map_score(self, anomaly_map: Tensor, x: Tensor, foreground: Tensor | None = None) -> Tensor:
        """The base's reductions over the brain off its ``score_erode`` rim, or ``"largest_region"``."""
        mask = rim_eroded(foreground if foreground is not None else self.foreground_mask(x), self.score_erode)
        if self.score_reduction == "largest_region":
            return self.region_score(anomaly_map, float(self.score_k), mask)
        return super().map_score(anomaly_map, x, mask)

    @staticmethod
    def region_score(anomaly_map: Tensor, level: float, mask: Tensor) -> Tensor:
        """Cluster extent: voxels of the largest connected (26 / 8) region of ``anomaly_map > level`` in ``mask``."""
        out = []
        for m, f in zip(anomaly_map, mask):
            above = ((m > level) & f)[0].cpu().numpy()
            lab, n = ndi.label(above, structure=np.ones((3,) * above.ndim, dtype=bool))
            out.append(float(np.bincount(lab.ravel())[1:].max()) if n else 0.0)
        return torch.tensor(out, device=anomaly_map.device)

    def stage_maps(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage of :meth:`predict_map` as ``(B, 1, *S)`` volumes (:meth:`stage_slices`) plus ``"map"``."""
        out = self._per_slice(x.float(), self.stage_slices)
        return {**out, "map": self.postprocess_map(out["residual"], x.float())}

    def _per_slice(self, x: Tensor, fn: Any) -> dict[str, Tensor]:
        """``fn(padded slices, positions) -> {name: (N, 1, h, w)}`` over the foreground slices, assembled."""
        self.check_fitted()
        slices, positions, index = self.slices_of(x)
        parts: dict[str, list[Tensor]] = {}
        with torch.no_grad():
            for i in range(0, slices.shape[0], self.slice_batch):
                chunk, (h, w) = self.pad_slices(slices[i : i + self.slice_batch])
                for k, v in fn(chunk, positions[i : i + self.slice_batch]).items():
                    parts.setdefault(k, []).append(v.float()[..., :h, :w])
        return {k: self.assemble(x, torch.cat(v), index) for k, v in parts.items()}

    def stage_slices(self, slices: Tensor, positions: Tensor) -> dict[str, Tensor]:
        """Per-slice stages ``(N, 1, h, w)``: ``recon_residual`` (the tokenizer's floor) and ``residual``.

        ``recon_residual`` is ``|x - decode(tokenize(x))|``, ``residual`` is :meth:`residual_slices`; subclasses add
        their token scores.
        """
        tokens = self.tokenize(slices, positions)
        recon = (slices - self.decode(tokens)).abs().mean(1, keepdim=True)
        return {"recon_residual": recon, "residual": self.residual_slices(slices, positions)}

    def token_to_pixels(self, grid: Tensor) -> Tensor:
        """A token grid ``(N, h, w)`` as pixels ``(N, 1, H, W)`` (nearest)."""
        return F.interpolate(grid.float()[:, None], scale_factor=self.tokenizer.downsample, mode="nearest")

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        """Map and volume score of ``{"image": x}``."""
        x = features[OODKeys.IMAGE.value]
        amap = self.predict_map(x)
        return OODOutput(self.map_score(amap, x), amap)

    # ------------------------------------------------------------------ training (declared; medood.engines runs it)
    def training_stages(self) -> tuple[TrainingStage, ...]:
        """The VQ-VAE tokenizer on foreground slices, then :meth:`token_stages`."""
        tokenizer = TrainingStage(
            "tokenizer",
            "tokenizer",
            VQVAELoss,
            build_data=slice_batches,
            target_key="position",
            **self._stage_defaults("tokenizer"),
        )
        return (tokenizer, *self.token_stages())

    def token_stages(self) -> tuple[TrainingStage, ...]:
        """The stages after the tokenizer (subclasses). Default: none."""
        return ()

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """A two-level 8/16-channel tokenizer with 16 codes, 10 epochs per stage, no mask erosion."""
        tokenizer = {"channels": (8, 16), "num_res_layers": 1, "num_embeddings": 16, "embedding_dim": 8}
        epochs = {"tokenizer": 10, "detector": 10, "inpainter": 10, "prior": 10}
        return {"tokenizer": tokenizer, "erode_mask": 0, "fit_epochs": epochs}

    def _stage_defaults(self, name: str) -> dict[str, Any]:
        return {"epochs": self.fit_epochs.get(name, 30), "lr": self.fit_lr, "batch_size": self.fit_batch_size}

    def _token_stage(self, name: str, network: str, loss: Any, **loss_kwargs: Any) -> TrainingStage:
        """A stage trained on token grids ``{"tokens", "position"}`` of the healthy slices."""
        return TrainingStage(
            name, network, loss, loss_kwargs, build_data=token_batches, input_key="tokens", target_key="position",
            **self._stage_defaults(name),
        )  # fmt: skip

    # ------------------------------------------------------------------ helpers for subclasses
    def tokenize(self, slices: Tensor, positions: Tensor) -> Tensor:
        """Token grids of padded slices."""
        return self.tokenizer.tokenize(slices, positions)

    def decode(self, tokens: Tensor) -> Tensor:
        """Images of token grids."""
        return self.tokenizer.decode(tokens)
