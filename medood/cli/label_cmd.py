"""``medood label serve``: a MONAI Label server for a map-producing bundle (extra ``medood[monailabel]``)."""

from __future__ import annotations

import argparse
from pathlib import Path

_EPILOG = """\
The server answers MONAI Label clients (3D Slicer's MONAILabel module, OHIF). For each study it returns the
anomaly MASK as the labelmap (0 background, 1 anomaly; map >= threshold), the volume score and slice scores in the
result JSON, and saves the float map as STUDIES/anomaly_maps/<case>_anomaly_map.nii.gz (MONAI Label would turn
a float map into labels; load the saved map in Slicer, e.g. with `medood slicer-scene STUDIES/anomaly_maps`).
The threshold is the option "threshold" of each request (default: the detector's healthy-calibration map
threshold, or --threshold). Requests may only name studies of the folder. Install the extra with
scripts/install_monailabel.sh VENV. Nothing is downloaded: the bundle is read from disk.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood label``."""
    p = sub.add_parser("label", help="MONAI Label app for anomaly maps (needs medood[monailabel])")
    verbs = p.add_subparsers(dest="label_command", metavar="VERB", required=True)
    s = verbs.add_parser(
        "serve",
        help="start a MONAI Label server for one bundle",
        description="Start a MONAI Label server that serves a medood anomaly-map bundle over a folder of studies.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--studies", type=Path, required=True, metavar="DIR", help="folder of NIfTI studies")
    s.add_argument("--bundle", required=True, metavar="NAME", help="bundle folder, or a name under bundles/")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    s.add_argument("--threshold", type=float, help="default mask threshold (default: healthy calibration)")
    s.add_argument("--app-dir", type=Path, help="MONAI Label app folder (default: STUDIES/.medood_label_app)")
    s.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; returns the exit status."""
    from medood.monailabel.server import serve

    try:
        serve(args.studies, args.bundle, args.host, args.port, args.threshold, args.app_dir)
    except ImportError as e:
        raise ValueError(
            f"MONAI Label is not installed ({e}): install it with scripts/install_monailabel.sh <venv>"
        ) from None
    return 0
