"""``medood posthoc``: train a 2D classifier on class folders, then evaluate post-hoc OOD detectors on it."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: ``medood.networks.classifiers.ARCHS`` keys (spelled out so that ``medood --help`` does not import torch).
ARCH_CHOICES = ("densenet_small", "resnet10", "resnet18", "resnet18_small")

_DESCRIPTION = """\
Post-hoc OOD detection on a 2D image classifier (NERO, MSP, ODIN, Energy, MaxLogit, Entropy, Mahalanobis,
ViM, KNN, ReAct, GradNorm, NECO).

  medood posthoc train    --data ROOT --out DIR          trains a small MONAI classifier (Ignite)
  medood posthoc evaluate --data ROOT --checkpoint DIR/model.pt --out DIR
                                                          fits every detector, scores ID test + OOD sets

Data layout (Kvasir-v2 / GastroVision style; PNG, JPEG, TIFF or BMP, grey or RGB, any size):
  ROOT/train/<class>/*      in-distribution training images (also what the detectors are fitted on)
  ROOT/val/<class>/*        validation images (checkpoint selection)
  ROOT/test/<class>/*       in-distribution test images
  ROOT/ood_near/<kind>/*    OOD sets: every sub-folder of an OOD folder is one OOD set ("ood_near/<kind>");
  ROOT/ood_far/<kind>/*     a folder holding images directly is one set. --ood names them (default: ROOT/ood*).
Class folders are sorted by name; that order is the label order. `medood data demo --only endoscopy` writes
a demo set in this layout.
"""

_EPILOG = """\
scores and metrics: every detector scores one number per image, higher = more OOD. The table has one row per
detector and, per OOD set (ID test vs that set, OOD = positive class): AUROC, FPR95 = the fraction of OOD images
accepted when 95 % of the ID test images are accepted (the OpenOOD / NERO convention), AUPR-In (ID positive) and
AUPR-Out (OOD positive), plus the mean over sets. Detectors are fitted on ROOT/train only; nothing is tuned on
the OOD sets. ODIN needs input gradients and runs its own passes; the other detectors share one forward pass.

exit status: 0 on success, 2 on bad input (the message names the file or folder and the problem).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood posthoc`` with its ``train`` and ``evaluate`` sub-commands."""
    p = sub.add_parser(
        "posthoc",
        help="train a 2D classifier and evaluate post-hoc OOD detectors (NERO and baselines) on it",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="posthoc_command", metavar="ACTION", required=True)
    _add_train(actions)
    _add_evaluate(actions)


def _add_train(actions: argparse._SubParsersAction) -> None:
    t = actions.add_parser(
        "train",
        help="train a classifier on ROOT/train, keep the best ROOT/val accuracy",
        description="Train a MONAI 2D classifier with Ignite (Adam with cosine decay, cross-entropy; flips,\n"
        "rotations up to 15 degrees and intensity jitter) on ROOT/train/<class>/, validate on ROOT/val/<class>/\n"
        "and save the best-validation-accuracy weights with their settings to OUT/model.pt (+ OUT/train.json).\n"
        "Preprocessing: load -> RGB -> resize to --image-size -> [0, 1] (-> ImageNet normalisation).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--data", type=Path, required=True, metavar="ROOT", help="dataset folder with train/ and val/")
    t.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (model.pt, train.json)")
    t.add_argument(
        "--arch",
        choices=ARCH_CHOICES,
        default="resnet10",
        help="network (default: resnet10, 0.3 M parameters, 128 features; resnet18: 512 features)",
    )
    t.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    t.add_argument("--image-size", type=int, default=64, metavar="S", help="images are resized to SxS (default: 64)")
    t.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    t.add_argument("--normalize", action="store_true", help="ImageNet mean/std normalisation after scaling")
    t.add_argument("--val-interval", type=int, default=1, metavar="N", help="validate every N epochs (default: 1)")
    _add_common(t)
    t.set_defaults(func=run_train)


def _add_evaluate(actions: argparse._SubParsersAction) -> None:
    e = actions.add_parser(
        "evaluate",
        help="fit post-hoc detectors on ROOT/train, score ROOT/test and OOD sets, write the results table",
        description="Fit every requested post-hoc detector in one pass over ROOT/train (ground-truth labels),\n"
        "score the ID test set and every OOD set (one pass each), and write OUT/results.json, OUT/results.md\n"
        "(rows = detectors; per OOD set AUROC, FPR95, AUPR-In, AUPR-Out; mean over sets) and OUT/detectors.pt\n"
        "(the fitted detectors). The classifier's ID test accuracy is reported too.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--data", type=Path, required=True, metavar="ROOT", help="dataset folder with train/ and test/")
    e.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="PT",
        help="model.pt written by `medood posthoc train` (architecture, classes and image size inside)",
    )
    e.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    e.add_argument(
        "--ood",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="OOD folders (each sub-folder is one set; default: every ROOT/ood* folder)",
    )
    e.add_argument(
        "--detectors",
        default="all",
        metavar="LIST",
        help="'all' or a comma-separated list, e.g. nero,msp,energy (default: all)",
    )
    e.add_argument(
        "--detector-args",
        default="{}",
        metavar="JSON",
        help='constructor arguments per detector as JSON, e.g. \'{"knn": {"k": 10}}\' (default: {})',
    )
    e.add_argument("--train-split", default="train", help="split the detectors are fitted on (default: train)")
    e.add_argument("--id-split", default="test", help="in-distribution test split (default: test)")
    e.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    _add_common(e)
    e.set_defaults(func=run_evaluate)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: torch's choice; 1 avoids thrashing on a busy machine)",
    )


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def run_train(args: argparse.Namespace) -> int:
    """Train the classifier; returns the exit status."""
    from medood.engines.classifier import train_folder_classifier
    from medood.utils.io import atomic_write_text

    if args.epochs < 1 or args.batch_size < 1 or args.val_interval < 1:
        raise ValueError("--epochs, --batch-size and --val-interval must be >= 1")
    _set_threads(args)
    config = train_folder_classifier(
        args.data,
        args.out,
        arch=args.arch,
        epochs=args.epochs,
        image_size=args.image_size,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        normalize=args.normalize,
        device=args.device,
        val_interval=args.val_interval,
        num_workers=args.num_workers,
        progress=False if args.no_progress else None,
    )
    atomic_write_text(args.out / "train.json", json.dumps(config, indent=2) + "\n")
    sys.stdout.write(
        f"best validation accuracy {config['best_val_accuracy']:.4f} (epoch {config['best_epoch']}); "
        f"weights: {args.out / 'model.pt'}\n"
    )
    return 0


def _ood_roots(args: argparse.Namespace) -> list[Path]:
    from medood.data.errors import DataError

    if args.ood:
        return list(args.ood)
    roots = sorted(p for p in args.data.glob("ood*") if p.is_dir()) if args.data.is_dir() else []
    if not roots:
        raise DataError(args.data, "has no ood* folders", "give the OOD folders with --ood DIR [DIR ...]")
    return roots


def _detector_args(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--detector-args is not valid JSON: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError('--detector-args must map detector names to objects, e.g. {"knn": {"k": 10}}')
    return value


def run_evaluate(args: argparse.Namespace) -> int:
    """Fit, score and tabulate; returns the exit status."""
    from monai.data import DataLoader, Dataset

    from medood.data.classification import class_folder_loader, classifier_preprocessing
    from medood.data.folders import ood_datalists
    from medood.data.skipping import skipping_loader
    from medood.engines.classifier import load_classifier
    from medood.engines.posthoc import evaluate_posthoc, parse_detectors
    from medood.handlers.errors import failure_lines, write_errors_csv

    _set_threads(args)
    names = parse_detectors(args.detectors)
    det_args = _detector_args(args.detector_args)
    net, cfg = load_classifier(args.checkpoint, args.device)
    size, norm, classes = cfg["image_size"], cfg["normalize"], cfg["class_names"]
    common = {
        "image_size": size,
        "class_names": classes,
        "batch_size": args.batch_size,
        "normalize": norm,
        "num_workers": args.num_workers,
    }
    # every loader skips unreadable images (medood.data.SkippingDataLoader); they are listed in errors.csv
    train_loader = skipping_loader(class_folder_loader(args.data, args.train_split, **common)[0])
    id_loader = skipping_loader(class_folder_loader(args.data, args.id_split, **common)[0])
    sets = ood_datalists(_ood_roots(args))
    ood_loaders = {
        name: skipping_loader(
            DataLoader(
                Dataset(items, classifier_preprocessing(size, norm)),
                batch_size=args.batch_size,
                num_workers=args.num_workers,
            )
        )
        for name, items in sets.items()
    }
    payload = evaluate_posthoc(
        net,
        train_loader,
        id_loader,
        ood_loaders,
        names,
        det_args,
        args.device,
        args.out,
        task=str(args.data),
        classifier=f"{cfg['arch']} ({args.checkpoint})",
        n_train=len(train_loader.dataset),
    )
    rows = [("detector", "mean AUROC", "mean FPR95")]
    rows += [(d, f"{100 * m['auroc']:.2f}", f"{100 * m['fpr95']:.2f}") for d, m in payload["mean"].items()]
    width = max(len(r[0]) for r in rows)
    sys.stdout.write(f"ID test accuracy {100 * payload['id_test_accuracy']:.2f} %; {len(sets)} OOD sets\n")
    sys.stdout.write("".join(f"{a.ljust(width)}  {b:>10}  {c:>10}\n" for a, b, c in rows))
    sys.stdout.write(f"table: {args.out / 'results.md'}\n")
    failures = [f for loader in (train_loader, id_loader, *ood_loaders.values()) for f in loader.failures]
    errors = write_errors_csv(args.out / "errors.csv", failures)
    if failures:
        sys.stderr.write("".join(f"{line}\n" for line in failure_lines(failures)))
        sys.stderr.write(f"{len(failures)} images failed and were skipped; see {errors}\n")
        return 1
    return 0
