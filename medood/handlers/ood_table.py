"""An Ignite handler that tabulates an :class:`~medood.engines.OODEvaluator`'s image scores per OOD set."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.networks.utils import eval_mode
from torch import Tensor

from medood.data.shard import case_order, datalist_of, merge_rows
from medood.metrics.tables import results_payload, results_table, write_results
from medood.utils.distributed import get_rank, get_world_size, is_sharded
from medood.utils.enums import OODKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["OODTableWriter"]

logger = logging.getLogger(__name__)

Variants = Callable[[Tensor], Mapping[str, Tensor]]


def _items(data: Any) -> list[Mapping[str, Any]]:
    """A decollated list of per-item dicts, or a collated dict split into one dict per item."""
    if isinstance(data, Mapping):
        n = len(next(v for v in data.values() if isinstance(v, (Tensor, list, tuple))))
        return [{k: (v[i] if isinstance(v, (Tensor, list, tuple)) and len(v) == n else v) for k, v in data.items()}
                for i in range(n)]  # fmt: skip
    return list(data)


def _scalar(v: Any) -> Any:
    return v.reshape(-1)[0].item() if isinstance(v, Tensor) else v


class OODTableWriter:
    """Collect every item's image score and OOD set during an evaluator run; write the per-set results table.

    ID items have ``is_ood = 0``, OOD items ``is_ood = 1`` and an ``ood_set`` name (read from the batch, else the
    output). At completion ``results.json`` and ``results.md`` (:func:`medood.metrics.tables.write_results`) hold,
    for each OOD set (ID vs that set, OOD positive), AUROC, FPR95, AUPR-In and AUPR-Out of every score column:
    ``name`` for the evaluator's own score (``ood_score``), plus the columns of ``variants``, a callable run on
    each batch's network input (the batch's ``image``, not the post-processed one; the network in eval mode) that
    returns more named scores (e.g. MECAM's exit subsets,
    :meth:`~medood.detectors.mecam.MECAMDetector.score_subsets`). Nothing is written when the data carries no
    ``is_ood`` labels (plain inference) or lacks either ID or OOD items.

    Args:
        output_dir: where ``results.json`` / ``results.md`` go (created).
        name: the column of the evaluator's score. Defaults to ``"score"``.
        variants: ``images -> {column: (B,) scores}`` (higher = more OOD), or ``None``. Defaults to ``None``.
        title: the title of ``results.md``. Defaults to ``"OOD detection"``.
        meta: extra fields stored in ``results.json`` (task, classifier, ...).
        score_key: the output key of the image score. Defaults to ``"ood_score"``.
        is_ood_key: the key of the ID (0) / OOD (1) label. Defaults to ``"is_ood"``.
        set_key: the key of the OOD set name. Defaults to ``"ood_set"``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        name: str = "score",
        variants: Variants | None = None,
        title: str = "OOD detection",
        meta: Mapping[str, Any] | None = None,
        score_key: str = OODKeys.SCORE.value,
        is_ood_key: str = "is_ood",
        set_key: str = "ood_set",
    ) -> None:
        self.output_dir, self.name, self.variants = Path(output_dir), name, variants
        self.title, self.meta = title, dict(meta or {})
        self.score_key, self.is_ood_key, self.set_key = score_key, is_ood_key, set_key
        self.reset()

    def reset(self) -> None:
        """Forget the scores collected so far."""
        self.columns: dict[str, list[float]] = {self.name: []}
        self.cases: list[str] = []
        self.is_ood: list[Any] = []
        self.sets: list[Any] = []
        self.payload: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Register the event handlers."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _e: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self.finalize)

    def _iteration(self, engine: Engine) -> None:
        outputs, batch = _items(engine.state.output), _items(engine.state.batch)
        for i, out in enumerate(outputs):
            item = {**out, **(batch[i] if i < len(batch) else {})}
            if self.score_key not in out:
                raise KeyError(f"the engine output has no {self.score_key!r}: run an OODEvaluator")
            self.columns[self.name].append(float(_scalar(out[self.score_key])))
            self.cases.append(str(_scalar(item.get(OODKeys.CASE.value, len(self.cases)))))
            self.is_ood.append(_scalar(item.get(self.is_ood_key)))
            self.sets.append(_scalar(item.get(self.set_key)))
        if self.variants is not None:  # the network input: the batch's (the output's may be post-processed)
            key = OODKeys.IMAGE.value
            images = torch.stack([torch.as_tensor((b if key in b else o)[key]) for b, o in zip(batch, outputs)])
            with torch.no_grad(), eval_mode(engine.network):  # type: ignore[attr-defined]
                for column, scores in self.variants(images).items():
                    self.columns.setdefault(column, []).extend(scores.detach().float().cpu().reshape(-1).tolist())

    def _merge_ranks(self, engine: Engine | None) -> bool:
        """Gather every rank's items in datalist order (a sharded run); ``True`` on the rank that writes (rank 0)."""
        loader = getattr(engine, "data_loader", None)
        if get_world_size() == 1 or not is_sharded(loader):
            return True
        items = [
            (case, ood, ood_set, {k: v[i] for k, v in self.columns.items() if i < len(v)})
            for i, (case, ood, ood_set) in enumerate(zip(self.cases, self.is_ood, self.sets, strict=True))
        ]
        merged = merge_rows(items, case_order(datalist_of(loader) or []), lambda x: x[0], loader)
        if get_rank() != 0:
            return False
        names = list(dict.fromkeys([self.name, *(k for x in merged for k in x[3])]))
        self.cases, self.is_ood, self.sets = [x[0] for x in merged], [x[1] for x in merged], [x[2] for x in merged]
        self.columns = {k: [x[3][k] for x in merged] for k in names}
        return True

    def finalize(self, engine: Engine | None = None) -> Path | None:
        """Write ``results.json`` / ``results.md``; returns the JSON path, or ``None`` if there is no table.

        In a sharded run every rank's items are gathered first and rank 0 writes the table of them all.
        """
        if not self._merge_ranks(engine):
            return None
        if any(v is None for v in self.is_ood) or not self.is_ood:
            logger.info("OODTableWriter: the data has no %r labels; no results table", self.is_ood_key)
            return None
        is_ood = torch.tensor([int(v) for v in self.is_ood])
        cols = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.columns.items()}
        if not (is_ood == 0).any() or not (is_ood == 1).any():
            logger.warning("OODTableWriter: the data needs both ID and OOD items for a table; none written")
            return None
        names = [str(s) for s, o in zip(self.sets, is_ood.tolist()) if o == 1]
        ood_sets = list(dict.fromkeys(names))
        ood_scores = {
            s: {k: v[is_ood == 1][torch.tensor([n == s for n in names])] for k, v in cols.items()} for s in ood_sets
        }
        table = results_table({k: v[is_ood == 0] for k, v in cols.items()}, ood_scores)
        sizes = {s: int(sum(n == s for n in names)) for s in ood_sets}
        self.payload = results_payload(table, n_id_test=int((is_ood == 0).sum()), ood_set_sizes=sizes, **self.meta)
        js, _ = write_results(self.payload, self.output_dir, self.title)
        logger.info("results table of %d ID and %d OOD items in %s", int((is_ood == 0).sum()), len(names), js)
        return js
