"""medood.benchmark.features / stats.set_aurocs / bundles.bundle_network (the spectral scripts' shared parts), and
the --render path of the spectral diagnosis and multi-task comparison scripts."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medood.benchmark.bundles import bundle_network
from medood.benchmark.features import layer_summaries, recorded_forward
from medood.benchmark.heatmap_bench import cost as heatmap_cost
from medood.benchmark.stats import set_aurocs
from medood.benchmark.timing import batch_record
from medood.networks.feature_maps import FeatureRecorder
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1)).eval()


def _transform(d: dict[str, Any]) -> dict[str, Any]:
    return {"image": np.full((1, 5, 5), float(d["value"]), dtype=np.float32)}


def test_recorded_forward_and_layer_summaries() -> None:
    net = _net()
    items = [{"value": v} for v in (0.5, -1.0, 2.0)]
    recorder = FeatureRecorder(net, {"0": "0", "2": "2"})
    net(torch.zeros(1, 1, 5, 5))  # a stale call the next forward must drop
    x, feats = recorded_forward(net, recorder, _transform, items[1])
    recorder.remove()
    assert x.shape == (1, 1, 5, 5) and float(x[0, 0, 0, 0]) == -1.0
    assert torch.allclose(feats["0"], net[0](x)) and torch.allclose(feats["2"], net(x))
    sums = layer_summaries(net, ["0", "2"], items, _transform, lambda f: f.flatten(1).sum(1, keepdim=True))
    expect = [torch.cat([net[: i + 1](_x(it)).flatten(1).sum(1, keepdim=True) for it in items]) for i in (0, 2)]
    assert [s.shape for s in sums] == [(3, 1), (3, 1)]
    assert all(torch.allclose(a, b) for a, b in zip(sums, expect))
    assert not net[0]._forward_hooks and not net[2]._forward_hooks  # the recorder is removed


def _x(item: dict[str, Any]) -> torch.Tensor:
    return torch.as_tensor(_transform(item)["image"])[None]


def test_set_aurocs_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    scores = {"id": rng.normal(0, 1, 30), "near": rng.normal(0.5, 1, 20), "far": rng.normal(2, 1, 10)}
    out = set_aurocs(scores, "id", digits=None)
    assert list(out) == ["near", "far", "mean"]
    for k in ("near", "far"):
        y = np.r_[np.zeros(30), np.ones(scores[k].size)]
        assert out[k] == pytest.approx(roc_auc_score(y, np.r_[scores["id"], scores[k]]))
    assert out["mean"] == pytest.approx((out["near"] + out["far"]) / 2)
    assert set_aurocs(scores, "id")["near"] == round(out["near"], 4)
    group = {k: np.arange(v.size) % 2 == 0 for k, v in scores.items()}
    masked = set_aurocs(scores, "id", group, digits=None)
    y = np.r_[np.zeros(15), np.ones(5)]
    assert masked["far"] == pytest.approx(roc_auc_score(y, np.r_[scores["id"][::2], scores["far"][::2]]))


def test_bundle_network_loads_the_shipped_weights() -> None:
    bundle = ROOT / "bundles" / "spectral_brain_mri_ood_classification"
    net, parser = bundle_network(bundle)
    assert not net.training and parser["bundle_root"] == str(bundle)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    state = state.get("network", state.get("state_dict", state)) if isinstance(state, dict) else state
    name, value = next((k, v) for k, v in net.state_dict().items() if v.is_floating_point() and v.numel() > 1)
    assert any(torch.equal(value, v) for k, v in state.items() if k.endswith(name))


@pytest.mark.parametrize(("script", "page"), [("diagnose_spectral", "spectral_diagnosis"),
                                              ("compare_multitask", "spectral_multitask"),
                                              ("check_spectral_setting", "spectral_setting_check")])  # fmt: skip
def test_render_rewrites_the_page_from_its_json(tmp_path: Path, monkeypatch: Any, script: str, page: str) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # a script imports its siblings as it does when run
    module = load_script(script, f"{script}_render_test")
    shutil.copyfile(ROOT / "docs" / "benchmarks" / f"{page}.json", tmp_path / f"{page}.json")
    monkeypatch.setattr(sys, "argv", [script, "--render", "--out", str(tmp_path / page)])  # the old suffix-less form
    module.main()
    assert (tmp_path / f"{page}.md").read_text() == (ROOT / "docs" / "benchmarks" / f"{page}.md").read_text()
    assert json.loads((tmp_path / f"{page}.json").read_text()) == json.loads(
        (ROOT / "docs" / "benchmarks" / f"{page}.json").read_text()
    )


def test_batch_record_and_the_heatmap_cost_built_on_it() -> None:
    batches = [torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8), torch.rand(2, 3, 8, 8)]
    assert batch_record(batches, 5) == {"images": 10, "batch_size": 4, "input_shape": [3, 8, 8], "repeats": 5}
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 3)).eval()

    class Det:
        decoder = nn.Linear(16, 4)
        decoders = [decoder]

        def extract_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"features": net[:3](x), "logits": net(x)}  # the detector's own pass (all its layers)

        def score_features(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.decoder(feats["features"]).abs().mean(1)

        def score(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(net[:3](x)).abs().mean(1)

    cost = heatmap_cost(net, Det(), batches, 1)
    assert {k: cost[k] for k in ("images", "batch_size", "input_shape", "repeats")} == batch_record(batches, 1)
    assert cost["decoder_parameters"] == 16 * 4 + 4
    assert cost["forward_ms_per_image"] > 0 and cost["score_ms_per_image"] > 0 and cost["score_over_forward"] > 0
