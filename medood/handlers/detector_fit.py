"""Handlers that fit and calibrate detectors during an engine pass (no extra pass over the data)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from medood.detectors.base import OODDetector
from medood.detectors.posthoc import begin_fit, end_fit, fit_batch
from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.transforms.foreground import FOREGROUND_KEY
from medood.utils.checkpoints import save_checkpoint, save_state
from medood.utils.distributed import barrier, dataset_size, gather_cases, get_rank, get_world_size, is_sharded
from medood.utils.enums import OODKeys

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["CalibrationHandler", "DetectorFitHandler"]

logger = logging.getLogger(__name__)


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class DetectorFitHandler:
    """Fit post-hoc detectors from the features of the engine's own forward passes, then save them.

    Attach to an evaluator whose network is the host classifier. A forward hook captures the input of the
    classifier head (the penultimate features) while the engine runs; at each iteration every detector gets
    ``partial_fit_features({"features", "logits"}, labels)``; at completion ``finalize_fit``. One backbone
    pass fits them all.

    Args:
        detectors: the detectors to fit (post-hoc detectors: they consume ``features`` / ``logits``).
        head: name of the classifier's final linear layer (``None`` = the last ``nn.Linear``).
        label_key: key of the class labels in the engine output / batch. Defaults to ``"label"``.
        save_path: optional checkpoint written at completion: ``{"<name>": state_dict, ...}`` for several
            detectors, or ``{"model": state_dict}`` for one (rank 0).

    Under ``torchrun`` with a sharded loader (``DistributedSampler``, no shuffling) each rank keeps its cases'
    features and the completed pass fits every detector on all of them in dataset order (gathered with
    ``all_gather_object``), so N processes fit the buffers one process fits; the detectors stay free of
    distributed calls.
    """

    def __init__(
        self,
        detectors: OODDetector | Sequence[OODDetector],
        head: str | None = None,
        label_key: str = OODKeys.LABEL.value,
        save_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.detectors = _as_list(detectors)
        self._named = {f"{i}:{d.name}": d for i, d in enumerate(self.detectors)}
        self.head, self.label_key, self.save_path = head, label_key, save_path
        self._extractor: FeatureExtractor | None = None
        self.n_batches, self._batch_size, self._sharded = 0, 1, False
        self._cases: list[tuple[dict[str, Tensor], Tensor | None]] = []

    def attach(self, engine: Engine) -> None:
        """Register the event handlers.

        The network is hooked when the run starts: MONAI engines attach handlers before they set ``network``.
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        if self._extractor is None:
            network: nn.Module = engine.network  # type: ignore[attr-defined]
            net: nn.Module = getattr(network, "module", network)
            head_name, _ = find_linear_head(net, self.head)
            self._extractor = FeatureExtractor(net, {OODKeys.FEATURES.value: f"{head_name}:input"})
        self.n_batches, self._batch_size, self._cases = 0, 1, []
        self._sharded = is_sharded(getattr(engine, "data_loader", None))
        begin_fit(self._named)

    def _iteration(self, engine: Engine) -> None:
        assert self._extractor is not None
        captured = self._extractor.pop()
        output = engine.state.output
        logits = _stack(output, "pred")
        if logits is None:
            raise RuntimeError("DetectorFitHandler: the engine output has no 'pred' logits tensor")
        labels = _stack(output, self.label_key)
        feats = {
            OODKeys.FEATURES.value: flatten_features(captured[OODKeys.FEATURES.value]).float(),
            OODKeys.LOGITS.value: logits.float(),
        }
        if labels is not None:
            labels = (
                labels.reshape(labels.shape[0], -1).argmax(1)
                if labels.ndim > 1 and labels.shape[-1] > 1
                else labels.reshape(-1)
            )
        labels = None if labels is None else labels.long()
        self.n_batches += 1
        if not self._sharded:
            fit_batch(self._named, feats, labels)
            return
        self._batch_size = max(self._batch_size, len(logits))
        for i in range(len(logits)):  # kept per case until every rank's cases are gathered
            case = {k: v[i].detach().cpu() for k, v in feats.items()}
            self._cases.append((case, None if labels is None else labels[i].cpu()))

    def _replay(self, engine: Engine) -> None:
        """Fit on every rank's cases in dataset order, in batches of the loader's size (distributed fitting).

        Each case goes to the dataset index the rank's sampler gave it: with the whole-batch
        :class:`~medood.data.shard.BatchShardSampler` (``multi_gpu_fit.yaml``) every case was computed in the batch
        one process puts it in, so the replayed batches, hence the fitted buffers, are one process's bit for bit.
        """
        loader = getattr(engine, "data_loader", None)
        self._batch_size = int(getattr(loader, "batch_size", None) or self._batch_size)
        cases = gather_cases(self._cases, dataset_size(engine), list(getattr(loader, "sampler", None) or []) or None)
        for start in range(0, len(cases), self._batch_size):
            chunk = cases[start : start + self._batch_size]
            feats = {k: torch.stack([c[0][k] for c in chunk]) for k in chunk[0][0]}
            labels = None if chunk[0][1] is None else torch.stack([c[1] for c in chunk if c[1] is not None])
            fit_batch(self._named, feats, labels)
        self._cases = []

    def _completed(self, engine: Engine) -> None:
        if self._sharded:
            self._replay(engine)
        end_fit(self._named)
        logger.info("fitted %d detector(s) on %d batches", len(self.detectors), self.n_batches)
        if self.save_path is not None and get_rank() == 0:
            if len(self.detectors) == 1:
                save_state(self.detectors[0], self.save_path)
            else:
                save_checkpoint({d.name or type(d).__name__: d.state_dict() for d in self.detectors}, self.save_path)
        barrier()


def _stack(output: Any, key: str) -> Tensor | None:
    """Gather ``key`` from a batched output dict or a decollated list of dicts."""
    if isinstance(output, dict):
        v = output.get(key)
        return v if isinstance(v, Tensor) else None
    items = [o.get(key) for o in output]
    if any(not isinstance(v, Tensor) for v in items):
        return None
    return torch.stack([torch.as_tensor(v) for v in items])


class CalibrationHandler:
    """Record healthy score and map-value quantiles from an evaluator pass into ``detector.calibration``.

    Attach to an :class:`~medood.engines.OODEvaluator` running on **healthy validation data**. It reads the
    volume score (``ood_score``) and the map (``pred``, after postprocessing, i.e. on the grid maps are written
    on) of every item; map values are a seeded subsample of the foreground. No map values are recorded for a
    detector whose map only explains its score (``detector.map_has_threshold`` is ``False``): no mask threshold.

    Args:
        detector: the detector whose calibration is updated.
        foreground: ``"nonzero"`` (map voxels > 0: detectors that zero the background, e.g. outside the
            brain), ``"batch"`` (the item's ``foreground`` from :class:`medood.transforms.Foregroundd`, inverted
            with the map; map voxels > 0 where an item has none), ``"all"``, or a callable ``f(item) -> bool mask``.
            Defaults to ``"nonzero"``.
        values_per_case: map values sampled per case. Defaults to 20_000.
        seed: sampling seed (case ``i`` of the dataset samples with ``seed + i``). Defaults to 0.
        save_path: optional path where the calibrated detector is saved (``{"model": state_dict}``; rank 0).

    Under ``torchrun`` with a sharded loader (``DistributedSampler``, no shuffling) every rank records its cases
    and the completed pass gathers them in dataset order: N processes record what one records.
    """

    def __init__(
        self,
        detector: OODDetector,
        foreground: str | Callable[[dict], Tensor] = "nonzero",
        values_per_case: int = 20_000,
        seed: int = 0,
        save_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(foreground, str) and foreground not in ("nonzero", "batch", "all"):
            raise ValueError(f"foreground must be 'nonzero', 'batch', 'all' or a callable, got {foreground!r}")
        self.detector, self.foreground = detector, foreground
        self.values_per_case, self.seed, self.save_path = values_per_case, seed, save_path
        self.scores: list[Tensor] = []
        self.values: list[Tensor | None] = []
        self._sharded = False

    def attach(self, engine: Engine) -> None:
        """Register the event handlers."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.scores, self.values = [], []
        self._sharded = is_sharded(getattr(engine, "data_loader", None))

    def _case_index(self) -> int:
        """The dataset index of the next case (rank ``r`` of ``W`` sees the cases ``r, r + W, ...`` when sharded)."""
        k = len(self.scores)
        return k * get_world_size() + get_rank() if self._sharded else k

    def _iteration(self, engine: Engine) -> None:
        for item in _as_list(engine.state.output):
            gen = torch.Generator().manual_seed(self.seed + self._case_index())  # per case: any sharding, same values
            self.scores.append(torch.as_tensor(item[OODKeys.SCORE.value]).detach().float().cpu().reshape(-1))
            self.values.append(None)
            amap = item.get("pred")
            if not self.detector.map_has_threshold or not isinstance(amap, Tensor) or amap.ndim < 2:
                continue  # an explanation map (the detector says: map_has_threshold) has no healthy threshold
            m = amap.detach().float().cpu()
            fg = item.get(FOREGROUND_KEY) if self.foreground == "batch" else None
            if isinstance(fg, Tensor) and fg.shape[-m.ndim + 1 :] == m.shape[1:]:
                v = m[fg.detach().cpu().bool().expand_as(m)]
            elif self.foreground in ("nonzero", "batch"):
                v = m[m > 0]
            elif self.foreground == "all":
                v = m.reshape(-1)
            elif callable(self.foreground):
                v = m[self.foreground(item).cpu().bool().expand_as(m)]
            else:
                raise ValueError(f"unknown foreground {self.foreground!r}")
            if v.numel() > self.values_per_case:
                v = v[torch.randperm(v.numel(), generator=gen)[: self.values_per_case]]
            self.values[-1] = v

    def _completed(self, engine: Engine) -> None:
        if self._sharded:  # every rank's cases, in dataset order: the same calibration as one process
            total = dataset_size(engine)
            self.scores, self.values = gather_cases(self.scores, total), gather_cases(self.values, total)
        if not self.scores:
            raise RuntimeError("CalibrationHandler saw no items: is the validation loader empty?")
        values: list[Tensor] = [v for v in self.values if v is not None]
        self.detector.calibration.update(torch.cat(self.scores), torch.cat(values) if values else None)
        logger.info("calibrated on %d healthy cases: %s", len(self.scores), self.detector.calibration.to_dict())
        if self.save_path is not None and get_rank() == 0:
            save_state(self.detector, self.save_path)
        barrier()
