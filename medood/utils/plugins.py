"""A hook that lets the detector layer hand training to the engines without importing them.

Detectors sit below ``medood.engines`` in the layer stack, so they never import it. A detector that owns
networks declares its training stages as data (:class:`~medood.detectors.stages.TrainingStage`); ``fit`` hands
them to whatever function is registered here. The package root (``medood/__init__.py``) registers
:func:`medood.engines.fit.fit_detector` lazily, so the engines are imported only when a detector is trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["get_training_backend", "set_training_backend"]

_TRAINING_BACKEND: Callable[..., Any] | None = None


def set_training_backend(fn: Callable[..., Any] | None) -> None:
    """Register ``fn(detector, loader, **options)``, the function that runs a detector's training stages."""
    global _TRAINING_BACKEND
    _TRAINING_BACKEND = fn


def get_training_backend() -> Callable[..., Any]:
    """The registered training function.

    Raises:
        RuntimeError: nothing is registered (``import medood`` registers the Ignite engines).
    """
    if _TRAINING_BACKEND is None:
        raise RuntimeError("no training backend registered: `import medood` registers medood.engines.fit_detector")
    return _TRAINING_BACKEND
