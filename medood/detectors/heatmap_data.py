"""Training data of the heatmap decoder in memory: ID images and auxiliary OOD images, each with its target image.

ID images are their own target; an auxiliary OOD image's target is the nearest same-class ID training image
(Hornauer & Belagiannis, WACV 2023; official ``prototype_heatmap.py``). The classifier is frozen, so the targets are
found **once**: one pass over the ID training images and one over the auxiliary images gives penultimate features
and predicted classes; each auxiliary image gets the ID image of the same predicted class with the nearest features
(exact, memory-bounded :func:`~medood.utils.neighbours.nearest_neighbours`). An auxiliary image whose predicted
class no ID training image has is dropped.

:func:`ood_pair_batches` is the data builder of the detector's decoder stage
(:attr:`~medood.detectors.stages.TrainingStage.build_data`); the bundles build the same pairs as a datalist of files
(:func:`medood.engines.heatmap.heatmap_training_datalist`, which reuses :func:`predicted_features` and
:func:`nearest_id_targets`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from medood.transforms.corruptions import corruption_plan
from medood.utils.batch import as_plain_tensor, unpack_batch
from medood.utils.enums import OODKeys
from medood.utils.neighbours import nearest_neighbours

if TYPE_CHECKING:
    from medood.detectors.heatmap import HeatmapDetector
    from medood.detectors.stages import TrainingStage

__all__ = ["TARGET", "nearest_id_targets", "ood_pair_batches", "ood_pairs", "predicted_features"]

logger = logging.getLogger(__name__)

IMAGE = OODKeys.IMAGE.value
TARGET = "target"


@torch.no_grad()
def predicted_features(
    detector: HeatmapDetector, batches: Iterable[Any], device: torch.device | None = None, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Raw penultimate features ``(N, D)`` and predicted classes ``(N,)`` of image batches, on the CPU.

    Args:
        detector: the detector whose (frozen) classifier runs.
        batches: tensors, ``{"image", ...}`` dicts or ``(image, label)`` tuples.
        device: where the classifier runs. Defaults to the detector's device.
        chunk_size: the most images per forward pass. Defaults to 64.
    """
    dev = device or detector.device
    feats, preds = [], []
    for batch in batches:
        x, _ = unpack_batch(batch)
        for xc in as_plain_tensor(x).float().split(chunk_size):
            f = detector.extract_features(xc.to(dev))
            feats.append(f[OODKeys.FEATURES.value].cpu())
            preds.append(detector.get(f, OODKeys.LOGITS.value).argmax(1).cpu())
    if not feats:
        raise ValueError("predicted_features got no images")
    return torch.cat(feats), torch.cat(preds)


def nearest_id_targets(
    id_features: Tensor, id_pred: Tensor, aux_features: Tensor, aux_pred: Tensor, chunk_size: int = 2048
) -> Tensor:
    """Index of each auxiliary image's target: the ID image of the same predicted class with the nearest features.

    Returns ``(N_aux,)`` indices into the ID set; ``-1`` where no ID image has the auxiliary image's class.
    """
    idx, _ = nearest_neighbours(aux_features, id_features, aux_pred, id_pred, chunk_size)
    dropped = int((idx < 0).sum())
    if dropped:
        logger.warning("%d auxiliary images predicted as a class no ID training image has: dropped", dropped)
    return idx


def _corrupted(detector: HeatmapDetector, images: Tensor) -> Tensor:
    if not detector.aux_corruptions or detector.aux_per_image < 1:
        return images[:0]
    plan = corruption_plan(images.shape[0], detector.aux_corruptions, detector.aux_per_image, detector.seed)
    return torch.stack([detector.corrupt(images[i], name, seed) for i, name, seed in plan])


def ood_pairs(
    detector: HeatmapDetector,
    images: Sequence[Mapping[str, Tensor]],
    batch_size: int,
    device: torch.device | None = None,
    aux_images: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """In-memory training batches of the decoder stage, shuffled once (seeded).

    Batches are ``{"image", "target", "features" (normalised), "pred"}`` (the stage's keys,
    :data:`~medood.losses.heatmap.TARGET_KEYS`); the detector's feature range must be fitted.

    Args:
        detector: the heatmap detector (its classifier, corruptions and seed).
        images: ID training batches ``{"image": (B, C, *S), ...}``.
        batch_size: rows per returned batch.
        device: where the classifier runs. Defaults to the detector's device.
        aux_images: extra auxiliary OOD images ``(M, C, *S)`` besides the corrupted ID images.
    """
    x = torch.cat([as_plain_tensor(b[IMAGE]).float().cpu() for b in images])
    aux = _corrupted(detector, x)
    if aux_images is not None:
        aux = torch.cat([aux, as_plain_tensor(aux_images).float().cpu()])
    id_f, id_p = predicted_features(detector, [x], device)
    inputs, targets, feats, preds = x, x, id_f, id_p
    if aux.shape[0]:
        aux_f, aux_p = predicted_features(detector, [aux], device)
        if detector.target_space == "pixels":  # the nearest ID image in pixels, any class
            idx = nearest_id_targets(x.flatten(1), torch.zeros_like(id_p), aux.flatten(1), torch.zeros_like(aux_p))
        else:
            idx = nearest_id_targets(id_f, id_p, aux_f, aux_p)
        keep = idx >= 0
        inputs, targets = torch.cat([x, aux[keep]]), torch.cat([x, x[idx[keep]]])
        feats, preds = torch.cat([id_f, aux_f[keep]]), torch.cat([id_p, aux_p[keep]])
    logger.info("heatmap pairs: %d ID images, %d auxiliary OOD images", x.shape[0], inputs.shape[0] - x.shape[0])
    columns = {IMAGE: inputs, TARGET: targets, "features": detector.normalise(feats).cpu(), "pred": preds}
    order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(detector.seed))
    columns = {k: v[order] for k, v in columns.items()}
    return [{k: v[i : i + batch_size] for k, v in columns.items()} for i in range(0, inputs.shape[0], batch_size)]


def ood_pair_batches(
    detector: HeatmapDetector,
    stage: TrainingStage,
    images: Sequence[Mapping[str, Tensor]],
    batch_size: int,
    device: torch.device | None = None,
    **options: Any,
) -> list[dict[str, Tensor]]:
    """The decoder stage's data builder: :func:`ood_pairs` (``options``: its ``aux_images``)."""
    return ood_pairs(detector, images, batch_size, device, aux_images=options.get("aux_images"))
