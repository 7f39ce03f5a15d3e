"""Time and memory measurements of the benchmarks: peak resident memory, median and paired timings, forward hooks.

* :func:`measure` / :func:`peak_memory`: seconds and the rise of the process's resident-set high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs`` where allowed) over one call: it sees torch's native
  allocations, which ``tracemalloc`` does not;
* :func:`median_time`: median seconds of repeated calls after a warm-up;
* :func:`forward_ratio`: a method's time over the plain forward pass of a network on the same batches (median of
  interleaved pairs, :func:`medood.utils.machine.paired_time_ratio`); :func:`batch_record`: what it was timed on;
* :class:`CallTimer`: seconds of each call of a module's forward (hooks) or of another method (e.g. a detector's
  ``infer``, one call per volume inside a bundle's evaluator).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import torch
from torch import nn

from medood.networks.hooks import FeatureExtractor, find_linear_head, flatten_features
from medood.utils.machine import paired_time_ratio

__all__ = [
    "CallTimer",
    "Measurement",
    "batch_record",
    "forward_ratio",
    "head_features",
    "measure",
    "median_time",
    "over_batches",
    "peak_memory",
    "reset_peak_rss",
    "rss_kb",
]


def rss_kb(name: str) -> int:
    """A field of ``/proc/self/status`` in kB (``VmRSS``, ``VmHWM``); 0 where the file or field is missing."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset the process's ``VmHWM`` to its current resident set; ``False`` where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # not-a-file-write: a kernel control
        return True
    except OSError:
        return False


class Measurement(NamedTuple):
    """What :func:`measure` returns.

    Attributes:
        value: the call's return value.
        seconds: wall-clock seconds of the call.
        peak_mb: the rise of ``VmHWM`` over ``VmRSS`` before the call, MB (>= 0).
        exact: ``VmHWM`` could be reset first; otherwise ``peak_mb`` is the process peak so far (an upper bound).
    """

    value: Any
    seconds: float
    peak_mb: float
    exact: bool


def measure(fn: Callable[[], Any]) -> Measurement:
    """Call ``fn()``; its value, seconds and peak resident-memory rise (see :class:`Measurement`)."""
    exact = reset_peak_rss()
    before = rss_kb("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return Measurement(out, seconds, max(0.0, (rss_kb("VmHWM") - before) / 1024.0), exact)


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), seconds, peak MB)`` of :func:`measure`."""
    m = measure(fn)
    return m.value, m.seconds, m.peak_mb


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def over_batches(fn: Callable[[Any], Any], batches: Iterable[Any], no_grad: bool = False) -> Callable[[], None]:
    """A call that runs ``fn`` on every batch (under ``torch.no_grad()`` with ``no_grad``), for the timers."""
    items = list(batches)

    def run() -> None:
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            for b in items:
                fn(b)

    return run


def forward_ratio(
    net: nn.Module, batches: Sequence[torch.Tensor], other: Callable[[], Any], repeats: int
) -> tuple[float, float, float]:
    """``(time(other) / time(forward), forward seconds, other seconds)`` on the same batches.

    ``net``'s plain forward pass (no grad) over ``batches`` against ``other`` (e.g. a detector scoring the same
    batches); medians of interleaved pairs after a warm-up (:func:`medood.utils.machine.paired_time_ratio`).
    """
    return paired_time_ratio(over_batches(net, batches, no_grad=True), other, repeats)


def batch_record(batches: Sequence[torch.Tensor], repeats: int) -> dict[str, Any]:
    """What a cost figure was timed on.

    Returns:
        ``images`` (in all), ``batch_size`` (of the first batch), ``input_shape`` (one image's) and ``repeats``.
    """
    return {
        "images": sum(int(x.shape[0]) for x in batches),
        "batch_size": int(batches[0].shape[0]),
        "input_shape": list(batches[0].shape[1:]),
        "repeats": repeats,
    }


def head_features(net: nn.Module, batches: Iterable[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``{"features", "logits"}`` of each batch, as ``score_features`` of a classifier detector takes them.

    The (flattened) input of ``net``'s linear head and its logits; one forward pass per batch, no grad.
    """
    head, _ = find_linear_head(net)
    with torch.no_grad(), FeatureExtractor(net, {"features": f"{head}:input"}) as fx:
        feats = [fx(x) for x in batches]
    return [{"features": flatten_features(f["features"]), "logits": f["logits"]} for f in feats]


class CallTimer:
    """Seconds of every call of a module's ``method``, e.g. one detector call per volume inside an evaluator.

    ``method="forward"``: forward pre- and post-hooks (every ``module(...)`` call). Any other method (e.g.
    ``"infer"``, the entry point :class:`~medood.inferers.OODInferer` calls on a detector without going through
    ``forward``) is wrapped on the instance for the timer's lifetime. Use as a context manager (the hooks or the
    wrapper are removed on exit) or call :meth:`remove`.

    Example:
        >>> with CallTimer(detector, "infer") as timer:
        ...     evaluator.run()
        >>> timer.times  # one entry per call
    """

    def __init__(self, module: nn.Module, method: str = "forward") -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._module, self._method = module, method
        self._hooks: list[Any] = []
        if method == "forward":
            self._hooks = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]
            return
        inner = getattr(module, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.times.append(time.perf_counter() - start)

        object.__setattr__(module, method, timed)  # an instance attribute shadows the class's method

    def _pre(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.times.append(time.perf_counter() - self._start)

    def remove(self) -> None:
        """Remove the hooks or the wrapper (the recorded times stay)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._method != "forward" and self._method in vars(self._module):
            object.__delattr__(self._module, self._method)

    def __enter__(self) -> CallTimer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
