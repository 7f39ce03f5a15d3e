"""Forward hooks that collect intermediate features of any torch / MONAI network in one pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["FeatureExtractor", "find_linear_head"]


def find_linear_head(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """Find the classifier's final linear layer.

    Args:
        model: the classifier.
        name: module name as in ``model.named_modules()``; ``None`` picks the last ``nn.Linear`` registered,
            which is the head of MONAI's ``DenseNet``, ``ResNet``, ``SEResNet`` and ``EfficientNet``.

    Raises:
        ValueError: the named module does not exist or is not ``nn.Linear``, or the model has no linear layer.
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(f"model has no module named {name!r}; linear layers: {_linear_names(model)}")
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(f"module {name!r} is {type(modules[name]).__name__}, not nn.Linear")
        return name, modules[name]  # type: ignore[return-value]
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; pass the head's name explicitly")
    return linears[-1]  # type: ignore[return-value]


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


class FeatureExtractor:
    """Collect the outputs (or inputs) of named modules during one forward pass.

    Args:
        model: any ``nn.Module``.
        layers: module names from ``model.named_modules()``. A name ending in ``":input"`` captures the
            module's first input instead of its output (``"fc:input"`` = the penultimate features). A mapping
            renames them: ``{"features": "fc:input"}``.
        detach: detach the captured tensors. Defaults to ``True``.

    Example::

        fx = FeatureExtractor(net, {"features": "class_layers.out:input", "layer4": "features.denseblock4"})
        feats = fx(images)  # {"features": ..., "layer4": ..., "logits": net(images)}

    The network output is returned under ``"logits"``. Call :meth:`remove` (or use it as a context manager)
    to take the hooks off.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | Mapping[str, str], detach: bool = True) -> None:
        self.model = model
        self.detach = detach
        spec = dict(layers) if isinstance(layers, Mapping) else {name: name for name in layers}
        modules = dict(model.named_modules())
        self._store: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for key, target in spec.items():
            module_name, _, where = target.partition(":")
            if where not in ("", "input", "output"):
                raise ValueError(f"layer spec {target!r}: suffix must be ':input' or ':output'")
            if module_name not in modules:
                raise ValueError(
                    f"model {type(model).__name__} has no module named {module_name!r}; "
                    f"some names: {list(modules)[:12]}"
                )
            self._handles.append(modules[module_name].register_forward_hook(self._hook(key, where == "input")))
        self.keys = list(spec)

    def _hook(self, key: str, capture_input: bool) -> Callable[[nn.Module, tuple, Tensor], None]:
        def hook(_module: nn.Module, inputs: tuple, output: Tensor) -> None:
            value = inputs[0] if capture_input else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            self._store[key] = value.detach() if self.detach else value

        return hook

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """Run the model once and return ``{layer: tensor, ..., "logits": output}``."""
        self._store = {}
        out = self.model(x)
        feats = dict(self._store)
        if isinstance(out, Tensor):
            feats["logits"] = out.detach() if self.detach else out
        missing = [k for k in self.keys if k not in feats]
        if missing:
            raise RuntimeError(f"layers {missing} were not reached in the forward pass")
        return feats

    def pop(self) -> dict[str, Tensor]:
        """Features captured by the hooks during the last forward pass run by someone else (e.g. an engine)."""
        feats, self._store = dict(self._store), {}
        return feats

    def remove(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:
        try:
            self.remove()
        except Exception:
            pass


def flatten_features(t: Tensor) -> Tensor:
    """Global-average-pool a ``(B, C, *S)`` feature map to ``(B, C)``; leave ``(B, C)`` unchanged."""
    if t.ndim > 2:
        return t.flatten(2).mean(-1)
    return t


@torch.no_grad()
def run_in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int) -> Tensor:
    """Apply ``fn`` to ``x`` in chunks of ``chunk`` rows and concatenate (bounded memory)."""
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
