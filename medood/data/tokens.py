"""Token grids of every foreground slice of a set of volumes, for training the token transformers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from monai.transforms import Randomizable
from torch import Tensor
from torch.utils.data import Dataset

from medood.transforms.slices import slice_positions
from medood.utils.batch import unpack_batch

__all__ = ["TokenGridDataset", "Tokenizer", "augmented_copies", "collect_slices"]

logger = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """What :class:`TokenGridDataset` needs of a tokenizer (e.g. :class:`~medood.networks.nets.SliceTokenizer`)."""

    downsample: int
    num_embeddings: int

    def to(self, device: str | torch.device) -> Tokenizer: ...  # noqa: D102

    def eval(self) -> Tokenizer: ...  # noqa: D102

    def tokenize(self, x: Tensor, position: Tensor | None = None) -> Tensor: ...  # noqa: D102


def collect_slices(
    volumes: Iterable[Any], axis: int = 2, min_foreground: float = 0.05, flip_lr: bool = False, batched: bool = True
) -> tuple[Tensor, Tensor]:
    """All slices ``(N, C, H, W)`` with a non-zero fraction ``>= min_foreground`` and their positions ``(N,)``.

    Args:
        volumes: loader batches ``(B, C, *S)`` / ``{"image": (B, C, *S)}`` (``batched=True``) or single items
            ``(C, *S)`` / ``{"image": (C, *S)}`` such as a MONAI ``Dataset`` yields (``batched=False``); 2D
            images are taken as single slices at position 0.
        axis: spatial slice axis of 3D volumes. Defaults to 2 (axial in RAS).
        min_foreground: minimum non-zero fraction. Defaults to 0.05.
        flip_lr: also add every slice mirrored along its first axis (left-right in RAS). Defaults to False.
        batched: whether ``volumes`` yields batches. Defaults to True.
    """
    slices, positions = [], []
    for item in volumes:
        x, _ = unpack_batch(item) if not isinstance(item, Tensor) else (item, None)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        batch = x if batched else x[None]
        for vol in batch:
            if vol.ndim == 3:  # (C, H, W) image
                slices.append(vol[None].float())
                positions.append(torch.zeros(1))
                continue
            pos = slice_positions(vol, axis)
            fg = (vol.abs().amax(0) > 0).float().movedim(axis, 0).flatten(1).mean(1)
            keep = torch.nonzero(fg >= min_foreground).flatten()
            slices.append(vol.movedim(1 + axis, 0)[keep].float())
            positions.append(pos[keep])
    if not slices:
        raise ValueError("no slices collected: the volumes are empty or have no foreground")
    s, p = torch.cat(slices), torch.cat(positions)
    if flip_lr:
        s, p = torch.cat([s, s.flip(2)]), torch.cat([p, p])
    return s, p


def augmented_copies(
    slices: Tensor, positions: Tensor, augment: Callable[[dict[str, Any]], dict[str, Any]], copies: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``slices`` followed by ``copies`` augmented versions of each (same positions), seeded.

    Args:
        slices: ``(N, C, h, w)``.
        positions: ``(N,)``.
        augment: a dictionary transform of ``{"image": (C, h, w), "position": float}``; MONAI randomizable
            transforms are re-seeded with ``seed`` first, so the copies are reproducible.
        copies: how many augmented versions of each slice.
        seed: the seed. Defaults to 0.
    """
    if isinstance(augment, Randomizable):
        augment.set_random_state(seed)
    out = [slices]
    for _ in range(copies):
        out.append(
            torch.stack(
                [
                    torch.as_tensor(augment({"image": sl, "position": p})["image"]).float()
                    for sl, p in zip(slices, positions)
                ]
            )
        )
    logger.info("added %d augmented copies of %d slices", copies, slices.shape[0])
    return torch.cat(out), positions.repeat(copies + 1)


class TokenGridDataset(Dataset):
    """``{"tokens": (h, w) long, "position": float}`` items: the tokenized foreground slices of volumes.

    Built once with a trained tokenizer (tokenizing is the expensive part; training the transformers then
    never touches images).

    Args:
        tokenizer: a trained :class:`~medood.networks.nets.SliceTokenizer`.
        volumes: as :func:`collect_slices` (e.g. a MONAI ``Dataset`` of preprocessed volumes).
        axis: slice axis. Defaults to 2.
        min_foreground: minimum non-zero fraction of a slice. Defaults to 0.05.
        flip_lr: add left-right mirrored slices. Defaults to True.
        batch_size: slices tokenized per call. Defaults to 64.
        device: where to tokenize. Defaults to CPU.
        batched: whether ``volumes`` yields batches (a DataLoader) or single items (a Dataset). Defaults to False.
        augment: a dictionary transform of one slice ``{"image": (C, h, w), "position": float}`` (e.g. the
            bundle's ``slice_augmentation`` list composed); with ``copies > 0`` every slice is added ``copies``
            more times, augmented, before tokenizing (seeded by ``seed``). Defaults to ``None``.
        copies: augmented copies of every slice. Defaults to 0.
        seed: seed of the augmentations. Defaults to 0.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        volumes: Iterable[Any],
        axis: int = 2,
        min_foreground: float = 0.05,
        flip_lr: bool = True,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        batched: bool = False,
        augment: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        copies: int = 0,
        seed: int = 0,
    ) -> None:
        slices, self.positions = collect_slices(volumes, axis, min_foreground, flip_lr, batched)
        if augment is not None and copies > 0:
            slices, self.positions = augmented_copies(slices, self.positions, augment, copies, seed)
        s = tokenizer.downsample
        h, w = slices.shape[-2:]
        slices = torch.nn.functional.pad(slices, (0, (-w) % s, 0, (-h) % s))
        tokenizer = tokenizer.to(device).eval()
        grids = []
        with torch.no_grad():
            for i in range(0, slices.shape[0], batch_size):
                grids.append(
                    tokenizer.tokenize(
                        slices[i : i + batch_size].to(device), self.positions[i : i + batch_size].to(device)
                    ).cpu()
                )
        self.tokens = torch.cat(grids).to(torch.int16 if tokenizer.num_embeddings < 2**15 else torch.long)
        logger.info("tokenized %d slices into grids of %s", len(self.tokens), tuple(self.tokens.shape[1:]))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"tokens": self.tokens[i].long(), "position": self.positions[i]}
