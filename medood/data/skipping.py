"""Batch mode that goes on: one bad case is recorded and skipped, never the end of a run.

* :class:`SafeDataset`: a MONAI ``Dataset`` whose transform errors on an item (a :class:`DataError`, or a
  nibabel / pydicom / PIL / I/O error, also when MONAI wraps it in ``RuntimeError("applying transform ...")``)
  give a :class:`CaseFailure` ``(case, file, error)`` in place of the item; other exceptions (programming
  errors) still propagate.
* :class:`SafeCacheDataset`: a MONAI ``CacheDataset`` (training sets) that leaves out the items whose
  deterministic transforms fail while caching and lists them in ``failures``; the loader keeps its length.
* :class:`SkippingDataLoader`: a MONAI ``DataLoader`` that drops those markers from each batch, collates the
  good items as usual, never yields an empty batch, and keeps the failures of the current pass in
  ``loader.failures``. It works with worker processes (the markers travel through the collate function).

The loader has **no length** (``len()`` raises ``TypeError``): how many batches remain is only known at the end,
and an Ignite engine that was told a length would restart the loader to make up for the dropped batches,
scoring the good cases twice. Ignite and MONAI engines handle a loader without a length.

:class:`medood.handlers.FailedCasesWriter` writes ``loader.failures`` to ``errors.csv`` and fails the run.

Example (bundle YAML)::

    dataset: {_target_: medood.data.SafeDataset, data: '@datalist', transform: '@preprocessing'}
    dataloader: {_target_: medood.data.SkippingDataLoader, dataset: '@dataset', batch_size: 1}
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from pydicom.errors import InvalidDicomError
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset

from medood.utils.errors import DataError, printable_path
from medood.utils.io import case_name

__all__ = [
    "DATA_ERRORS",
    "CaseFailure",
    "SafeDataset",
    "SkipFailures",
    "SkippingDataLoader",
    "case_failure",
    "data_error_in",
    "skip_failures_collate",
    "skipping_loader",
]

logger = logging.getLogger(__name__)

#: Exceptions that mean "this input is bad" (the readers' own, and those of the libraries they call).
DATA_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    OSError,
    EOFError,
    zlib.error,
    ImageFileError,
    HeaderDataError,
    InvalidDicomError,
)


class CaseFailure(NamedTuple):
    """A case that could not be loaded: its id, the file at fault, a one-line error message and the stage.

    ``stage`` is the transform that failed (``LoadImage2Dd``, ``Spacingd`` ...), ``"load"`` when it is unknown.
    """

    case: str
    file: str
    error: str
    stage: str = "load"


class CollatedBatch(NamedTuple):
    """What :func:`skip_failures_collate` returns: the collated good items (``None`` if none) and the failures."""

    batch: Any
    failures: list[CaseFailure]


def data_error_in(exc: BaseException, catch: tuple[type[BaseException], ...] = DATA_ERRORS) -> BaseException | None:
    """The first exception of ``catch`` types in ``exc``'s chain (``__cause__`` / ``__context__``), or ``None``.

    MONAI's ``Compose`` re-raises a transform's exception as ``RuntimeError("applying transform ...")`` whose
    cause is the original one; this finds it.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, catch):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _first_path(item: Any, key: str) -> str:
    value = item.get(key) if isinstance(item, dict) else item
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return printable_path(value) if isinstance(value, (str, os.PathLike)) else ""


_TRANSFORM = re.compile(r"applying transform <?([\w.]+)")


def _stage(exc: BaseException) -> str:
    """The failing transform's class name from MONAI's ``applying transform ...`` wrapper, else ``"load"``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        found = _TRANSFORM.search(str(current))
        if found:
            return found.group(1).rsplit(".", 1)[-1]
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "load"


def case_failure(item: Any, exc: BaseException, cause: BaseException, image_key: str, case_key: str) -> CaseFailure:
    """The record of datalist ``item`` failing with ``exc`` (whose data error is ``cause``)."""
    keys = [image_key, *(item if isinstance(item, dict) else ())]
    source = next((p for p in (_first_path(item, k) for k in keys) if p), "")
    case = item.get(case_key) if isinstance(item, dict) else None
    file = printable_path(cause.path) if isinstance(cause, DataError) else source
    name = str(case) if case is not None else case_name(source or file)
    return CaseFailure(name, file, _message(cause), _stage(exc))


def _message(error: BaseException) -> str:
    """One line; a DataError's path is left out (it is the record's ``file``)."""
    if isinstance(error, DataError):
        text = error.problem + (f" ({error.hint})" if error.hint else "")
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


class SafeDataset(Dataset):
    """A MONAI ``Dataset`` that returns a :class:`CaseFailure` for an item whose transform fails on bad data.

    Args:
        data: the datalist.
        transform: the (dictionary) transform, e.g. a ``Compose`` starting with ``LoadVolumed``.
        image_key: the item key holding the input path (for the ``file`` and ``case`` of a failure when the
            error does not name its own file). Defaults to ``"image"``.
        case_key: the item key holding an explicit case id; without it the case is
            :func:`medood.utils.io.case_name` of the input path. Defaults to ``"case"``.
        catch: exception types that mark an item as failed. Defaults to :data:`DATA_ERRORS`.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Callable | None = None,
        image_key: str = "image",
        case_key: str = "case",
        catch: Sequence[type[BaseException]] = DATA_ERRORS,
    ) -> None:
        super().__init__(data, transform)
        self.image_key, self.case_key = image_key, case_key
        self.catch = tuple(catch)

    def failure(self, item: Any, error: BaseException) -> CaseFailure:
        """The record of ``item`` failing with ``error``."""
        return case_failure(item, error, data_error_in(error, self.catch) or error, self.image_key, self.case_key)

    def _transform(self, index: int) -> Any:
        return _guarded(lambda: super(SafeDataset, self)._transform(index), self.data[index], self)


class SafeCacheDataset(CacheDataset):
    """A MONAI ``CacheDataset`` that drops the items whose deterministic transforms fail on bad data while caching.

    For training sets: a bad file is left out before the first epoch, so the loader keeps its length and its
    batches; ``failures`` lists what was left out (:class:`CaseFailure`, stage of the error) for
    :class:`medood.handlers.FailedCasesWriter` (``source: '@train#dataset'``), which writes ``errors.csv`` and fails
    the run at its end. The cache is filled when the dataset is built (``runtime_cache`` is not supported); items
    past ``cache_rate`` are read at run time and fail as in a plain ``CacheDataset``.

    Args:
        data: the datalist.
        transform: a ``Compose`` (deterministic transforms first, as for ``CacheDataset``).
        image_key: the item key holding the input path. Defaults to ``"image"``.
        case_key: the item key holding an explicit case id. Defaults to ``"case"``.
        catch: exception types that mark an item as failed. Defaults to :data:`DATA_ERRORS`.
        kwargs: other ``CacheDataset`` arguments (``cache_rate``, ``num_workers``, ``progress`` ...).

    Raises:
        ValueError: ``runtime_cache`` or ``hash_as_key`` is asked for.
    """

    def __init__(
        self,
        data: Sequence,
        transform: Callable | None = None,
        image_key: str = "image",
        case_key: str = "case",
        catch: Sequence[type[BaseException]] = DATA_ERRORS,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("runtime_cache") or kwargs.get("hash_as_key"):
            raise ValueError("SafeCacheDataset fills its cache when it is built: no runtime_cache / hash_as_key")
        self.image_key, self.case_key, self.catch = image_key, case_key, tuple(catch)
        self.failures: list[CaseFailure] = []
        super().__init__(data, transform, **kwargs)

    def _load_cache_item(self, idx: int) -> Any:
        return _guarded(lambda: super(SafeCacheDataset, self)._load_cache_item(idx), self.data[idx], self)

    def set_data(self, data: Sequence) -> None:
        """Cache ``data`` and leave out the items that failed (listed in ``failures``)."""
        super().set_data(data)
        cache = list(self._cache)
        self.failures = [c for c in cache if isinstance(c, CaseFailure)]
        if self.failures:
            bad = {i for i, c in enumerate(cache) if isinstance(c, CaseFailure)}
            self.data = [d for i, d in enumerate(data) if i not in bad]
            self._cache = [c for i, c in enumerate(cache) if i not in bad]
            self.cache_num = len(self._cache)
            logger.warning("%d of %d cases left out of the cache (bad data)", len(bad), len(data))


def _guarded(get: Callable[[], Any], item: Any, owner: Any) -> Any:
    """``get()``, or the :class:`CaseFailure` of ``item`` when it raises a data error (others propagate)."""
    try:
        return get()
    except Exception as e:
        cause = data_error_in(e, owner.catch)
        if cause is None:
            raise
        failure = case_failure(item, e, cause, owner.image_key, owner.case_key)
        logger.warning("skipping case %s (%s): %s", failure.case, failure.stage, failure.error)
        return failure


class SkipFailures(TorchDataset):
    """Any map-style dataset whose items become :class:`CaseFailure` on a data error, as :class:`SafeDataset`.

    What :func:`skipping_loader` wraps a loader's dataset (MONAI ``Dataset``, ``CacheDataset`` ...) in; the
    arguments are :class:`SafeDataset`'s.
    """

    def __init__(
        self,
        dataset: Any,
        image_key: str = "image",
        case_key: str = "case",
        catch: Sequence[type[BaseException]] = DATA_ERRORS,
    ) -> None:
        self.dataset, self.image_key, self.case_key, self.catch = dataset, image_key, case_key, tuple(catch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _item(self, index: int) -> Any:
        data = getattr(self.dataset, "data", None)
        try:
            return data[index] if data is not None else {}
        except (IndexError, KeyError, TypeError):
            return {}

    def __getitem__(self, index: int) -> Any:
        return _guarded(lambda: self.dataset[index], self._item(index), self)

    def __getattr__(self, name: str) -> Any:
        """Everything else (``data``, ``transform`` ...) is the wrapped dataset's, e.g. for ``Invertd``."""
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def skip_failures_collate(items: Sequence[Any], collate: Callable[[Any], Any] = list_data_collate) -> CollatedBatch:
    """Collate the items that are not :class:`CaseFailure` with ``collate``; return them with the failures."""
    failures = [x for x in items if isinstance(x, CaseFailure)]
    good = [x for x in items if not isinstance(x, CaseFailure)]
    return CollatedBatch(collate(good) if good else None, failures)


class SkippingDataLoader(DataLoader):
    """MONAI ``DataLoader`` that drops failed items (see the module docstring); ``failures`` lists them.

    Args:
        dataset: usually a :class:`SafeDataset`.
        num_workers: as ``DataLoader``. Defaults to 0.
        collate_fn: how the good items are collated. Defaults to MONAI's ``list_data_collate``.
        kwargs: other ``DataLoader`` arguments (``batch_size``, ``shuffle``, ...).
    """

    def __init__(
        self, dataset: Any, num_workers: int = 0, collate_fn: Callable[[Any], Any] = list_data_collate, **kwargs: Any
    ) -> None:
        super().__init__(dataset, num_workers, collate_fn=partial(skip_failures_collate, collate=collate_fn), **kwargs)
        self.failures: list[CaseFailure] = []

    def __iter__(self) -> Any:
        """Yield the non-empty batches of one pass; ``failures`` is reset at the start of each pass."""
        self.failures = []
        for out in super().__iter__():
            if not isinstance(out, CollatedBatch):  # a custom batch_sampler=None pass-through
                yield out
                continue
            self.failures.extend(out.failures)
            if out.batch is not None:
                yield out.batch

    def __len__(self) -> int:
        raise TypeError("SkippingDataLoader has no length: failed items are dropped as they are met")

    def __bool__(self) -> bool:
        """Always true (``bool()`` would otherwise ask for the length)."""
        return True


#: DataLoader settings carried over by :func:`skipping_loader` (the sampler keeps the order and shuffling).
_LOADER_ARGS = (
    "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context", "generator", "persistent_workers",
    "pin_memory_device",
)  # fmt: skip


def skipping_loader(loader: Any, image_key: str = "image", case_key: str = "case") -> Any:
    """``loader`` as a :class:`SkippingDataLoader` over the same items, order, batches and collation.

    A :class:`SkippingDataLoader` is returned as it is; a torch / MONAI ``DataLoader`` is rebuilt around its
    dataset wrapped in :class:`SkipFailures` (unless it is a :class:`SafeDataset`); anything else (a list, an
    iterable dataset) is returned unchanged with a warning. Items a ``CacheDataset`` caches when it is built are
    read before this runs: its errors stop the run as before.
    """
    if isinstance(loader, SkippingDataLoader):
        return loader
    if not isinstance(loader, TorchDataLoader) or isinstance(loader.dataset, IterableDataset):
        logger.warning("%s is not a map-style DataLoader: bad cases will stop the run", type(loader).__name__)
        return loader
    dataset = loader.dataset
    if not isinstance(dataset, (SafeDataset, SkipFailures)):
        dataset = SkipFailures(dataset, image_key, case_key)
    kwargs: dict[str, Any] = {k: getattr(loader, k) for k in _LOADER_ARGS if hasattr(loader, k)}
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if loader.batch_size is None:  # a custom batch sampler
        kwargs["batch_sampler"] = loader.batch_sampler
    else:
        kwargs.update(batch_size=loader.batch_size, sampler=loader.sampler, drop_last=loader.drop_last)
    collate = loader.collate_fn
    if isinstance(collate, partial) and collate.func is skip_failures_collate:
        collate = collate.keywords.get("collate", list_data_collate)
    return SkippingDataLoader(dataset, num_workers=loader.num_workers, collate_fn=collate, **kwargs)
