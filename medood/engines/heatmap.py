"""Training data of the heatmap decoder: ID images and auxiliary OOD images, each with its target image.

ID images are their own target; an auxiliary OOD image's target is the nearest same-class ID training image
(Hornauer & Belagiannis, WACV 2023; official ``prototype_heatmap.py``).

The classifier is frozen, so the targets are found **once**: one pass over the ID training images and one over
the auxiliary images gives penultimate features and predicted classes; each auxiliary image gets the ID image of
the same predicted class with the nearest features (exact, memory-bounded :func:`~medood.utils.neighbours.
nearest_neighbours`). An auxiliary image whose predicted class no ID training image has is dropped.

* :func:`medood.detectors.heatmap_data.ood_pairs` builds the pairs in memory (the data builder of the detector's
  decoder stage; auxiliary images = the detector's corruptions of the ID images, plus optional extra images);
* :func:`heatmap_training_datalist` builds them as a datalist of file paths (the bundles): it also fits the
  detector's feature range on the ID training features of the same pass;
* :func:`medood.engines.fit.train_heatmap_decoder` fits and trains a detector on in-memory ID and extra auxiliary
  loaders (in the fitting engine, so this module does not import it: no import cycle).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from torch import Tensor

from medood.detectors.heatmap import HeatmapDetector
from medood.detectors.heatmap_data import IMAGE, TARGET, nearest_id_targets, ood_pairs, predicted_features
from medood.utils.distributed import gather_cases, get_rank, get_world_size

__all__ = [
    "heatmap_training_datalist",
    "nearest_id_targets",
    "ood_pairs",
    "predicted_features",
]

logger = logging.getLogger(__name__)


def _uniform(item: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The training keys only, the same for every item (so ID and auxiliary items collate into one batch)."""
    return {
        IMAGE: item[IMAGE],
        "corruption": item.get("corruption") or "",
        "corruption_seed": int(item.get("corruption_seed", 0)),
        "aux_source": item.get("aux_source", source),
    }


def _loader(items: Sequence[Mapping[str, Any]], transform: Any, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(Dataset(list(items), transform), batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _item_features(
    detector: HeatmapDetector, items: Sequence[Mapping[str, Any]], transform: Any, batch_size: int, num_workers: int,
    device: torch.device | None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`predicted_features` of ``items``, shared among the ranks under ``torchrun``.

    Each rank runs its share (items ``r, r + W, ...``) and the rows are gathered in item order, so every rank gets
    what one process computes.
    """
    world = get_world_size()
    if world == 1:
        return predicted_features(detector, _loader(items, transform, batch_size, num_workers), device)
    mine = list(items)[get_rank() :: world]
    rows: list[tuple[Tensor, Tensor]] = []
    if mine:
        f, p = predicted_features(detector, _loader(mine, transform, batch_size, num_workers), device)
        rows = list(zip(f, p))
    rows = gather_cases(rows, len(items))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def heatmap_training_datalist(
    detector: HeatmapDetector,
    id_items: Sequence[Mapping[str, Any]],
    aux_items: Sequence[Mapping[str, Any]],
    transform: Any,
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | None = None,
) -> list[dict[str, Any]]:
    """The decoder's training datalist; fits the detector's feature range on the way.

    Every ID item gets ``"target"`` = its own image, every auxiliary item the image of its nearest same-class ID
    item; every item also carries the classifier's normalised ``"features"`` and ``"pred"`` of its image (the
    classifier is frozen and the images fixed, so the training never runs it again).

    Args:
        detector: the heatmap detector (its classifier must hold the trained weights).
        id_items: ID training items ``{"image": path, ...}``.
        aux_items: auxiliary OOD items (other organs / modalities ``{"image": path}``, corruptions ``{"image":
            id_path, "corruption": name, "corruption_seed": seed}``); never the evaluation OOD sets.
        transform: the dictionary transform giving the classifier's input under ``"image"`` (loading, resizing,
            intensity scaling and :class:`~medood.transforms.corruptions.Corruptd`).
        batch_size: images per classifier pass. Defaults to 32.
        num_workers: data-loading workers. Defaults to 0.
        device: where the classifier runs. Defaults to the detector's device.

    Returns:
        ID items then the kept auxiliary items, each ``{"image", "target", "features", "pred", "corruption",
        "corruption_seed", "aux_source"}`` (``corruption`` empty and ``aux_source = "id"`` for ID items; other
        fields are dropped, so every item collates with every other).
    """
    if not id_items:
        raise ValueError("heatmap_training_datalist needs ID training items")
    if getattr(detector, "target_space", "features") != "features":
        raise NotImplementedError("the file-based decoder datalist searches targets in feature space only")
    ids = [_uniform(item, "id") for item in id_items]
    auxs = [_uniform(item, "auxiliary") for item in aux_items]
    id_f, id_p = _item_features(detector, ids, transform, batch_size, num_workers, device)
    detector.fit_feature_range(id_f)
    id_n = detector.normalise(id_f).cpu()
    out = [{**item, TARGET: item[IMAGE], "features": id_n[i], "pred": id_p[i]} for i, item in enumerate(ids)]
    if auxs:
        aux_f, aux_p = _item_features(detector, auxs, transform, batch_size, num_workers, device)
        idx = nearest_id_targets(id_f, id_p, aux_f, aux_p)
        aux_n = detector.normalise(aux_f).cpu()
        out += [
            {**a, TARGET: ids[int(j)][IMAGE], "features": aux_n[i], "pred": aux_p[i]}
            for i, (a, j) in enumerate(zip(auxs, idx.tolist()))
            if j >= 0
        ]
    per_class = torch.bincount(id_p).tolist()
    logger.info("decoder training set: %d ID (predicted classes %s) + %d auxiliary", len(id_items), per_class,
                len(out) - len(id_items))  # fmt: skip
    return out
