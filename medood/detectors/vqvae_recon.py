"""Plain VQ-VAE reconstruction residual: the reference the token-restoration methods must beat.

Algorithm: tokenize a slice with the VQ-VAE trained on healthy slices and decode the tokens unchanged; the map
is the smoothed residual ``|x - decode(tokenize(x))|`` inside the brain. The codebook, learnt on healthy tissue,
cannot represent lesions exactly, so they reconstruct poorly, but nothing in-paints them with healthy content.

Score: higher = more anomalous.

References:
    van den Oord et al., "Neural Discrete Representation Learning", NeurIPS 2017,
    https://arxiv.org/abs/1711.00937 ; used as the reconstruction baseline of the LSR / MIM-OOD line,
    https://github.com/snavalm/lsr_mood_challenge_2020
"""

from __future__ import annotations

from torch import Tensor

from medood.detectors.base_restoration import SliceRestorationDetector
from medood.detectors.registry import register_detector

__all__ = ["VQVAEReconstructionDetector"]


@register_detector("vqvae_recon")
class VQVAEReconstructionDetector(SliceRestorationDetector):
    """Residual of the VQ-VAE's own reconstruction (see :class:`SliceRestorationDetector` for the arguments)."""

    def residual_slices(self, slices: Tensor, positions: Tensor) -> Tensor:
        """``|x - decode(tokenize(x))|`` of padded slices."""
        return (slices - self.decode(self.tokenize(slices, positions))).abs().mean(1, keepdim=True)
