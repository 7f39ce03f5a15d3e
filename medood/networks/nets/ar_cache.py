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
    """Per-layer keys and values of the positions fed so far.

    Buffers ``(B, heads, max_seq_len, head_dim)`` are allocated on the first call and filled in place, so a
    step costs the same at every position (appending with ``torch.cat`` would copy the whole cache every step:
    quadratic memory traffic, minutes per volume for 15 restorations of every slice).
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    length: int = 0

    def append(self, layer: int, k: Tensor, v: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        """Store ``k``/``v`` ``(B, heads, n, head_dim)`` of ``layer`` after the cached positions.

        Returns:
            The keys and values of every position so far (views of the buffers, no copy).
        """
        start, n = self.length, k.shape[2]
        if layer == len(self.keys):
            shape = (*k.shape[:2], capacity, k.shape[3])
            self.keys.append(k.new_empty(shape))
            self.values.append(v.new_empty(shape))
        self.keys[layer][:, :, start : start + n] = k
        self.values[layer][:, :, start : start + n] = v
        return self.keys[layer][:, :, : start + n], self.values[layer][:, :, : start + n]


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
    for i, block_module in enumerate(model.blocks):
        block = cast(TransformerBlock, block_module)
        attn = cast(SABlock, block.attn)
        if attn.use_combined_linear:
            raise ValueError("cached decoding expects use_combined_linear=False")
        heads = attn.num_heads
        x = block.norm1(h)
        q, k, v = (_split_heads(f(x), heads) for f in (attn.to_q, attn.to_k, attn.to_v))
        keys, values = cache.append(i, k, v, model.max_seq_len)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=causal, scale=attn.scale)
        out = out.transpose(1, 2).reshape(h.shape)
        if attn.include_fc:
            out = attn.out_proj(out)
        h = h + out
        h = h + block.mlp(block.norm2(h))
    cache.length = start + n
    return model.to_logits(h)
