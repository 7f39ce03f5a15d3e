"""A progress bar handler for bundle configs (Ignite's ``ProgressBar`` showing the loss)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ProgressBar", "progress_enabled"]


def progress_enabled() -> bool:
    """Progress bars are on unless ``CI=true`` or ``MEDOOD_PROGRESS=0``."""
    return os.environ.get("MEDOOD_PROGRESS", "1") != "0" and os.environ.get("CI", "").lower() != "true"


class ProgressBar:
    """Attach Ignite's ``ProgressBar`` with the running ``loss`` (or another scalar output key).

    Args:
        output_key: scalar key of ``engine.state.output`` to display (``None`` = none). Defaults to ``"loss"``.
        persist: keep finished bars. Defaults to False.
        enabled: ``None`` follows :func:`progress_enabled`.
    """

    def __init__(self, output_key: str | None = "loss", persist: bool = False, enabled: bool | None = None) -> None:
        self.output_key, self.persist = output_key, persist
        self.enabled = progress_enabled() if enabled is None else enabled

    def attach(self, engine: Engine) -> None:
        """Attach to ``engine`` (no-op when disabled)."""
        if not self.enabled:
            return
        from ignite.contrib.handlers import ProgressBar as _Bar

        key = self.output_key

        def show(out: Any) -> dict[str, float]:
            if key is None or not isinstance(out, dict) or key not in out:
                return {}
            return {key: float(out[key])}

        _Bar(persist=self.persist).attach(engine, output_transform=show)
