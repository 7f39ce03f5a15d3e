"""The ``medood`` command line. Each sub-command lives in its own module with ``add_parser(subparsers)``.

``medood --help`` and ``medood <command> --help`` are the user documentation.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (
    "list_cmd", "data_cmd", "check_cmd", "evaluate_cmd", "posthoc_cmd", "report_cmd", "label_cmd", "guard_cmd",
    "calibrate_cmd",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all sub-commands)."""
    parser = argparse.ArgumentParser(
        prog="medood",
        description=(
            "Out-of-distribution and anomaly detection for clinical imaging, built on MONAI. "
            "Scores: higher = more OOD / more anomalous."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (also MEDOOD_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"medood.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medood`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "max_image_bytes", None) is not None:
        from medood.data._files import set_max_image_bytes

        try:
            set_max_image_bytes(args.max_image_bytes)
        except ValueError as err:
            parser.error(f"--max-image-bytes: {err}")
    debug = getattr(args, "debug", False) or os.environ.get("MEDOOD_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except Exception as err:
        from medood.handlers.errors import failed_cases_in

        failed = failed_cases_in(err)
        if debug or (failed is None and not isinstance(err, (ValueError, FileNotFoundError, KeyError))):
            raise
        if failed is not None:  # one line per failed case, then the path of errors.csv
            for line in failed.lines():
                print(line, file=sys.stderr)
            return 1
        logging.getLogger("medood").error("%s", err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
