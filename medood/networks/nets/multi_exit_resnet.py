"""A ResNet with a class-activation-map exit on every stage (MECAM's multi-exit classifier), 2D or 3D.

Each of the four stages ends in a ``1 x 1`` convolution to ``num_classes`` channels: its output is the stage's
class activation map (CAM), and global average pooling of the CAM gives the exit's logits. The CAM *is* the
classifier (there is no separate fully connected head), as in the MECAM code (methods.md §1.2).

Because a ``1 x 1`` convolution and global average pooling commute, the final exit is also a linear map of the
pooled last-stage features: ``logits_4 = W GAP(layer4) + b`` with ``W`` the final exit's kernel.
:class:`FinalExitClassifier` exposes that view as an ordinary classifier whose last ``nn.Linear`` is the final
exit, so every post-hoc detector of medood can be scored on the same network.

Built on MONAI's ``ResNet`` (stem, ``ResNetBlock`` / ``ResNetBottleneck`` stages, initialisation); the depth,
widths and stem are arguments, so ResNet-18 / 50-like networks and tiny test networks are the same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets import ResNet
from torch import Tensor, nn

__all__ = ["DEPTHS", "FinalExitClassifier", "MultiExitOutput", "MultiExitResNet"]

#: Blocks per stage of the usual depths (``block``, ``layers``).
DEPTHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class MultiExitOutput(NamedTuple):
    """What :meth:`MultiExitResNet.forward_cams` returns.

    Attributes:
        cams: one class activation map ``(B, num_classes, *spatial_e)`` per exit, shallowest first.
        features: globally pooled last-stage features ``(B, D)`` (MECAM's feature ``f(x)``).
    """

    cams: tuple[Tensor, ...]
    features: Tensor


class MultiExitResNet(ResNet):
    """ResNet whose four stages each end in a ``1 x 1`` convolutional CAM exit.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels. Defaults to 3.
        num_classes: number of classes (channels of every CAM). Defaults to 2.
        block: ``"basic"`` (ResNet-18 / 34) or ``"bottleneck"`` (ResNet-50). Defaults to ``"basic"``.
        layers: blocks per stage. Defaults to ``(2, 2, 2, 2)`` (ResNet-18).
        widths: base channels per stage (a bottleneck stage outputs 4x). Defaults to ``(64, 128, 256, 512)``.
        stem_kernel: kernel size of the first convolution. Defaults to 7.
        stem_stride: stride of the first convolution. Defaults to 2 (the ImageNet stem; use 1 for small inputs).
        max_pool: the stride-2 max-pool after the stem. Defaults to ``True``.
        norm: normalisation layer (MONAI name). Defaults to ``"batch"``.

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, fewer than 2 classes, or not four stages.

    Example::

        net = MultiExitResNet(2, in_channels=3, num_classes=8)          # ResNet-18 depth, 224 x 224 inputs
        tiny = MultiExitResNet(3, 1, 3, layers=(1, 1, 1, 1), widths=(4, 8, 8, 16), stem_stride=1, max_pool=False)
        exit_logits = net(x)                                              # 4 x (B, 8), final exit last
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int = 3,
        num_classes: int = 2,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_kernel: int = 7,
        stem_stride: int = 2,
        max_pool: bool = True,
        norm: str | tuple = "batch",
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1 or min(widths) < 1:
            raise ValueError(f"layers and widths need four positive entries, got {list(layers)} and {list(widths)}")
        super().__init__(
            block=block,
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=stem_kernel,
            conv1_t_stride=stem_stride,
            no_max_pool=not max_pool,
            feed_forward=False,
            num_classes=num_classes,
            norm=norm,
        )
        expansion = 4 if block == "bottleneck" else 1
        conv = Conv[Conv.CONV, spatial_dims]
        self.exits = nn.ModuleList(conv(w * expansion, num_classes, kernel_size=1, bias=True) for w in widths)
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, in_channels, num_classes
        self.feature_dim = widths[-1] * expansion

    @property
    def num_exits(self) -> int:
        """The number of exits (4)."""
        return len(self.exits)

    def stages(self, x: Tensor) -> list[Tensor]:
        """The outputs of the four stages, shallowest first."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward_cams(self, x: Tensor) -> MultiExitOutput:
        """Every exit's class activation map and the pooled last-stage features, in one pass."""
        feats = self.stages(x)
        cams = tuple(e(f) for e, f in zip(self.exits, feats))
        return MultiExitOutput(cams, feats[-1].flatten(2).mean(-1))

    def features(self, x: Tensor) -> Tensor:
        """Pooled last-stage features ``(B, D)``: ``GAP(layer4(x))``."""
        return self.stages(x)[-1].flatten(2).mean(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        """Logits ``(B, num_classes)`` of every exit (the pooled CAMs), final exit last."""
        return tuple(cam.flatten(2).mean(-1) for cam in self.forward_cams(x).cams)


class _ExitAsLinear(nn.Linear):
    """An ``nn.Linear`` whose weight and bias *are* a ``1 x 1`` convolution's (read live, nothing copied)."""

    def __init__(self, conv: nn.Module) -> None:
        nn.Module.__init__(self)
        kernel: Tensor = conv.weight  # type: ignore[assignment]
        self.out_features, self.in_features = int(kernel.shape[0]), int(kernel.shape[1])
        object.__setattr__(self, "_conv", conv)  # not a submodule: the parameters belong to the network

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The convolution kernel as a ``(num_classes, D)`` matrix."""
        conv: Any = self._conv
        return conv.weight.flatten(1)

    @property
    def bias(self) -> Tensor:  # type: ignore[override]
        """The convolution bias ``(num_classes,)``."""
        conv: Any = self._conv
        return conv.bias

    def forward(self, input: Tensor) -> Tensor:
        """``input @ weight.T + bias``."""
        return F.linear(input, self.weight, self.bias)


class FinalExitClassifier(nn.Module):
    """The final exit of a :class:`MultiExitResNet` as a plain classifier ``x -> fc(GAP(layer4(x)))``.

    ``fc`` is an ``nn.Linear`` view of the final exit's ``1 x 1`` convolution (it shares its parameters), so the
    logits equal the network's final-exit logits and post-hoc detectors find the head with
    :func:`~medood.networks.hooks.find_linear_head` and the penultimate features at ``"fc:input"``.

    Args:
        network: the multi-exit network (a submodule: this module's ``state_dict`` is the network's).
    """

    def __init__(self, network: MultiExitResNet) -> None:
        super().__init__()
        self.network = network
        self.fc: nn.Linear = _ExitAsLinear(network.exits[-1])

    def forward(self, x: Tensor) -> Tensor:
        """Final-exit logits ``(B, num_classes)``."""
        return self.fc(self.network.features(x))
