"""Small MONAI classifiers (2D or 3D) whose last registered module is the ``nn.Linear`` head.

Post-hoc detectors hook that head (:func:`~medood.networks.hooks.find_linear_head`); ``resnet10`` trains in
minutes on a CPU at 64 x 64. :func:`~medood.engines.classifier.train_classifier` trains any of them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["ARCHS", "build_classifier"]

#: MONAI classifiers by name (constructor keyword arguments besides the dimensions and channel counts).
ARCHS: dict[str, dict[str, Any]] = {
    "resnet10": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128]},  # D = 128
    "resnet18_small": {"block": "basic", "layers": [2, 2, 2, 2], "block_inplanes": [16, 32, 64, 128]},  # D = 128
    "resnet18": {"block": "basic", "layers": [2, 2, 2, 2], "block_inplanes": [64, 128, 256, 512]},  # D = 512
    "densenet_small": {"init_features": 16, "growth_rate": 8, "block_config": (2, 2, 2)},
}


def build_classifier(
    arch: str = "resnet10", num_classes: int = 3, in_channels: int = 3, spatial_dims: int = 2
) -> nn.Module:
    """A randomly initialised MONAI classifier whose last registered module is its ``nn.Linear`` head.

    Args:
        arch: a key of :data:`ARCHS`. Defaults to ``"resnet10"`` (``monai.networks.nets.ResNet``, basic blocks
            ``[1, 1, 1, 1]``, widths ``[16, 32, 64, 128]``: 0.3 M parameters in 2D, 128 penultimate features).
        num_classes: number of classes. Defaults to 3.
        in_channels: input channels. Defaults to 3 (RGB).
        spatial_dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``. Defaults to 2.

    Raises:
        ValueError: unknown ``arch``, fewer than 2 classes, or ``spatial_dims`` not 2 or 3.
    """
    from monai.networks.nets import DenseNet, ResNet

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    kwargs = dict(ARCHS[arch])
    if arch.startswith("densenet"):
        return DenseNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)
    return ResNet(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, **kwargs)
