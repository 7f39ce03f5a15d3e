"""``medood list``: the registered detectors and what they need."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medood list``."""
    p = sub.add_parser(
        "list",
        help="list registered detectors",
        description="List every registered detector with its attributes: whether it needs fitting on "
        "in-distribution data, whether it trains its own networks, whether it produces voxel-wise anomaly maps, "
        "and which spatial dimensionalities (2D images, 3D volumes) it accepts.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table to stdout."""
    from medood.detectors import get_detector_class, list_detectors

    rows = [("name", "class", "fit", "trains", "map", "dims")]
    for name in list_detectors():
        cls = get_detector_class(name)
        rows.append(
            (
                name,
                cls.__name__,
                "yes" if cls.requires_fit else "no",
                "yes" if cls.requires_training else "no",
                "yes" if cls.produces_map else "no",
                ",".join(f"{d}D" for d in cls.supported_spatial_dims),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    return 0
