"""A bundle's parts for the per-method benchmarks: its parsed configs, shipped network, datalists, timed evaluator.

The per-method scripts (``scripts/bench_*.py``, ``scripts/diagnose_mim*.py``, ``scripts/tune_mim_validation.py``)
score with a bundle's own configs (preprocessing, datalists, network) rather than copies of them:

* :func:`bundle_parser` / :func:`load_network`: the configs merged with ``bundle_root`` set, and a network with
  its weights loaded, in eval mode; :func:`bundle_network`: both at once, the shipped weights;
  :func:`bundle_classifier`: the classifier a seed method sits on, as a plain classifier for post-hoc detectors;
* :func:`class_folder_sets` / :func:`split_evaluation_items` / :func:`item_loader`: ID train, ID test and the OOD
  sets of a demo task as the bundles' ``evaluate.yaml`` list them, and loaders over them;
* :func:`collect_scores` / :func:`batch_images`: per-image scores of a detector over a loader, plain image batches;
* :func:`timed_evaluator_run`: a bundle's inference evaluator with the seconds of every network call;
  :func:`timed_workflow_run` / :func:`timed_process_run`: the run step of a bundle config in this process, a whole
  ``monai.bundle run`` process (:func:`process_run_command`: its arguments);
* :func:`calibrated_map_quality`: map metrics of an evaluator's written maps at the detector's calibrated threshold;
* :func:`model_space_transform`: volumes and their masks read into a volume bundle's model space together.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, CropForegroundd, EnsureTyped, Orientationd, ResizeWithPadOrCropd, Spacingd
from torch import nn

from medood.benchmark.timing import CallTimer
from medood.data.folders import class_folder_datalist, ood_datalists
from medood.data.transforms import LoadVolumed
from medood.metrics.files import evaluate_outputs
from medood.networks.nets import FinalExitClassifier, MultiExitResNet
from medood.transforms import ScaleNonzeroPercentiled
from medood.utils.checkpoints import load_state

__all__ = [
    "BundleClassifier",
    "EvaluatorRun",
    "batch_images",
    "bundle_classifier",
    "bundle_network",
    "bundle_parser",
    "calibrated_map_quality",
    "class_folder_sets",
    "collect_scores",
    "item_loader",
    "load_network",
    "model_space_transform",
    "process_run_command",
    "split_evaluation_items",
    "timed_evaluator_run",
    "timed_process_run",
    "timed_workflow_run",
]

#: ``(train items, ID test items, {ood_set: items})``
Sets = tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]


def bundle_parser(bundle: Path, configs: Sequence[str], meta: bool = False, **overrides: Any) -> ConfigParser:
    """A bundle's configs merged in order, with ``bundle_root`` and ``overrides`` set.

    ``configs`` are names under ``bundle/configs/``; with ``meta``, ``configs/metadata.json`` is read too.
    """
    p = ConfigParser()
    p.read_config([str(bundle / "configs" / c) for c in configs])
    if meta:
        p.read_meta(str(bundle / "configs" / "metadata.json"))
    p.update({"bundle_root": str(bundle), **overrides})
    return p


def load_network(parser: ConfigParser, key: str = "network", ckpt: Path | str | None = None, **kwargs: Any) -> Any:
    """The parsed ``key`` with the weights of ``ckpt`` (default: the config's ``ckpt_path``), in eval mode.

    ``kwargs`` go to :func:`medood.utils.checkpoints.load_state` (e.g. ``prefixes``).
    """
    net = parser.get_parsed_content(key)
    load_state(net, ckpt if ckpt is not None else parser.get_parsed_content("ckpt_path"), **kwargs)
    return net.eval()


def bundle_network(
    bundle: Path, key: str = "network_def", configs: Sequence[str] = ("inference.yaml",), weights: str = "model.pt"
) -> tuple[Any, ConfigParser]:
    """A bundle's network ``key`` with its shipped ``models/<weights>`` (eval mode), and the parsed ``configs``."""
    parser = bundle_parser(bundle, configs)
    return load_network(parser, key, bundle / "models" / weights), parser


@dataclass(frozen=True)
class BundleClassifier:
    """The classifier a bundle's detector sits on, as a plain ``x -> logits`` network.

    Attributes:
        network: the classifier (eval mode, shipped weights): a heatmap bundle's frozen ``classifier_def``, or
            the final exit of a MECAM bundle's multi-exit network (:class:`~medood.networks.nets.FinalExitClassifier`).
        class_names: its label order (the bundle's ``class_names``).
        image_size: the side of its square inputs (the bundle's ``image_size``).
        weights: the resolved weights file (two bundles with the same file share one classifier).
        description: one phrase naming it, for the page.
    """

    network: nn.Module
    class_names: list[str]
    image_size: int
    weights: Path
    description: str


def bundle_classifier(bundle: Path, configs: Sequence[str] = ("inference.yaml",)) -> BundleClassifier:
    """The classifier of ``bundle`` with its shipped weights, read through the bundle's configs.

    A bundle with a ``classifier_def`` (the heatmap bundles) gives that network with the weights of its
    ``classifier_path`` (possibly another bundle's); one whose ``network_def`` owns a
    :class:`~medood.networks.nets.MultiExitResNet` (MECAM) gives its final exit.

    Raises:
        ValueError: the bundle has neither.
    """
    parser = bundle_parser(bundle, configs)
    names, size = list(parser["class_names"]), int(parser["image_size"])
    if parser.get("classifier_def") is not None:
        weights = Path(parser.get_parsed_content("classifier_path")).resolve()
        net = load_network(parser, "classifier_def", weights)
        how = f"the frozen classifier of {bundle.name} ({weights.parent.parent.name}/models/{weights.name})"
        return BundleClassifier(net, names, size, weights, how)
    weights = Path(parser.get_parsed_content("ckpt_path")).resolve()
    owner = load_network(parser, "network_def", weights)
    multi = getattr(owner, "net", None)
    if not isinstance(multi, MultiExitResNet):
        raise ValueError(f"{bundle.name}: no classifier_def and no multi-exit network in network_def")
    how = f"the final exit of the multi-exit ResNet of {bundle.name} (models/{weights.name})"
    return BundleClassifier(FinalExitClassifier(multi).eval(), names, size, weights, how)


def split_evaluation_items(
    items: Iterable[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """``(ID test items, {ood_set: items})`` of an evaluation datalist.

    Items carry ``is_ood`` (0 / 1) and, when OOD, ``ood_set``; the sets come in order of first appearance.
    """
    test: list[dict[str, Any]] = []
    sets: dict[str, list[dict[str, Any]]] = {}
    for d in items:
        if d["is_ood"]:
            sets.setdefault(d["ood_set"], []).append(dict(d))
        else:
            test.append(dict(d))
    return test, sets


def class_folder_sets(data: Path, class_names: Sequence[str]) -> Sets:
    """A 2D demo task as the bundles' ``evaluate.yaml`` list it: ``(train, ID test, {ood_set: items})``.

    ``data/train|test/<class>/`` and one OOD set per sub-folder of ``data/ood_near`` and ``data/ood_far``; OOD
    items get ``label`` -1, ID test items ``is_ood`` 0.
    """
    train = class_folder_datalist(data, "train", class_names)[0]
    items = [{**d, "is_ood": 0} for d in class_folder_datalist(data, "test", class_names)[0]]
    for entries in ood_datalists([data / "ood_near", data / "ood_far"]).values():
        items += [{**e, "label": -1} for e in entries]
    return (train, *split_evaluation_items(items))


def item_loader(
    items: Sequence[Mapping[str, Any]], transform: Callable, batch_size: int, keys: Sequence[str] | None = None
) -> DataLoader:
    """A loader over ``items`` (only ``keys`` of each, when given) through ``transform``, in order."""
    data = [{k: d[k] for k in keys} for d in items] if keys is not None else list(items)
    return DataLoader(Dataset(data, transform), batch_size=batch_size, shuffle=False)


def _plain(batch: Mapping[str, Any]) -> torch.Tensor:
    return torch.as_tensor(batch["image"]).as_subclass(torch.Tensor).float()


def batch_images(loader: Iterable[Mapping[str, Any]], limit: int | None = None) -> list[torch.Tensor]:
    """The plain image tensors of the batches of ``loader`` (no metadata), until ``limit`` images are reached."""
    out, n = [], 0
    for b in loader:
        out.append(_plain(b))
        n += out[-1].shape[0]
        if limit is not None and n >= limit:
            break
    return out


def collect_scores(
    loader: Iterable[Mapping[str, Any]], score: Callable[[torch.Tensor], Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``{name: (N,) scores}`` over every batch of ``loader``, without grad.

    ``score(images)`` returns ``{name: (B,)}`` for one batch of plain image tensors; the batches are concatenated
    on the CPU.
    """
    out: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for batch in loader:
            for name, s in score(_plain(batch)).items():
                out.setdefault(name, []).append(s.cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class EvaluatorRun:
    """One timed run of a bundle's evaluator.

    Attributes:
        network_seconds: seconds of each call of the ``network`` (its ``infer`` for a detector, else its forward;
            one per batch: one per volume at batch size 1).
        wall_seconds: the whole ``evaluator.run()`` (read, transforms, network, post-processing, writing).
        datalist: the items it ran on.
        network: the network it ran.
    """

    network_seconds: list[float]
    wall_seconds: float
    datalist: list[Any]
    network: nn.Module

    @property
    def n(self) -> int:
        """Items run."""
        return len(self.datalist)

    @property
    def mean_network_seconds(self) -> float:
        """Mean seconds per network call."""
        return float(sum(self.network_seconds) / len(self.network_seconds))


def timed_evaluator_run(parser: ConfigParser) -> EvaluatorRun:
    """Run the parser's ``evaluator`` on its ``datalist`` with every call of its ``network`` timed.

    A detector is timed in :meth:`~medood.detectors.base.OODDetector.infer`, the call
    :class:`~medood.inferers.OODInferer` makes once per batch (it does not go through ``forward`` for a detector
    run on the whole input); any other network in its forward. Set ``network`` / ``datalist`` / ``output_dir`` on
    the parser (and load the weights) before.
    """
    net = parser.get_parsed_content("network")
    with CallTimer(net, "infer" if callable(getattr(net, "infer", None)) else "forward") as timer:
        evaluator = parser.get_parsed_content("evaluator")
        data = parser.get_parsed_content("datalist")
        start = time.perf_counter()
        evaluator.run()
        wall = time.perf_counter() - start
    return EvaluatorRun(timer.times, wall, list(data), net)


def calibrated_map_quality(run_dir: Path, datalist: list[Any], detector: Any, map_percentile: float) -> dict[str, Any]:
    """Map metrics of the maps an evaluator wrote to ``run_dir``, at the detector's calibrated map threshold.

    :func:`medood.metrics.files.evaluate_outputs` (slices along the last axis) with the threshold at
    ``map_percentile`` of the detector's healthy calibration. Returns ``pixel_ap``, ``best_dice`` (oracle),
    ``dice`` (at the threshold), ``slice_ap``, ``volume_auroc`` (NaN without both classes) and ``threshold``.
    """
    thr = detector.calibration.thresholds(map_percentile).map
    m = evaluate_outputs(run_dir, datalist, threshold=thr, slice_axis=2)
    v = m["voxel"]["metrics"]
    return {
        "pixel_ap": v["pixel_ap"],
        "best_dice": v["best_dice"],
        "dice": v.get("dice", math.nan),
        "slice_ap": v["slice_ap"],
        "volume_auroc": m.get("volume", {}).get("auroc", math.nan),
        "threshold": thr,
    }


def model_space_transform(
    pixdim: Sequence[float],
    fov: Sequence[int],
    images: Sequence[str],
    masks: Sequence[str] = (),
    intensity: Sequence[Callable[[Any], Any]] = (),
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Read volumes (``images`` keys) and masks (``masks`` keys) into a volume bundle's model space, together.

    RAS, resampled to ``pixdim`` (images bilinear, masks nearest), images scaled by their non-zero percentiles
    (then the ``intensity`` transforms, e.g. a histogram standardisation), all cropped to the first image's
    foreground and padded / cropped to ``fov``; float32 tensors without metadata. The geometry of the MIM bundle's
    preprocessing, applied to a lesion mask (or a healthy twin) too.
    """
    keys = [*images, *masks]
    modes = ["bilinear"] * len(images) + ["nearest"] * len(masks)
    return Compose(
        [
            LoadVolumed(keys),
            Orientationd(keys, "RAS", labels=None),
            Spacingd(keys, pixdim, mode=modes),
            ScaleNonzeroPercentiled(list(images)),
            *intensity,
            CropForegroundd(keys, source_key=images[0], allow_smaller=True),
            ResizeWithPadOrCropd(keys, fov),
            EnsureTyped(keys, dtype=torch.float32, track_meta=False),
        ]
    )


def timed_workflow_run(config: Path, overrides: Mapping[str, Any]) -> float:
    """Seconds of the run step (``evaluator.run()``) of a bundle's inference config, in this process.

    Initialisation (config parsing, weight loading) and finalisation are not counted.
    """
    wf = ConfigWorkflow(config_file=str(config), workflow_type="infer", **overrides)
    wf.initialize()
    start = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - start
    wf.finalize()
    return seconds


def process_run_command(config: Path | Sequence[Path], overrides: Mapping[str, Any]) -> list[str]:
    """The ``python -m monai.bundle run`` argument list of ``config`` (one file, or several merged in order)."""
    files = str(config) if isinstance(config, (str, Path)) else str([str(c) for c in config])
    args = [f"--{k}={v}" for k, v in overrides.items()]
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args]


def timed_process_run(
    config: Path | Sequence[Path], overrides: Mapping[str, Any], pythonpath: Path | None = None
) -> float:
    """Seconds of a whole ``python -m monai.bundle run --config_file config --<key>=<value> ...`` process.

    Imports, parsing and loading included, as a user's command line runs it; ``config``: one file or several
    merged in order (e.g. a bundle's inference and train configs); ``pythonpath`` is put on the child's
    ``PYTHONPATH``. Raises :class:`subprocess.CalledProcessError` when the run fails.
    """
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    start = time.perf_counter()
    subprocess.run(process_run_command(config, overrides), env=env, check=True, capture_output=True)
    return time.perf_counter() - start
