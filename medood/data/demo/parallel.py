"""Run independent demo-building jobs in a few worker processes (the output never depends on the worker count)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["default_workers", "run_jobs"]

J = TypeVar("J")


def default_workers() -> int:
    """Two workers where two or more CPUs are available (the target machines have two cores), else one."""
    return min(2, os.cpu_count() or 1)


def run_jobs(fn: Callable[[J], Any], jobs: Sequence[J], workers: int | None = None) -> list[Any]:
    """``[fn(job) for job in jobs]``, in order, using ``workers`` processes when that pays off.

    Each job must be self-contained (own seed, own output files). ``fn`` must be picklable (a module-level
    function or a :func:`functools.partial` of one). The ``fork`` start method is used where available so that
    workers inherit caches (the loaded brain template) instead of rebuilding them.

    Args:
        fn: the job function.
        jobs: job descriptions.
        workers: process count. Defaults to :func:`default_workers`.

    Returns:
        The results, in job order.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(jobs) < 4:
        return [fn(job) for job in jobs]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
