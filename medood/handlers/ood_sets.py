"""Per-OOD-set results of one detector run by an :class:`~medood.engines.OODEvaluator` (map detectors' bundles).

:class:`OODSetResults` collects every item's image / volume score (``ood_score``, computed once by the evaluator)
with its ``is_ood`` flag and ``ood_set`` name, and at the end writes ``results.json`` / ``results.md``
(:func:`medood.metrics.tables.write_results`): the ID cases (``is_ood = 0``) against each OOD set separately,
AUROC, FPR95 (OOD accepted at 95 % ID acceptance), AUPR-In and AUPR-Out, as the post-hoc bundles' tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from medood.metrics.tables import results_payload, results_table, write_results
from medood.utils.enums import OODKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["OODSetResults"]

logger = logging.getLogger(__name__)


def _items(data: Any) -> list[Mapping[str, Any]]:
    return [data] if isinstance(data, Mapping) else list(data)


def _scalar(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.reshape(-1)[0].item()
    if isinstance(v, (list, tuple)):
        return v[0]
    return v


class OODSetResults:
    """Ignite handler writing the results table of one detector's scores, ID vs every OOD set.

    Attach to a decollating evaluator (``OODEvaluator``) whose batches carry ``is_ood`` and ``ood_set`` (e.g.
    :func:`medood.data.folders.evaluation_datalist`).

    Args:
        output_dir: where ``results.json`` and ``results.md`` go.
        detector: the detector's name in the table. Defaults to ``"detector"``.
        title: title of ``results.md``. Defaults to the generic one.
        meta: extra fields stored in ``results.json`` (task, classifier, ...).
        score_key: engine-output key of the score. Defaults to ``"ood_score"``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        detector: str = "detector",
        title: str | None = None,
        meta: Mapping[str, Any] | None = None,
        score_key: str = OODKeys.SCORE.value,
    ) -> None:
        self.output_dir, self.detector, self.title = Path(output_dir), detector, title
        self.meta, self.score_key = dict(meta or {}), score_key
        self.rows: list[tuple[float, int, str]] = []

    def attach(self, engine: Engine) -> None:
        """Register the event handlers."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, lambda _e: self.write())

    def _iteration(self, engine: Engine) -> None:
        outputs, batch = _items(engine.state.output), _items(engine.state.batch)
        for out, item in zip(outputs, batch, strict=True):
            is_ood = item.get("is_ood")
            if is_ood is None:
                raise KeyError("OODSetResults needs an 'is_ood' field per case (an evaluation datalist)")
            name = _scalar(item.get("ood_set")) or ("ood" if int(_scalar(is_ood)) else "id")
            self.rows.append((float(_scalar(out[self.score_key])), int(_scalar(is_ood)), str(name)))

    def write(self) -> dict[str, Any]:
        """Write and return the results payload.

        Raises:
            ValueError: no ID case or no OOD case was seen.
        """
        scores = torch.tensor([r[0] for r in self.rows], dtype=torch.float64)
        is_ood = torch.tensor([r[1] for r in self.rows], dtype=torch.bool)
        if is_ood.all() or not is_ood.any():
            raise ValueError(f"OODSetResults needs ID and OOD cases; got {int(is_ood.sum())} OOD of {len(self.rows)}")
        sets = list(dict.fromkeys(r[2] for r in self.rows if r[1]))
        ood = {s: {self.detector: scores[torch.tensor([r[2] == s and r[1] == 1 for r in self.rows])]} for s in sets}
        payload = results_payload(
            results_table({self.detector: scores[~is_ood]}, ood),
            n_id_test=int((~is_ood).sum()),
            ood_set_sizes={s: int(v[self.detector].numel()) for s, v in ood.items()},
            **self.meta,
        )
        js, _ = write_results(payload, self.output_dir, self.title)
        logger.info("%s: results of %d OOD sets written to %s", self.detector, len(sets), js)
        return payload
