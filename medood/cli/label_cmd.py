"""``medood label serve``: a MONAI Label server for a map-producing bundle (extra ``medood[monailabel]``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_EPILOG = """\
The server answers MONAI Label clients (3D Slicer's MONAILabel module, OHIF). For each study it returns the
anomaly MASK as the labelmap (0 background, 1 anomaly; map >= threshold), the volume score and slice scores in the
result JSON, and saves the float map as STUDIES/anomaly_maps/<case>_anomaly_map.nii.gz (MONAI Label would turn
a float map into labels; load the saved map in Slicer, e.g. with `medood slicer-scene STUDIES/anomaly_maps`).
The threshold is the option "threshold" of each request (default: the detector's healthy-calibration map
threshold, or --threshold); {"anomaly_output": "map"} returns the float map instead of the mask.

Security (docs/monailabel_slicer.md): by default the server only reads studies and runs inference. Uploads are
off (--allow-upload opens PUT /datastore/image and /datastore/label, plain names only, no overwrite, size-limited);
deleting studies, training and every other MONAI Label route are always off. Cross-origin web pages are refused
(--cors-origin allows one origin, without credentials). With a token (env MEDOOD_LABEL_TOKEN, or --token) every
request needs "Authorization: Bearer <token>"; a non-loopback --host needs a token. Slicer's session volumes
(PUT /session/) go to a temporary folder outside the studies, removed on expiry and when the server stops.
Install the extra with scripts/install_monailabel.sh VENV. Nothing is downloaded: the bundle is read from disk.
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
    s.add_argument("--allow-upload", action="store_true", help="open study / label uploads (default: off)")
    s.add_argument(
        "--cors-origin", metavar="URL", help="the one web origin allowed cross-origin access (default: none)"
    )
    s.add_argument(
        "--token", help="shared token required on every request (default: env MEDOOD_LABEL_TOKEN, else none)"
    )
    s.add_argument(
        "--allow-remote-without-token", action="store_true", help="allow a non-loopback --host without a token"
    )
    s.add_argument("--max-upload-mb", type=float, default=512.0, help="largest request body in MiB (default: 512)")
    s.add_argument("--session-expiry", type=int, default=3600, help="session lifetime in seconds (default: 3600)")
    s.set_defaults(func=run_serve)
    n = verbs.add_parser(
        "snippet",
        help="print the 3D Slicer console snippet that shows a served map with its window and scores",
        description="Print python for 3D Slicer's console: show_anomaly(server, model, image) loads the float map "
        "at the healthy-calibration window and prints volume score, flagged and worst slices; send_volume(server, "
        "volume) uploads the volume open in Slicer to a temporary session first.",
    )
    n.set_defaults(func=run_snippet)


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted; returns the exit status."""
    import os

    from medood.monailabel.server import TOKEN_ENV, serve

    try:
        serve(
            args.studies,
            args.bundle,
            args.host,
            args.port,
            args.threshold,
            args.app_dir,
            allow_upload=args.allow_upload,
            cors_origin=args.cors_origin,
            token=args.token or os.environ.get(TOKEN_ENV) or None,
            allow_remote_without_token=args.allow_remote_without_token,
            max_upload_mb=args.max_upload_mb,
            session_expiry=args.session_expiry,
        )
    except ImportError as e:
        raise ValueError(
            f"MONAI Label is not installed ({e}): install it with scripts/install_monailabel.sh <venv>"
        ) from None
    return 0


def run_snippet(args: argparse.Namespace) -> int:
    """Print :data:`~medood.monailabel.slicer_snippet.SLICER_SNIPPET`."""
    from medood.monailabel.slicer_snippet import SLICER_SNIPPET

    sys.stdout.write(SLICER_SNIPPET)
    return 0
