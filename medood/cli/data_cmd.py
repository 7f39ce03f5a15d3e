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
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Build the demo data."""
    from medood.data.demo import build_demo

    build_demo(args.out, size=args.size, seed=args.seed, only=args.only)
    return 0
