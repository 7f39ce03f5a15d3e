"""Feature maps of any network: find its deepest encoder stages, record their outputs over several forward calls.

:func:`encoder_stages` finds, by one probe forward pass, the modules that end the deepest resolution levels of
an encoder (the bottleneck first) in a MONAI ``UNet`` / ``DynUNet`` / ``BasicUNet`` / ``SwinUNETR`` /
``FlexibleUNet`` / ``SegResNet``, a CNN classifier (``DenseNet``, ``ResNet``, ``SEResNet``) or any network whose
channel-first feature maps shrink before they grow again; ``UNETR`` takes its encoder stages by name
(:data:`FAMILY_STAGES`). :func:`first_network_input` gives the input a network really receives from an inferer
(one sliding window, one slice), which is what the probe pass must see. :class:`FeatureRecorder` keeps every
output a hooked module produced since the last :meth:`~FeatureRecorder.pop` (a sliding-window inferer calls the
network once per window batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from medood.networks.hooks import FeatureExtractor

__all__ = [
    "FAMILY_STAGES",
    "FeatureRecorder",
    "StageRecord",
    "encoder_stages",
    "first_network_input",
    "probe_input",
    "trace_feature_maps",
]

#: Modules whose output joins a skip connection (a concatenation at the lower level's resolution, or the
#: upsampled result): never the end of an encoder stage.
_SKIP_TYPES = ("SkipConnection", "DynUNetSkipLayer")

#: Networks whose encoder stages the probe cannot find, by class name: the stage names, shallower first (the last
#: ``n`` are taken). ``UNETR``'s encoder is a ViT whose tokens become channel-first maps only as the inputs of its
#: convolutional blocks (``encoder4``: ViT block 9, ``decoder5``: the last block, both at 1/16 of the input).
FAMILY_STAGES: dict[str, Callable[[nn.Module], list[str]]] = {
    "UNETR": lambda m: ["encoder4:input", "decoder5:input"],
}


class _FirstCall(Exception):
    """Raised by :func:`first_network_input` to stop the inferer after the network's first call."""

    def __init__(self, value: Tensor) -> None:
        super().__init__("first network call")
        self.value = value


def first_network_input(inferer: Callable[..., object], network: nn.Module, inputs: Tensor) -> Tensor:
    """The tensor ``network`` receives first when ``inferer`` runs it on ``inputs`` (no forward pass is made).

    A sliding-window inferer gives one window batch (``roi_size``, padded), a slice inferer a batch of 2D slices,
    a simple inferer the input itself: the shape the network's feature maps must be probed with.

    Raises:
        RuntimeError: the inferer never called the network.
    """

    def grab(x: Tensor, *args: object, **kwargs: object) -> Tensor:
        raise _FirstCall(x)

    try:
        inferer(inputs, grab)  # type: ignore[call-arg]
    except _FirstCall as first:
        return first.value
    raise RuntimeError(f"{type(inferer).__name__} never called the network")


class StageRecord(NamedTuple):
    """One module output seen in the probe pass, in completion order."""

    name: str
    channels: int
    spatial: tuple[int, ...]


def probe_input(model: nn.Module, size: int | None = None) -> Tensor:
    """A seeded random input ``(1, C_in, size, ...)`` shaped for ``model``'s first convolution.

    Args:
        model: a convolutional network.
        size: side length; defaults to 64 for 1D / 2D networks and 32 for 3D ones.

    Raises:
        ValueError: the model has no convolution to read the input channels and dimensionality from.
    """
    conv = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no convolution: pass the layer names or an example input")
    spatial_dims = conv.weight.ndim - 2
    side = size if size is not None else (32 if spatial_dims == 3 else 64)
    gen = torch.Generator().manual_seed(0)
    shape = (1, conv.in_channels, *[side] * spatial_dims)
    return torch.randn(shape, generator=gen).to(conv.weight.device, conv.weight.dtype)


def _decoder_name(name: str) -> bool:
    """Whether a module belongs to a decoder path, by its name (``decoder*``, ``up*``).

    MONAI's ``SegResNet``, ``DynUNet``, ``BasicUNet``, ``SwinUNETR`` and ``FlexibleUNet`` name them so; their first
    block often runs at the bottleneck's resolution and would pass for the end of the encoder.
    """
    return any(part.lower().startswith(("decoder", "up")) for part in name.split("."))


def trace_feature_maps(model: nn.Module, example: Tensor) -> list[StageRecord]:
    """Every channel-first module output with the input's dimensionality, in the order the modules finished.

    One forward pass. Left out: skip connections, padding, modules returning a list of maps, modules called more
    than once in the pass (a shared activation is no stage), global pools and vectors.
    """
    records: list[StageRecord] = []
    calls: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Callable[[nn.Module, tuple, object], None]:
        def fn(module: nn.Module, _inputs: tuple, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            kind = type(module).__name__
            if kind in _SKIP_TYPES or "pad" in kind.lower() or not isinstance(output, Tensor):
                return
            if output.ndim == example.ndim and output.shape[2:].numel() > 1 and _channel_first(output, example):
                records.append(StageRecord(name, int(output.shape[1]), tuple(output.shape[2:])))

        return fn

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [r for r in records if calls[r.name] == 1]


def _channel_first(output: Tensor, example: Tensor) -> bool:
    """Whether ``output`` looks like a channel-first map of ``example``: each axis shrunk by about a power of two.

    Rejects most channel-last ``(B, *S, C)`` tensors inside transformer blocks (Swin), whose last "spatial" axis
    is the channels; anisotropic strides (``DynUNet``) pass.
    """
    ratios = [i / o for i, o in zip(example.shape[2:], output.shape[2:])]
    return all(r > 0 and abs(math.log2(r) - round(math.log2(r))) < 0.2 for r in ratios)


def encoder_stages(
    model: nn.Module, n: int = 2, example: Tensor | None = None, probe_size: int | None = None
) -> list[str]:
    """Names of the modules that end the ``n`` deepest resolution levels of ``model``'s encoder.

    The encoder is the part of the probe pass before the feature maps first grow again after their smallest
    size; the end of a level is the last module (the outermost block) that finished at that resolution. For a
    MONAI ``UNet`` the deepest level ends with the bottom block, for ``DynUNet`` with ``bottleneck``, for a CNN
    classifier with the last feature map before global pooling.

    Args:
        model: the network (its train/eval mode is restored).
        n: how many levels, deepest first in the search. Defaults to 2.
        example: a real input ``(1, C, *spatial)``; defaults to :func:`probe_input`.
        probe_size: side of the default probe input.

    Returns:
        Module names as in ``model.named_modules()``, shallower level first.

    Raises:
        ValueError: ``n < 1`` or no spatial feature map was found.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    family = next((FAMILY_STAGES[c.__name__] for c in type(model).__mro__ if c.__name__ in FAMILY_STAGES), None)
    if family is not None:
        names = family(model)
        modules = dict(model.named_modules())
        if all(name.partition(":")[0] in modules for name in names):
            return names[-n:]
    x = example if example is not None else probe_input(model, probe_size)
    records = [r for r in trace_feature_maps(model, x) if not _decoder_name(r.name)]
    if not records:
        raise ValueError(f"{type(model).__name__}: no module produced a spatial feature map; pass the layer names")
    sizes = [torch.Size(r.spatial).numel() for r in records]
    smallest = min(sizes)
    first_min = sizes.index(smallest)
    end = next((i for i in range(first_min, len(sizes)) if sizes[i] > smallest), len(sizes))
    last_at: dict[int, int] = {}
    for i in range(end):
        last_at[sizes[i]] = i  # the last module to finish at each resolution of the encoder
    deepest = sorted(last_at)[:n]
    return [records[i].name for i in sorted(last_at[s] for s in deepest)]


class FeatureRecorder(FeatureExtractor):
    """A :class:`~medood.networks.hooks.FeatureExtractor` that keeps the outputs of *every* call until popped.

    Engines run the network themselves (possibly several times per batch, e.g. sliding-window inference);
    :meth:`pop` returns ``{key: [tensor of call 1, tensor of call 2, ...]}`` and clears the record.

    Args:
        model: the network.
        layers: module names, or a mapping key -> module name (``":input"`` suffix as in ``FeatureExtractor``;
            ``""`` is the network output).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | dict[str, str]) -> None:
        self._calls: dict[str, list[Tensor]] = {}
        super().__init__(model, layers, detach=True)

    def _hook(self, key: str, capture_input: bool) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(_module: nn.Module, inputs: tuple, output: Tensor) -> None:
            value = inputs[0] if capture_input else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            self._calls.setdefault(key, []).append(value.detach())

        return hook

    def pop_calls(self) -> dict[str, list[Tensor]]:
        """Everything recorded since the last call, per key in call order; clears the record."""
        calls, self._calls = self._calls, {}
        missing = [k for k in self.keys if k not in calls]
        if missing and calls:
            raise RuntimeError(f"layers {missing} were not reached in the forward pass")
        return calls
