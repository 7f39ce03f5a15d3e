"""An Ignite handler that scores an evaluator's batches with many post-hoc detectors and writes the results."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from medood.data.shard import case_order, datalist_of, merge_rows
from medood.detectors.base import OODDetector
from medood.detectors.posthoc import score_batch
from medood.io import run_folder as rf
from medood.metrics.tables import results_payload, results_table, write_results
from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.utils.checkpoints import save_checkpoint
from medood.utils.distributed import get_rank, get_world_size, is_sharded
from medood.utils.enums import OODKeys
from medood.utils.io import atomic_write

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["PosthocCalibrationHandler", "PosthocScoreWriter"]

logger = logging.getLogger(__name__)


def _column(batch: Any, key: str) -> list[Any] | None:
    """``key`` of every item of a collated dict batch or a decollated list of dicts (``None`` if absent)."""
    if isinstance(batch, Mapping):
        if key not in batch:
            return None
        v = batch[key]
        return v.reshape(v.shape[0], -1)[:, 0].tolist() if isinstance(v, Tensor) and v.ndim <= 2 else list(v)
    values = [item.get(key) if isinstance(item, Mapping) else None for item in batch]
    if any(v is None for v in values):
        return None
    return [v.reshape(-1)[0].item() if isinstance(v, Tensor) else v for v in values]


def _stack(data: Any, key: str) -> Tensor:
    if isinstance(data, Mapping):
        return torch.as_tensor(data[key])
    return torch.stack([torch.as_tensor(item[key]) for item in data])


class PosthocScoreWriter:
    """Score every batch of an evaluator with post-hoc detectors, then write CSVs (and the results table).

    Attach to a ``SupervisedEvaluator`` whose network is the host classifier. A forward hook captures the
    penultimate features of the engine's own forward pass and :func:`~medood.detectors.posthoc.score_batch`
    scores them with every detector (detectors with ``needs_input_grad``, i.e. ODIN, run their own passes on the
    batch's images, in eval mode). At completion it writes into ``output_dir``:

    * ``<detector>/scores.csv``: ``case,score,flagged`` (:mod:`medood.io.run_folder`'s layout; higher = more OOD;
      ``flagged`` = score above the detector's split-conformal threshold at ``alpha`` from its in-distribution
      calibration, blank when it has none or too few cases for ``alpha``), plus ``label`` (1 = OOD, 0 = ID; the
      ``medood evaluate --scores`` format) and ``ood_set`` when the data carries ``is_ood`` / ``ood_set``;
    * ``predictions.csv``: ``case,pred_class,confidence`` (+ ``label`` = the true class when known);
    * ``results.json`` / ``results.md`` (:func:`medood.metrics.tables.write_results`) when the data holds ID
      (``is_ood = 0``) and OOD (``is_ood = 1``) cases: one OOD set per ``ood_set`` value.

    Args:
        detectors: ``{name: detector}`` (fitted) or a sequence (their registry names are used).
        output_dir: where the files go (created).
        head: name of the classifier's final linear layer (``None`` = the last ``nn.Linear``).
        class_names: names of the classes in label order, for ``predictions.csv``. Defaults to indices.
        write_table: write ``results.json`` / ``results.md`` when possible. Defaults to ``True``.
        title: title of ``results.md``. Defaults to the generic one.
        meta: extra fields stored in ``results.json`` (task, classifier, ...).
        alpha: per-image false-alarm rate of ``flagged``. Defaults to 0.05.
    """

    def __init__(
        self,
        detectors: Mapping[str, OODDetector] | Sequence[OODDetector],
        output_dir: str | os.PathLike[str],
        head: str | None = None,
        class_names: Sequence[str] | None = None,
        write_table: bool = True,
        title: str | None = None,
        meta: Mapping[str, Any] | None = None,
        alpha: float = 0.05,
    ) -> None:
        self.alpha = alpha
        self.detectors = dict(detectors) if isinstance(detectors, Mapping) else {d.name: d for d in detectors}
        self.output_dir, self.head = Path(output_dir), head
        self.class_names = list(class_names) if class_names is not None else None
        self.write_table, self.title, self.meta = write_table, title, dict(meta or {})
        self._extractor: FeatureExtractor | None = None
        self._net: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget the scores collected so far."""
        self.scores: dict[str, list[Tensor]] = {n: [] for n in self.detectors}
        self.rows: dict[str, list[Any]] = {"case": [], "is_ood": [], "ood_set": [], "label": []}
        self.logits: list[Tensor] = []

    def attach(self, engine: Engine) -> None:
        """Register the event handlers (the network is hooked when the run starts)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        if self._extractor is None:
            self._net = getattr(engine.network, "module", engine.network)  # type: ignore[attr-defined]
            head_name, _ = find_linear_head(self._net, self.head)
            self._extractor = FeatureExtractor(self._net, {OODKeys.FEATURES.value: f"{head_name}:input"})
        for det in self.detectors.values():
            det.check_fitted()
        self.reset()

    def _iteration(self, engine: Engine) -> None:
        from monai.networks.utils import eval_mode

        assert self._extractor is not None
        captured = self._extractor.pop()  # before the detectors' own passes (ODIN) overwrite it
        logits = _stack(engine.state.output, "pred").float().detach()
        feats = {
            OODKeys.FEATURES.value: flatten_features(captured[OODKeys.FEATURES.value]).float(),
            OODKeys.LOGITS.value: logits,
        }
        batch = engine.state.batch
        needs_images = any(det.needs_input_grad for det in self.detectors.values())
        images = _stack(batch, OODKeys.IMAGE.value) if needs_images else None
        with eval_mode(self._net):
            scores = score_batch(self.detectors, feats, images)
        for name, s in scores.items():
            self.scores[name].append(s)
        n = logits.shape[0]
        cases = _column(batch, OODKeys.CASE.value)
        start = len(self.rows["case"])
        self.rows["case"] += [str(c) for c in cases] if cases else [f"case_{start + i:05d}" for i in range(n)]
        for key in ("is_ood", "ood_set", OODKeys.LABEL.value):
            self.rows[key] += _column(batch, key) or [None] * n
        self.logits.append(logits.cpu())

    def _write_csv(self, path: Path, header: list[str], rows: list[list[Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows([rf.escape_cell(v) for v in row] for row in rows)  # no spreadsheet formulas

    def _merge_ranks(self, engine: Engine) -> bool:
        """Gather every rank's cases in datalist order (a sharded run); ``True`` on the rank that writes (rank 0)."""
        loader = getattr(engine, "data_loader", None)
        if get_world_size() == 1 or not is_sharded(loader):  # every rank saw every case
            return True
        scores = {n: torch.cat(v).cpu() if v else torch.zeros(0) for n, v in self.scores.items()}
        logits = torch.cat(self.logits).cpu() if self.logits else torch.zeros(0, 0)
        cases = [
            ({k: v[i] for k, v in self.rows.items()}, {n: s[i] for n, s in scores.items()}, logits[i])
            for i in range(len(self.rows["case"]))
        ]
        order = case_order(datalist_of(loader) or [])
        merged = merge_rows(cases, order, lambda c: str(c[0]["case"]))
        if get_rank() != 0:
            return False
        self.rows = {k: [c[0][k] for c in merged] for k in self.rows}
        self.scores = {n: [torch.stack([c[1][n] for c in merged])] if merged else [] for n in self.scores}
        self.logits = [torch.stack([c[2] for c in merged])] if merged else []
        return True

    def _completed(self, engine: Engine) -> None:
        if not self._merge_ranks(engine):
            return
        if not self.logits:
            raise RuntimeError("PosthocScoreWriter saw no batches: is the dataset empty?")
        cases, is_ood, sets = self.rows["case"], self.rows["is_ood"], self.rows["ood_set"]
        has_ood = all(v is not None for v in is_ood)
        has_sets = has_ood and all(v is not None for v in sets)
        scores = {n: torch.cat(v) for n, v in self.scores.items()}
        for name, s in scores.items():
            cal = self.detectors[name].calibration
            thr = cal.thresholds(alpha=self.alpha).score if cal.has_scores else None
            score_rows = [
                {"case": c, "score": float(v), "flagged": None if thr is None else int(float(v) > thr),
                 "label": int(is_ood[i]) if has_ood else None, "ood_set": sets[i] if has_sets else None}
                for i, (c, v) in enumerate(zip(cases, s.tolist(), strict=True))
            ]  # fmt: skip
            path = self.output_dir / name / rf.SCORES_CSV
            path.parent.mkdir(parents=True, exist_ok=True)
            rf.write_score_rows(path, score_rows, extra_columns=["ood_set"] if has_sets else [])
        logits = torch.cat(self.logits)
        prob, pred = torch.softmax(logits, 1).max(1)
        names = self.class_names or [str(i) for i in range(logits.shape[1])]
        labels = self.rows[OODKeys.LABEL.value]
        has_label = all(v is not None for v in labels)
        rows = [
            [c, names[int(p)], f"{float(q):.6f}"] + ([labels[i]] if has_label else [])
            for i, (c, p, q) in enumerate(zip(cases, pred.tolist(), prob.tolist(), strict=True))
        ]
        self._write_csv(
            self.output_dir / "predictions.csv",
            ["case", "pred_class", "confidence"] + (["label"] if has_label else []),
            rows,
        )
        logger.info("wrote scores of %d cases for %s to %s", len(cases), sorted(scores), self.output_dir)
        if self.write_table and has_ood and {0, 1} <= {int(v) for v in is_ood}:
            self._write_table(scores, pred, labels if has_label else None)

    def _write_table(self, scores: dict[str, Tensor], pred: Tensor, labels: list[Any] | None) -> None:
        is_ood = torch.tensor([int(v) for v in self.rows["is_ood"]], dtype=torch.bool)
        sets = [str(s) if s is not None else "ood" for s in self.rows["ood_set"]]
        id_scores = {n: s[~is_ood] for n, s in scores.items()}
        names = list(dict.fromkeys(s for s, o in zip(sets, is_ood.tolist(), strict=True) if o))
        ood_scores = {}
        for set_name in names:
            mask = torch.tensor([s == set_name for s in sets]) & is_ood
            ood_scores[set_name] = {n: s[mask] for n, s in scores.items()}
        accuracy = math.nan
        if labels is not None:
            y = torch.tensor([int(v) for v in labels])[~is_ood]
            accuracy = float((pred[~is_ood] == y).float().mean()) if (y >= 0).all() else math.nan
        payload = results_payload(
            results_table(id_scores, ood_scores),
            id_test_accuracy=accuracy,
            n_id_test=int((~is_ood).sum()),
            ood_set_sizes={s: int(next(iter(v.values())).numel()) for s, v in ood_scores.items()},
            **self.meta,
        )
        js, _ = write_results(payload, self.output_dir, self.title)
        logger.info("results table of %d detectors x %d OOD sets written to %s", len(scores), len(names), js)


class PosthocCalibrationHandler(PosthocScoreWriter):
    """Record every post-hoc detector's in-distribution validation scores as its calibration, then save them.

    The same single forward pass per batch as :class:`PosthocScoreWriter` (so calibration and inference score
    identically); at completion each detector's :class:`~medood.detectors.calibration.Calibration` holds the
    scores (its split-conformal ``flagged`` threshold, see :meth:`~medood.detectors.calibration.Calibration.
    thresholds`) and ``save_path`` gets ``{name: state_dict}`` of every detector, as ``DetectorFitHandler`` saves
    them. Run it on ID images the detectors were not fitted on; a 5 % flag needs at least 19 of them.

    Args:
        detectors: ``{name: detector}`` (fitted).
        save_path: where the calibrated detectors go (``None``: kept in memory only).
        head: name of the classifier's final linear layer (``None`` = the last ``nn.Linear``).
    """

    def __init__(
        self,
        detectors: Mapping[str, OODDetector] | Sequence[OODDetector],
        save_path: str | os.PathLike[str] | None = None,
        head: str | None = None,
    ) -> None:
        super().__init__(detectors, output_dir=".", head=head, write_table=False)
        self.save_path = save_path

    def _completed(self, engine: Engine) -> None:
        if not self._merge_ranks(engine):  # sharded: rank 0 calibrates on every rank's scores (datalist order)
            return
        if not self.logits:
            raise RuntimeError("PosthocCalibrationHandler saw no batches: is the validation set empty?")
        for name, parts in self.scores.items():
            self.detectors[name].calibration.update(torch.cat(parts))
        n = sum(int(t.shape[0]) for t in self.logits)
        logger.info("calibrated %d detectors on %d in-distribution validation images", len(self.detectors), n)
        if self.save_path is not None:
            save_checkpoint({name: det.state_dict() for name, det in self.detectors.items()}, self.save_path)
