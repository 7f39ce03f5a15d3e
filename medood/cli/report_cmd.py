"""``medood report`` and ``medood slicer-scene``: pictures of a bundle run, from its output folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

_RUN_DIR_HELP = """\
run folder: the output_dir of any bundle's inference (scores.csv, slice_scores.csv, <case>_anomaly_map.nii.gz,
<case>_anomaly_seg.nii.gz, metrics.json, thresholds.json). thresholds.json holds the healthy-calibration numbers
(map_threshold, score_threshold, window, id_scores); without it maps are auto-windowed and the score
distribution has no in-distribution reference unless the run has label-0 cases. Inputs are found through the
image column of scores.csv, or --images DIR (searched for <case>.nii.gz, <case>.png, ...).

exit status: 0 on success, 2 on bad input (the message names the file and the problem).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood report`` and ``medood slicer-scene``."""
    p = sub.add_parser(
        "report",
        help="write report.html (self-contained) for a bundle run folder",
        description="Write RUN_DIR/report.html: metrics, the score distribution against the in-distribution\n"
        "reference, and per case the slice-score curve and the worst slices with the map overlaid at the run's\n"
        "fixed colour window. Images are inlined: the page opens offline, in any browser.",
        epilog=_RUN_DIR_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the bundle's output folder")
    p.add_argument("--images", type=Path, metavar="DIR", help="folder holding the inputs (<case>.<ext>)")
    p.add_argument("--max-cases", type=int, default=40, help="cases shown in detail, highest score first (default 40)")
    p.add_argument("--slices", type=int, default=3, help="worst slices drawn per 3D case (default 3)")
    p.set_defaults(func=run_report)

    s = sub.add_parser(
        "slicer-scene",
        help="write open_in_slicer.py: every input with its map as a heat overlay in 3D Slicer",
        description="Write RUN_DIR/open_in_slicer.py. In 3D Slicer's Python console run\n"
        '  exec(open(r"RUN_DIR/open_in_slicer.py").read())\n'
        "(or Slicer --python-script RUN_DIR/open_in_slicer.py): each input is loaded with its anomaly map as a\n"
        "scalar volume (Inferno colours, fixed healthy-data window, transparent below it) and its mask as a\n"
        'segment named "anomaly". Every map is checked first: float, no NaN/Inf, on the input\'s grid.',
        epilog=_RUN_DIR_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the bundle's output folder")
    s.add_argument("--images", type=Path, metavar="DIR", help="folder holding the inputs (<case>.<ext>)")
    s.add_argument("--out", default="open_in_slicer.py", metavar="NAME", help="script name inside RUN_DIR")
    s.set_defaults(func=run_scene)


def run_report(args: argparse.Namespace) -> int:
    """Write the report; returns the exit status."""
    from medood.reports import write_report

    path = write_report(args.run_dir, images_dir=args.images, max_cases=args.max_cases, slices_per_case=args.slices)
    logger.info("wrote %s", path)
    sys.stdout.write(f"{path}\n")
    return 0


def run_scene(args: argparse.Namespace) -> int:
    """Write the Slicer script; returns the exit status."""
    from medood.reports import write_slicer_scene

    path = write_slicer_scene(args.run_dir, images_dir=args.images, filename=args.out)
    logger.info("wrote %s", path)
    sys.stdout.write(f"{path}\n")
    return 0
