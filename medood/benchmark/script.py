"""What every per-method benchmark script shares: its common arguments, its setup, and re-rendering its page.

A script (``scripts/bench_*.py``) adds its own arguments, then::

    args = parse(parser)                      # --out, --threads, --render (also spelt --markdown-only)
    if render_only(args, markdown):           # rewrite the .md from the existing JSON and stop
        return
    start(args)                               # logging, torch threads, seed
    ...
    write_page(args.out, payload, markdown(payload))   # medood.benchmark.report

A choice on validation data (``scripts/choose_*.py``) runs its tasks through :func:`run_choice`, which writes the
page after every task, and records its rule with :func:`docstring_rule`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medood.benchmark.report import bench_header, write_page
from medood.utils.io import atomic_write_text

__all__ = ["add_common_arguments", "docstring_rule", "render_only", "run_choice", "start"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_common_arguments(
    p: argparse.ArgumentParser, out: Path, threads: int | None = None, render: bool = True
) -> argparse.ArgumentParser:
    """Add ``--out``, ``--threads`` and (with ``render``) ``--render`` to ``p``.

    ``--out``: the JSON (the page is the same name with ``.md``); ``--threads``: torch threads (``None``: torch's
    choice); ``--render`` (also ``--markdown-only``): rewrite the page from the JSON.
    """
    p.add_argument("--out", type=Path, default=out, help="the JSON (the page: the same name with .md)")
    p.add_argument("--threads", type=int, default=threads, help="torch threads (default: %(default)s)")
    if render:
        p.add_argument("--render", "--markdown-only", dest="render", action="store_true",
                       help="only rewrite the .md next to --out from its JSON")  # fmt: skip
    return p


def render_only(args: argparse.Namespace, markdown: Callable[[Any], str]) -> bool:
    """With ``--render``: write ``markdown(<the JSON of --out>)`` next to it and return ``True`` (the script stops)."""
    if not getattr(args, "render", False):
        return False
    atomic_write_text(args.out.with_suffix(".md"), markdown(json.loads(args.out.read_text())))
    return True


def start(args: argparse.Namespace, seed: int = 0, level: int = logging.INFO) -> None:
    """Logging to the console, ``torch.set_num_threads(args.threads)`` when given, ``torch.manual_seed(seed)``."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    torch.manual_seed(seed)


def docstring_rule(fn: Callable[..., Any]) -> str:
    """The second paragraph of ``fn``'s docstring on one line: the rule of a choice, as its JSON records it."""
    return " ".join((fn.__doc__ or "").split("\n\n")[1].split())


def run_choice(
    out: Path,
    script: str,
    header: Mapping[str, Any],
    tasks: Sequence[str],
    run_task: Callable[[str], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Run ``run_task`` on every task, writing the JSON ``out`` and its page after each (a finished task is kept).

    The JSON: :func:`~medood.benchmark.report.bench_header`, ``command`` (``python scripts/<script>`` with this
    process's arguments), ``omp_threads``, the keys of ``header``, ``tasks`` (``{task: run_task(task)}``) and
    ``seconds`` (since the call, updated after every task).
    """
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        **bench_header(),
        "command": f"python scripts/{script} " + " ".join(sys.argv[1:]),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        **header,
        "tasks": {},
    }
    for task in tasks:
        result["tasks"][task] = run_task(task)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        write_page(out, result, markdown(result))
    return result
