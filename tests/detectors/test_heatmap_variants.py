"""HeatmapDetector options of the official code: the decoder ensemble (``n_decoders``) and the multi-layer input
(``feature_layers``): declared stages, shapes, training and the score direction on tiny networks."""

from __future__ import annotations

import copy

import pytest
import torch

from medood.detectors.heatmap import HeatmapDetector
from medood.detectors.posthoc import score_many
from medood.engines.fit import fit_detector
from medood.engines.heatmap import ood_pairs
from tests.helpers import toy


def _aux_over_id(det: HeatmapDetector, loader: list) -> float:
    """Mean map of the auxiliary OOD training pairs over that of the ID ones (> 1: OOD scores higher)."""
    pairs = ood_pairs(det, loader, 256)[0]
    is_aux = (pairs["image"] != pairs["target"]).flatten(1).any(1)
    with torch.no_grad():
        score = det.score(pairs["image"]).image_score
    return float(score[is_aux].mean() / score[~is_aux].mean())


def test_ensemble_trains_every_decoder_and_averages_their_maps() -> None:
    torch.manual_seed(0)
    cfg = {**HeatmapDetector.tiny_config(2), "epochs": 25, "n_decoders": 3}
    det = HeatmapDetector(model=toy.trained_classifier(2), **cfg)
    stages = det.training_stages()
    assert [(s.name, s.network) for s in stages] == [
        ("decoder", "decoder"), ("decoder_1", "extra_decoders.0"), ("decoder_2", "extra_decoders.1")
    ]  # fmt: skip
    assert [det.stage_network(s.name) for s in stages] == det.decoders
    before = [{k: v.clone() for k, v in d.state_dict().items()} for d in det.decoders]
    loader = toy.id_loader(2, n=24, batch_size=12)
    det.fit(loader, trainer=fit_detector, progress=False)
    for dec, init in zip(det.decoders, before):
        assert any(not torch.equal(v, init[k]) for k, v in dec.state_dict().items()), "every decoder is trained"
    x = toy.blob_images(2, 5, seed=4)[0]
    with torch.no_grad():
        feats = det.extract_features(x)
        maps = torch.stack([h.abs().amax(1, keepdim=True) for h in det.residuals(feats)])
        out = det.score(x)
    assert out.anomaly_map.shape == (5, 1, 16, 16) and out.image_score.shape == (5,)
    assert not torch.allclose(maps[0], maps[1]), "independent initialisations give different decoders"
    torch.testing.assert_close(out.anomaly_map, maps.mean(0))
    torch.testing.assert_close(out.image_score, maps.mean(0).mean(dim=(1, 2, 3)))
    assert _aux_over_id(det, loader) > 2.0
    state = det.state_dict()
    assert any(k.startswith("extra_decoders.1.") for k in state)
    fresh = HeatmapDetector(model=toy.trained_classifier(2), **cfg)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.eval().score(x).image_score, out.image_score)


def test_multi_layer_input_concatenates_pooled_layers_and_trains() -> None:
    torch.manual_seed(0)
    net = toy.trained_classifier(2)
    cfg = {**HeatmapDetector.tiny_config(2), "epochs": 25, "feature_layers": ["features.1"]}
    det = HeatmapDetector(model=net, **cfg)
    assert det.decoder_in_features == 16 + 8, "penultimate 16 + the 8 pooled channels of features.1"
    x = toy.blob_images(2, 4, seed=5)[0]
    feats = det.extract_features(x)
    with torch.no_grad():
        first = net.features[1](net.features[0](x)).mean(dim=(2, 3))
    torch.testing.assert_close(feats["features"], torch.cat([net.features(x), first], dim=1))
    loader = toy.id_loader(2, n=24, batch_size=12)
    det.fit(loader, trainer=fit_detector, progress=False)
    out = det.score(x)
    assert out.anomaly_map.shape == (4, 1, 16, 16) and torch.isfinite(out.image_score).all()
    assert _aux_over_id(det, loader) > 2.0
    assert det.needs_own_pass and not HeatmapDetector(model=net, **{**cfg, "feature_layers": []}).needs_own_pass
    shared = score_many({"heatmap": det}, net, [x]).scores["heatmap"]  # its own pass: more than the penultimate
    torch.testing.assert_close(shared, out.image_score.float().cpu())
    with pytest.raises(ValueError, match="its own extract_features"):
        det.score_features({"features": feats["features"][:, :16], "logits": feats["logits"]})
    with pytest.raises(ValueError, match="feature_layers need the classifier"):
        HeatmapDetector(in_features=16, num_classes=2, feature_layers=["features.1"])
    with pytest.raises(ValueError, match="n_decoders"):
        HeatmapDetector(in_features=16, num_classes=2, n_decoders=0)


def test_joint_decoders_stage_trains_each_member_as_its_own_stage_would() -> None:
    from medood.engines.fit import StageTrainer
    from medood.engines.heatmap import ood_pairs

    net = toy.trained_classifier(2)  # before the seed: a first call trains it (and draws random numbers)

    def trained(stages: list[str]) -> HeatmapDetector:
        torch.manual_seed(0)
        det = HeatmapDetector(model=copy.deepcopy(net), **{**HeatmapDetector.tiny_config(2), "n_decoders": 2})
        loader = toy.id_loader(2, n=16, batch_size=8)
        det.fit_statistics(loader)
        data = ood_pairs(det, loader, 8)
        for stage in stages:
            opt = torch.optim.Adam(det.stage_network(stage).parameters(), lr=5e-3, betas=(0.5, 0.999))
            StageTrainer(det, stage, device=torch.device("cpu"), max_epochs=3, train_data_loader=data,
                         optimizer=opt).run()  # fmt: skip
        return det

    joint, alone = trained(["decoders"]), trained(["decoder", "decoder_1"])
    assert "decoders" not in [s.name for s in joint.training_stages()], "fit trains the decoders one by one"
    assert not any(k.startswith("decoder_ensemble") for k in joint.state_dict()), "the state dict is unchanged"
    for a, b in zip(joint.decoders, alone.decoders, strict=True):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=f"{k}: joint != its own stage")
