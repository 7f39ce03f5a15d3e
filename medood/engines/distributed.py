"""Multi-process training for the bundles' ``configs/multi_gpu_train.yaml`` (``torchrun`` + ``ignite.distributed``).

The model zoo convention: merge ``multi_gpu_train.yaml`` after a stage's training config and launch it with
``torchrun --nproc_per_node=N -m monai.bundle run --config_file "['configs/train.yaml',
'configs/multi_gpu_train.yaml']"``
(with the bundle's ``inference.yaml`` first).
The override wraps the trained network in ``DistributedDataParallel`` (:func:`ddp`), shards the loaders with
MONAI's ``DistributedSampler`` (:func:`sampler`; MONAI's workflows call ``set_epoch`` at every epoch), keeps the
logging handlers on rank 0 (:func:`rank_zero_handlers`; ignite's ``DiskSaver`` already writes checkpoints on rank
0 only) and destroys the process group at the end (:func:`cleanup`). Every helper is a no-op in one process, so
the override also runs without ``torchrun``.

The process group is created lazily by whichever helper runs first (:func:`~medood.utils.distributed.
setup_distributed`: ``nccl`` on a GPU, ``gloo`` on the CPU); the stages' own ``initialize`` lists stay unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn

from medood.data.shard import BatchShardSampler
from medood.utils.config import as_flag
from medood.utils.distributed import get_rank, get_world_size, setup_distributed

__all__ = ["amp_enabled", "cleanup", "ddp", "device", "inference_sampler", "rank", "rank_zero_handlers", "sampler"]

logger = logging.getLogger(__name__)

#: Handler classes that only log or draw (kept on rank 0; every other handler runs on every rank).
LOGGING_HANDLERS = (
    "StatsHandler",
    "TensorBoardStatsHandler",
    "ProgressBar",
    "TensorBoardImageHandler",
    "RunReportHandler",
)


def device(backend: str | None = None) -> torch.device:
    """This rank's device; creates the process group under ``torchrun`` (``nccl`` with a GPU, ``gloo`` without)."""
    return setup_distributed(backend)


def rank() -> int:
    """This process's rank (creates the process group first under ``torchrun``)."""
    setup_distributed()
    return get_rank()


def ddp(
    module: nn.Module,
    sync_batchnorm: bool | str = False,
    find_unused_parameters: bool | str = False,
    backend: str | None = None,
) -> nn.Module:
    """``module`` on this rank's device, wrapped in ``DistributedDataParallel`` when there are several ranks.

    Uses ``ignite.distributed.auto_model``. The wrapper shares the module's parameters, so an optimiser built on
    ``module.parameters()`` and checkpoints of the unwrapped module (or of the detector holding it) stay valid.

    Args:
        module: the network a stage trains.
        sync_batchnorm: convert batch-norm layers to ``SyncBatchNorm`` (GPU only: PyTorch has no CPU
            implementation; ignored with a log line on the CPU). Defaults to False.
        find_unused_parameters: DDP's option for networks with parameters a step leaves unused. Defaults to False.
        backend: as :func:`device`.

    Raises:
        ValueError: a flag that is not a boolean (:func:`~medood.utils.as_flag`: ``'false'`` from the command line
            is False).
    """
    sync_batchnorm = as_flag(sync_batchnorm, "sync_batchnorm")
    find_unused_parameters = as_flag(find_unused_parameters, "ddp_find_unused_parameters")
    dev = setup_distributed(backend)
    module = module.to(dev)
    if get_world_size() == 1:
        return module
    if sync_batchnorm and dev.type != "cuda":
        logger.info("SyncBatchNorm needs a GPU: batch norm statistics stay per process on %s", dev)
        sync_batchnorm = False
    kwargs = {"find_unused_parameters": True} if find_unused_parameters else {}
    return idist.auto_model(module, sync_bn=sync_batchnorm, **kwargs)


def sampler(dataset: Any, shuffle: bool = True, even_divisible: bool = True, balanced_by: Any = None) -> Any:
    """MONAI ``DistributedSampler`` of ``dataset`` over the ranks, or ``None`` for one process.

    Training uses ``even_divisible=True`` (every rank the same number of steps: DDP needs it); validation and
    fitting ``shuffle=False, even_divisible=False`` (each case exactly once).

    Args:
        dataset: the dataset to shard.
        shuffle: reshuffle every epoch (MONAI's workflows call ``set_epoch``). Defaults to True.
        even_divisible: pad so that every rank gets as many cases. Defaults to True.
        balanced_by: a weighted sampler of one process (e.g. the class-balanced sampler, with ``weights``): its
            weights are drawn with MONAI's ``DistributedWeightedRandomSampler`` instead. Defaults to None.
    """
    from monai.data import DistributedSampler, DistributedWeightedRandomSampler

    setup_distributed()
    if get_world_size() == 1:
        return None
    weights = getattr(balanced_by, "weights", None)
    if weights is not None:
        return DistributedWeightedRandomSampler(dataset, weights.tolist(), even_divisible=even_divisible)
    return DistributedSampler(dataset, even_divisible=even_divisible, shuffle=shuffle)


def inference_sampler(dataset: Any, batch_size: int) -> Any:
    """The sampler of a sharded batch inference (``multi_gpu_inference.yaml``), or ``None`` for one process.

    :class:`medood.data.shard.BatchShardSampler`: rank ``r`` of ``W`` scores the batches ``r, r + W, ...`` of the
    one-process batching, each case once, in the batch one process puts it in (bit-identical results).
    """
    setup_distributed()
    return None if get_world_size() == 1 else BatchShardSampler(dataset, batch_size)


def rank_zero_handlers(handlers: Sequence[Any] | None) -> list[Any] | None:
    """``handlers`` without the logging ones (:data:`LOGGING_HANDLERS`) on ranks other than 0."""
    if handlers is None:
        return None
    if rank() == 0:
        return list(handlers)
    return [h for h in handlers if type(h).__name__ not in LOGGING_HANDLERS]


def amp_enabled(amp: bool | str, dev: str | torch.device) -> bool:
    """Whether to run with mixed precision: ``amp`` on a GPU; on the CPU it is ignored (float32) with a log line.

    ``amp`` is read by :func:`~medood.utils.as_flag` (``--amp false`` from the command line is False; a value
    that is not a boolean raises ``ValueError``).
    """
    dev = torch.device(dev)
    enabled = as_flag(amp, "amp")
    if enabled and dev.type != "cuda":
        logger.info("amp: true ignored on %s: mixed precision is for GPUs, running float32", dev)
        return False
    return enabled


def cleanup() -> None:
    """Wait for every rank, then destroy the process group (no-op for one process)."""
    if torch.distributed.is_initialized():
        idist.barrier()
        torch.distributed.destroy_process_group()
