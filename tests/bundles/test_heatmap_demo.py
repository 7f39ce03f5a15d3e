"""The shipped heatmap weights on the demo pathology set (rebuilt here, as the bundle was trained on it): heatmaps
are near zero on ID test patches and clearly larger on a clearly shifted set (far-OOD: X-ray / CT / MR /
ultrasound / fundus crops)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset

from medood.data.folders import class_folder_datalist, ood_datalists
from medood.utils.checkpoints import load_state

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "heatmap_pathology_ood_classification"


@pytest.mark.slow
def test_demo_heatmaps_are_near_zero_on_id_and_large_on_far_ood(tmp_path: Path) -> None:
    from medood.data.demo import build_demo

    build_demo(tmp_path, size="small", seed=0, only=["pathology"])
    data = tmp_path / "pathology"
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(data), "device": "$torch.device('cpu')"})
    det = load_state(parser.get_parsed_content("network"), BUNDLE / "models" / "model.pt").eval()
    pre = parser.get_parsed_content("preprocessing")

    def mean_abs_h(items: list[dict]) -> torch.Tensor:
        loader = DataLoader(Dataset([{"image": d["image"]} for d in items], pre), batch_size=64)
        with torch.no_grad():
            maps = torch.cat([det.predict_map(torch.as_tensor(b["image"]).as_subclass(torch.Tensor)) for b in loader])
        return maps.flatten(1).mean(1)

    id_h = mean_abs_h(class_folder_datalist(data, "test")[0])
    far = [e for name, v in ood_datalists([data / "ood_far"]).items() for e in v]
    far_h = mean_abs_h(far)
    assert id_h.mean() < 0.05, f"ID heatmaps should be near zero: mean |h| = {id_h.mean():.4f}"
    ratio = float(far_h.mean() / id_h.mean())
    assert ratio > 3.0, f"far-OOD / ID mean |h| = {ratio:.2f}"
    assert float((far_h > id_h.quantile(0.95)).float().mean()) > 0.5, "most far-OOD maps exceed the ID 95th pct"
