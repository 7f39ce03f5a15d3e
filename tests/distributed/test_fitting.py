"""Distributed fitting: 2 gloo processes on sharded loaders fit the buffers 1 process fits.

Post-hoc statistics (DetectorFitHandler: Mahalanobis, KNN, ViM), spectral signatures and their validation
calibration (FeatureFitHandler, FeatureCalibrationHandler), calibration quantiles of scores and sub-sampled map
values (CalibrationHandler) and the heatmap decoder's nearest-ID targets: every rank gathers what the others saw.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.networks.nets import UNet

from medood.detectors import get_detector
from medood.detectors.calibration import Calibration
from medood.detectors.spectral import SpectralDetector
from medood.engines import distributed
from medood.engines.heatmap import _item_features
from medood.handlers import CalibrationHandler, DetectorFitHandler
from medood.handlers.guard import FeatureCalibrationHandler, FeatureFitHandler
from medood.networks.feature_maps import encoder_stages
from medood.utils.distributed import get_rank, get_world_size
from tests.helpers import toy
from tests.helpers.bundles import BUNDLES, run_workflow
from tests.helpers.class_folders import make_class_folders, one_thread
from tests.helpers.distributed import spawn, torchrun_bundle

N_CASES = 13  # odd: the two shards differ in size
NERO = BUNDLES / "nero_endoscopy_ood_classification"


def _loader(items: list[dict], batch_size: int) -> DataLoader:
    ds = Dataset(items)
    return DataLoader(ds, batch_size=batch_size, sampler=distributed.sampler(ds, shuffle=False, even_divisible=False))


def _fit_everything(model_path: Path) -> dict[str, torch.Tensor]:
    """Every fitting pass on this process's shard (the whole data in one process); the fitted buffers."""
    out: dict[str, torch.Tensor] = {}
    model = toy.TinyClassifier(2)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    x, y = toy.blob_images(2, N_CASES, seed=5)
    loader = _loader([{"image": x[i], "label": y[i]} for i in range(N_CASES)], batch_size=3)
    dets = [get_detector(n, model=model) for n in ("mahalanobis", "knn", "vim")]
    SupervisedEvaluator("cpu", loader, model, decollate=False, val_handlers=[DetectorFitHandler(dets)]).run()
    for d in dets:
        out.update({f"{d.name}.{k}": v for k, v in d.state_dict().items() if not k.startswith("model.")})

    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    spectral = SpectralDetector(layers=encoder_stages(net))
    cases = [{"image": toy.blob_images(2, 1, seed=10 + i)[0][0, :1]} for i in range(N_CASES)]
    SupervisedEvaluator(
        "cpu", _loader(cases, 2), net, val_handlers=[FeatureFitHandler(spectral)], decollate=False
    ).run()
    val = [{"image": toy.ood_images(2, 1, seed=40 + i)[0, :1]} for i in range(7)]
    SupervisedEvaluator(
        "cpu", _loader(val, 2), net, val_handlers=[FeatureCalibrationHandler(spectral)], decollate=False
    ).run()
    out.update({f"spectral.{k}": v for k, v in spectral.state_dict().items()})

    g = torch.Generator().manual_seed(3)  # scores and maps of 9 healthy cases; 50 of each map's 144 values kept
    items = [{"ood_score": torch.rand(1, generator=g), "pred": torch.rand(1, 12, 12, generator=g)} for _ in range(9)]
    engine = Engine(lambda e, batch: [items[int(i)] for i in batch])
    engine.data_loader = _loader([{"i": i} for i in range(9)], batch_size=2)  # type: ignore[attr-defined]
    fake = SimpleNamespace(map_has_threshold=True, calibration=Calibration())
    CalibrationHandler(fake, foreground="all", values_per_case=50).attach(engine)  # type: ignore[arg-type]
    engine.run([b["i"] for b in engine.data_loader])  # type: ignore[attr-defined]
    out.update({f"calibration.{k}": v for k, v in fake.calibration.state_dict().items()})

    det = SimpleNamespace(
        extract_features=lambda im: {"features": im.flatten(1)[:, :6], "logits": im.flatten(1)[:, :3]},
        get=lambda f, key: f[key],
    )
    feats, preds = _item_features(det, [{"image": x[i]} for i in range(N_CASES)], None, 4, 0, torch.device("cpu"))  # type: ignore
    out.update({"heatmap.features": feats, "heatmap.pred": preds})
    return out


def _worker(_local_rank: int, model_path: Path, out_dir: Path) -> None:
    assert get_world_size() == 2
    result = _fit_everything(model_path)
    torch.save(result, out_dir / f"rank{get_rank()}.pt")


@pytest.mark.slow
def test_two_processes_fit_the_buffers_of_one(tmp_path: Path) -> None:
    model_path = tmp_path / "model.pt"
    torch.save(toy.trained_classifier(2).state_dict(), model_path)
    one = _fit_everything(model_path)
    spawn(_worker, model_path, tmp_path)
    for rank in (0, 1):
        two = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert set(two) == set(one)
        for key, value in one.items():
            torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6, equal_nan=True, msg=key)
    assert int(one["calibration.n_scores"]) == 9 and one["spectral.signatures_0"].shape[0] == N_CASES
    assert one["heatmap.features"].shape == (N_CASES, 6)


@pytest.mark.slow
def test_two_process_nero_bundle_fit_gives_the_neco_nero_vim_buffers_of_one_bit_for_bit(tmp_path: Path) -> None:
    """The shipped classifier on 18 training images of 20 px (features of rank 17 in D = 128): NECO's 100, NERO's 85
    and ViM's 64 principal directions are mostly arbitrary null-space directions there, so features that differ in
    the last float32 bit (MONAI's DistributedSampler regroups the batches) changed the fitted PCA buffers and the
    scores by several %. The whole-batch sampler of multi_gpu_fit.yaml computes every case in its one-process batch
    and the fit replays those batches: every buffer of the three detectors equals one process's exactly."""
    data = make_class_folders(tmp_path / "data")
    root = tmp_path / "nero"
    (root / "models").mkdir(parents=True)
    (root / "models" / "model.pt").symlink_to(NERO / "models" / "model.pt")
    overrides = {"dataset_dir": str(data), "batch_size": 4, "detector_names": ["neco", "nero", "vim"]}
    two_path, one_path = root / "models" / "two.pt", root / "models" / "one.pt"
    torchrun_bundle(NERO, ["inference.yaml", "fit.yaml", "multi_gpu_fit.yaml"], root,
                    {**overrides, "detectors_path": str(two_path)})  # fmt: skip
    with one_thread():
        run_workflow(NERO, ["inference.yaml", "fit.yaml"], "infer", root, **overrides, detectors_path=str(one_path))
    one, two = torch.load(one_path, weights_only=True), torch.load(two_path, weights_only=True)
    assert set(one) == set(two) == {"neco", "nero", "vim"}
    assert one["neco"]["components"].shape == (128, 100) and one["vim"]["alpha"].numel() == 1
    for name, buffers in one.items():
        assert set(two[name]) == set(buffers)
        for key, value in buffers.items():
            torch.testing.assert_close(two[name][key], value, rtol=0, atol=0, equal_nan=True, msg=f"{name}.{key}")
