"""Stage losses for :class:`~medood.engines.StepTrainer`: ``loss(network, inputs, targets) -> (loss, outputs)``.

``targets`` carries whatever the stage's ``prepare_batch`` puts second (for slice models: the slice position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medood.networks.nets.token_masks import blob_mask, corrupt_tokens, maskgit_ratio, random_mask

__all__ = ["ARTokenLoss", "MaskedTokenLoss", "ReconstructionLoss", "TokenDetectorLoss", "VQVAELoss"]


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
