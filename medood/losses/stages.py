"""Stage losses for :class:`~medood.engines.StepTrainer`: ``loss(network, inputs, targets) -> (loss, outputs)``.

``targets`` carries whatever the stage's ``prepare_batch`` puts second (for slice models: the slice position).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medood.networks.nets.token_masks import blob_mask, corrupt_tokens, maskgit_ratio, random_mask
from medood.networks.nets.vq_tokenizer import SliceTokenizer
from medood.transforms.anomalies import (
    ImageAnomaly,
    RandBlobIntensity,
    RandLocalIntensityScale,
    RandMassEffect,
    RandPatchTransplant,
    RandTexturedNoise,
)

__all__ = [
    "ARTokenLoss",
    "ImageAnomalyTokenLoss",
    "MaskedTokenLoss",
    "ReconstructionLoss",
    "TokenDetectorLoss",
    "VQVAELoss",
]


class ReconstructionLoss(nn.Module):
    """Self-supervised reconstruction: ``mean |network(x) - x|`` (L1) or squared error (L2).

    Args:
        kind: ``"l1"`` or ``"l2"``. Defaults to ``"l1"``.
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
        self.kind = kind

    def forward(self, network: nn.Module, inputs: Tensor, targets: Tensor | None = None) -> tuple[Tensor, dict]:
        """Reconstruct ``inputs`` and compare with them (``targets`` is ignored)."""
        recon = network(inputs)
        diff = recon - inputs
        loss = diff.abs().mean() if self.kind == "l1" else diff.pow(2).mean()
        return loss, {"pred": recon.detach()}


class VQVAELoss(nn.Module):
    """VQ-VAE stage: L1 reconstruction + the quantiser's commitment loss (EMA codebook).

    Args:
        foreground_weight: extra weight of the L1 term on non-zero (brain) voxels, which matter more than the
            empty background. Defaults to 1.0.
    """

    def __init__(self, foreground_weight: float = 1.0) -> None:
        super().__init__()
        self.foreground_weight = foreground_weight

    def forward(self, network: nn.Module, inputs: Tensor, positions: Tensor | None = None) -> tuple[Tensor, dict]:
        """``network(x, position) -> (recon, quant_loss)`` (a :class:`~medood.networks.nets.SliceTokenizer`)."""
        recon, quant_loss = network(inputs, positions)
        weight = 1.0 + self.foreground_weight * (inputs.abs() > 0).float()
        l1 = ((recon - inputs).abs() * weight).mean() / weight.mean()
        return l1 + quant_loss.mean(), {"pred": recon.detach(), "l1": l1.detach(), "quant": quant_loss.detach().mean()}


class TokenDetectorLoss(nn.Module):
    """Anomalous-token detector stage: BCE on synthetically corrupted healthy token grids.

    Args:
        num_tokens: codebook size.
        clean_prob: fraction of grids left uncorrupted. Defaults to 0.15.
        max_ratio: largest corrupted fraction of a grid. Defaults to 0.2.
        pos_weight: BCE weight of the (rare) corrupted tokens. Defaults to 3.0.
        seed: seed of the corruption generator. Defaults to 0.
    """

    pos_weight: Tensor

    def __init__(
        self, num_tokens: int, clean_prob: float = 0.15, max_ratio: float = 0.2, pos_weight: float = 3.0, seed: int = 0
    ) -> None:
        super().__init__()
        self.num_tokens, self.clean_prob, self.max_ratio = num_tokens, clean_prob, max_ratio
        self.register_buffer("pos_weight", torch.tensor(pos_weight))
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self) -> None:
        """Restart the corruption sequence (validation engines call this so every validation is identical)."""
        self.generator.manual_seed(self.seed)

    def forward(self, network: nn.Module, tokens: Tensor, positions: Tensor | None = None) -> tuple[Tensor, dict]:
        """``network(tokens, position) -> (B, 1, h, w)`` logits."""
        corrupted, target = corrupt_tokens(
            tokens.cpu(), self.num_tokens, self.clean_prob, self.max_ratio, generator=self.generator
        )
        logits = network(corrupted.to(tokens.device), positions)[:, 0]
        target = target.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
        with torch.no_grad():
            pred = logits > 0
            tp = (pred & (target > 0)).sum().float()
            f1 = 2 * tp / (pred.sum() + (target > 0).sum()).clamp_min(1)
        return loss, {"pred": logits.detach(), "f1": f1}


class ImageAnomalyTokenLoss(nn.Module):
    """Anomalous-token detector stage on anomalies made in the image (plus token corruptions as one more source).

    Inputs are healthy (augmented) image slices ``(B, C, H, W)`` with their positions. Per slice one source is
    drawn: left clean (``clean_prob``), a token-space corruption of its token grid (``token_prob``, as
    :class:`TokenDetectorLoss`), or else a random generator of ``generators`` applied to the slice (the donor of a
    transplant is the next slice of the batch). The slices are tokenized by the frozen ``tokenizer``; the target of
    an image anomaly is 1 for the tokens with at least ``token_fraction`` of their footprint (``stride x stride``
    pixels) in the anomaly mask.

    Args:
        tokenizer: the trained :class:`~medood.networks.nets.SliceTokenizer` (frozen: never updated here).
        generators: :class:`~medood.transforms.anomalies.ImageAnomaly` transforms drawn uniformly; ``None`` = one
            of each with its defaults. Defaults to None.
        token_fraction: footprint fraction that makes a token anomalous. Defaults to 0.25.
        token_prob: probability of a token-space corruption. Defaults to 0.25.
        clean_prob: probability of a clean slice. Defaults to 0.1.
        max_ratio: largest corrupted fraction of a token corruption. Defaults to 0.2.
        pos_weight: BCE weight of the anomalous tokens. Defaults to 3.0.
        seed: seed of the source choice, the token corruptions and the generators. Defaults to 0.
    """

    pos_weight: Tensor

    def __init__(
        self,
        tokenizer: SliceTokenizer,
        generators: Sequence[ImageAnomaly] | None = None,
        token_fraction: float = 0.25,
        token_prob: float = 0.25,
        clean_prob: float = 0.1,
        max_ratio: float = 0.2,
        pos_weight: float = 3.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < token_fraction <= 1.0 or token_prob < 0 or clean_prob < 0 or token_prob + clean_prob > 1:
            raise ValueError("token_fraction must be in (0, 1], token_prob and clean_prob >= 0 with sum <= 1")
        self.tokenizer = tokenizer
        default = [RandBlobIntensity(), RandLocalIntensityScale(), RandTexturedNoise(), RandPatchTransplant()]
        self.generators = list(generators) if generators is not None else [*default, RandMassEffect()]
        if not self.generators and token_prob + clean_prob < 1:
            raise ValueError("no image anomaly generator: pass generators or set token_prob + clean_prob = 1")
        self.token_fraction, self.token_prob, self.clean_prob = token_fraction, token_prob, clean_prob
        self.max_ratio = max_ratio
        self.register_buffer("pos_weight", torch.tensor(pos_weight))
        self.seed = seed
        self.generator = torch.Generator()
        self.reseed()

    def reseed(self) -> None:
        """Restart every random sequence (validation engines call this so every validation is identical)."""
        self.generator.manual_seed(self.seed)
        for i, g in enumerate(self.generators):
            g.set_random_state(self.seed + 1 + i)

    def corrupt_images(self, images: Tensor, chosen: Tensor) -> tuple[Tensor, Tensor]:
        """Apply a random generator to the ``chosen`` slices; return the images and pixel masks ``(B, 1, H, W)``."""
        out, masks = images.clone(), torch.zeros_like(images[:, :1])
        for i in torch.nonzero(chosen).flatten().tolist():
            g = self.generators[int(torch.randint(len(self.generators), (1,), generator=self.generator))]
            out[i], masks[i] = g(images[i], donor=images[(i + 1) % images.shape[0]])
        return out, masks

    def make_batch(self, images: Tensor, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Token grids ``(B, h, w)`` of the (corrupted) slices and their per-token targets (both on the CPU)."""
        b, s = images.shape[0], self.tokenizer.downsample
        images = F.pad(images, (0, (-images.shape[-1]) % s, 0, (-images.shape[-2]) % s))
        u = torch.rand(b, generator=self.generator)
        use_tokens = (u >= self.clean_prob) & (u < self.clean_prob + self.token_prob)
        use_image = u >= self.clean_prob + self.token_prob
        x, masks = self.corrupt_images(images.detach().cpu(), use_image)
        self.tokenizer.eval()
        tokens = self.tokenizer.tokenize(x.to(images.device), positions).cpu()
        target = (F.avg_pool2d(masks, s, s)[:, 0] >= self.token_fraction).float() * use_image[:, None, None]
        if use_tokens.any():
            corrupted, t_target = corrupt_tokens(
                tokens[use_tokens], self.tokenizer.num_embeddings, 0.0, self.max_ratio, generator=self.generator
            )
            tokens[use_tokens], target[use_tokens] = corrupted, t_target
        return tokens, target

    def forward(self, network: nn.Module, images: Tensor, positions: Tensor | None = None) -> tuple[Tensor, dict]:
        """``network(tokens, position) -> (B, 1, h, w)`` logits on the tokens of the corrupted slices."""
        tokens, target = self.make_batch(images, positions)
        logits = network(tokens.to(images.device), positions)[:, 0]
        target = target.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
        with torch.no_grad():
            pred = logits > 0
            f1 = 2 * (pred & (target > 0)).sum().float() / (pred.sum() + (target > 0).sum()).clamp_min(1)
        return loss, {"pred": logits.detach(), "f1": f1, "anomalous_fraction": target.mean()}


class MaskedTokenLoss(nn.Module):
    """Masked-image-modelling stage (MaskGIT): predict the original codes under ``[MASK]``.

    The masking ratio follows the cosine schedule; masks are contiguous blobs (``blob_prob``) or scattered.

    Args:
        num_tokens: codebook size (``[MASK]`` is index ``num_tokens``).
        blob_prob: fraction of grids masked with contiguous blobs. Defaults to 0.5.
        label_smoothing: cross-entropy label smoothing. Defaults to 0.1.
        seed: seed of the mask generator. Defaults to 0.
    """

    def __init__(self, num_tokens: int, blob_prob: float = 0.5, label_smoothing: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.num_tokens, self.blob_prob, self.label_smoothing = num_tokens, blob_prob, label_smoothing
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self) -> None:
        """Restart the masking sequence (validation engines call this so every validation is identical)."""
        self.generator.manual_seed(self.seed)

    def forward(self, network: nn.Module, tokens: Tensor, positions: Tensor | None = None) -> tuple[Tensor, dict]:
        """``network(tokens_with_mask, position) -> (B, K, h, w)`` logits."""
        b = tokens.shape[0]
        shape = tuple(tokens.shape)
        ratio = maskgit_ratio(b, self.generator)
        blobs = torch.rand(b, generator=self.generator) < self.blob_prob
        mask = torch.where(
            blobs[:, None, None], blob_mask(shape, ratio, self.generator), random_mask(shape, ratio, self.generator)
        )
        mask = mask.to(tokens.device)
        logits = network(torch.where(mask, torch.full_like(tokens, self.num_tokens), tokens), positions)
        per_token = F.cross_entropy(logits, tokens, reduction="none", label_smoothing=self.label_smoothing)
        loss = (per_token * mask).sum() / mask.sum().clamp_min(1)
        with torch.no_grad():
            acc = ((logits.argmax(1) == tokens) & mask).sum().float() / mask.sum().clamp_min(1)
        return loss, {"pred": logits.detach().argmax(1), "acc": acc}


class ARTokenLoss(nn.Module):
    """Autoregressive prior stage: next-token cross-entropy over raster-ordered token grids.

    The sequence starts with a begin token that encodes the slice position (``num_position_bins`` bins), so
    the prior is conditioned on the slice height like LSR's PixelSNAIL.

    Args:
        num_tokens: codebook size ``K``; begin tokens are ``K ... K + num_position_bins - 1``.
        num_position_bins: slice-position bins. Defaults to 16.
    """

    def __init__(self, num_tokens: int, num_position_bins: int = 16) -> None:
        super().__init__()
        self.num_tokens, self.num_position_bins = num_tokens, num_position_bins

    def sequences(self, tokens: Tensor, positions: Tensor | None) -> Tensor:
        """``(B, 1 + h*w)`` sequences: begin token then the raster-ordered codes."""
        return ar_sequences(tokens, positions, self.num_tokens, self.num_position_bins)

    def forward(self, network: nn.Module, tokens: Tensor, positions: Tensor | None = None) -> tuple[Tensor, dict]:
        """``network(seq[:, :-1]) -> (B, L, K + bins)`` logits (a MONAI ``DecoderOnlyTransformer``)."""
        seq = self.sequences(tokens, positions)
        logits = network(seq[:, :-1])[..., : self.num_tokens]
        loss = F.cross_entropy(logits.transpose(1, 2), seq[:, 1:])
        return loss, {"pred": logits.detach().argmax(-1)}


def ar_sequences(tokens: Tensor, positions: Tensor | None, num_tokens: int, num_position_bins: int) -> Tensor:
    """Raster-ordered sequences with a position-coded begin token (shared by the AR loss and detector)."""
    b = tokens.shape[0]
    pos = torch.zeros(b, device=tokens.device) if positions is None else positions.to(tokens.device).float()
    bins = ((pos.reshape(b) + 0.5) * num_position_bins).long().clamp(0, num_position_bins - 1)
    return torch.cat([(num_tokens + bins)[:, None], tokens.reshape(b, -1).long()], 1)
