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
from medood.handlers.resume import ResumableRun
from medood.io import run_folder as rf
from medood.metrics.tables import results_payload, results_table, write_results
from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.utils.checkpoints import save_checkpoint
from medood.utils.distributed import get_rank
from medood.utils.enums import OODKeys
from medood.utils.errors import DataError
from medood.utils.io import atomic_write

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["PosthocCalibrationHandler", "PosthocScoreWriter"]

logger = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"


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
    scores them with every detector (detectors with ``needs_own_pass``, e.g. ODIN, run their own passes on the
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
        run_folder: own ``output_dir`` as a run folder (:class:`medood.io.RunFolder`: ``run.json``, a progress
            journal, ``run_mode``); a resumed run keeps the cases whose rows are recorded (the journal of a killed
            run, or every detector's ``scores.csv`` and ``predictions.csv`` of a finished one) and scores the
            batches of the others only (:class:`medood.handlers.resume.ResumableRun`). Defaults to ``False``.
        run_mode: ``"new"``, ``"resume"`` or ``"overwrite"`` (``None``: ``MEDOOD_RUN_MODE``, else ``"new"``); used
            with ``run_folder`` only.
        config: what identifies the run's settings in ``run.json`` (the writer's own are always added).

    Every case goes through one record ``{"case", "is_ood", "ood_set", "label", "scores": {detector: score},
    "logits"}`` (what the journal holds; float32 values, exact in JSON), so a resumed run writes the bytes an
    uninterrupted one writes.
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
        run_folder: bool = False,
        run_mode: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.alpha = alpha
        self.detectors = dict(detectors) if isinstance(detectors, Mapping) else {d.name: d for d in detectors}
        self.output_dir, self.head = Path(output_dir), head
        self.class_names = list(class_names) if class_names is not None else None
        self.write_table, self.title, self.meta = write_table, title, dict(meta or {})
        self._extractor: FeatureExtractor | None = None
        self._net: Any = None
        self.resume: ResumableRun | None = None
        if run_folder:
            settings = {"detectors": sorted(self.detectors), "alpha": alpha, "class_names": self.class_names}
            folder = rf.RunFolder(self.output_dir, {**(config or {}), "writer": settings}, run_mode, "scores", [])
            self.resume = ResumableRun(folder)
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
        if self.resume is not None:
            self.resume.start(engine, self._complete_cases, _datalist_names)

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
        needs_images = any(det.needs_own_pass for det in self.detectors.values())
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
        if self.resume is not None:  # the journal of a resumed run (fsync-ed per case)
            per_detector = {name: s.tolist() for name, s in scores.items()}
            for record in self._records(start, per_detector, logits.cpu().tolist()):
                self.resume.record(record["case"], record)

    def _records(
        self, start: int = 0, scores: dict[str, list[float]] | None = None, logits: list[list[float]] | None = None
    ) -> list[dict[str, Any]]:
        """The records of the cases from ``start`` on (their ``scores`` / ``logits`` from ``start``; default: all)."""
        if scores is None:
            scores = {n: torch.cat(v).tolist() if v else [] for n, v in self.scores.items()}
        if logits is None:
            logits = torch.cat(self.logits).tolist() if self.logits else []
        return [
            {"case": self.rows["case"][start + i], "is_ood": self.rows["is_ood"][start + i],
             "ood_set": self.rows["ood_set"][start + i], "label": self.rows[OODKeys.LABEL.value][start + i],
             "scores": {n: s[i] for n, s in scores.items()}, "logits": logits[i]}
            for i in range(len(self.rows["case"]) - start)
        ]  # fmt: skip

    def _complete_cases(self) -> dict[str, dict[str, Any]]:
        """The recorded cases of a resumed run (rank 0): the journal of a killed run, or the CSVs of a finished one.

        A finished run's case is kept when every detector's ``scores.csv`` and ``predictions.csv`` hold its row
        (its scores as written, 7 significant digits, and its prediction as written).
        """
        assert self.resume is not None
        found: dict[str, dict[str, Any]] = {}
        previous = self.resume.run.previous_cases
        try:
            per_detector = (
                {
                    n: {r.case: r for r in rf.read_score_rows(self.output_dir / n / rf.SCORES_CSV)}
                    for n in self.detectors
                }
                if previous
                else {}
            )
            predictions = _read_predictions(self.output_dir / PREDICTIONS_CSV) if previous else {}
        except DataError as e:
            logger.warning("resume: the previous run's CSVs cannot be read (%s); its cases are scored again", e)
            per_detector, predictions = {}, {}
        for case in previous:
            rows = [per_detector.get(n, {}).get(case) for n in self.detectors]
            if case not in predictions or any(r is None for r in rows):
                continue
            first = rows[0]
            assert first is not None
            found[case] = {"row": {
                "case": case, "is_ood": first.label, "ood_set": first.extra.get("ood_set") or None,
                "label": predictions[case][2], "scores": {n: r.score for n, r in zip(self.detectors, rows) if r},
                "logits": None, "prediction": predictions[case][:2],
            }}  # fmt: skip
        found.update(self.resume.run.progress())
        return found

    def _write_csv(self, path: Path, header: list[str], rows: list[list[Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows([rf.escape_cell(v) for v in row] for row in rows)  # no spreadsheet formulas

    def _merge_ranks(self, engine: Engine) -> list[dict[str, Any]] | None:
        """Every case's record (the kept ones of a resumed run too) in datalist order; ``None`` on ranks but 0."""
        own = self._records()
        if self.resume is not None and self.resume.started:
            merged = self.resume.merge(own, [rec["row"] for rec in self.resume.kept.values()], _record_case)
        else:
            loader = getattr(engine, "data_loader", None)
            merged = merge_rows(own, case_order(datalist_of(loader) or []), _record_case, loader)
        return merged if get_rank() == 0 else None

    def _completed(self, engine: Engine) -> None:
        records = self._merge_ranks(engine)
        if records is None:
            return
        if not records:
            raise RuntimeError("PosthocScoreWriter saw no batches: is the dataset empty?")
        cases = [r["case"] for r in records]
        is_ood, sets, labels = ([r[k] for r in records] for k in ("is_ood", "ood_set", OODKeys.LABEL.value))
        has_ood = all(v is not None for v in is_ood)
        has_sets = has_ood and all(v is not None for v in sets)
        scores = {n: torch.tensor([r["scores"][n] for r in records], dtype=torch.float32) for n in self.detectors}
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
        names, predicted = self._predictions(records)
        has_label = all(v is not None for v in labels)
        rows = [[c, p, q] + ([labels[i]] if has_label else []) for i, (c, (p, q)) in enumerate(zip(cases, predicted))]
        self._write_csv(
            self.output_dir / PREDICTIONS_CSV,
            ["case", "pred_class", "confidence"] + (["label"] if has_label else []),
            rows,
        )
        logger.info("wrote scores of %d cases for %s to %s", len(cases), sorted(scores), self.output_dir)
        if self.write_table and has_ood and {0, 1} <= {int(v) for v in is_ood}:
            pred = torch.tensor([names.index(p) if p in names else -1 for p, _ in predicted])
            self._write_table(scores, pred, is_ood, sets, labels if has_label else None)
        if self.resume is not None:
            self.resume.finish(cases)

    def _predictions(self, records: list[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
        """The class names and every case's ``(pred_class, confidence)``: softmax of its logits, or as kept."""
        with_logits = [i for i, r in enumerate(records) if r.get("logits") is not None]
        n_classes = len(records[with_logits[0]]["logits"]) if with_logits else len(self.class_names or [])
        names = self.class_names or [str(i) for i in range(n_classes)]
        predicted = [tuple(r.get("prediction") or ("", "")) for r in records]
        if with_logits:
            logits = torch.tensor([records[i]["logits"] for i in with_logits], dtype=torch.float32)
            prob, pred = torch.softmax(logits, 1).max(1)
            for i, p, q in zip(with_logits, pred.tolist(), prob.tolist(), strict=True):
                predicted[i] = (names[int(p)], f"{float(q):.6f}")
        return names, [(str(p), str(q)) for p, q in predicted]

    def _write_table(
        self, scores: dict[str, Tensor], pred: Tensor, is_ood_list: list[Any], sets_list: list[Any],
        labels: list[Any] | None,
    ) -> None:  # fmt: skip
        is_ood = torch.tensor([int(v) for v in is_ood_list], dtype=torch.bool)
        sets = [str(s) if s is not None else "ood" for s in sets_list]
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
        records = self._merge_ranks(engine)  # sharded: rank 0 calibrates on every rank's scores (datalist order)
        if records is None:
            return
        if not records:
            raise RuntimeError("PosthocCalibrationHandler saw no batches: is the validation set empty?")
        for name in self.detectors:
            self.detectors[name].calibration.update(torch.tensor([r["scores"][name] for r in records]))
        n = len(records)
        logger.info("calibrated %d detectors on %d in-distribution validation images", len(self.detectors), n)
        if self.save_path is not None:
            save_checkpoint({name: det.state_dict() for name, det in self.detectors.items()}, self.save_path)


def _record_case(record: dict[str, Any]) -> str:
    return str(record["case"])


def _datalist_names(items: Sequence[Any]) -> list[str | None]:
    """The case of every datalist item as the writer names it (its ``case`` field; ``None`` when it has none)."""
    key = OODKeys.CASE.value
    return [str(it[key]) if isinstance(it, Mapping) and it.get(key) is not None else None for it in items]


def _number(cell: str | None) -> int | str | None:
    """A class label cell as written: an integer when it is one (as the data gives it), else the text."""
    try:
        return None if cell is None else int(cell)
    except ValueError:
        return cell


def _read_predictions(path: Path) -> dict[str, tuple[str, str, int | str | None]]:
    """``{case: (pred_class, confidence, label)}`` of a ``predictions.csv`` (cells as written)."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, tuple[str, str, int | str | None]] = {}
    for r in rows:
        if not r.get("case") or r.get("pred_class") is None or r.get("confidence") is None:
            raise DataError(path, "is not a case,pred_class,confidence file")
        label = rf.unescape_cell(r["label"]) if r.get("label") else None
        out[rf.unescape_cell(r["case"])] = (rf.unescape_cell(r["pred_class"]), r["confidence"], _number(label))
    return out
