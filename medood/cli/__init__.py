"""The ``medood`` command line. Each sub-command lives in its own module with ``add_parser(subparsers)``.

``medood --help`` and ``medood <command> --help`` are the user documentation.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        logging.getLogger("medood").error("%s", err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
