"""Training stages: no global training backend (the caller gives the training step) and per-stage data builders."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import Tensor

from medood.detectors import get_detector
from medood.detectors.base_restoration import slice_batches, token_batches
from medood.detectors.heatmap_data import ood_pair_batches
from medood.detectors.stages import TrainingStage, chunk_batches, image_batches
from medood.engines.fit import fit_detector, stage_batches
from medood.losses import ReconstructionLoss
from tests.helpers import toy


def test_importing_the_package_and_the_detectors_registers_nothing() -> None:
    code = (
        "import sys, types, medood\n"
        "print(sorted(m for m in sys.modules if m.startswith('medood')))\n"
        "import medood.detectors\n"
        "assert not any(m.startswith('medood.engines') for m in sys.modules), 'detectors import the engines'\n"
        "assert 'medood.utils.plugins' not in sys.modules\n"
        "print(sorted(k for k, v in vars(medood).items() if not k.startswith('__') and k != 'annotations'\n"
        "             and not isinstance(v, types.ModuleType)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["['medood']", "[]"], "the root package imports and registers nothing"


def test_a_trainable_detector_trains_with_the_step_its_caller_gives() -> None:
    torch.manual_seed(0)
    det = get_detector("ae", spatial_dims=2, channels=(4, 8), strides=(2, 2), epochs=2)
    loader = toy.id_loader(2, n=8, batch_size=4)
    with pytest.raises(TypeError, match=r"trainer=medood\.engines\.fit_detector"):
        det.fit(loader)  # no backend registered anywhere: the detector cannot train by itself
    assert not det.is_fitted

    calls: list[tuple[Any, dict[str, Any]]] = []
    det.fit(loader, trainer=lambda d, data, **kw: calls.append((d, kw)), epochs=3)
    assert calls == [(det, {"epochs": 3})] and det.is_fitted and not det.training
    det.fit_features({"image": torch.rand(2, 1, 16, 16)}, trainer=lambda d, data, **kw: calls.append((d, data)))
    assert calls[1][0] is det and tuple(calls[1][1][0]["image"].shape) == (2, 1, 16, 16), "one in-memory batch"

    before = {k: v.clone() for k, v in det.net.state_dict().items()}
    det.fit(loader, trainer=fit_detector, epochs=1, progress=False)  # the engines' step really trains the network
    assert any(not torch.equal(v, before[k]) for k, v in det.net.state_dict().items())


def test_each_stage_brings_its_own_data_builder() -> None:
    restoration = get_detector("vqvae_recon", **get_detector("vqvae_recon").tiny_config(2))
    tokenizer, *token_stages = restoration.training_stages()
    assert tokenizer.build_data is slice_batches and all(st.build_data is token_batches for st in token_stages)
    heatmap = get_detector("heatmap", in_features=4, num_classes=2, image_size=8, in_channels=1)
    assert heatmap.stage("decoder").build_data is ood_pair_batches
    assert get_detector("ae", spatial_dims=2).stage("autoencoder").build_data is image_batches

    seen: list[int] = []

    def halves(detector: Any, stage: TrainingStage, images: list[dict[str, Tensor]], batch_size: int,
               device: Any = None, **options: Any) -> list[dict[str, Tensor]]:  # fmt: skip
        seen.append(options["scale"])
        x = torch.cat([b["image"] for b in images])
        return chunk_batches({stage.input_key: x * options["scale"]}, batch_size)

    stage = TrainingStage("custom", "net", ReconstructionLoss, build_data=halves)
    images = [{"image": torch.ones(3, 1, 4, 4)}, {"image": torch.ones(2, 1, 4, 4)}]
    out = stage_batches(None, stage, images, 2, torch.device("cpu"), scale=0.5)
    assert seen == [0.5] and [b["image"].shape[0] for b in out] == [2, 2, 1] and float(out[0]["image"].max()) == 0.5
    with pytest.raises(TypeError, match="build_data must be callable"):
        TrainingStage("bad", "net", ReconstructionLoss, build_data="slices")  # type: ignore[arg-type]
