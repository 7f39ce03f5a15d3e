"""A VQ-VAE image tokenizer (MONAI ``VQVAE``) with optional slice-position conditioning.

Brain-MRI slices at different heights look different; as in the authors' LSR precursor (methods.md §2.3) the
normalised slice coordinate in ``[-0.5, 0.5]`` is given to the encoder as an extra constant input channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import VQVAE
from torch import Tensor, nn

__all__ = ["SliceTokenizer"]


class SliceTokenizer(nn.Module):
    """VQ-VAE that turns images into grids of codebook indices and back.

    Args:
        spatial_dims: 2 (slices) or 3.
        in_channels: image channels. Defaults to 1.
        channels: encoder channels per downsampling level (each level halves the size). Defaults to (64, 128).
        num_res_layers: residual layers per level. Defaults to 2.
        num_embeddings: codebook size. Defaults to 128 (as LSR).
        embedding_dim: code dimension. Defaults to 64.
        use_position: add the slice coordinate as an extra input channel. Defaults to True.
        commitment_cost: VQ commitment weight. Defaults to 0.25.
        decay: EMA decay of the codebook. Defaults to 0.99.
        dropout: dropout in the residual layers. Defaults to 0.0.
        revive_threshold: during training, codes whose EMA usage falls below this fraction of the mean usage are
            re-seeded with random encoder outputs of the current batch (at the first step this initialises the
            whole codebook from data). Prevents codebook collapse; ``0`` disables it. Defaults to 0.03.

    The token grid is the input size divided by ``2 ** len(channels)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: Sequence[int] = (64, 128),
        num_res_layers: int = 2,
        num_embeddings: int = 128,
        embedding_dim: int = 64,
        use_position: bool = True,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        dropout: float = 0.0,
        revive_threshold: float = 0.03,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 1:
            raise ValueError("channels needs at least one level")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.use_position = use_position
        self.num_embeddings = num_embeddings
        self.downsample = 2 ** len(channels)
        levels = len(channels)
        self.vqvae = VQVAE(
            spatial_dims=spatial_dims,
            in_channels=in_channels + int(use_position),
            out_channels=in_channels,
            channels=tuple(channels),
            num_res_layers=num_res_layers,
            num_res_channels=tuple(channels),
            downsample_parameters=((2, 4, 1, 1),) * levels,
            upsample_parameters=((2, 4, 1, 1, 0),) * levels,
            num_embeddings=num_embeddings,
            embedding_dim=embedding_dim,
            commitment_cost=commitment_cost,
            decay=decay,
            dropout=dropout,
        )
        self.revive_threshold = revive_threshold

    def _input(self, x: Tensor, position: Tensor | None) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channel(s), got shape {tuple(x.shape)}")
        bad = [s for s in x.shape[2:] if s % self.downsample]
        if bad:
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {self.downsample}")
        if not self.use_position:
            return x
        if position is None:
            position = torch.zeros(x.shape[0], device=x.device)
        pos = position.to(x).reshape(-1, *[1] * (x.ndim - 1)).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, pos], 1)

    def forward(self, x: Tensor, position: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Reconstruction ``(B, C, *S)`` and the quantisation loss."""
        z = self.vqvae.encode(self._input(x, position))
        if self.training and self.revive_threshold > 0:
            self.revive_dead_codes(z)
        quantized, loss = self.vqvae.quantize(z)
        return self.vqvae.decode(quantized), loss

    @torch.no_grad()
    def revive_dead_codes(self, z: Tensor) -> int:
        """Re-seed rarely used codes with random encoder outputs of ``z`` (B, D, *grid); returns how many."""
        q = self.vqvae.quantizer.quantizer  # MONAI EMAQuantizer
        usage = q.ema_cluster_size
        dead = usage < self.revive_threshold * usage.mean().clamp_min(1e-12)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])
        rows = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)]
        rows = rows + 0.01 * rows.std() * torch.randn_like(rows)
        fill = usage.mean() if bool(usage.sum() > 0) else torch.tensor(1.0, device=usage.device)
        q.embedding.weight.data[dead] = rows
        q.ema_cluster_size.data[dead] = fill
        q.ema_w.data[dead] = rows * fill
        return n_dead

    @torch.no_grad()
    def tokenize(self, x: Tensor, position: Tensor | None = None) -> Tensor:
        """Codebook indices ``(B, *S / downsample)`` (long)."""
        return self.vqvae.index_quantize(self._input(x, position)).long()

    def decode(self, tokens: Tensor) -> Tensor:
        """Images ``(B, C, *S)`` from codebook indices ``(B, *grid)``."""
        return self.vqvae.decode_samples(tokens.long())
