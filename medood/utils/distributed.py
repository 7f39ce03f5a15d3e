"""Process-group helpers shared by the handlers and engines (``ignite.distributed`` underneath).

One process (no ``torchrun``) is world size 1: every helper is then a no-op, so the same code runs in a notebook
and under ``torchrun --nproc_per_node=N``. The process group is created from the ``torchrun`` environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) by :func:`setup_distributed` with
``nccl`` when the process has a GPU and ``gloo`` otherwise.

Distributed *fitting* gathers what every rank saw and replays it in the order one process would have seen it
(:func:`gather_cases`), so the fitted buffers of N processes equal those of one to float tolerance. That order is
known because fitting loaders are sharded by a ``DistributedSampler`` without shuffling: rank ``r`` gets the
cases ``r, r + W, r + 2W, ...`` (``W`` = world size).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import ignite.distributed as idist
import torch

__all__ = [
    "all_gather_objects",
    "barrier",
    "broadcast_object",
    "dataset_size",
    "gather_cases",
    "get_rank",
    "get_world_size",
    "is_sharded",
    "setup_distributed",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def setup_distributed(backend: str | None = None) -> torch.device:
    """Create the process group once (when launched by ``torchrun`` with ``WORLD_SIZE > 1``); return this rank's device.

    Args:
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (default): ``nccl`` when CUDA is available, else ``gloo``.

    Returns:
        ``cuda:<LOCAL_RANK>`` for ``nccl``, else the CPU (one process: ``cuda`` when available, else the CPU).
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world > 1 and not torch.distributed.is_initialized():
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        idist.initialize(chosen)
        logger.info("rank %d of %d: process group %s", idist.get_rank(), idist.get_world_size(), chosen)
    if torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":
            return torch.device(f"cuda:{idist.get_local_rank()}")
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_world_size() -> int:
    """Number of processes of the run (1 without a process group)."""
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def barrier() -> None:
    """Wait for every rank (no-op for one process), e.g. before reading what rank 0 wrote."""
    if get_world_size() > 1:
        idist.barrier()


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (pickled; move tensors to the CPU first), in rank order; ``[obj]`` for one process."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled); ``obj`` itself for one process."""
    if get_world_size() == 1:
        return obj
    box: list[Any] = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def is_sharded(loader: Any) -> bool:
    """Whether ``loader`` gives each rank only its own cases (a ``DistributedSampler`` in a multi-process run)."""
    sampler = getattr(loader, "sampler", None)
    return get_world_size() > 1 and isinstance(sampler, torch.utils.data.DistributedSampler)


def dataset_size(engine: Any) -> int:
    """Number of cases of an engine's (unsharded) dataset: ``len(engine.data_loader.dataset)``."""
    return len(engine.data_loader.dataset)


def gather_cases(items: Sequence[T], total: int | None = None, indices: Sequence[int] | None = None) -> list[T]:
    """Every rank's per-case ``items`` in the order of the unsharded dataset.

    Without ``indices``, ``items[k]`` of rank ``r`` is case ``k * W + r`` (a ``DistributedSampler`` with
    ``shuffle=False``) and the result interleaves the ranks' lists accordingly; with ``indices`` (this rank's dataset
    indices of ``items``, e.g. ``list(loader.sampler)`` of a :class:`medood.data.shard.BatchShardSampler`, which
    gives each rank whole batches) every item goes to its index. The first ``total`` are kept (the padding cases
    some samplers repeat at the end). Objects are pickled (``all_gather_object``): move tensors to the CPU first.

    Args:
        items: this rank's items, one per case, in the order the rank saw them.
        total: the dataset length (default: keep all).
        indices: the dataset index of every item (default: the interleaved order above).
    """
    world = get_world_size()
    if world == 1:
        return list(items)[:total]
    if indices is not None:
        if len(indices) != len(items):
            raise ValueError(f"gather_cases: {len(items)} items for {len(indices)} dataset indices")
        placed: dict[int, T] = {}
        for part in all_gather_objects([(int(i), item) for i, item in zip(indices, items, strict=True)]):
            placed.update(part)
        return [placed[i] for i in sorted(placed)][:total]
    lists: list[Any] = [None] * world
    torch.distributed.all_gather_object(lists, list(items))
    out: list[T] = []
    for k in range(max(len(x) for x in lists)):
        out.extend(x[k] for x in lists if k < len(x))
    return out[:total]
