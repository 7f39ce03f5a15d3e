from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DecoderOnlyTransformer

from medood.networks.nets import KVCache, SliceTokenizer, TokenTransformer, cached_forward
from medood.networks.nets.token_masks import blob_mask, corrupt_tokens, maskgit_ratio, random_mask


@pytest.mark.parametrize("chunks", [(30,), (1,) * 30, (7, 1, 22), (5, 10, 15)])
def test_kv_cache_equals_full_forward(chunks: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = DecoderOnlyTransformer(
        num_tokens=20,
        max_seq_len=30,
        attn_layers_dim=32,
        attn_layers_depth=2,
        attn_layers_heads=4,
        use_flash_attention=True,
    ).eval()
    x = torch.randint(0, 20, (3, 30))
    with torch.no_grad():
        full = net(x)
    cache, start, parts = KVCache(), 0, []
    for n in chunks:
        parts.append(cached_forward(net, x[:, start : start + n], cache))
        start += n
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        cached_forward(net, x[:, :1], cache)


@pytest.mark.parametrize(("shape", "grid"), [((2, 1, 16, 24), (4, 6)), ((1, 1, 32, 32), (8, 8))])
def test_tokenizer_shapes_and_position(shape: tuple[int, ...], grid: tuple[int, int]) -> None:
    tok = SliceTokenizer(channels=(8, 16), num_res_layers=1, num_embeddings=16, embedding_dim=8)
    x = torch.rand(shape)
    recon, q = tok(x, torch.zeros(shape[0]))
    assert recon.shape == x.shape
    assert q.ndim == 0
    codes = tok.tokenize(x, torch.zeros(shape[0]))
    assert codes.shape == (shape[0], *grid)
    assert codes.dtype == torch.long
    assert int(codes.max()) < 16
    assert tok.decode(codes).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        tok(torch.rand(1, 1, 18, 24))


def test_tokenizer_backward_reaches_every_parameter() -> None:
    tok = SliceTokenizer(channels=(8, 16), num_res_layers=1, num_embeddings=16, embedding_dim=8, decay=0.0)
    recon, q = tok(torch.rand(2, 1, 16, 16), torch.rand(2))
    ((recon - 0.5).abs().mean() + q).backward()
    missing = [n for n, p in tok.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_token_transformer_uses_position_and_context() -> None:
    torch.manual_seed(0)
    net = TokenTransformer(16, (4, 6), 16, hidden_size=32, depth=1, num_heads=2, dropout=0.0).eval()
    t = torch.randint(0, 16, (2, 4, 6))
    out = net(t, torch.tensor([-0.4, 0.4]))
    assert out.shape == (2, 16, 4, 6)
    same_pos = net(t, torch.tensor([0.4, 0.4]))
    assert not torch.allclose(out[0], same_pos[0]), "slice position must change the output"
    t2 = t.clone()
    t2[:, 0, 0] = 16  # [MASK] at one position changes the others (bidirectional attention)
    assert not torch.allclose(net(t2, torch.zeros(2))[:, :, 3, 5], net(t, torch.zeros(2))[:, :, 3, 5])
    with pytest.raises(ValueError, match="grids of shape"):
        net(torch.zeros(1, 5, 6, dtype=torch.long))


def test_masks_and_corruptions_are_seeded_and_sized() -> None:
    g = torch.Generator().manual_seed(0)
    ratio = torch.tensor([0.1, 0.5, 0.9])
    m = random_mask((3, 10, 12), ratio, g)
    assert m.flatten(1).sum(1).tolist() == [12, 60, 108]
    b = blob_mask((3, 10, 12), ratio, torch.Generator().manual_seed(1))
    assert b.shape == (3, 10, 12)
    assert (b.flatten(1).float().mean(1) > 0).all()
    assert torch.equal(b, blob_mask((3, 10, 12), ratio, torch.Generator().manual_seed(1)))
    r = maskgit_ratio(1000, torch.Generator().manual_seed(0))
    assert float(r.min()) >= 0.03 - 1e-6
    assert float(r.max()) <= 1.0
    assert 0.55 < float(r.mean()) < 0.72

    tokens = torch.randint(0, 16, (64, 10, 12), generator=torch.Generator().manual_seed(2))
    corrupted, target = corrupt_tokens(
        tokens, 16, clean_prob=0.2, max_ratio=0.3, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(target > 0, corrupted != tokens), "targets mark exactly the changed tokens"
    per_grid = target.flatten(1).mean(1)
    assert float(per_grid.max()) <= 0.6
    assert float(per_grid.mean()) <= 0.2
    assert (per_grid == 0).any()
    assert (per_grid > 0).sum() > 30


def test_dead_codes_are_revived_from_encoder_outputs() -> None:
    torch.manual_seed(0)
    tok = SliceTokenizer(channels=(8, 16), num_res_layers=1, num_embeddings=16, embedding_dim=8)
    q = tok.vqvae.quantizer.quantizer
    z = torch.randn(2, 8, 4, 4) * 5 + 3
    assert tok.revive_dead_codes(z) == 16, "an untrained codebook (zero usage) is initialised from data"
    flat = z.movedim(1, -1).reshape(-1, 8)
    dist = torch.cdist(q.embedding.weight, flat).min(1).values
    assert float(dist.max()) < 1.0, "every code sits next to an encoder output"
    q.ema_cluster_size.fill_(10.0)
    q.ema_cluster_size[3] = 0.01
    before = q.embedding.weight.clone()
    assert tok.revive_dead_codes(z) == 1
    changed = (q.embedding.weight != before).any(1)
    assert changed.tolist() == [i == 3 for i in range(16)]
    tok.revive_threshold = 0.0
    tok.train()
    tok(torch.rand(1, 1, 16, 16))  # disabled: no revival, no error


def test_token_transformer_is_deterministic_in_eval_mode_despite_dropout() -> None:
    torch.manual_seed(0)
    net = TokenTransformer(16, (4, 6), 16, hidden_size=32, depth=2, num_heads=2, dropout=0.5)
    t = torch.randint(0, 16, (3, 4, 6))
    net.eval()
    torch.testing.assert_close(net(t), net(t), atol=0, rtol=0)
    net.train()
    assert not torch.allclose(net(t), net(t)), "dropout (attention included) is active in training"
    assert all(b.attn.dropout_rate == 0.5 for b in net.blocks)


def test_attention_dropout_can_be_switched_off_separately() -> None:
    net = TokenTransformer(16, (4, 6), 16, hidden_size=32, depth=2, num_heads=2, dropout=0.3, attention_dropout=0.0)
    net.train()
    assert all(b.attn.dropout_rate == 0.0 for b in net.blocks), "no attention dropout: the fused CPU kernel runs"
    assert net.dropout.p == 0.3, "embedding/MLP dropout keeps its rate"
    net.eval()
    assert all(b.attn.dropout_rate == 0.0 for b in net.blocks)
