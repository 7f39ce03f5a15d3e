"""Restoration detectors that flag tokens by their NLL under a learnt token model (MIM-OOD, VQ-VAE + AR)."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from medood.detectors.base_restoration import SliceRestorationDetector
from medood.utils.enums import OODKeys

__all__ = ["TokenNLLRestorationDetector"]


class TokenNLLRestorationDetector(SliceRestorationDetector):
    """A restoration detector that flags tokens by their NLL under a learnt token model.

    Subclasses give :meth:`token_nll`; this base fits the flagging threshold as a percentile of healthy token NLLs
    (streamed by :meth:`~medood.detectors.base.OODDetector.fit_statistics`: one pass, a seeded subsample of
    100 000 values per batch) and keeps it in the ``fitted_nll_threshold`` buffer.

    Args:
        nll_threshold: fixed NLL threshold; ``None`` uses the fitted ``nll_percentile``. Defaults to None.
        nll_percentile: percentile of healthy token NLLs used as threshold when fitting. Defaults to 90.
        seed: seed of the fitting subsample (and of the subclass's sampling). Defaults to 0.
        **kwargs: :class:`SliceRestorationDetector` arguments.
    """

    fitted_nll_threshold: Tensor

    def __init__(
        self, nll_threshold: float | None = None, nll_percentile: float = 90.0, seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < nll_percentile < 100.0:
            raise ValueError(f"nll_percentile must be in (0, 100), got {nll_percentile}")
        self.register_buffer("fitted_nll_threshold", torch.tensor(float("nan")))
        self.nll_threshold, self.nll_percentile, self.seed = nll_threshold, nll_percentile, seed

    @abstractmethod
    def token_nll(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Negative log-likelihood ``(N, h, w)`` of every token of the grids ``(N, h, w)``."""

    @property
    def threshold_nll(self) -> float:
        """The token NLL above which a token is flagged."""
        if self.nll_threshold is not None:
            return float(self.nll_threshold)
        value = float(self.fitted_nll_threshold)
        if value != value:  # NaN
            raise RuntimeError("no NLL threshold: pass nll_threshold=... or fit the detector's statistics")
        return value

    def reset_fit(self) -> None:
        """Forget the token NLLs collected so far."""
        self._nll_values: list[Tensor] = []
        self._nll_gen = torch.Generator().manual_seed(self.seed)

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        """Collect (a seeded subsample of) the token NLLs of the healthy slices of ``{"image": x}``."""
        slices, positions, _ = self.slices_of(features[OODKeys.IMAGE.value].float())
        for i in range(0, slices.shape[0], self.slice_batch):
            chunk, _ = self.pad_slices(slices[i : i + self.slice_batch])
            pos = positions[i : i + self.slice_batch]
            nll = self.token_nll(self.tokenize(chunk, pos), pos).flatten().cpu()
            self._nll_values.append(nll[torch.randperm(nll.numel(), generator=self._nll_gen)[:100_000]])

    def flag(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Tokens to restore: NLL above :attr:`threshold_nll` (subclasses refine it)."""
        return self.token_nll(tokens, positions) > self.threshold_nll

    def stage_slices(self, slices: Tensor, positions: Tensor) -> dict[str, Tensor]:
        """The base stages plus ``"token_nll"`` and ``"flagged"`` (the tokens restored), as pixels."""
        out = super().stage_slices(slices, positions)
        tokens = self.tokenize(slices, positions)
        out["token_nll"] = self.token_to_pixels(self.token_nll(tokens, positions))
        out["flagged"] = self.token_to_pixels(self.flag(tokens, positions))
        return out

    def healthy_nll_quantile(self, percentile: float) -> float:
        """``percentile`` of the healthy token NLLs collected by ``partial_fit_features``."""
        v = torch.cat(self._nll_values)
        return float(torch.quantile(v[: 2**24], percentile / 100.0))

    def finalize_fit(self) -> None:
        """Set the NLL threshold to ``nll_percentile`` of the healthy token NLLs."""
        self.fitted_nll_threshold.fill_(self.healthy_nll_quantile(self.nll_percentile))
