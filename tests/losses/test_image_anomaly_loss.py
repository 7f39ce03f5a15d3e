"""The anomalous-token detector stage on image-space anomalies (medood.losses.ImageAnomalyTokenLoss)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from medood.losses import ImageAnomalyTokenLoss
from medood.networks.nets import SliceTokenizer, TokenTransformer
from medood.transforms import ImageAnomaly, RandBlobIntensity

TOK = {"channels": (8, 16), "num_res_layers": 1, "num_embeddings": 16, "embedding_dim": 8}


class _Square(ImageAnomaly):
    """Test generator: brightens a fixed 4 x 4 square (one token) and two pixels of the next token."""

    def corrupt(
        self, x: np.ndarray, brain: np.ndarray, rng: np.random.Generator, donor: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        region = np.zeros(brain.shape, dtype=bool)
        region[4:8, 8:12] = True
        region[4, 12:14] = True
        out = x.copy()
        out[:, region] += 1.0
        return out, region


def _slices(n: int = 6) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.zeros(n, 1, 16, 24)
    x[:, :, 2:14, 2:22] = torch.rand(n, 1, 12, 20) + 0.2
    return x


def _tokenizer() -> SliceTokenizer:
    torch.manual_seed(0)
    return SliceTokenizer(**TOK).eval()


def test_image_anomaly_targets_come_from_the_pixel_mask() -> None:
    loss = ImageAnomalyTokenLoss(_tokenizer(), generators=[_Square()], token_prob=0.0, clean_prob=0.0)
    tokens, target = loss.make_batch(_slices(), torch.zeros(6))
    assert tokens.shape == target.shape == (6, 4, 6)
    expected = torch.zeros(4, 6)
    expected[1, 2] = 1.0  # the full 4 x 4 token; the next token holds 2 of 16 pixels (< 25 %)
    assert torch.equal(target, expected.expand(6, 4, 6))
    loss.token_fraction = 0.1
    _, target = loss.make_batch(_slices(), torch.zeros(6))
    assert target[0].sum() == 2, "with a 10 % footprint the partly covered token counts too"


def test_clean_and_token_corruption_sources() -> None:
    tok = _tokenizer()
    x = _slices()
    clean = tok.tokenize(x, torch.zeros(6))
    loss = ImageAnomalyTokenLoss(tok, generators=[_Square()], token_prob=0.0, clean_prob=1.0)
    tokens, target = loss.make_batch(x, torch.zeros(6))
    assert torch.equal(tokens, clean) and target.sum() == 0
    loss = ImageAnomalyTokenLoss(tok, generators=[], token_prob=1.0, clean_prob=0.0)
    tokens, target = loss.make_batch(x, torch.zeros(6))
    assert torch.equal(target, (tokens != clean).float()) and target.sum() > 0, "targets = the changed tokens"
    with pytest.raises(ValueError, match="generator"):
        ImageAnomalyTokenLoss(tok, generators=[], token_prob=0.5, clean_prob=0.0)


def test_reseed_repeats_the_corruptions_and_the_tokenizer_stays_frozen() -> None:
    tok = _tokenizer()
    frozen = {k: v.clone() for k, v in tok.state_dict().items()}
    net = TokenTransformer(16, (4, 6), 1, hidden_size=16, depth=1, num_heads=2, dropout=0.0)
    loss = ImageAnomalyTokenLoss(tok, generators=[RandBlobIntensity(radius=(2.0, 4.0))], token_prob=0.3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first: list[Any] = []
    for _ in range(2):
        loss.reseed()
        value, out = loss(net, _slices(), torch.zeros(6))
        first.append(loss.make_batch(_slices(), torch.zeros(6)))
        opt.zero_grad()
        value.backward()
        opt.step()
        assert 0.0 <= float(out["f1"]) <= 1.0 and float(out["anomalous_fraction"]) > 0
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])
    assert all(p.grad is None for p in tok.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in tok.state_dict().items()), "the tokenizer is not trained"
