"""MECAM against an independent per-image reference of the paper's formula, the exit subsets, the training stage,
and the inference path (one scoring pass, the CAM written as an explanation, no map threshold)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset

from medood.detectors import MECAMDetector, NotFittedError
from medood.detectors.mecam import all_exit_subsets, feature_change, parse_exits
from medood.engines import OODEvaluator, fit_detector
from medood.handlers import CalibrationHandler, OODResultWriter
from medood.inferers import OODInferer
from medood.losses import MECAM_EXIT_WEIGHTS
from tests.helpers import toy


def _detector(sd: int, exits: tuple[int, ...] = (0, 1, 2, 3), seed: int = 0) -> MECAMDetector:
    torch.manual_seed(seed)
    det = MECAMDetector(**{**MECAMDetector.tiny_config(sd), "exits": exits})
    for p in det.net.exits.parameters():  # non-trivial CAMs without training
        torch.nn.init.normal_(p, std=0.5)
    return det.mark_fitted().eval()  # type: ignore[return-value]


def _reference(det: MECAMDetector, x: torch.Tensor, exits: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, written from methods.md §1.4 without the detector's code: (-MSE scores, fused CAMs)."""
    net = det.net
    scores, maps = [], []
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    with torch.no_grad():
        for xi in x.split(1):
            stages, h = [], net.maxpool(net.act(net.bn1(net.conv1(xi)))) if not net.no_max_pool else None
            h = net.act(net.bn1(net.conv1(xi))) if h is None else h
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                h = layer(h)
                stages.append(h)
            cams = [e(s) for e, s in zip(net.exits, stages)]
            logits = [c.mean(dim=tuple(range(2, c.ndim))) for c in cams]
            p = int(logits[3][0].argmax())
            conf = {e: float(torch.softmax(logits[e][0], 0).max()) for e in exits}
            fused = torch.zeros(xi.shape[2:])
            for e in exits:
                up = F.interpolate(cams[e], size=xi.shape[2:], mode=mode, align_corners=False)[0]
                prob_p = 1.0 / torch.exp(up - up[p]).sum(0)  # softmax over classes, channel P
                fused += conf[e] / sum(conf.values()) * prob_p
            fused = fused.clamp(0, 1)
            f_x = stages[3].mean(dim=tuple(range(2, stages[3].ndim)))
            masked = xi * (1 - fused)
            h = net.act(net.bn1(net.conv1(masked)))
            h = h if net.no_max_pool else net.maxpool(h)
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                h = layer(h)
            f_masked = h.mean(dim=tuple(range(2, h.ndim)))
            scores.append(-F.mse_loss(f_masked, f_x))
            maps.append(fused[None])
    return torch.stack(scores), torch.stack(maps)


@pytest.mark.parametrize(("sd", "exits"), [(2, (0, 1, 2, 3)), (2, (1, 3)), (3, (0, 1, 2, 3)), (3, (2,))])
def test_matches_the_paper_formula(sd: int, exits: tuple[int, ...]) -> None:
    det = _detector(sd, exits)
    x = toy.blob_images(sd, 4, seed=3)[0]
    out = det.score(x)
    ref_scores, ref_maps = _reference(det, x, exits)
    torch.testing.assert_close(out.anomaly_map, ref_maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.image_score, ref_scores, atol=1e-6, rtol=1e-4)
    assert out.anomaly_map.dtype == torch.float32
    assert float(out.anomaly_map.min()) >= 0.0
    assert float(out.anomaly_map.max()) <= 1.0
    torch.testing.assert_close(out.extras["feature_mse"], -out.image_score)
    torch.testing.assert_close(out.extras["pred_class"], det.net(x)[-1].argmax(1))


@pytest.mark.parametrize("change", ["relative", "cosine"])
def test_normalised_feature_changes(change: str) -> None:
    """The ``change`` option: the same fused CAM and masked pass, the change normalised by the feature norm."""
    det = _detector(2)
    x = toy.blob_images(2, 4, seed=3)[0]
    mse = det.score(x).image_score
    det.change = change
    out = det.score(x)
    with torch.no_grad():
        f = det.net.features(x)
        g = det.net.features(x * (1 - out.anomaly_map))
    if change == "relative":
        expected = mse / f.pow(2).mean(1)
    else:
        expected = F.cosine_similarity(f, g, dim=1) - 1
    torch.testing.assert_close(out.image_score, expected, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(out.image_score, mse)
    torch.testing.assert_close(det.score_subsets(x, ["0123"])["exits_0123"], out.image_score)
    # a common scale of both features changes neither normalised score; the MSE grows with its square
    torch.testing.assert_close(feature_change(3 * f, 3 * g, change), feature_change(f, g, change))
    torch.testing.assert_close(feature_change(3 * f, 3 * g, "mse"), 9 * feature_change(f, g, "mse"))
    with pytest.raises(ValueError, match="change must be one of"):
        MECAMDetector(**{**MECAMDetector.tiny_config(2), "change": "l1"})


def test_fusion_on_the_cam_grid() -> None:
    """cam_grid="cam": softmax and fusion on the finest fused CAM's grid, one up-sampling of the fused map."""
    det = _detector(3, (1, 3))
    x = toy.blob_images(3, 3, seed=8)[0]
    det.cam_grid = "cam"
    with torch.no_grad():
        cams = det.net.forward_cams(x).cams
        got = det.fused_cam(cams, x.shape[2:])
    p = cams[3].mean(dim=(2, 3, 4)).argmax(1)
    conf = [torch.softmax(cams[e].mean(dim=(2, 3, 4)), 1).amax(1) for e in (1, 3)]
    grid = cams[1].shape[2:]
    expected = []
    for b in range(x.shape[0]):
        fine = torch.softmax(cams[1][b], 0)[p[b]]
        coarse = F.interpolate(cams[3][b : b + 1], size=grid, mode="trilinear", align_corners=False)[0]
        coarse = torch.softmax(coarse, 0)[p[b]]
        fused = (conf[0][b] * fine + conf[1][b] * coarse) / (conf[0][b] + conf[1][b])
        expected.append(F.interpolate(fused[None, None], size=x.shape[2:], mode="trilinear", align_corners=False)[0])
    torch.testing.assert_close(got, torch.stack(expected).clamp(0, 1), atol=1e-5, rtol=1e-4)
    det.exits = (0, 3)  # the stride-1 tiny network's finest CAM is on the input grid: both modes agree
    out_cam = det.score(x)
    det.cam_grid = "input"
    torch.testing.assert_close(det.score(x).image_score, out_cam.image_score)
    with pytest.raises(ValueError, match="cam_grid"):
        MECAMDetector({"spatial_dims": 2}, cam_grid="exit")


def test_score_subsets_equals_scoring_with_each_subset() -> None:
    det = _detector(2)
    x = toy.blob_images(2, 5, seed=4)[0]
    subsets = det.score_subsets(x)
    assert len(subsets) == 15
    assert set(subsets) == {"exits_" + "".join(map(str, s)) for s in all_exit_subsets()}
    for name in ("0123", "3", "02", "123"):
        det.exits = name
        torch.testing.assert_close(subsets["exits_" + name], det.score(x).image_score)
    assert list(det.score_subsets(x, ["32", [1]])) == ["exits_23", "exits_1"]


def test_exit_parsing() -> None:
    assert parse_exits("3,1") == (1, 3)
    assert parse_exits("023") == (0, 2, 3)
    assert parse_exits([2]) == (2,)
    assert len(all_exit_subsets()) == 15
    for bad in ([], [1, 1], [4], "5", [-1]):
        with pytest.raises(ValueError, match="exits"):
            parse_exits(bad)
    with pytest.raises(ValueError, match="exit_weights"):
        MECAMDetector({"spatial_dims": 2}, exit_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="network"):
        MECAMDetector()


def test_wrong_dimensionality_and_unfitted() -> None:
    det = MECAMDetector(**MECAMDetector.tiny_config(2))
    with pytest.raises(NotFittedError):
        det.score(torch.rand(1, 1, 16, 16))
    det.mark_fitted()
    with pytest.raises(ValueError, match="2-D"):
        det.score(torch.rand(1, 1, 8, 8, 8))


def test_fit_trains_the_classifier_with_the_multi_exit_loss() -> None:
    torch.manual_seed(0)
    det = MECAMDetector(**{**MECAMDetector.tiny_config(2), "epochs": 15})
    (stage,) = det.training_stages()
    assert stage.make_loss().criterion.weights == list(MECAM_EXIT_WEIGHTS)
    assert det.stage_network("classifier") is det.net
    x, y = toy.blob_images(2, 30, seed=5)
    before = (det.net.eval()(x)[-1].argmax(1) == y).float().mean()
    det.fit(toy.id_loader(2, n=48, batch_size=12), trainer=fit_detector, progress=False)
    assert det.is_fitted
    with torch.no_grad():
        after = (det.net(x)[-1].argmax(1) == y).float().mean()
    assert after >= 0.9 > before, f"final-exit accuracy {before:.2f} -> {after:.2f}"


class _Counting(MECAMDetector):
    calls = 0

    def score_features(self, features):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        return super().score_features(features)


def test_evaluator_scores_once_writes_cams_and_records_no_map_threshold(tmp_path: Path) -> None:
    det = _detector(2)
    counting = _Counting(**MECAMDetector.tiny_config(2))
    counting.load_state_dict(det.state_dict())
    counting.eval()
    x = toy.blob_images(2, 6, seed=6)[0]
    items = [{"image": x[i]} for i in range(6)]
    loader = DataLoader(Dataset(items), batch_size=3)

    calib = CalibrationHandler(counting)
    OODEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=counting, inferer=OODInferer(),
                 val_handlers=[calib], decollate=True).run()  # fmt: skip
    assert _Counting.calls == 2, "one score call per batch: the image score comes from the same call as the map"
    assert counting.calibration.has_scores
    assert not counting.calibration.has_map, "an explanation map gets no healthy mask threshold"
    expected = torch.sort(det.score(x).image_score.double()).values
    assert counting.calibration.quantile(0.0, "score") == pytest.approx(float(expected[0]), rel=1e-5)

    out = tmp_path / "out"
    writer = OODResultWriter(out, calibration=counting.calibration, window=(0.0, 1.0), map_name="cam")
    OODEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=counting, inferer=OODInferer(),
                 val_handlers=[writer], decollate=True).run()  # fmt: skip
    rows = list(csv.DictReader(open(out / "scores.csv")))
    got = torch.tensor([float(r["score"]) for r in rows])
    torch.testing.assert_close(got, det.score(x).image_score, atol=1e-6, rtol=1e-5)
    assert {r["flagged"] for r in rows} == {""}, "6 healthy cases cannot give a 5 % flag: no decision, no guess"
    assert len(list(out.glob("*_cam_map.nii.gz"))) == 6
    assert len(list(out.glob("*_cam_overlay.png"))) == 6
    assert not list(out.glob("*_seg.nii.gz")), "no masks from an explanation map"
    assert not list(out.glob("*_anomaly_*"))


def test_patch_inference_is_refused() -> None:
    det = _detector(2)
    with pytest.raises(ValueError, match="whole inputs"):
        OODInferer(roi_size=(8, 8))(torch.rand(1, 1, 16, 16), det)
    res = OODInferer().infer(toy.blob_images(2, 2, seed=1)[0], det)
    assert math.isfinite(float(res.volume_score.sum()))
