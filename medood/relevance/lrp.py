"""Closed-form LRP-0 relevance at the last linear layer of a classifier (the relevance NERO clusters).

For penultimate features ``a`` (``D``-dim), a linear head ``logits = W a + b`` and ``p = softmax(logits)``:

* augment ``a' = [a, 1]`` and ``W' = [W | b]`` (``C x (D+1)``), so the bias is the last "neuron";
* contributions ``z_{c,j} = a'_j W'_{c,j}``; ``z_c = sum_j z_{c,j}`` is the logit of class ``c``;
* LRP-0 with the softmax probabilities of all classes as the output relevance:
  ``R_j = sum_c p_c z_{c,j} / z_c``.

Relevance is conserved: ``sum_j R_j = sum_c p_c = 1`` (exactly, when no logit is near zero). The official NERO
code divides by ``z_c + eps`` with ``eps = 0``, which blows up (or gives ``nan``) for a logit of exactly zero;
here the denominator is stabilised as ``z_c + eps * sign(z_c)`` with ``sign(0) = +1`` (the LRP-epsilon rule's
stabiliser), which leaves the result unchanged to within ``eps / |z_c|`` relative error for logits away from zero.

References:
    Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
    Propagation", PLoS ONE 2015, https://doi.org/10.1371/journal.pone.0130140
    Chhetri et al., "NERO: Explainable Out-of-Distribution Detection with Neuron-level Relevance", MICCAI 2025,
    https://arxiv.org/abs/2506.15404 (code: https://github.com/bhattarailab/NERO)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["last_layer_relevance"]


def last_layer_relevance(
    features: Tensor, weight: Tensor, bias: Tensor | None = None, logits: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """LRP-0 relevance of each penultimate neuron (and of the bias) for a linear classifier head.

    Args:
        features: ``(B, D)`` penultimate activations ``a`` (the input of the head).
        weight: ``(C, D)`` head weight ``W``.
        bias: ``(C,)`` head bias ``b``. Defaults to zeros.
        logits: ``(B, C)`` logits used for the output relevance ``p = softmax(logits)``. Defaults to
            ``W a + b``. (The denominators ``z_c`` always come from ``W a + b``, so conservation holds.)
        eps: stabiliser added as ``eps * sign(z_c)`` (``sign(0) = +1``) to each logit in the denominator.
            ``0`` reproduces the official NERO code exactly (and divides by zero for a zero logit).
            Defaults to 1e-6.

    Returns:
        ``(B, D + 1)`` relevance ``R``; the last column is the bias relevance.

    Raises:
        ValueError: the shapes do not match.
    """
    if features.ndim != 2 or weight.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected features (B, D) and weight (C, D); got {tuple(features.shape)} and {tuple(weight.shape)}"
        )
    a = features.float()
    w = weight.to(a)
    b = torch.zeros(w.shape[0], dtype=a.dtype, device=a.device) if bias is None else bias.to(a).reshape(-1)
    if b.shape[0] != w.shape[0]:
        raise ValueError(f"bias has {b.shape[0]} entries but the weight has {w.shape[0]} rows")
    z = a @ w.T + b  # (B, C): z_c = sum_j z_{c,j}
    p = torch.softmax((z if logits is None else logits.to(a)), dim=1)
    if p.shape != z.shape:
        raise ValueError(f"logits must be (B, C) = {tuple(z.shape)}, got {tuple(p.shape)}")
    sign = torch.where(z >= 0, 1.0, -1.0).to(z)
    coeff = p / (z + eps * sign)  # (B, C): p_c / z_c
    a_aug = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)  # a' = [a, 1]
    w_aug = torch.cat([w, b[:, None]], dim=1)  # W' = [W | b]
    # R_j = sum_c p_c a'_j W'_{c,j} / z_c = a'_j * (coeff @ W')_j
    return a_aug * (coeff @ w_aug)
