"""Bundles trained by ``torchrun`` with 2 gloo processes (their ``configs/multi_gpu_train.yaml``): a single-stage
bundle (NERO's classifier) with a resume that continues from the saved iteration, then its post-hoc detectors
fitted by 2 processes (``multi_gpu_fit.yaml``) equal to one process's bit for bit, and one stage of a multi-stage
bundle (the endoscopy heatmap decoder, with its distributed nearest-ID pass and calibration); the checkpoints load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medood.utils.checkpoints import load_state
from tests.helpers.bundles import BUNDLES, DATA_KINDS, load_spec, run_workflow
from tests.helpers.class_folders import one_thread
from tests.helpers.distributed import torchrun_bundle

NERO = BUNDLES / "nero_endoscopy_ood_classification"
HEATMAP = BUNDLES / "heatmap_endoscopy_ood_classification"


def _network(
    bundle: Path, root: Path, overrides: dict, configs: tuple[str, ...] = ("inference.yaml",)
) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(root), **overrides})
    return parser.get_parsed_content("network_def")


@pytest.mark.slow
def test_nero_trains_on_two_processes_and_resumes_from_the_saved_iteration(tmp_path: Path) -> None:
    data = DATA_KINDS["class_folders_2d"](tmp_path / "data")  # 18 training images: 9 per rank, 3 steps of 3
    root = tmp_path / "nero"
    root.mkdir()
    overrides = {**data, **load_spec(NERO)["overrides"], "batch_size": 3, "epochs": 1}
    configs = ["inference.yaml", "train.yaml", "multi_gpu_train.yaml"]
    torchrun_bundle(NERO, configs, root, overrides)
    net = _network(NERO, root, overrides)
    load_state(net, root / "models" / "model.pt")  # strict: every parameter of the classifier
    assert [p.name for p in (root / "models" / "resume").iterdir()] == ["train_last_checkpoint_3.pt"]
    assert len(list((root / "logs" / "train").glob("events.out.tfevents*"))) == 1, "TensorBoard on rank 0 only"

    done = torchrun_bundle(NERO, configs, root, {**overrides, "epochs": 2, "resume": True})
    log = done.stdout + done.stderr
    assert re.search(r"resuming from iteration 3, epoch 1 until 2 epochs", log), log[-3000:]
    assert "Epoch: 1/2" not in log, "the resumed run does not train epoch 1 again"
    assert [p.name for p in (root / "models" / "resume").iterdir()] == ["train_last_checkpoint_6.pt"]
    state = torch.load(root / "models" / "resume" / "train_last_checkpoint_6.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 6 and state["trainer"]["max_epochs"] == 2
    assert set(state) >= {"model", "optimizer", "lr_scheduler", "trainer"}

    torchrun_bundle(NERO, ["inference.yaml", "fit.yaml", "multi_gpu_fit.yaml"], root, overrides)  # every detector
    with one_thread():
        run_workflow(NERO, ["inference.yaml", "fit.yaml"], "infer", root, **overrides,
                     detectors_path=str(root / "models" / "detectors_one.pt"))  # fmt: skip
    two = torch.load(root / "models" / "detectors.pt", weights_only=True)
    one = torch.load(root / "models" / "detectors_one.pt", weights_only=True)
    assert len(one) > 10 and set(two) == set(one)
    for name, buffers in one.items():
        for key, value in buffers.items():
            torch.testing.assert_close(two[name][key], value, rtol=0, atol=0, equal_nan=True, msg=f"{name}.{key}")


@pytest.mark.slow
def test_heatmap_decoder_stage_trains_on_two_processes(tmp_path: Path) -> None:
    data = DATA_KINDS["class_folders_2d"](tmp_path / "data")
    root = tmp_path / "bundles" / HEATMAP.name
    root.mkdir(parents=True)
    (root.parent / NERO.name).symlink_to(NERO, target_is_directory=True)  # the shipped classifier, read only
    overrides = {**data, **load_spec(HEATMAP)["overrides"], "train_batch_size": 4, "epochs": 1}
    torchrun_bundle(HEATMAP, ["inference.yaml", "train.yaml", "multi_gpu_train.yaml"], root, overrides)
    net = _network(HEATMAP, root, overrides)
    load_state(net, root / "models" / "model.pt")
    assert net.is_fitted
    assert int(net.calibration.n_scores) == 9, "every validation image calibrated once across the 2 ranks"
    assert (root / "models" / "resume").is_dir()
