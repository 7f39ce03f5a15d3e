"""Sharded and resumed batch inference: which case a datalist item is, dataset order, pending-case loaders, merges.

A sharded inference run (``configs/multi_gpu_inference.yaml`` under ``torchrun``) gives rank ``r`` of ``W`` the
batches ``r, r + W, ...`` of the one-process batching (:class:`BatchShardSampler`: every case exactly once, no
padding duplicate, and every case in the very batch one process puts it in, so that networks whose arithmetic depends
on the batch give the same bits). Each rank writes its own cases' maps; the writers gather the per-rank rows
(:func:`merge_rows`, ``all_gather_object``) and rank 0 writes one ``scores.csv`` / ``slice_scores.csv`` /
``errors.csv`` **in datalist order** (:func:`case_order`), i.e. the rows one process writes. A resumed run keeps the
cases whose outputs are complete and gives the engine a loader over the other batches only (:func:`subset_loader`),
so the network never sees a finished batch again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from monai.data import DistributedSampler
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler as TorchDistributedSampler

from medood.data.skipping import SkippingDataLoader, skip_failures_collate
from medood.utils.distributed import all_gather_objects, get_rank, is_sharded
from medood.utils.io import case_name

__all__ = [
    "BatchShardSampler",
    "CaseSubset",
    "case_order",
    "datalist_cases",
    "datalist_of",
    "item_case",
    "merge_rows",
    "sort_by_order",
    "subset_loader",
    "unique_case",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_SHARDED = object()  # merge_rows without a loader: the rows are sharded when there are several ranks


def item_case(item: Any, case_key: str | None = None, image_key: str = "image") -> str | None:
    """The case name of datalist ``item`` before name clashes are resolved (``None`` when unknown).

    ``item[case_key]`` (``/`` -> ``_``) when cases are named by a field, else the input file's
    :func:`~medood.utils.io.case_name`.
    """
    if not isinstance(item, Mapping):
        return None
    if case_key is not None and item.get(case_key) is not None:
        return str(item[case_key]).replace("/", "_")
    source = _source(item, image_key)
    return case_name(source) if source else None


def _source(item: Any, image_key: str) -> str | None:
    source = item.get(image_key) if isinstance(item, Mapping) else None
    if isinstance(source, (list, tuple)) and source:
        source = source[0]
    return str(source) if isinstance(source, (str, os.PathLike)) and str(source) else None


def unique_case(name: str, source: str, seen: dict[str, str], log: bool = True) -> str:
    """``name``, or ``<parent folder>_<name>`` when another input already took it (``seen``: name -> input, updated).

    The one rule of the result writer; applied in datalist order by :func:`datalist_cases`, so a sharded or resumed
    run names every case as one uninterrupted process does.
    """
    if name in seen and seen[name] != source:
        parent = Path(source).parent.name
        name = f"{parent}_{name}" if parent else f"{name}_{len(seen)}"
        if log:
            logger.warning("two inputs share the case name of %s; writing it as %r", source, name)
    seen[name] = source
    return name


def datalist_cases(items: Sequence[Any], case_key: str | None = None, image_key: str = "image") -> list[str | None]:
    """The case name of every datalist item as the result writer writes it (clashes resolved in datalist order)."""
    seen: dict[str, str] = {}
    out: list[str | None] = []
    for item in items:
        name, source = item_case(item, case_key, image_key), _source(item, image_key)
        if name is not None and source is not None and not (case_key and item.get(case_key) is not None):
            name = unique_case(name, source, seen, log=False)
        out.append(name)
    return out


def datalist_of(loader: Any) -> list[Any] | None:
    """The items of a loader's (unsharded) dataset (``dataset.data``, through wrappers), or ``None``."""
    data = getattr(getattr(loader, "dataset", None), "data", None)
    return list(data) if isinstance(data, Sequence) else None


def case_order(items: Iterable[Any], image_key: str = "image") -> dict[str, int]:
    """``{case name: datalist index}`` under every name a writer may give an item.

    The names: the ``case`` field as it is and with ``/`` -> ``_``, the input file's case name, the input path;
    the first item wins a shared name.
    """
    items = list(items)
    order: dict[str, int] = {}
    for i, name in enumerate(datalist_cases(items)):
        if name is not None:
            order.setdefault(name, i)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            continue
        names = [item_case(item, "case", image_key), item_case(item, None, image_key)]
        if item.get("case") is not None:
            names.append(str(item["case"]))
        source = item.get(image_key)
        if isinstance(source, (str, os.PathLike)):
            names.append(str(source))
        for name in names:
            if name is not None:
                order.setdefault(name, i)
    return order


def sort_by_order(rows: Sequence[T], order: Mapping[str, int] | None, key: Callable[[T], str]) -> list[T]:
    """``rows`` in datalist order (stable; rows of unknown cases last, in the order given)."""
    if not order:
        return list(rows)
    last = len(order) + 1
    return sorted(rows, key=lambda r: order.get(key(r), last))


def merge_rows(
    rows: Sequence[T], order: Mapping[str, int] | None, key: Callable[[T], str], loader: Any = _SHARDED
) -> list[T]:
    """Every rank's ``rows`` (``all_gather_object``) in datalist order (:func:`sort_by_order`).

    One process, or a ``loader`` that is not sharded (every rank saw every case), returns the rows as they are
    (already in datalist order, whatever their names). Every rank must call it (a collective).
    """
    if loader is not _SHARDED and not is_sharded(loader):
        return list(rows)
    parts = all_gather_objects(list(rows))
    if len(parts) == 1:
        return parts[0]
    return sort_by_order([r for part in parts for r in part], order, key)


class BatchShardSampler(TorchDistributedSampler):
    """Whole batches to each rank: no shuffling, no padding, each item exactly once.

    Rank ``r`` of ``W`` gets the batches ``r, r + W, ...`` of ``batch_size`` consecutive items (the batches one
    process makes). A ``torch.utils.data.DistributedSampler`` (what :func:`medood.utils.distributed.is_sharded`
    recognises) whose ``DataLoader`` must use the same ``batch_size``. A rank may get no batch (fewer batches than
    ranks).

    Args:
        dataset: the (unsharded) dataset.
        batch_size: the loader's batch size.
        num_replicas: the world size (default: the process group's).
        rank: this rank (default: the process group's).
    """

    def __init__(self, dataset: Any, batch_size: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        n, size = len(dataset), max(int(batch_size), 1)
        starts = range(self.rank * size, n, self.num_replicas * size)
        self.indices = [i for s in starts for i in range(s, min(s + size, n))]
        self.num_samples, self.total_size = len(self.indices), n

    def __iter__(self) -> Any:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class CaseSubset(TorchDataset):
    """The items ``indices`` of a map-style dataset.

    ``data`` is their datalist (what failure records read); every other attribute is the wrapped dataset's.
    """

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        data = getattr(dataset, "data", None)
        self.data = [data[i] for i in self.indices] if isinstance(data, Sequence) else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices", "data"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


#: DataLoader settings kept by :func:`subset_loader`
_LOADER_ARGS = ("pin_memory", "timeout", "worker_init_fn", "multiprocessing_context", "persistent_workers")


def subset_loader(loader: TorchDataLoader, indices: Sequence[int]) -> TorchDataLoader:
    """A loader of the same class, batch size and collation over the items ``indices`` of ``loader``'s dataset.

    A :class:`BatchShardSampler` (a sharded run) becomes one over the subset (the remaining batches shared out
    again), another ``DistributedSampler`` MONAI's ``DistributedSampler(shuffle=False, even_divisible=False)``; any
    other sampler becomes sequential. A :class:`~medood.data.SkippingDataLoader` stays one (its collate is unwrapped
    first). Give whole batches of the loader (``indices`` of complete batches) to keep every batch as it was.
    """
    subset = CaseSubset(loader.dataset, indices)
    kwargs: dict[str, Any] = {k: getattr(loader, k) for k in _LOADER_ARGS if hasattr(loader, k)}
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if isinstance(loader.sampler, BatchShardSampler):
        kwargs["sampler"] = BatchShardSampler(subset, loader.batch_size or 1)
    elif isinstance(loader.sampler, TorchDistributedSampler):
        kwargs["sampler"] = DistributedSampler(subset, shuffle=False, even_divisible=False)
    collate = loader.collate_fn
    if isinstance(collate, partial) and collate.func is skip_failures_collate:
        collate = collate.keywords["collate"]
    cls = SkippingDataLoader if isinstance(loader, SkippingDataLoader) else type(loader)
    if get_rank() == 0:
        logger.info("resume: %d of %d case(s) left to infer", len(subset), len(loader.dataset))  # type: ignore[arg-type]
    return cls(subset, batch_size=loader.batch_size or 1, num_workers=loader.num_workers, collate_fn=collate, **kwargs)
