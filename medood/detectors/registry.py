"""The detector registry: ``@register_detector("name")``, ``get_detector``, ``list_detectors``, in one place.

Importing :mod:`medood.detectors` registers every detector module, so the registry is complete once any
lookup has run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from medood.detectors.base import OODDetector

__all__ = ["detector_classes", "get_detector", "get_detector_class", "list_detectors", "register_detector"]

_REGISTRY: dict[str, type[OODDetector]] = {}

D = TypeVar("D", bound=type[OODDetector])


def register_detector(name: str) -> Callable[[D], D]:
    """Class decorator that registers a detector under ``name`` (warns when a name is re-registered)."""
    if not name or not name.replace("_", "").isalnum() or name.lower() != name:
        raise ValueError(f"detector names are lower-case identifiers, got {name!r}")

    def wrap(cls: D) -> D:
        if not issubclass(cls, OODDetector):
            raise TypeError(f"{cls.__name__} must subclass OODDetector to be registered")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            warnings.warn(
                f"detector {name!r} re-registered: {_REGISTRY[name].__name__} -> {cls.__name__}", stacklevel=2
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    import medood.detectors  # noqa: F401  (importing the package registers every detector module)


def detector_classes() -> list[type[OODDetector]]:
    """Every registered detector class, sorted by registry name."""
    _load_all()
    return [cls for _, cls in sorted(_REGISTRY.items())]


def list_detectors(
    *, requires_training: bool | None = None, produces_map: bool | None = None, spatial_dims: int | None = None
) -> list[str]:
    """Names of the registered detectors, sorted, optionally filtered by their class attributes."""
    _load_all()
    out = []
    for name, cls in sorted(_REGISTRY.items()):
        if requires_training is not None and cls.requires_training != requires_training:
            continue
        if produces_map is not None and cls.produces_map != produces_map:
            continue
        if spatial_dims is not None and spatial_dims not in cls.supported_spatial_dims:
            continue
        out.append(name)
    return out


def get_detector_class(name: str) -> type[OODDetector]:
    """The detector class registered under ``name``.

    Raises:
        KeyError: no detector of that name; the message lists the registered names.
    """
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no detector named {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def get_detector(name: str, **kwargs: Any) -> OODDetector:
    """Instantiate the detector registered under ``name`` with ``kwargs``."""
    return get_detector_class(name)(**kwargs)
