"""MIM-OOD and its AR / reconstruction references: in-painting logic, flags, the two AR paths, the residuals."""

from __future__ import annotations

import pytest
import torch

from medood.detectors import MIMDetector, VQVAEARDetector, VQVAEReconstructionDetector
from medood.utils.reduce import rim_eroded

TOK = {"channels": (8, 16), "num_res_layers": 1, "num_embeddings": 16, "embedding_dim": 8}
TINY = {"hidden_size": 16, "depth": 1, "num_heads": 2, "dropout": 0.0}


def _mim(**kw: object) -> MIMDetector:
    torch.manual_seed(0)
    return MIMDetector(tokenizer=TOK, grid_size=(4, 6), token_detector=TINY, inpainter=TINY, **kw).eval()


def test_inpaint_changes_only_masked_tokens_and_all_of_them_get_codes() -> None:
    det = _mim(mim_steps=3)
    tokens = torch.randint(0, 16, (3, 4, 6))
    mask = torch.zeros(3, 4, 6, dtype=torch.bool)
    mask[:, 1:3, 2:5] = True
    with torch.no_grad():
        out = det.inpaint(tokens, mask, torch.zeros(3))
    assert torch.equal(out[~mask], tokens[~mask])
    assert int(out.max()) < 16, "no [MASK] token left after the last step"


def test_flag_dilation_and_threshold() -> None:
    det = _mim(flagging="atd", mask_dilation=1)
    tokens = torch.randint(0, 16, (2, 4, 6))
    det.token_anomaly = lambda t, p: torch.zeros(t.shape, dtype=torch.float32).index_put_(  # type: ignore[method-assign]
        (torch.tensor([0]), torch.tensor([1]), torch.tensor([1])), torch.tensor(0.9)
    )
    flags = det.flag(tokens, torch.zeros(2))
    assert flags[0].sum() == 9 and flags[1].sum() == 0, "one flagged token dilates to its 3x3 neighbourhood"
    with pytest.raises(ValueError, match="atd_threshold"):
        _mim(atd_threshold=1.5)


def test_residual_variants_differ_and_gated_is_zero_outside_inpainted_tokens() -> None:
    x = torch.rand(2, 1, 16, 24)
    det = _mim(residual="gated")
    det.flag = lambda t, p: torch.zeros(t.shape, dtype=torch.bool)  # type: ignore[method-assign]
    with torch.no_grad():
        assert float(det.residual_slices(x, torch.zeros(2)).abs().max()) == 0.0
        det.residual = "input"
        assert float(det.residual_slices(x, torch.zeros(2)).min()) >= 0.0
        recon = VQVAEReconstructionDetector(tokenizer=det.tokenizer).residual_slices(x, torch.zeros(2))
    det.residual = "input"
    with torch.no_grad():
        torch.testing.assert_close(det.residual_slices(x, torch.zeros(2)), recon)  # nothing flagged = plain recon


def test_ar_cached_and_lsr_style_restorations_are_identical() -> None:
    torch.manual_seed(0)
    det = VQVAEARDetector(
        tokenizer=TOK,
        grid_size=(4, 6),
        nll_threshold=2.0,
        n_restorations=4,
        prior={"attn_layers_dim": 32, "attn_layers_depth": 2, "attn_layers_heads": 2},
    ).eval()
    tokens, pos = torch.randint(0, 16, (5, 4, 6)), torch.rand(5) - 0.5
    with torch.no_grad():
        cached = det.restore_tokens(tokens, pos)
        det.use_cache = False
        slow = det.restore_tokens(tokens, pos)
        nll = det.token_nll(tokens, pos)
    assert torch.equal(cached, slow)
    unflagged = (nll <= 2.0)[None].expand_as(cached)
    assert torch.equal(cached[unflagged], tokens[None].expand_as(cached)[unflagged]), "only flagged tokens move"


def test_ar_needs_a_threshold() -> None:
    det = VQVAEARDetector(
        tokenizer=TOK, grid_size=(4, 6), prior={"attn_layers_dim": 16, "attn_layers_depth": 1, "attn_layers_heads": 2}
    )
    with pytest.raises(RuntimeError, match="NLL threshold"):
        _ = det.threshold_nll


def test_volume_slices_use_foreground_positions_and_zero_background() -> None:
    det = VQVAEReconstructionDetector(tokenizer=TOK, erode_mask=0, minpool=1, avgpool=1)
    det.mark_fitted()
    x = torch.zeros(1, 1, 14, 22, 10)
    x[..., 2:12, 3:20, 2:8] = torch.rand(1, 1, 10, 17, 6) + 0.1
    seen = {}
    det.residual_slices = lambda s, p: (seen.setdefault("p", p), torch.ones(s.shape[0], 1, *s.shape[2:]))[1]  # type: ignore[method-assign]
    amap = det.predict_map(x)
    assert amap.shape == x.shape
    torch.testing.assert_close(seen["p"], torch.linspace(-0.5, 0.5, 6))
    assert float(amap[..., 0:2].abs().max()) == 0.0
    assert float(amap[x > 0].min()) == 1.0


def test_token_nll_takes_each_token_from_the_pass_that_masked_it() -> None:
    det = _mim(nll_groups=3)
    tokens, pos = torch.randint(0, 16, (2, 4, 6)), torch.tensor([-0.2, 0.3])
    with torch.no_grad():
        nll = det.token_nll(tokens, pos)
        assert nll.shape == (2, 4, 6) and bool((nll > 0).all())
        groups = torch.randperm(24, generator=torch.Generator().manual_seed(det.seed)) % 3
        for g in range(3):  # one pass by hand: mask group g only
            mask = (groups == g).reshape(4, 6)
            logits = det.inpainter(torch.where(mask, torch.full_like(tokens, 16), tokens), pos)
            ref = -logits.log_softmax(1).gather(1, tokens[:, None])[:, 0]
            torch.testing.assert_close(nll[:, mask], ref[:, mask])
    assert int(torch.bincount(groups).min()) == 8, "a balanced partition: every token masked exactly once"


def test_nll_and_union_flagging() -> None:
    det = _mim(flagging="nll", mask_dilation=0, nll_threshold=2.0, nll_grow_percentile=None)
    tokens = torch.randint(0, 16, (1, 4, 6))
    nll = torch.zeros(1, 4, 6)
    nll[0, 0, 0], nll[0, 3, 5] = 2.5, 1.5
    atd = torch.zeros(1, 4, 6)
    atd[0, 1, 1] = 0.9
    det.token_nll = lambda t, p: nll  # type: ignore[method-assign]
    det.token_anomaly = lambda t, p: atd  # type: ignore[method-assign]
    flags = det.flag(tokens, torch.zeros(1))
    assert flags.sum() == 1 and flags[0, 0, 0], "only NLLs above the threshold"
    det.flagging = "union"
    assert det.flag(tokens, torch.zeros(1)).sum() == 2
    det.flagging = "atd"
    assert det.flag(tokens, torch.zeros(1))[0, 1, 1] and det.flag(tokens, torch.zeros(1)).sum() == 1
    with pytest.raises(ValueError, match="flagging"):
        _mim(flagging="both")


def test_nll_flags_grow_by_hysteresis_into_connected_tokens_above_the_lower_threshold() -> None:
    det = _mim(flagging="nll", mask_dilation=0, nll_threshold=5.0, nll_grow_percentile=50.0, nll_grow_steps=2)
    nll = torch.zeros(1, 4, 6)
    nll[0, 0, 0] = 6.0  # the seed: above the threshold
    nll[0, 0, 1], nll[0, 1, 2], nll[0, 2, 3] = 3.0, 3.0, 3.0  # a chain above the lower threshold, 1-2-3 steps away
    nll[0, 3, 0] = 4.0  # above the lower threshold but not connected to a seed
    with pytest.raises(RuntimeError, match="growing threshold"):
        det.flag_scores(None, nll)
    det.fitted_nll_grow_threshold.fill_(2.0)
    flags = det.flag_scores(None, nll)
    expected = torch.zeros(1, 4, 6, dtype=torch.bool)
    expected[0, 0, 0] = expected[0, 0, 1] = expected[0, 1, 2] = True  # the third link is 3 steps away
    assert torch.equal(flags, expected)
    det.nll_grow_steps = 0
    assert int(det.flag_scores(None, nll).sum()) == 1, "no growing: the threshold alone"
    det.nll_grow_steps, det.mask_dilation = 3, 1
    assert bool(det.flag_scores(None, nll)[0, 3, 4]), "growing, then the dilation"
    det.nll_grow_threshold, det.mask_dilation = 3.5, 0  # a fixed lower threshold wins over the fitted one (2.0)
    assert int(det.flag_scores(None, nll).sum()) == 1, "the 3.0 chain is below 3.5, the 4.0 token is not connected"
    with pytest.raises(ValueError, match="token NLLs"):
        det.flag_scores(torch.zeros(1, 4, 6), None)
    with pytest.raises(ValueError, match="nll_grow_percentile"):
        _mim(nll_percentile=90.0, nll_grow_percentile=95.0)


def test_grow_threshold_is_fitted_with_the_nll_threshold() -> None:
    det = _mim(flagging="nll", nll_percentile=90.0, nll_grow_percentile=60.0)
    x = torch.rand(4, 1, 16, 24)
    det.fit_statistics([x[:2], x[2:]])
    with torch.no_grad():
        pos = torch.zeros(4)
        values = det.token_nll(det.tokenize(x, pos), pos).flatten().double()
    assert float(det.fitted_nll_grow_threshold) == pytest.approx(float(torch.quantile(values, 0.6)), rel=1e-5)
    assert float(det.fitted_nll_grow_threshold) < det.threshold_nll
    fresh = _mim(flagging="nll", nll_percentile=90.0, nll_grow_percentile=60.0)
    fresh.load_state_dict(det.state_dict())
    assert float(fresh.fitted_nll_grow_threshold) == float(det.fitted_nll_grow_threshold), "saved with the weights"
    old = {k: v for k, v in det.state_dict().items() if k != "fitted_nll_grow_threshold"}
    fresh.load_state_dict(old)  # a checkpoint from before the hysteresis still loads strictly
    assert torch.isnan(fresh.fitted_nll_grow_threshold)


def test_nll_threshold_is_fitted_as_a_percentile_of_healthy_token_nlls() -> None:
    det = _mim(flagging="nll", nll_percentile=90.0, nll_grow_percentile=None)
    with pytest.raises(RuntimeError, match="NLL threshold"):
        _ = det.threshold_nll
    x = torch.rand(5, 1, 16, 24)  # 2D inputs: every image is one slice at position 0
    det.train()
    det.fit_statistics([x[:2], x[2:]])
    assert det.training, "the mode is restored"
    with torch.no_grad():
        det.eval()
        pos = torch.zeros(5)
        values = det.token_nll(det.tokenize(x, pos), pos).flatten()
    assert values.numel() == 5 * 24
    thr = float(torch.quantile(values.double(), 0.9))
    assert det.threshold_nll == pytest.approx(thr, rel=1e-5), "fitted in eval mode, on every token"
    fresh = _mim(flagging="nll", nll_grow_percentile=None)
    fresh.load_state_dict(det.state_dict())
    assert float(fresh.fitted_nll_threshold) == pytest.approx(thr, rel=1e-5), "saved with the weights"
    det.nll_threshold = 7.0
    assert det.threshold_nll == 7.0, "a fixed threshold wins"


def test_only_flagged_slices_are_inpainted_and_gated_is_input_inside_the_flags() -> None:
    det = _mim(flagging="nll", mask_dilation=0, nll_threshold=0.0)
    x, pos = torch.rand(3, 1, 16, 24), torch.tensor([-0.3, 0.0, 0.3])
    tokens = det.tokenize(x, pos)
    flags = torch.zeros(3, 4, 6, dtype=torch.bool)
    flags[1, 2, 3] = True  # only the middle slice has something to in-paint
    det.flag = lambda t, p: flags  # type: ignore[method-assign]
    with torch.no_grad():
        det.residual = "input"
        full = det.residual_slices(x, pos)
        plain = (x - det.decode(tokens)).abs().mean(1, keepdim=True)
        torch.testing.assert_close(full[[0, 2]], plain[[0, 2]])  # unflagged slices: their own restoration
        restored = det.decode(det.inpaint(tokens[1:2], flags[1:2], pos[1:2]))
        torch.testing.assert_close(full[1:2], (x[1:2] - restored).abs().mean(1, keepdim=True))
        det.residual = "gated"
        gated = det.residual_slices(x, pos)
    assert float(gated[[0, 2]].abs().max()) == 0.0
    gate = torch.zeros(1, 16, 24)
    gate[:, 8:12, 12:16] = 1.0  # token (2, 3) of a stride-4 grid
    torch.testing.assert_close(gated[1], full[1] * gate)


def test_stage_maps_expose_every_stage_and_their_map_is_predict_map() -> None:
    det = _mim(nll_threshold=1.0, nll_grow_threshold=0.5)
    det.mark_fitted()
    x = torch.zeros(1, 1, 16, 24, 5)
    x[..., 1:15, 2:22, :] = torch.rand(1, 1, 14, 20, 5, generator=torch.Generator().manual_seed(1)) + 0.1
    st = det.stage_maps(x)
    assert set(st) == {"recon_residual", "residual", "token_nll", "flagged", "map"}
    assert all(v.shape == x.shape for v in st.values())
    torch.testing.assert_close(st["map"], det.predict_map(x))
    tokens = det.tokenize(det.slices_of(x)[0], det.slices_of(x)[1])
    flags = det.flag(tokens, det.slices_of(x)[1])  # (D, h, w): slice z of the volume is row z
    assert torch.equal(st["flagged"][0, 0, :, :, 2] > 0, det.token_to_pixels(flags)[2, 0])
    assert float(st["flagged"].sum()) > 0 and float(st["map"][x == 0].abs().max()) == 0.0
    assert float(st["recon_residual"].min()) >= 0.0 and float(st["recon_residual"].max()) > 0.0


def test_ar_stage_maps_flag_the_tokens_it_resamples() -> None:
    torch.manual_seed(0)
    prior = {"attn_layers_dim": 16, "attn_layers_depth": 1, "attn_layers_heads": 2}
    det = VQVAEARDetector(tokenizer=TOK, grid_size=(4, 6), nll_threshold=2.5, n_restorations=2, prior=prior).eval()
    det.mark_fitted()
    x = torch.zeros(1, 1, 16, 24, 3)
    x[..., 1:15, 2:22, :] = torch.rand(1, 1, 14, 20, 3, generator=torch.Generator().manual_seed(2)) + 0.1
    st = det.stage_maps(x)
    torch.testing.assert_close(st["map"], det.predict_map(x))
    assert torch.equal(st["flagged"] > 0, st["token_nll"] > 2.5)


def test_largest_region_score_is_the_cluster_extent_above_score_k() -> None:
    det = _mim(score_reduction="largest_region", score_k=0.5)
    amap = torch.zeros(2, 1, 8, 8, 8)
    amap[0, 0, 1:3, 1:3, 1:3] = 1.0  # 8 voxels
    amap[0, 0, 5, 5, 5] = 1.0  # a single voxel elsewhere
    amap[1, 0, 2:6, 2:4, 2:4] = 0.4  # below the level
    x = torch.ones(2, 1, 8, 8, 8)
    assert det.map_score(amap, x).tolist() == [8.0, 0.0]
    x[0, 0, 1] = 0  # outside the brain: not counted
    assert det.map_score(amap, x).tolist() == [4.0, 0.0]


def test_score_erode_leaves_the_brain_rim_out_of_the_volume_score() -> None:
    x = torch.zeros(1, 1, 12, 12, 12)
    x[0, 0, 1:11, 1:11, 1:11] = 1.0  # a 10-voxel brain cube
    amap = torch.zeros_like(x)
    amap[0, 0, 1, 5, 5] = 9.0  # hot voxel on the brain rim (a skull-strip edge)
    amap[0, 0, 5, 5, 5] = 2.0  # inside
    plain, eroded = _mim(score_k=1), _mim(score_k=1, score_erode=2)
    assert plain.map_score(amap, x).item() == 9.0
    assert eroded.map_score(amap, x).item() == 2.0  # the rim voxel is left out
    brain = rim_eroded(x > 0, 2)
    assert int(brain.sum()) == 6**3  # 6-connected steps erode a cube face by face
    assert rim_eroded(x > 0, 0).equal(x > 0)
