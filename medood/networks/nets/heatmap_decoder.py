"""The heatmap decoder of Hornauer & Belagiannis (WACV 2023), for 2D and 3D outputs of any size.

The decoder reads a classifier's penultimate features ``z`` (min-max normalised by the caller) and the predicted
class ``y`` (one-hot), and paints a residual ``h`` in the classifier's input space: ``x_hat = x + h``, with
``h = 0`` for in-distribution images and ``h ~ t - x`` (the difference to the nearest in-distribution training
image) for out-of-distribution ones.

Layout (as the official DCGAN-style generator, grown with the output size):

* ``Linear(D + C -> latent)``, reshaped to a ``latent``-channel grid of size 1;
* a transposed convolution (stride 1) to the **base grid** (``4 x 4`` for 32 / 64 px, as the paper);
* ``n_up`` transposed convolutions ``kernel 4, stride 2, padding 1`` (each doubles the grid), BatchNorm + ReLU
  after every one, with channels halving towards the output;
* a ``1 x 1`` convolution to the image channels and ``tanh``.

``n_up`` is the smallest number of doublings that takes a 4-voxel base to the **prediction size**
``ceil(out_size / scale)`` along the longest axis; the base grid of every axis is then
``ceil(prediction size / 2**n_up)``, so a 32 px output has 3 doublings and a 64 px one 4 (the paper's CIFAR and
TinyImageNet decoders), and a ``48 x 56 x 48`` volume a ``3 x 4 x 3`` base with 4 doublings. When the grown grid
differs from ``out_size`` (non-power-of-two sizes, or ``scale > 1``), the tanh output is resized to ``out_size``
by (bi/tri)linear interpolation, which keeps it in ``[-1, 1]``.

**Lower-resolution prediction (``scale``).** A transposed-convolution decoder costs about 4x (2D) or 8x (3D)
more per doubling at the output end. For large inputs (whole volumes, 224 px images) ``scale = 2`` or 4 predicts
the residual on a grid ``scale`` times coarser and upsamples it: the map stays on the input grid (what writers
and the loss need) but carries no detail finer than ``scale`` voxels. Out-of-distribution evidence is mostly
regional (a stain, a texture, an artefact), so a coarser heatmap loses little; ``scale = 1`` keeps the paper's
full-resolution decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.utils import ensure_tuple_rep
from torch import Tensor, nn

__all__ = ["HeatmapDecoder", "HeatmapDecoderEnsemble", "decoder_geometry"]


def decoder_geometry(out_size: Sequence[int], scale: int = 1) -> tuple[tuple[int, ...], int]:
    """``(base grid, number of doublings)`` of a decoder predicting ``ceil(out_size / scale)``.

    Args:
        out_size: spatial size of the output (the classifier's input size).
        scale: prediction-grid coarsening factor (1 = full resolution).

    Raises:
        ValueError: a size or ``scale`` below 1.
    """
    if scale < 1 or any(int(s) < 1 for s in out_size):
        raise ValueError(f"out_size entries and scale must be >= 1, got {tuple(out_size)} and {scale}")
    pred = [math.ceil(int(s) / scale) for s in out_size]
    n_up = max(0, math.ceil(math.log2(max(pred) / 4.0))) if max(pred) > 4 else 0
    base = tuple(max(1, math.ceil(p / 2**n_up)) for p in pred)
    return base, n_up


class HeatmapDecoder(nn.Module):
    """Decoder from classifier features and predicted class to a ``tanh`` residual image.

    Args:
        spatial_dims: 2 or 3.
        in_features: ``D``, the classifier's penultimate feature size.
        num_classes: ``C``, the classifier's number of classes (the one-hot part of the input).
        out_channels: image channels of the residual (3 for RGB, 1 for MRI).
        out_size: spatial size of the output, the classifier's input size (an int = the same along every axis).
        scale: predict on a ``scale`` times coarser grid and upsample (see the module docstring). Defaults to 1.
        channels: channels after the base convolution and after every doubling (``n_up + 1`` values). ``None``
            halves from the base to the output: ``min(max_channels, base_channels * 2**(n_up - i))``.
        base_channels: the output-end width when ``channels`` is ``None``. Defaults to 32.
        max_channels: the widest level when ``channels`` is ``None``. Defaults to 256.
        latent_channels: width of the linear layer's output. Defaults to ``channels[0]``.
        norm: normalisation after every transposed convolution (MONAI name). Defaults to ``"batch"`` (the paper).

    Attributes:
        out_size: the output size.
        grid: the size the transposed convolutions reach (resized to ``out_size`` when it differs).

    Example::

        dec = HeatmapDecoder(2, in_features=128, num_classes=3, out_channels=3, out_size=64)
        h = dec(z_normalised, predicted_class)  # (B, 3, 64, 64) in [-1, 1]
    """

    def __init__(
        self,
        spatial_dims: int,
        in_features: int,
        num_classes: int,
        out_channels: int,
        out_size: Sequence[int] | int,
        scale: int = 1,
        channels: Sequence[int] | None = None,
        base_channels: int = 32,
        max_channels: int = 256,
        latent_channels: int | None = None,
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_features < 1 or num_classes < 1 or out_channels < 1:
            raise ValueError("in_features, num_classes and out_channels must be >= 1")
        size = tuple(int(s) for s in ensure_tuple_rep(out_size, spatial_dims))
        base, n_up = decoder_geometry(size, scale)
        if channels is None:
            channels = [min(max_channels, base_channels * 2 ** (n_up - i)) for i in range(n_up + 1)]
        if len(channels) != n_up + 1:
            raise ValueError(f"output size {size} at scale {scale} needs {n_up + 1} channel values, got {channels}")
        latent = int(latent_channels or channels[0])
        self.spatial_dims, self.num_classes, self.latent = spatial_dims, num_classes, latent
        self.out_size = list(size)
        self.grid = [b * 2**n_up for b in base]
        self.fc = nn.Linear(in_features + num_classes, latent)
        layers: list[nn.Module] = [self._up(latent, channels[0], base, 1, 0, norm)]
        layers += [self._up(channels[i], channels[i + 1], 4, 2, 1, norm) for i in range(n_up)]
        self.blocks = nn.Sequential(*layers)
        self.head = Convolution(spatial_dims, channels[-1], out_channels, kernel_size=1, conv_only=True, bias=False)
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def _up(
        self, c_in: int, c_out: int, kernel: Sequence[int] | int, stride: int, pad: int, norm: str | tuple | None
    ) -> nn.Module:
        return Convolution(
            self.spatial_dims, c_in, c_out, strides=stride, kernel_size=kernel, padding=pad, output_padding=0,
            is_transposed=True, norm=norm, act="relu", bias=False,
        )  # fmt: skip

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """Residual ``(B, out_channels, *out_size)`` in ``[-1, 1]``.

        Args:
            z: ``(B, D)`` normalised penultimate features.
            y: ``(B,)`` predicted class indices (one-hot encoded here).
        """
        onehot = F.one_hot(y.long(), self.num_classes).to(z.dtype)
        x = self.fc(torch.cat([z, onehot], dim=1))
        x = x.reshape([x.shape[0], self.latent] + [1] * self.spatial_dims)
        h = torch.tanh(self.head(self.blocks(x)))
        if self.grid != self.out_size:
            h = F.interpolate(h, size=self.out_size, mode=self.mode, align_corners=False)
        return h


class HeatmapDecoderEnsemble(nn.Module):
    """Several decoders trained as one network: their residuals concatenated along the batch.

    ``forward(z, y)`` is ``(K * B, C, *S)``, rows ``k * B`` to ``(k + 1) * B`` from member ``k``;
    :class:`~medood.losses.HeatmapLoss` compares every member with the same targets (the sum of the members'
    losses). One optimiser and the same batches for every member: each member's gradient, and with a
    per-parameter optimiser (Adam) its update, is that of its own training on the same data order.

    Args:
        members: the decoders (modules shared with their owner, not copied).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """``(K * B, C, *S)``: every member's residual for ``(z, y)``, member after member."""
        return torch.cat([m(z, y) for m in self.members])
