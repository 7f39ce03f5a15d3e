"""Handlers that feed a feature-map detector from the hooks of an engine's *own* forward pass.

A bundle's evaluator runs its network once per batch (or once per window batch with a sliding-window inferer);
forward hooks (:class:`~medood.networks.feature_maps.FeatureRecorder`) on the detector's layers record what that
pass computes, and at the end of each iteration the handler turns the recorded calls into one feature map per
case (:func:`item_features`) and hands them to the detector. Nothing else runs: the segmentation and whatever the
bundle writes are untouched.

* :class:`FeatureFitHandler`: ``partial_fit_features`` per batch, ``finalize_fit`` at the end (in-distribution
  training data);
* :class:`FeatureCalibrationHandler`: records the scores of in-distribution validation cases into the
  detector's :class:`~medood.detectors.calibration.Calibration` (the thresholds);
* :class:`GuardScoreWriter`: scores every case into an :class:`~medood.io.OODResult` for the run's one result
  writer (:class:`~medood.handlers.writers.OODResultWriter`: ``scores.csv``, ``thresholds.json``, ``run.json`` of
  :mod:`medood.io.run_folder`) and writes ``guard.json``; ``flagged`` = score above the threshold (the
  split-conformal threshold of :func:`medood.utils.conformal.conformal_threshold` that ``medood guard`` computed on
  the validation scores).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from medood.detectors.base_featuremap import FeatureMapDetector
from medood.handlers.writers import OODResultWriter
from medood.io.result import OODResult
from medood.networks.feature_maps import FeatureRecorder
from medood.utils.checkpoints import save_state
from medood.utils.distributed import barrier, dataset_size, gather_cases, get_rank, is_sharded
from medood.utils.io import atomic_write_text, case_name

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["FeatureCalibrationHandler", "FeatureFitHandler", "GuardScoreWriter", "item_features"]

logger = logging.getLogger(__name__)


def item_features(calls: dict[str, list[Tensor]], batch_size: int) -> dict[str, Tensor]:
    """One feature map per case from the hooked calls of one iteration.

    One call with the whole batch gives the maps as they are. Several calls for one case (sliding-window
    inference) give a ``(1, C, N)`` map with the voxels of every window side by side: every feature-map
    detector flattens the spatial axes, so its Gram matrix, pooled mean or voxel mean is that of all windows.

    Raises:
        ValueError: several calls for a batch of several cases (their windows cannot be told apart).
    """
    if not calls:
        raise RuntimeError("no features were recorded in this iteration: is the hooked network the engine's?")
    n_calls = len(next(iter(calls.values())))
    first = next(iter(calls.values()))[0]
    if n_calls == 1 and first.shape[0] == batch_size:
        return {k: v[0].float() for k, v in calls.items()}
    if batch_size == 1:  # float32: a bundle's mixed precision (amp) must not change the detector's arithmetic
        return {
            k: torch.cat([t.float().transpose(0, 1).reshape(t.shape[1], -1) for t in v], dim=1)[None]
            for k, v in calls.items()
        }
    raise ValueError(
        f"{n_calls} network calls for a batch of {batch_size} cases: use batch_size 1 with sliding-window inference"
    )


def _items(batch: Any) -> list[Any]:
    return batch if isinstance(batch, list) else [batch]


def _batch_size(batch: Any, image_key: str) -> int:
    if isinstance(batch, list):
        return len(batch)
    image = batch[image_key]
    return int(image.shape[0])


def _case_sources(batch: Any, image_key: str) -> list[str | None]:
    """The input file of every case of a batch (``None`` where the image has no file name)."""
    out: list[str | None] = []
    for item in _items(batch):
        meta = getattr(item.get(image_key), "meta", {}) or {}
        source = meta.get("filename_or_obj")
        out.extend(str(s) if s else None for s in (source if isinstance(source, (list, tuple)) else [source]))
    return out


class _HookedPass:
    """Hook ``engine.network`` at the start of a run; hand one feature map per case to :meth:`on_batch`."""

    def __init__(self, detector: FeatureMapDetector, image_key: str = "image") -> None:
        if not isinstance(detector, FeatureMapDetector):
            raise TypeError(f"{type(detector).__name__} does not read feature maps of a host network")
        self.detector, self.image_key = detector, image_key
        self._recorder: FeatureRecorder | None = None

    def attach(self, engine: Engine) -> None:
        """Register the event handlers (the network is hooked when the run starts)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        network: nn.Module = engine.network  # type: ignore[attr-defined]
        net = getattr(network, "module", network)
        if self._recorder is not None:
            self._recorder.remove()
        self._recorder = FeatureRecorder(net, {name: name for name in self.detector.layers})
        self.on_start(engine)

    def _iteration(self, engine: Engine) -> None:
        assert self._recorder is not None
        calls = self._recorder.pop_calls()
        feats = item_features(calls, _batch_size(engine.state.batch, self.image_key))
        with torch.no_grad():
            self.on_batch(engine, {k: v.to(self.detector.layer_mean.device) for k, v in feats.items()})

    def _completed(self, engine: Engine) -> None:
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
        self.on_end(engine)

    def on_start(self, engine: Engine) -> None:
        """Called when the run starts."""

    def on_batch(self, engine: Engine, features: dict[str, Tensor]) -> None:
        """Called with ``{layer: (B, C, *S)}`` of every iteration."""

    def on_end(self, engine: Engine) -> None:
        """Called when the run completes."""


_LABEL = "__fit_label__"  # the per-case fit label, carried with a sharded case's features


class FeatureFitHandler(_HookedPass):
    """Fit a feature-map detector on the cases of an in-distribution pass.

    Args:
        detector: the detector (its ``layers`` are hooked).
        image_key: batch key of the image. Defaults to ``"image"``.
        save_path: write the fitted detector there at the end (``{"model": state_dict}``). Defaults to ``None``.
        label_key: batch key of an integer per case given to the fit as ``labels`` (e.g. the domain of a
            multi-task host's case, stored by the spectral detector with its signatures). Defaults to ``None``.
    """

    def __init__(
        self,
        detector: FeatureMapDetector,
        image_key: str = "image",
        save_path: str | os.PathLike[str] | None = None,
        label_key: str | None = None,
    ) -> None:
        super().__init__(detector, image_key)
        self.save_path, self.n_cases, self.label_key = save_path, 0, label_key

    def on_start(self, engine: Engine) -> None:
        """Clear the running statistics."""
        self.detector.reset_fit()
        self.n_cases = 0
        self._sharded = is_sharded(getattr(engine, "data_loader", None))
        self._cases: list[dict[str, Tensor]] = []

    def on_batch(self, engine: Engine, features: dict[str, Tensor]) -> None:
        """Accumulate the batch (sharded under torchrun: keep its cases until every rank's are gathered)."""
        n = next(iter(features.values())).shape[0]
        self.n_cases += n
        labels = None
        if self.label_key is not None:
            batch: Any = engine.state.batch
            labels = torch.as_tensor(batch[self.label_key]).reshape(-1).long()
            features = {**features, _LABEL: labels.to(self.detector.layer_mean.device)}
        if not self._sharded:
            self.detector.partial_fit_features({k: v for k, v in features.items() if k != _LABEL}, labels)
            return
        self._cases.extend({k: v[i : i + 1].cpu() for k, v in features.items()} for i in range(n))

    def on_end(self, engine: Engine) -> None:
        """Finalise the fit (and save)."""
        if self._sharded:  # distributed fitting: every rank's cases in dataset order, as one process sees them
            cases = gather_cases(self._cases, dataset_size(engine))
            self._cases, self.n_cases = [], len(cases)
            for case in cases:
                case = {k: v.to(self.detector.layer_mean.device) for k, v in case.items()}
                self.detector.partial_fit_features({k: v for k, v in case.items() if k != _LABEL}, case.get(_LABEL))
        if self.n_cases == 0:
            raise RuntimeError("FeatureFitHandler saw no case: is the in-distribution list empty?")
        self.detector.finalize_fit()
        self.detector.mark_fitted()
        logger.info("%s fitted on %d in-distribution cases", type(self.detector).__name__, self.n_cases)
        if self.save_path is not None and get_rank() == 0:
            save_state(self.detector, self.save_path)


class FeatureCalibrationHandler(_HookedPass):
    """Record the scores of in-distribution validation cases as the detector's calibration.

    Args:
        detector: a fitted detector.
        image_key: batch key of the image. Defaults to ``"image"``.
        save_path: write the calibrated detector there at the end. Defaults to ``None``.
    """

    def __init__(
        self, detector: FeatureMapDetector, image_key: str = "image", save_path: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__(detector, image_key)
        self.save_path = save_path
        self.scores: list[Tensor] = []

    def on_start(self, engine: Engine) -> None:
        """Require a fitted detector; clear the scores."""
        self.detector.check_fitted()
        self.scores = []

    def on_batch(self, engine: Engine, features: dict[str, Tensor]) -> None:
        """Score the batch."""
        self.scores.append(self.detector.score_features(features).image_score.detach().cpu())

    @property
    def values(self) -> list[float]:
        """The validation scores of the last run, in case order."""
        return torch.cat(self.scores).tolist() if self.scores else []

    def on_end(self, engine: Engine) -> None:
        """Record the score quantiles (and save)."""
        if is_sharded(getattr(engine, "data_loader", None)):  # every rank's cases in dataset order
            per_case = [s.reshape(1) for batch in self.scores for s in batch.reshape(-1)]
            self.scores = gather_cases(per_case, dataset_size(engine))
        if not self.scores:
            raise RuntimeError("FeatureCalibrationHandler saw no case: is the validation list empty?")
        self.detector.calibration.update(torch.cat(self.scores))
        logger.info(
            "calibrated on %d validation cases: %s", sum(map(len, self.scores)), self.detector.calibration.to_dict()
        )
        if self.save_path is not None and get_rank() == 0:
            save_state(self.detector, self.save_path)
        barrier()


class GuardScoreWriter(_HookedPass):
    """A source of per-case :class:`~medood.io.OODResult` objects (score only, no map) for the run's one result writer.

    Every case of the run is scored on the hooked forward pass and handed to an
    :class:`~medood.handlers.writers.OODResultWriter` (``save_maps=False``), which decides ``flagged``, names the
    case and writes ``scores.csv`` (``case,score,flagged[,image]``), ``thresholds.json`` and ``run.json`` through
    :mod:`medood.io.run_folder`, as for every other detector; this handler adds ``guard.json`` (layers, rule).

    Args:
        detector: a fitted detector.
        output_dir: where the files go.
        threshold: flag a case when its score is above it; ``medood guard`` writes the split-conformal threshold
            of its validation scores here. ``None``: the detector's calibration at ``false_alarm_rate``
            (:meth:`~medood.detectors.calibration.Calibration.thresholds`, for bundles that calibrate the detector
            themselves); a calibration too small for it refuses: ``flagged`` stays empty and ``guard.json`` records
            why. Defaults to ``None``.
        false_alarm_rate: the requested false-alarm rate (recorded; used only when ``threshold`` is ``None``).
            Defaults to 0.05.
        image_key: batch key of the image. Defaults to ``"image"``.
        threshold_info: what the threshold guarantees (rule, ``alpha``, ``n``, rank, warnings), copied into
            ``guard.json`` and ``thresholds.json``. Defaults to ``None``.
        case_files: files the run writes per case besides the scores, as patterns of ``{case}`` (e.g.
            ``["{case}_seg.nii.gz"]`` for a ``SaveImaged`` of the segmentation): a resumed case needs them whole.
        run_mode: how the run treats an output folder that holds another run (:class:`medood.io.RunFolder`;
            ``None``: ``MEDOOD_RUN_MODE``, else ``"new"``). Defaults to ``None``.
    """

    def __init__(
        self,
        detector: FeatureMapDetector,
        output_dir: str | os.PathLike[str],
        threshold: float | None = None,
        false_alarm_rate: float = 0.05,
        image_key: str = "image",
        threshold_info: dict[str, Any] | None = None,
        run_mode: str | None = None,
        case_files: Sequence[str] = (),
    ) -> None:
        super().__init__(detector, image_key)
        if not 0.0 < false_alarm_rate < 1.0:
            raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
        self.output_dir, self.false_alarm_rate, self.threshold = Path(output_dir), false_alarm_rate, threshold
        self.threshold_info = dict(threshold_info or {})
        self.writer = OODResultWriter(
            output_dir, score_threshold=threshold, score_percentile=100.0 * (1.0 - false_alarm_rate),
            save_maps=False, run_mode=run_mode, case_files=case_files,
            score_rule=self.threshold_info if threshold is not None else None,
            config={"guard": {"detector": detector.name, "layers": list(detector.layers), "threshold": threshold,
                              "false_alarm_rate": false_alarm_rate}},
        )  # fmt: skip

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The ``scores.csv`` rows of the run (all ranks' on rank 0 once the run ended)."""
        return self.writer.rows

    def on_start(self, engine: Engine) -> None:
        """Take the output folder and resolve the threshold (the detector's state is loaded by now)."""
        self.detector.check_fitted()
        self.writer.calibration = None if self.threshold is not None else self.detector.calibration
        self.writer.start(engine)
        record = self.writer.resolve_thresholds()
        self.threshold = record["score_threshold"]
        self.threshold_info = {**(record["score_rule"] or {}), **self.threshold_info}
        if self.threshold is None:
            logger.warning(
                "guard: no flag threshold (%s): scores are written, cases are not flagged",
                self.threshold_info.get("refused", "no calibration"),
            )

    def on_batch(self, engine: Engine, features: dict[str, Tensor]) -> None:
        """Score the cases of the batch and hand their results to the writer."""
        out = self.detector.score_features(features)
        sources = _case_sources(engine.state.batch, self.image_key)
        for source, score in zip(sources, out.image_score.tolist()):
            case = case_name(source) if source else f"case_{len(self.writer.rows):04d}"
            result = OODResult(case, float(score), image=source, extras={"detector": self.detector.name})
            name = self.writer.write_result(result)
            if result.flagged:
                logger.warning(
                    "%s is out of distribution (score %.4g > %.4g): do not trust its output",
                    name,
                    score,
                    self.threshold,
                )

    def on_end(self, engine: Engine) -> None:
        """Write scores.csv, thresholds.json, run.json (the writer) and guard.json (rank 0 of a sharded run)."""
        self.writer.finalize()
        if get_rank() != 0:
            return
        rows = self.writer.rows
        info = {
            "detector": self.detector.name,
            "layers": self.detector.layers,
            "threshold": self.threshold,
            "false_alarm_rate": self.threshold_info.get("alpha", self.false_alarm_rate),
            "threshold_rule": self.threshold_info,
            "n_cases": len(rows),
            "n_flagged": None if self.threshold is None else sum(int(r["flagged"] or 0) for r in rows),
            "score_convention": "higher = more out-of-distribution; flagged = score > threshold",
        }
        atomic_write_text(self.output_dir / "guard.json", json.dumps(info, indent=2) + "\n")
        if self.threshold is not None:
            logger.info("guard: %d of %d cases flagged out of distribution", info["n_flagged"], info["n_cases"])
