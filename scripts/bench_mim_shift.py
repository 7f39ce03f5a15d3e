"""MIM-OOD and its AR baseline on clean and shifted-site VALIDATION volumes, per stage and per lesion size.

Never touches the test split. Sets (model space, the bundle's preprocessing):

* ``clean``: the demo ``validation`` (healthy) and ``validation_lesion`` (their lesioned twins) volumes;
* ``shifted``: ``medood data shifted-site`` (another site's anatomy, sequence, scanner and skull-strip; lesioned
  twins with exact masks spanning the < 500 / 500-1500 / > 1500 voxel buckets).

Preprocessings: ``scale`` (the bundle's: brain 99th percentile -> 1) and ``nyul`` (then
:class:`medood.transforms.HistogramStandardize` onto landmarks learnt on healthy TRAINING volumes).

Three steps, so the slow AR runs once per volume and everything after is a sweep on cached stage volumes::

    PYTHONPATH=. python scripts/bench_mim_shift.py landmarks            # -> docs/benchmarks/mim_shift_landmarks.json
    PYTHONPATH=. python scripts/bench_mim_shift.py compute --detector mim --prep scale nyul
    PYTHONPATH=. python scripts/bench_mim_shift.py compute --detector ar --prep scale nyul
    PYTHONPATH=. python scripts/bench_mim_shift.py report               # -> docs/benchmarks/mim_shift.{json,md}

``compute`` stores the detector's public :meth:`stage_maps` (tokenizer reconstruction residual, restored residual,
token NLL, flagged tokens) of every volume under ``--cache``. ``report`` measures, per detector / preprocessing /
set: per-lesion detection rate by size bucket at each stage, pixel AP, best Dice and Dice at the calibrated
threshold per bucket and overall, volume AUROC lesioned vs healthy, where the healthy false positives come from;
then sweeps the fixes (preprocessing, residual read inside the flagged tokens or everywhere, pooling, rim
erosion, volume score) and chooses, for each detector with the same budget, by the worst case of clean and
shifted validation. The sweep, the diagnoses and the page are :mod:`medood.benchmark.mim_shift`,
:mod:`medood.benchmark.volume_scores` and :mod:`medood.benchmark.mim_shift_page`; this script reads the data,
runs the detectors and keeps the caches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from medood.benchmark.bundles import bundle_parser, load_network, model_space_transform
from medood.benchmark.mim_shift import report
from medood.benchmark.mim_shift_page import markdown
from medood.benchmark.stage_maps import load_stage_volumes, save_stage_volumes
from medood.data.datalist import bundle_datalist
from medood.transforms import HistogramStandardized, learn_landmarks
from medood.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mim_brain_mri_anomaly_segmentation"
OUT = ROOT / "docs" / "benchmarks"
LANDMARKS = OUT / "mim_shift_landmarks.json"
DATA = {"clean": ROOT / "demo_data" / "brain_mri", "shifted": ROOT / "demo_data" / "shifted_site"}
DETECTORS = {"mim": (["inference.yaml"], "model.pt"), "ar": (["inference.yaml", "inference_ar.yaml"], "model_ar.pt")}
STAGES = ("recon_residual", "residual", "token_nll", "flagged")
logger = logging.getLogger("bench_mim_shift")


def bundle_prep() -> str:
    """The bundle's own preprocessing: ``nyul`` when inference.yaml sets ``histogram_landmarks``, else ``scale``."""
    return "nyul" if bundle_parser(BUNDLE, ["inference.yaml"])["histogram_landmarks"] else "scale"


def preprocessing(prep: str, with_label: bool) -> Any:
    """The bundle's model-space preprocessing (label resampled nearest alongside), optionally standardised."""
    p = bundle_parser(BUNDLE, ["inference.yaml"])
    nyul = [HistogramStandardized("image", json.loads(LANDMARKS.read_text())["landmarks"])] if prep == "nyul" else []
    return model_space_transform(p["pixdim"], p["fov"], ["image"], ["label"] if with_label else [], nyul)


def cases(set_name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Healthy then lesioned cases of a set (``label`` only on lesioned ones); ``limit``: the first of each."""
    root = DATA[set_name]
    healthy = [{**c, "lesioned": 0} for c in bundle_datalist(root, "validation", keep=["case", "site"])]
    lesioned = [
        {**c, "lesioned": 1} for c in bundle_datalist(root, "validation_lesion", keep=["case", "label", "site"])
    ]
    return healthy[:limit] + lesioned[:limit]


def key(c: dict[str, Any]) -> str:
    """A case's unique name (a demo lesioned twin has its healthy subject's case name)."""
    return c["case"] + ("_lesion" if c["lesioned"] else "")


class Cache:
    """The stage volumes of ``compute`` under a folder, one ``<det>_<prep>_<set>_<case>.npz`` per case.

    A :class:`medood.benchmark.mim_shift.StageCache` (which cases are cached, and loading them).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, det: str, prep: str, set_name: str, c: dict[str, Any]) -> Path:
        return self.root / f"{det}_{prep}_{set_name}_{key(c)}.npz"

    def names(self, det: str, prep: str, set_name: str) -> set[str]:
        return {key(c) for c in cases(set_name) if self.path(det, prep, set_name, c).exists()}

    def load(self, det: str, prep: str, set_name: str, names: set[str]) -> list[dict[str, Any]]:
        return [
            {**load_stage_volumes(self.path(det, prep, set_name, c)), "case": c["case"], "lesioned": c["lesioned"],
             "site": c.get("site", "demo")}
            for c in cases(set_name) if key(c) in names
        ]  # fmt: skip


def cmd_landmarks(args: argparse.Namespace) -> None:
    """Nyul landmarks: mean percentile landmarks of healthy TRAINING volumes after the bundle's scaling."""
    pre = preprocessing("scale", False)
    train = bundle_datalist(DATA["clean"], "training")[: args.volumes]
    landmarks = learn_landmarks(pre({"image": c["image"]})["image"] for c in train)
    out = {"landmarks": landmarks, "source": f"{len(train)} healthy demo training volumes (T1w), model space"}
    atomic_write_text(LANDMARKS, json.dumps(out, indent=1) + "\n")
    logger.info("landmarks: %s", landmarks)


def detector(name: str, weights: Path | None = None) -> Any:
    """The bundle's detector ``name`` with its shipped weights (or the checkpoint ``weights``)."""
    configs, shipped = DETECTORS[name]
    return load_network(bundle_parser(BUNDLE, configs), "network", weights or BUNDLE / "models" / shipped)


def cmd_compute(args: argparse.Namespace) -> None:
    """Stage volumes of every case (shifted set first), cached as compressed float16 / uint8 npz."""
    torch.manual_seed(0)
    net = detector(args.detector, args.weights)
    cache = Cache(args.cache)
    for item in args.set or []:  # detector settings to try (e.g. flagging=union): cache them under their own --cache
        name, _, value = item.partition("=")
        if not hasattr(net, name):
            raise SystemExit(f"--set {item}: the {args.detector} detector has no setting {name!r}")
        setattr(net, name, yaml.safe_load(value))
        logger.info("%s.%s = %r", args.detector, name, getattr(net, name))
    for prep, set_name in itertools.product(args.prep, args.sets):
        todo = cases(set_name, args.limit)
        half = sum(1 for c in todo if not c["lesioned"])
        order = [c for pair in itertools.zip_longest(todo[:half], todo[half:]) for c in pair if c is not None]
        for c in order:  # a healthy volume, then its lesioned twin: a stopped run leaves usable pairs
            path = cache.path(args.detector, prep, set_name, c)
            if path.exists():
                continue
            d = preprocessing(prep, bool(c["lesioned"]))({k: c[k] for k in ("image", "label") if k in c})
            start = time.perf_counter()
            st = net.stage_maps(d["image"][None])
            seconds = time.perf_counter() - start
            volumes = {k: st[k][0, 0] for k in STAGES} | {k: d[k][0] for k in ("image", "label") if k in d}
            save_stage_volumes(path, volumes, seconds)
            logger.info("%s %s %s %s: %.1f s", args.detector, prep, set_name, c["case"], seconds)


def cmd_report(args: argparse.Namespace) -> None:
    """The sweep on every cached case (:func:`medood.benchmark.mim_shift.report`) -> ``--out`` and its page."""
    flagging = {name: Cache(Path(d)) for name, _, d in (x.partition("=") for x in args.flagging_cache or [])}
    shipped_prep = args.shipped_prep or bundle_prep()
    out = report(args.detectors, args.preps, detector, Cache(args.cache), shipped_prep, args.sweep, flagging)
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lm = sub.add_parser("landmarks")
    lm.add_argument("--volumes", type=int, default=20)
    cp = sub.add_parser("compute")
    cp.add_argument("--detector", choices=sorted(DETECTORS), required=True)
    cp.add_argument("--prep", nargs="+", default=["scale"], choices=("scale", "nyul"))
    cp.add_argument("--sets", nargs="+", default=["shifted", "clean"], choices=sorted(DATA))
    cp.add_argument("--limit", type=int, help="only the first N healthy and N lesioned cases of each set")
    cp.add_argument("--weights", type=Path, help="another checkpoint of the detector (e.g. a retrained one)")
    cp.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a detector setting (repeatable)")
    rp = sub.add_parser("report")
    rp.add_argument("--detectors", nargs="+", default=["mim", "ar"])
    rp.add_argument("--preps", nargs="+", default=["scale", "nyul"], choices=("scale", "nyul"))
    rp.add_argument("--sweep", action="store_true", help="every fix setting (default: the shipped one only)")
    rp.add_argument(
        "--shipped-prep",
        choices=("scale", "nyul"),
        help="the preprocessing of the 'shipped' rows and of the MIM / AR pairing (default: the bundle's own)",
    )
    rp.add_argument(
        "--flagging-cache",
        action="append",
        metavar="NAME=DIR",
        help="MIM stage caches of another flagging or weights (compute --set/--weights), reported beside",
    )
    rp.add_argument("--out", type=Path, default=OUT / "mim_shift.json")
    for p in (cp, rp):
        p.add_argument("--cache", type=Path, default=ROOT / "outputs" / "mim_shift_cache")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    {"landmarks": cmd_landmarks, "compute": cmd_compute, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
