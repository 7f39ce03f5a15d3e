"""One runner over the detectors of every benchmark task: score every set of a task's manifest once per detector.

Two kinds of scorer, both timed (seconds per image or volume) with the process's peak resident memory:

* the **post-hoc family** (every registered post-hoc detector, :func:`medood.engines.posthoc.build_detectors`):
  one classifier per task (the task bundle's shipped classifier, or a ResNet-10 trained here on the bench
  training split, seeded), fitted in one pass over the ID training images (:func:`~medood.detectors.posthoc.fit_many`)
  and scored in one backbone pass per set (:func:`~medood.detectors.posthoc.score_many`); the same family again
  on the classifier each seed method sits on (``TaskSpec.same_host``: MECAM's final exit, a heatmap decoder's
  frozen classifier; :func:`medood.benchmark.bundles.bundle_classifier`), rows named ``<detector>@<seed>``, so
  a seed is compared with the baselines on its own network; a classifier already hosting a family is not rerun;
  on a volume seed's segmentation host (``TaskSpec.volume_host``) its own baselines instead
  (:func:`medood.benchmark.spectral_host.host_family`, fitted on the bench ``id_fit`` split; ID and test OOD sets
  only, no robustness shifts: MC dropout's six passes over 900 shifted volumes would add about an hour to ``--full``);
* a **bundle** (the seed methods): its inference workflow with its shipped weights
  (:func:`medood.engines.calibrate.run_bundle_inference`) on each set folder; its ``scores.csv`` (and anomaly maps).

Scores are keyed by case (the image file's stem), so detectors are compared on the same cases.
"""

from __future__ import annotations

import csv
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medood.benchmark.bundles import bundle_classifier
from medood.benchmark.spectral_host import FIT_SET, host_family, volume_host
from medood.benchmark.timing import peak_memory
from medood.data.classification import class_folder_loader, classifier_preprocessing
from medood.data.demo.bench import BRAIN_BENCH_OOD
from medood.data.image2d import IMAGE_2D_SUFFIXES
from medood.detectors.posthoc import fit_many, score_many
from medood.engines.calibrate import run_bundle_inference
from medood.engines.classifier import load_classifier, train_folder_classifier
from medood.engines.posthoc import build_detectors
from medood.networks.classifiers import build_classifier
from medood.utils.checkpoints import load_state
from medood.utils.io import case_name

__all__ = ["TASKS", "TaskResult", "TaskSpec", "peak_memory", "resolved_k", "run_task", "trained_classifier"]

logger = logging.getLogger(__name__)

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@dataclass(frozen=True)
class TaskSpec:
    """What runs on one task.

    Args:
        name: task name (a key of ``results.json`` ``tasks``).
        folder: bench folder of the task (``brain_mri`` for both brain tasks).
        bundles: ``{detector: (bundle folder, configs in merge order, scores.csv folder inside the run)}``.
        posthoc_host: ``None`` (no post-hoc family), ``"train"`` (a ResNet-10 trained here) or a bundle whose
            ``models/model.pt`` is the host classifier.
        seeds: the seed methods among the detectors (compared with the best baseline).
        same_host: the bundle detectors whose own classifier also hosts the post-hoc family (rows
            ``<detector>@<seed>``; skipped on real data: the shipped classifiers know the demo classes only).
        segmentation: score maps against lesion masks (the anomaly-segmentation task).
        volume_host: the bundle detectors whose segmentation host gets its own baselines (rows
            ``<detector>@<seed>``, :func:`~medood.benchmark.spectral_host.host_family`; bench sets with ``id_fit``).
        quick_ood: with ``quick``, only these test OOD sets (and no robustness shifts); ``None`` = all sets.
        full_only: run with ``--full`` only (too slow for the quick page on 2 CPU cores).
    """

    name: str
    folder: str
    bundles: dict[str, tuple[str, tuple[str, ...], str]] = field(default_factory=dict)
    posthoc_host: str | None = None
    seeds: tuple[str, ...] = ()
    same_host: tuple[str, ...] = ()
    segmentation: bool = False
    volume_host: tuple[str, ...] = ()
    quick_ood: tuple[str, ...] | None = None
    full_only: bool = False


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "pathology", "pathology",
            {
                "mecam": ("mecam_pathology_ood_classification", ("inference.yaml",), "."),
                "heatmap": ("heatmap_pathology_ood_classification", ("inference.yaml",), "."),
            },
            posthoc_host="train", seeds=("mecam", "heatmap"), same_host=("mecam", "heatmap"),
        ),
        TaskSpec(
            "dermoscopy", "dermoscopy",
            {"mecam": ("mecam_dermoscopy_ood_classification", ("inference.yaml",), ".")},
            posthoc_host="train", seeds=("mecam",), same_host=("mecam",),
        ),
        TaskSpec(
            "endoscopy", "endoscopy",
            {"heatmap": ("heatmap_endoscopy_ood_classification", ("inference.yaml",), ".")},
            posthoc_host="nero_endoscopy_ood_classification", seeds=("nero", "heatmap"),
            same_host=("heatmap",),  # its classifier is the NERO bundle's: the task's family, not run twice
        ),
        TaskSpec(
            "brain_volume_ood", "brain_mri",
            {
                "heatmap": ("heatmap_brain_mri_ood_classification", ("inference.yaml",), "."),
                "mecam": ("mecam_brain_mri_ood_classification", ("inference.yaml",), "."),
                "spectral": ("spectral_brain_mri_ood_classification", ("inference.yaml",), "."),
            },
            seeds=("heatmap", "mecam", "spectral"), quick_ood=tuple(BRAIN_BENCH_OOD),  # all 6 kinds, no shifts
            volume_host=("spectral",),
        ),  # no same_host: the brain bench has no training split to fit on; the 3-D classifiers need contrast labels
        TaskSpec(
            "brain_anomaly_segmentation", "brain_mri",
            {"mim": ("mim_brain_mri_anomaly_segmentation", ("inference.yaml",), ".")},
            seeds=("mim",), segmentation=True,
        ),
    )
}  # fmt: skip


@dataclass
class TaskResult:
    """Scores of every detector on every set of one task, with cost figures.

    Attributes:
        scores: ``{detector: {set: {case: score}}}``.
        cost: ``{detector: {"seconds_per_image", "peak_mb", "how"}}``.
        runs: ``{detector: {set: run folder}}`` (bundle outputs: maps, overlays).
        host: how the post-hoc family's classifier was obtained.
        same_host: ``{seed: {"host": description, "rows": {detector: its row on the seed's classifier}}}`` for
            every seed with a post-hoc family on its own classifier (a post-hoc seed: the task's family).
    """

    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    cost: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Path]] = field(default_factory=dict)
    host: str = ""
    same_host: dict[str, dict[str, Any]] = field(default_factory=dict)


def _read_scores(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        return {r["case"]: float(r["score"]) for r in csv.DictReader(f) if r.get("score") not in (None, "")}


def _set_dirs(manifest: dict[str, Any], roles: tuple[str, ...]) -> dict[str, Path]:
    return {name: Path(s["dir"]) for name, s in manifest["sets"].items() if s["role"] in roles}


def _run_bundle(spec: TaskSpec, det: str, manifest: dict[str, Any], sets: dict[str, Path], work: Path,
                result: TaskResult) -> None:  # fmt: skip

    bundle, configs, sub = spec.bundles[det]
    seconds, peak, n = 0.0, 0.0, 0  # n: cases of the sets run (and timed) here
    result.scores[det], result.runs[det] = {}, {}
    for set_name, folder in sets.items():
        out = work / spec.name / det / set_name
        timed = not (out / sub / "scores.csv").is_file()
        if timed:
            run = functools.partial(run_bundle_inference, BUNDLES / bundle, folder, out, configs, {"device": "cpu"})
            _, sec, mb = peak_memory(run)
            seconds, peak = seconds + sec, max(peak, mb)
        scores = _read_scores(out / sub / "scores.csv")
        n += len(scores) if timed else 0
        result.scores[det][set_name], result.runs[det][set_name] = scores, out / sub
        logger.info("%s / %s / %s: %d cases", spec.name, det, set_name, len(scores))
    result.cost[det] = {
        "seconds_per_image": seconds / max(n, 1) if seconds else None,
        "peak_mb": peak or None,
        "how": f"bundle {bundle} inference (read, preprocess, score, write maps), shipped weights",
    }


def _loader(folder: Path, image_size: int = 64) -> Any:
    from monai.data import DataLoader, Dataset

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_2D_SUFFIXES)  # as the bundles read
    items = [{"image": str(p), "case": p.stem} for p in files]
    return DataLoader(Dataset(items, classifier_preprocessing(image_size)), batch_size=64), [p.stem for p in files]


def trained_classifier(data: Path, folder: Path, epochs: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The ResNet-10 of ``folder/model.pt`` (eval mode) and its config, trained there first when missing.

    Training: :func:`medood.engines.classifier.train_folder_classifier` on the class folders of ``data``, seed 0.
    """
    ckpt = folder / "model.pt"
    if not ckpt.is_file():
        train_folder_classifier(data, folder, epochs=epochs, seed=0, progress=False)
    net, cfg = load_classifier(ckpt)
    return net.eval(), cfg


def _host(spec: TaskSpec, manifest: dict[str, Any], work: Path, epochs: int) -> tuple[torch.nn.Module, list[str], str]:

    data = Path(manifest["train_dir"])
    if manifest.get("host", spec.posthoc_host) == "train":  # real data: the shipped hosts know the demo classes
        net, cfg = trained_classifier(data, work / spec.name / "host", epochs)
        which = "the real dataset's" if manifest.get("real") else "the bench"
        how = (f"ResNet-10 trained here on {which} training split ({epochs} epochs, seed 0; best validation "
               f"accuracy {cfg.get('best_val_accuracy', float('nan')):.3f})")  # fmt: skip
        return net.eval(), list(cfg["class_names"]), how
    classes = list(manifest["classes"])
    net = build_classifier("resnet10", len(classes))
    load_state(net, BUNDLES / str(spec.posthoc_host) / "models" / "model.pt")
    return net.eval(), classes, f"the shipped classifier of {spec.posthoc_host} (resnet10)"


def _run_family(net: torch.nn.Module, classes: list[str], image_size: int, host: str, suffix: str,
                manifest: dict[str, Any], sets: dict[str, Path], result: TaskResult) -> dict[str, str]:  # fmt: skip
    """Fit the post-hoc family on ``net``, score every set; returns ``{detector: its row, <detector><suffix>}``."""
    dets = build_detectors("all", net)
    for d in dets.values():
        d.eval()
    rows = {name: name + suffix for name in dets}
    train, _ = class_folder_loader(manifest["train_dir"], "train", image_size, classes, batch_size=64)
    _, fit_seconds, fit_mb = peak_memory(lambda: fit_many(dets, net, train))
    seconds, peak, n = 0.0, fit_mb, 0
    for row in rows.values():
        result.scores[row] = {}
    for set_name, folder in sets.items():
        loader, cases = _loader(folder, image_size)
        scored, sec, mb = peak_memory(functools.partial(score_many, dets, net, loader))
        seconds, peak, n = seconds + sec, max(peak, mb), n + len(cases)
        for name, s in scored.scores.items():
            result.scores[rows[name]][set_name] = dict(zip(cases, s.double().tolist(), strict=True))
        logger.info("post-hoc family%s / %s: %d cases in %.1f s", suffix, set_name, len(cases), sec)
    for name, det in dets.items():
        result.cost[rows[name]] = {
            "seconds_per_image": seconds / max(n, 1),
            "peak_mb": peak,
            "how": f"post-hoc family, one shared backbone pass per batch (all {len(dets)} detectors together; "
            f"fit {fit_seconds:.1f} s in one pass); host: {host}" + _resolved_settings(det),
        }
    return rows


def _run_posthoc(spec: TaskSpec, manifest: dict[str, Any], sets: dict[str, Path], work: Path, epochs: int,
                 result: TaskResult) -> dict[Path, dict[str, Any]]:  # fmt: skip
    """The task's family; returns ``{weights file: its same_host entry}`` when the host is a shipped classifier."""
    net, classes, result.host = _host(spec, manifest, work, epochs)
    family = {"host": result.host, "rows": _run_family(net, classes, 64, result.host, "", manifest, sets, result)}
    for seed in spec.seeds:
        if seed in family["rows"]:  # a post-hoc seed (NERO) sits on the task's host
            result.same_host[seed] = family
    if manifest.get("host", spec.posthoc_host) == "train":
        return {}
    return {(BUNDLES / str(spec.posthoc_host) / "models" / "model.pt").resolve(): family}


def _run_same_host(spec: TaskSpec, manifest: dict[str, Any], sets: dict[str, Path], result: TaskResult,
                   done: dict[Path, dict[str, Any]]) -> None:  # fmt: skip
    """The post-hoc family on the classifier of each seed of ``spec.same_host``, once per weights file (``done``)."""
    if manifest.get("real"):
        logger.info("%s: no same-classifier families on real data (the shipped classifiers know demo classes)",
                    spec.name)  # fmt: skip
        return
    for seed in (s for s in spec.same_host if s in spec.bundles):
        clf = bundle_classifier(BUNDLES / spec.bundles[seed][0], spec.bundles[seed][1])
        if clf.weights not in done:
            rows = _run_family(clf.network, clf.class_names, clf.image_size, clf.description, f"@{seed}", manifest,
                               sets, result)  # fmt: skip
            done[clf.weights] = {"host": clf.description, "rows": rows}
        else:
            logger.info("%s: %s sits on a classifier whose family already ran: reused", spec.name, seed)
        result.same_host[seed] = done[clf.weights]


def resolved_k(det: Any) -> dict[str, int] | None:
    """NERO's ``k`` as resolved at fit: ``{"k", "k_effective", "d"}``; ``None`` for a detector without one.

    ``k >= D`` (the feature width) turns NERO's feature-norm term off.
    """
    if getattr(det, "k_effective", None) is None:
        return None
    return {"k": det.k, "k_effective": det.k_effective, "d": int(det.head_weight.shape[1])}


def _resolved_settings(det: Any) -> str:
    """What a detector resolved at fit that changes its formula (NERO: ``k >= D`` turns its norm term off)."""
    k = resolved_k(det)
    if k is None:
        return ""
    state = "on" if det.norm_term_active else "off (k >= D, as the official code)"
    return f"; k = {k['k']} resolved to k_effective = {k['k_effective']}, feature-norm term {state}"


def run_task(spec: TaskSpec, manifest: dict[str, Any], work: Path, epochs: int = 10, quick: bool = False) -> TaskResult:
    """Score every set of the task (ID validation, ID test, test OOD, shifts) with every detector of ``spec``.

    With ``quick`` and ``spec.quick_ood`` (bench sets only), only those test OOD sets and no shifts. A real dataset's
    manifest (``"host": "train"``) gets a host trained here on its training split.
    """
    result = TaskResult()
    if spec.segmentation:
        seg = manifest["segmentation"]
        root = Path(manifest["sets"]["id_test"]["dir"]).parent
        sets = {"seg_test": root / seg["dir"]}  # map threshold: the bundle's shipped healthy calibration
    else:
        sets = _set_dirs(manifest, ("id_val", "id_test", "ood_test", "shift"))
        if quick and spec.quick_ood is not None and not manifest.get("real"):
            keep = {"id_val", "id_test", *spec.quick_ood}
            sets = {k: v for k, v in sets.items() if k in keep}
    done = _run_posthoc(spec, manifest, sets, work, epochs, result) if spec.posthoc_host is not None else {}
    _run_same_host(spec, manifest, sets, result, done)
    for seed in spec.volume_host:
        if FIT_SET not in manifest["sets"]:
            logger.info("%s: no %s set to fit %s's baselines on: not run", spec.name, FIT_SET, seed)
            continue
        scored = {k: v for k, v in sets.items() if manifest["sets"][k]["role"] != "shift"}  # MC dropout: 6 passes
        fam = host_family(volume_host(BUNDLES / spec.bundles[seed][0]), scored, Path(manifest["sets"][FIT_SET]["dir"]),
                          seed)  # fmt: skip
        result.scores.update(fam.scores)
        result.cost.update(fam.cost)
        result.same_host[seed] = fam.family
    for det in spec.bundles:
        _run_bundle(spec, det, manifest, sets, work, result)
    for by_set in result.scores.values():
        for set_name, scores in by_set.items():
            by_set[set_name] = {case_name(c): v for c, v in scores.items()}
    return result
