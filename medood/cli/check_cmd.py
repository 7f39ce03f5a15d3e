"""``medood check PATH``: validate a dataset folder (or one file) before a long run."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood check``."""
    p = sub.add_parser(
        "check",
        help="validate a dataset folder or file before a run",
        description="Read every input under PATH (recursively; symbolic links followed, hidden files skipped) with "
        "the reader a run would use: NIfTI volumes, DICOM series (grouped by SeriesInstanceUID), PNG/JPEG/TIFF/BMP "
        "images, MedMNIST .npz files, dataset.json datalists (every list; missing files, paths outside the folder, "
        "duplicates) and JSON/YAML configs (parsed, never run). Prints one line per problem, naming the file, then "
        "a summary line. Exit status: 0 when every input is usable, 1 when any is not.",
    )
    p.add_argument("path", help="dataset folder or single file")
    p.add_argument(
        "--allow-4d",
        action="store_true",
        help="accept 4D / 2D NIfTI files (by default every NIfTI must be a single 3D volume, as the 3D bundles need)",
    )
    p.add_argument(
        "--max-bytes",
        default=None,
        help="memory budget of one decoded image, e.g. 8G (as medood --max-image-bytes; default: "
        "$MEDOOD_MAX_IMAGE_BYTES, else 4 GiB)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check, print the problems and the summary; 1 if any input is unusable."""
    from medood.data._files import parse_bytes
    from medood.data.check import check_dataset

    max_bytes = None if args.max_bytes is None else parse_bytes(args.max_bytes)
    report = check_dataset(args.path, expect_3d=not args.allow_4d, max_bytes=max_bytes)
    if not args.quiet:
        for problem in report.problems:
            sys.stdout.write(f"UNUSABLE {problem}\n")
    sys.stdout.write(report.summary() + "\n")
    return 0 if report.ok else 1
