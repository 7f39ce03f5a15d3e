"""VQ-VAE + autoregressive prior with latent spatial restoration (the AR baseline MIM-OOD replaces).

Algorithm (LSR, Naval Marimont & Tarroni, MOOD 2020; methods.md §2.3), slice-wise:

1. tokenize the slice; a causal transformer (MONAI ``DecoderOnlyTransformer``) over the raster-ordered tokens,
   started by a begin token that encodes the slice position, gives every token its negative log-likelihood;
2. tokens with NLL above a threshold (``nll_threshold``, or the ``nll_percentile`` of healthy training tokens,
   ≈ the 90th as in LSR) are **resampled in raster order** from the prior, each conditioned on the tokens
   before it (already restored ones included); this is done ``n_restorations`` times (15 in LSR);
3. each restoration is decoded; residuals ``r_j = |x - x_hat_j|`` are combined with weights
   ``softmax_j(weight_temperature / mean r_j)``; the map is smoothed and masked to the brain.

``use_cache=True`` (default) is the fastest AR restoration we could build: key/value-cached incremental decoding
with every restoration of every slice of a volume in one batch. ``use_cache=False`` runs it as LSR did: slice
by slice, the restorations of a slice batched, a full forward pass over the prefix for every resampled position.

Score: higher = more anomalous.

References:
    Naval Marimont & Tarroni, "Anomaly detection through latent space restoration using vector-quantized
    variational autoencoders", ISBI 2021, https://arxiv.org/abs/2012.06765 ;
    https://github.com/snavalm/lsr_mood_challenge_2020 (commit 6c4c48ba, read for settings only)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import DecoderOnlyTransformer
from torch import Tensor

from medood.detectors.base_token_nll import TokenNLLRestorationDetector
from medood.detectors.registry import register_detector
from medood.detectors.stages import TrainingStage
from medood.losses import ARTokenLoss, ar_sequences
from medood.networks.nets.ar_cache import KVCache, cached_forward
from medood.networks.nets.vq_tokenizer import SliceTokenizer
from medood.utils.config import as_flag

__all__ = ["VQVAEARDetector"]


@register_detector("vqvae_ar")
class VQVAEARDetector(TokenNLLRestorationDetector):
    """AR-prior latent spatial restoration (see the module docstring).

    Args:
        tokenizer: :class:`~medood.networks.nets.SliceTokenizer` or its kwargs.
        grid_size: token grid of a padded slice. Defaults to ``(20, 24)``.
        prior: kwargs of the ``DecoderOnlyTransformer`` (``attn_layers_dim``, ``attn_layers_depth``,
            ``attn_layers_heads``). Defaults to 128 / 4 / 4.
        num_position_bins: begin tokens encoding the slice position. Defaults to 16.
        nll_threshold: fixed NLL threshold; ``None`` uses the fitted ``nll_percentile``. Defaults to None.
        nll_percentile: percentile of healthy token NLLs used as threshold when fitting. Defaults to 90.
        n_restorations: restorations per slice. Defaults to 15 (LSR).
        temperature: sampling temperature. Defaults to 1.0.
        weight_temperature: the 3 in ``softmax(3 / mean residual)``. Defaults to 3.0.
        use_cache: KV-cached, volume-batched restoration (fast) or LSR-style (slow); read by
            :func:`~medood.utils.as_flag` (``--use_cache false`` from the command line is False). Defaults to True.
        seed: sampling seed (restorations are random). Defaults to 0.
        **kwargs: :class:`~medood.detectors.base_restoration.SliceRestorationDetector` arguments.
    """

    def __init__(
        self,
        tokenizer: SliceTokenizer | Mapping[str, Any] | None = None,
        grid_size: Sequence[int] = (20, 24),
        prior: Mapping[str, Any] | None = None,
        num_position_bins: int = 16,
        nll_threshold: float | None = None,
        nll_percentile: float = 90.0,
        n_restorations: int = 15,
        temperature: float = 1.0,
        weight_temperature: float = 3.0,
        use_cache: bool | str = True,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer, nll_threshold=nll_threshold, nll_percentile=nll_percentile, seed=seed, **kwargs
        )
        if n_restorations < 1 or temperature <= 0:
            raise ValueError("n_restorations must be >= 1 and temperature > 0")
        self.grid_size = tuple(int(g) for g in grid_size)
        seq_len = 1 + self.grid_size[0] * self.grid_size[1]
        cfg = {"attn_layers_dim": 128, "attn_layers_depth": 4, "attn_layers_heads": 4, **dict(prior or {})}
        self.num_tokens = self.tokenizer.num_embeddings
        self.num_position_bins = num_position_bins
        self.prior = DecoderOnlyTransformer(
            num_tokens=self.num_tokens + num_position_bins, max_seq_len=seq_len, use_flash_attention=True, **cfg
        )
        self.n_restorations, self.temperature, self.weight_temperature = n_restorations, temperature, weight_temperature
        self.use_cache = as_flag(use_cache, "use_cache")

    # ------------------------------------------------------------------ likelihood
    def sequences(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Begin-token-prefixed raster sequences ``(N, 1 + h*w)``."""
        return ar_sequences(tokens, positions, self.num_tokens, self.num_position_bins)

    def token_nll(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Negative log-likelihood of every token under the prior, ``(N, h, w)``."""
        seq = self.sequences(tokens, positions)
        logp = self.prior(seq[:, :-1])[..., : self.num_tokens].log_softmax(-1)
        return -logp.gather(-1, seq[:, 1:, None])[..., 0].reshape(tokens.shape)

    # ------------------------------------------------------------------ restoration
    def _sample(self, logits: Tensor, uniforms: Tensor) -> Tensor:
        """Inverse-CDF sampling with pre-drawn uniforms: the same draws give the same tokens on both paths."""
        probs = (logits[..., : self.num_tokens].float() / self.temperature).softmax(-1)
        cdf = probs.cumsum(-1)
        return torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1)).squeeze(-1).clamp_max(self.num_tokens - 1)

    def _resample(self, seqs: Tensor, flagged: Tensor, uniforms: Tensor, cached: bool) -> Tensor:
        """Resample the flagged positions of ``seqs`` in raster order (on a copy); ``uniforms`` is (rows, L)."""
        seqs = seqs.clone()
        order = torch.nonzero(flagged.any(0)).flatten().tolist()
        cache, fed = KVCache(), 0
        for p in order:
            if cached:
                logits = cached_forward(self.prior, seqs[:, fed : p + 1], cache)[:, -1]
                fed = p + 1
            else:
                logits = self.prior(seqs[:, : p + 1])[:, -1]
            rows = flagged[:, p]
            seqs[rows, p + 1] = self._sample(logits[rows], uniforms[rows, p])
        return seqs

    def restore_tokens(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """``n_restorations`` restored grids per slice, ``(R, N, h, w)``.

        The random draws depend only on ``seed`` and the slice's place in the batch, so the cached and the
        LSR-style paths restore identically (up to float rounding of the logits).
        """
        n, r = tokens.shape[0], self.n_restorations
        seq = self.sequences(tokens, positions)
        flagged = (self.token_nll(tokens, positions) > self.threshold_nll).flatten(1)
        gen = torch.Generator().manual_seed(self.seed)
        uniforms = torch.rand(r, n, flagged.shape[1], generator=gen).to(tokens.device)
        if self.use_cache:  # every restoration of every slice in one batch
            out = self._resample(seq.repeat(r, 1), flagged.repeat(r, 1), uniforms.reshape(r * n, -1), cached=True)
            return out[:, 1:].reshape(r, n, *tokens.shape[1:])
        restored = []  # LSR-style: one slice at a time, its restorations batched, no cache
        for i in range(n):
            restored.append(
                self._resample(
                    seq[i : i + 1].repeat(r, 1), flagged[i : i + 1].repeat(r, 1), uniforms[:, i], cached=False
                )
            )
        return torch.stack(restored, 1)[..., 1:].reshape(r, n, *tokens.shape[1:])

    def residual_slices(self, slices: Tensor, positions: Tensor) -> Tensor:
        """LSR-weighted residual of ``n_restorations`` restorations."""
        tokens = self.tokenize(slices, positions)
        restored = self.restore_tokens(tokens, positions)  # (R, N, h, w)
        r, n = restored.shape[:2]
        images = self.decode(restored.reshape(r * n, *tokens.shape[1:])).reshape(r, n, *slices.shape[1:])
        res = (slices[None] - images).abs().mean(2, keepdim=True)  # (R, N, 1, H, W)
        weights = F.softmax(self.weight_temperature / res.flatten(2).mean(2).clamp_min(1e-6), dim=0)
        return (weights[..., None, None, None] * res).sum(0)

    # ------------------------------------------------------------------ training (declared)
    def token_stages(self) -> tuple[TrainingStage, ...]:
        """The causal prior over raster-ordered token grids."""
        return (
            self._token_stage(
                "prior", "prior", ARTokenLoss, num_tokens=self.num_tokens, num_position_bins=self.num_position_bins
            ),
        )

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """A tiny prior and three restorations on 16-pixel toy slices."""
        prior = {"attn_layers_dim": 32, "attn_layers_depth": 1, "attn_layers_heads": 2}
        return {**super().tiny_config(spatial_dims), "grid_size": (4, 4), "n_restorations": 3, "prior": prior}
