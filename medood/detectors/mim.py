"""MIM-OOD: generative masked image modelling for OOD detection (Naval Marimont, Siomos & Tarroni, 2023).

Algorithm (slice-wise, on healthy-trained networks only):

1. a VQ-VAE tokenizes each slice into a grid of codebook indices;
2. the **anomalous-token detector** (a bidirectional transformer trained on healthy grids with synthetic
   token corruptions) gives every token a probability ``p`` of being anomalous;
3. tokens with ``p > atd_threshold`` (dilated by ``mask_dilation``) are replaced by ``[MASK]`` and the
   **masked in-painter** (a bidirectional transformer trained MaskGIT-style) predicts healthy codes for them,
   in one step by default (``mim_steps > 1`` decodes iteratively, most confident tokens first);
4. the restored grid is decoded; the map is the smoothed residual ``|x - x_hat|`` inside the brain.

``flagging`` chooses who flags the tokens to in-paint: ``"atd"`` (step 2, the paper's), ``"nll"`` (the in-painter
itself: each token's masked negative log-likelihood, from ``nll_groups`` complementary seeded random masks run as
one batch, above ``nll_percentile`` of healthy token NLLs fitted by ``fit_statistics``, or a fixed threshold) or
``"union"`` of both. With ``nll_grow_percentile`` the NLL flags are grown by hysteresis (as in Canny's edge
linking): for ``nll_grow_steps`` steps, 8-connected neighbours of flagged tokens whose NLL is above the lower
``nll_grow_percentile`` of healthy NLLs join them, so a lesion is in-painted whole once its most unlikely token is
flagged, while isolated moderately unlikely healthy tokens are not. ``docs/benchmarks/mim_diagnosis.md`` measures
each flagging on validation lesions.

Compared with an autoregressive prior (``vqvae_ar``) there is no raster-order resampling: both transformers run
once per slice, which is where the speed-up comes from.

Score: higher = more anomalous (residual intensity; volume score = top-k mean of the map).

References:
    Naval Marimont, Siomos & Tarroni, "MIM-OOD: Generative Masked Image Modelling for Out-of-Distribution
    Detection in Medical Images", DGM4MICCAI 2023, https://arxiv.org/abs/2307.14701 (no official code was
    found; the settings follow the authors' LSR precursor, https://github.com/snavalm/lsr_mood_challenge_2020 ,
    see methods.md §2). MaskGIT: Chang et al., CVPR 2022, https://arxiv.org/abs/2202.04200
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medood.detectors.base_token_nll import TokenNLLRestorationDetector
from medood.detectors.registry import register_detector
from medood.detectors.stages import TrainingStage
from medood.losses import MaskedTokenLoss, TokenDetectorLoss
from medood.networks.nets.token_transformer import TokenTransformer
from medood.networks.nets.vq_tokenizer import SliceTokenizer

__all__ = ["MIMDetector"]

RESIDUALS = ("input", "recon", "gated")
FLAGGINGS = ("atd", "nll", "union")


@register_detector("mim")
class MIMDetector(TokenNLLRestorationDetector):
    """MIM-OOD anomaly maps from a VQ-VAE, an anomalous-token detector and a masked in-painter.

    The flagging defaults are the settings chosen on the demo brain-MRI validation volumes
    (``docs/benchmarks/mim_validation_tuning.md``); ``flagging="atd", mask_dilation=1`` is the paper's variant.

    Args:
        tokenizer: :class:`~medood.networks.nets.SliceTokenizer` or its kwargs.
        grid_size: token grid of a (padded) slice, e.g. ``(20, 24)`` for 80 x 96 slices and stride 4.
        token_detector: kwargs of the detector :class:`~medood.networks.nets.TokenTransformer` (``hidden_size``,
            ``depth``, ...). Defaults to the class defaults.
        inpainter: kwargs of the in-painter transformer. Defaults to the class defaults.
        atd_threshold: token anomaly probability above which a token is in-painted. Defaults to 0.5.
        mask_dilation: tokens added around every flagged token (Chebyshev radius). Defaults to 0.
        mim_steps: in-painting steps (1 = all flagged tokens at once; more = MaskGIT iterative). Defaults to 1.
        residual: ``"input"`` (``|x - decode(restored)|``), ``"recon"`` (``|decode(tokens) - decode(restored)|``,
            zero outside in-painted tokens) or ``"gated"`` (``|x - decode(restored)|`` inside in-painted tokens
            only). Defaults to ``"input"``.
        flagging: ``"atd"`` (token detector probability > ``atd_threshold``), ``"nll"`` (in-painter masked NLL >
            the NLL threshold) or ``"union"`` (either). Defaults to ``"nll"`` (``"atd"`` is the paper's).
        nll_groups: complementary random masks (= in-painter passes, batched) of the NLL flagging; each token is
            masked in exactly one. Defaults to 2.
        nll_percentile: percentile of healthy token NLLs used as the NLL threshold. Defaults to 99.5.
        nll_grow_percentile: lower percentile of healthy token NLLs into which the NLL flags grow (hysteresis,
            fitted with the threshold into ``fitted_nll_grow_threshold``); ``None`` = no growing. Defaults to 95.
        nll_grow_steps: growing steps (each adds 8-connected neighbours above the lower threshold). Defaults to 2.
        nll_grow_threshold: fixed lower NLL threshold instead of the fitted ``nll_grow_percentile`` one (growing
            is on when either is set). Defaults to None.
        **kwargs: :class:`~medood.detectors.base_token_nll.TokenNLLRestorationDetector` arguments
            (``nll_threshold``, ``seed``: of the random partition into ``nll_groups`` masks, ...); MIM-OOD's own
            defaults there: ``minpool=1`` (small lesions survive), ``avgpool=5``.
    """

    fitted_nll_grow_threshold: Tensor

    def __init__(
        self,
        tokenizer: SliceTokenizer | Mapping[str, Any] | None = None,
        grid_size: Sequence[int] = (20, 24),
        token_detector: Mapping[str, Any] | None = None,
        inpainter: Mapping[str, Any] | None = None,
        atd_threshold: float = 0.5,
        mask_dilation: int = 0,
        mim_steps: int = 1,
        residual: str = "input",
        flagging: str = "nll",
        nll_groups: int = 2,
        nll_percentile: float = 99.5,
        nll_grow_percentile: float | None = 95.0,
        nll_grow_steps: int = 2,
        nll_grow_threshold: float | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("minpool", 1)
        kwargs.setdefault("avgpool", 5)
        super().__init__(tokenizer=tokenizer, nll_percentile=nll_percentile, **kwargs)
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        if flagging not in FLAGGINGS:
            raise ValueError(f"flagging must be one of {FLAGGINGS}, got {flagging!r}")
        if nll_groups < 2:
            raise ValueError(f"nll_groups must be >= 2, got {nll_groups}")
        if not 0.0 < atd_threshold < 1.0:
            raise ValueError(f"atd_threshold must be in (0, 1), got {atd_threshold}")
        if mim_steps < 1 or mask_dilation < 0 or nll_grow_steps < 0:
            raise ValueError("mim_steps must be >= 1, mask_dilation and nll_grow_steps >= 0")
        if nll_grow_percentile is not None and not 0.0 < nll_grow_percentile < nll_percentile:
            raise ValueError(f"nll_grow_percentile must be in (0, nll_percentile), got {nll_grow_percentile}")
        k = self.tokenizer.num_embeddings
        use_pos = self.tokenizer.use_position
        self.token_detector = TokenTransformer(k, grid_size, 1, use_position=use_pos, **dict(token_detector or {}))
        self.inpainter = TokenTransformer(k, grid_size, k, use_position=use_pos, **dict(inpainter or {}))
        self.atd_threshold, self.mask_dilation, self.mim_steps = atd_threshold, mask_dilation, mim_steps
        self.residual, self.flagging, self.nll_groups = residual, flagging, nll_groups
        self.nll_grow_percentile, self.nll_grow_steps = nll_grow_percentile, nll_grow_steps
        self.nll_grow_threshold = nll_grow_threshold
        self.register_buffer("fitted_nll_grow_threshold", torch.tensor(float("nan")))

    # ------------------------------------------------------------------ inference
    def token_anomaly(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Per-token anomaly probability ``(N, h, w)``."""
        return torch.sigmoid(self.token_detector(tokens, positions)[:, 0])

    def token_nll(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Masked negative log-likelihood of every token under the in-painter, ``(N, h, w)``.

        The grid is split into ``nll_groups`` seeded random groups of (almost) equal size; pass ``g`` masks group
        ``g`` and sees every other token. All passes run as one batch; a token's NLL comes from the pass where it
        was masked.
        """
        n, h, w = tokens.shape
        g = self.nll_groups
        gen = torch.Generator().manual_seed(self.seed)
        groups = (torch.randperm(h * w, generator=gen) % g).reshape(h, w).to(tokens.device)
        masks = groups[None] == torch.arange(g, device=tokens.device)[:, None, None]  # (g, h, w)
        inp = torch.where(masks[:, None], torch.full_like(tokens, self.inpainter.mask_token)[None], tokens[None])
        logits = self.inpainter(inp.reshape(g * n, h, w), positions.repeat(g))  # (g * n, K, h, w)
        target = tokens.long().repeat(g, 1, 1)[:, None]
        nll = -logits.float().log_softmax(1).gather(1, target)[:, 0].reshape(g, n, h, w)
        return (nll * masks[:, None]).sum(0)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints written before the hysteresis have no growing threshold: it stays unfitted (NaN)
        state_dict.setdefault(prefix + "fitted_nll_grow_threshold", torch.tensor(float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def finalize_fit(self) -> None:
        """Fit the NLL threshold and, with ``nll_grow_percentile``, the lower (growing) threshold."""
        super().finalize_fit()
        if self.nll_grow_percentile is not None:
            self.fitted_nll_grow_threshold.fill_(self.healthy_nll_quantile(self.nll_grow_percentile))

    def flag(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Boolean grid of the tokens to in-paint (thresholded per ``flagging``, grown, dilated)."""
        atd = self.token_anomaly(tokens, positions) if self.flagging in ("atd", "union") else None
        nll = self.token_nll(tokens, positions) if self.flagging in ("nll", "union") else None
        return self.flag_scores(atd, nll)

    def flag_scores(self, atd: Tensor | None, nll: Tensor | None) -> Tensor:
        """Tokens to in-paint from precomputed token scores: the one place where the flagging decision is made.

        Args:
            atd: the token detector's probabilities ``(N, h, w)`` (``atd`` / ``union`` flagging).
            nll: the in-painter's masked token NLLs ``(N, h, w)`` (``nll`` / ``union`` flagging).
        """
        ref = atd if atd is not None else nll
        if ref is None:
            raise ValueError("flag_scores needs atd and / or nll token scores")
        flagged = torch.zeros(ref.shape, dtype=torch.bool, device=ref.device)
        if self.flagging in ("atd", "union"):
            if atd is None:
                raise ValueError(f"flagging {self.flagging!r} needs the token detector's probabilities")
            flagged |= atd > self.atd_threshold
        if self.flagging in ("nll", "union"):
            if nll is None:
                raise ValueError(f"flagging {self.flagging!r} needs the in-painter's token NLLs")
            flagged |= self.grow_nll_flags(nll)
        if self.mask_dilation > 0:
            k = 2 * self.mask_dilation + 1
            flagged = F.max_pool2d(flagged.float()[:, None], k, stride=1, padding=self.mask_dilation)[:, 0] > 0
        return flagged

    def grow_nll_flags(self, nll: Tensor) -> Tensor:
        """Tokens whose NLL is above the threshold, grown by hysteresis into neighbours above the lower one."""
        flagged = nll > self.threshold_nll
        if (self.nll_grow_percentile is None and self.nll_grow_threshold is None) or self.nll_grow_steps == 0:
            return flagged
        low = float(self.fitted_nll_grow_threshold if self.nll_grow_threshold is None else self.nll_grow_threshold)
        if low != low:  # NaN
            raise RuntimeError("no NLL growing threshold: pass nll_grow_threshold=... or fit the detector's statistics")
        weak = nll > low
        for _ in range(self.nll_grow_steps):
            flagged = flagged | ((F.max_pool2d(flagged.float()[:, None], 3, 1, 1)[:, 0] > 0) & weak)
        return flagged

    def inpaint(self, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """Replace the ``mask`` tokens by the in-painter's healthy predictions."""
        tokens = tokens.clone()
        remaining = mask.clone()
        total = mask.flatten(1).sum(1)
        for step in range(self.mim_steps):
            if not remaining.any():
                break
            inp = torch.where(remaining, torch.full_like(tokens, self.inpainter.mask_token), tokens)
            logits = self.inpainter(inp, positions)
            conf, pred = logits.softmax(1).max(1)
            if step == self.mim_steps - 1:
                accept = remaining
            else:  # MaskGIT: keep the most confident, re-mask the rest following the cosine schedule
                keep_masked = (total.float() * math.cos(math.pi / 2 * (step + 1) / self.mim_steps)).floor().long()
                conf = conf.masked_fill(~remaining, float("inf"))
                ranks = conf.flatten(1).argsort(1).argsort(1).reshape(conf.shape)
                accept = remaining & (ranks >= keep_masked[:, None, None])
            tokens = torch.where(accept, pred, tokens)
            remaining = remaining & ~accept
        return tokens

    def residual_slices(self, slices: Tensor, positions: Tensor) -> Tensor:
        """``|x - x_hat|`` (or the configured variant) of padded slices.

        Only slices with flagged tokens are in-painted (and, for ``gated``, decoded): the others are their own
        restoration (``gated`` residual 0 there).
        """
        tokens = self.tokenize(slices, positions)
        mask = self.flag(tokens, positions)
        rows = mask.flatten(1).any(1)
        restored_tokens = tokens.clone()
        if bool(rows.any()):
            restored_tokens[rows] = self.inpaint(tokens[rows], mask[rows], positions[rows])
        if self.residual == "gated":
            res = torch.zeros((slices.shape[0], 1, *slices.shape[2:]), device=slices.device)
            if bool(rows.any()):
                scale = slices.shape[-1] // tokens.shape[-1]
                gate = F.interpolate(mask[rows].float()[:, None], scale_factor=scale, mode="nearest")
                res[rows] = (slices[rows] - self.decode(restored_tokens[rows])).abs().mean(1, keepdim=True) * gate
            return res
        restored = self.decode(restored_tokens)
        if self.residual == "recon":
            return (self.decode(tokens) - restored).abs().mean(1, keepdim=True)
        return (slices - restored).abs().mean(1, keepdim=True)

    def stage_slices(self, slices: Tensor, positions: Tensor) -> dict[str, Tensor]:
        """The stages of :meth:`residual_slices`, each computed once (``input`` residual; else the base's)."""
        if self.residual != "input":
            return super().stage_slices(slices, positions)
        tokens = self.tokenize(slices, positions)
        nll = self.token_nll(tokens, positions)
        mask = self.flag_scores(self.token_anomaly(tokens, positions) if self.flagging != "nll" else None, nll)
        restored = self.decode(self.inpaint(tokens, mask, positions))
        return {
            "recon_residual": (slices - self.decode(tokens)).abs().mean(1, keepdim=True),
            "residual": (slices - restored).abs().mean(1, keepdim=True),
            "token_nll": self.token_to_pixels(nll),
            "flagged": self.token_to_pixels(mask),
        }

    # ------------------------------------------------------------------ training (declared)
    def token_stages(self) -> tuple[TrainingStage, ...]:
        """The anomalous-token detector (BCE on corrupted healthy grids), then the MaskGIT in-painter."""
        k = self.tokenizer.num_embeddings
        return (
            self._token_stage("detector", "token_detector", TokenDetectorLoss, num_tokens=k),
            self._token_stage("inpainter", "inpainter", MaskedTokenLoss, num_tokens=k),
        )

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        """A tiny tokenizer and one-layer transformers on 16-pixel toy slices."""
        tiny = {"hidden_size": 32, "depth": 1, "num_heads": 2}
        return {**super().tiny_config(spatial_dims), "grid_size": (4, 4), "token_detector": tiny, "inpainter": tiny}
