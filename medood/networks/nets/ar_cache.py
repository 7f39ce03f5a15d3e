"""Key/value-cached incremental decoding for MONAI's ``DecoderOnlyTransformer``.

MONAI's decoder recomputes the whole sequence on every call. For autoregressive *restoration* (resampling
flagged tokens in raster order) that is quadratic in the sequence length per resampled token. This module
runs the same trained weights incrementally: each call feeds a chunk of new tokens, attends to the cached
keys/values of every earlier position, and appends its own. Results equal the full forward pass (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from monai.networks.blocks import SABlock, TransformerBlock
from monai.networks.nets import DecoderOnlyTransformer
from torch import Tensor

__all__ = ["KVCache", "cached_forward"]


@dataclass
class KVCache:
    """Per-layer keys and values ``(B, heads, T, head_dim)`` of the positions fed so far."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return 0 if not self.keys else int(self.keys[0].shape[2])

    def select(self, index: Tensor) -> KVCache:
        """A cache restricted to (or repeated over) batch rows ``index``."""
        return KVCache([k[index] for k in self.keys], [v[index] for v in self.values])


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


@torch.no_grad()
def cached_forward(model: DecoderOnlyTransformer, tokens: Tensor, cache: KVCache) -> Tensor:
    """Feed ``tokens`` ``(B, n)`` at positions ``cache.length ... cache.length + n - 1``; return their logits.

    Args:
        model: a MONAI ``DecoderOnlyTransformer`` without cross-attention (``use_combined_linear=False``).
        tokens: the next ``n`` tokens of every sequence.
        cache: updated in place.

    Returns:
        Logits ``(B, n, num_tokens)``, identical to the corresponding rows of ``model(full_sequence)``.
    """
    if model.with_cross_attention:
        raise ValueError("cached decoding does not support cross-attention")
    start, n = cache.length, tokens.shape[1]
    if start + n > model.max_seq_len:
        raise ValueError(f"sequence length {start + n} exceeds max_seq_len {model.max_seq_len}")
    pos = torch.arange(start, start + n, device=tokens.device)
    h = model.token_embeddings(tokens) + model.position_embeddings.embedding(pos)[None]
    q_pos = pos[:, None]
    k_pos = torch.arange(start + n, device=tokens.device)[None, :]
    causal = k_pos <= q_pos  # (n, start + n), True = may attend
    first = not cache.keys
    for i, block_module in enumerate(model.blocks):
        block = cast(TransformerBlock, block_module)
        attn = cast(SABlock, block.attn)
        if attn.use_combined_linear:
            raise ValueError("cached decoding expects use_combined_linear=False")
        heads = attn.num_heads
        x = block.norm1(h)
        q, k, v = (_split_heads(f(x), heads) for f in (attn.to_q, attn.to_k, attn.to_v))
        if first:
            cache.keys.append(k)
            cache.values.append(v)
        else:
            cache.keys[i] = torch.cat([cache.keys[i], k], 2)
            cache.values[i] = torch.cat([cache.values[i], v], 2)
        out = F.scaled_dot_product_attention(q, cache.keys[i], cache.values[i], attn_mask=causal, scale=attn.scale)
        out = out.transpose(1, 2).reshape(h.shape)
        if attn.include_fc:
            out = attn.out_proj(out)
        h = h + out
        h = h + block.mlp(block.norm2(h))
    return model.to_logits(h)
