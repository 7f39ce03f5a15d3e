"""``medood data ...``: build the embedded demo data (no download)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood data``."""
    p = sub.add_parser("data", help="build demo data", description="Data utilities.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    demo = dsub.add_parser(
        "demo",
        help="write the embedded demo datasets",
        description="Write the embedded demo datasets (brain MRI volumes from the MNI152 template with synthetic "
        "lesions; 2D pathology, dermoscopy and endoscopy sets) to --out. Nothing is downloaded.",
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--size", choices=("small", "full"), default="small", help="small = 2 mm brain, full = 1 mm")
    demo.add_argument("--seed", type=int, default=0, help="random seed; the output is deterministic per seed")
    demo.add_argument(
        "--only",
        nargs="+",
        choices=("brain_mri", "pathology", "dermoscopy", "endoscopy"),
        help="build only these datasets",
    )
    demo.add_argument(
        "--tissue-labels",
        action="store_true",
        help="also write brain tissue labels (<case>_tissue.nii.gz: 1 CSF, 2 grey, 3 white matter) of every subject",
    )
    demo.set_defaults(func=run_demo)
    bench = dsub.add_parser(
        "bench",
        help="write the benchmark sets (large, deterministic)",
        description="Write the benchmark sets of scripts/benchmark.py to --out: per task (brain volume OOD, brain "
        "anomaly segmentation, pathology, dermoscopy, endoscopy) >= 200 ID test images (60 brain volumes), >= 100 "
        "images (30 volumes) per near- / far-OOD set, a validation OOD family apart from the test kinds, and ID "
        "images under acquisition shifts at 3 strengths; manifest.json per task. Nothing is downloaded.",
    )
    bench.add_argument("--out", required=True, help="output folder")
    bench.add_argument("--only", nargs="+", help="tasks to build (default: all)")
    bench.add_argument("--seed", type=int, default=2026, help="random seed (default 2026; the demo data uses 0)")
    bench.add_argument("--quick", action="store_true", help="fewer robustness-shift images")
    bench.set_defaults(func=run_bench)
    tissue = dsub.add_parser(
        "tissue",
        help="write tissue labels of an existing demo brain_mri set",
        description="Derive the CSF / grey / white-matter labels of every subject of a demo brain_mri set from its "
        "dataset.json seed (deterministic; each derived brain mask is checked against the stored one) and write "
        "<case>_tissue.nii.gz plus a dataset.json that lists them under 'tissue'.",
    )
    tissue.add_argument("--brain-dir", required=True, help="the demo brain_mri folder (with dataset.json)")
    tissue.add_argument("--out", help="output folder (default: next to the images, dataset.json updated in place)")
    tissue.set_defaults(func=run_tissue)
    shifted = dsub.add_parser(
        "shifted-site",
        help="write a shifted-site brain validation set (another scanner, anatomy and skull-strip)",
        description="Write healthy T1w brains as another site makes them (anatomy, sequence, bias, noise, "
        "resolution, intensity scale and skull-strip outside the demo training range) and their lesioned twins "
        "with exact masks; seeds disjoint from the demo splits (medood.data.demo.shifted_site).",
    )
    shifted.add_argument("--out", required=True, help="output folder")
    shifted.add_argument("--seed", type=int, default=0, help="random seed; the output is deterministic per seed")
    shifted.add_argument("--subjects", type=int, default=12, help="healthy subjects (each with a lesioned twin)")
    shifted.set_defaults(func=run_shifted_site)


def run_demo(args: argparse.Namespace) -> int:
    """Build the demo data."""
    from medood.data.demo import build_demo

    written = build_demo(args.out, size=args.size, seed=args.seed, only=args.only)
    if args.tissue_labels and "brain_mri" in written:
        from medood.data.demo.tissue import write_tissue_labels

        write_tissue_labels(written["brain_mri"])
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Build the benchmark sets."""
    from medood.data.demo.bench import build_bench

    build_bench(args.out, only=args.only, seed=args.seed, quick=args.quick)
    return 0


def run_tissue(args: argparse.Namespace) -> int:
    """Write the tissue labels of a demo brain set."""
    from medood.data.demo.tissue import write_tissue_labels

    write_tissue_labels(args.brain_dir, args.out)
    return 0


def run_shifted_site(args: argparse.Namespace) -> int:
    """Write the shifted-site validation set."""
    from medood.data.demo.shifted_site import write_shifted_site

    write_shifted_site(args.out, seed=args.seed, n_subjects=args.subjects)
    return 0
