"""The AutoAugment measurement's pieces: run overrides, MECAM validation scores, paired figures over seeds, the rule."""

from __future__ import annotations

from pathlib import Path

import fire.parser
import numpy as np
import pytest
from PIL import Image

from medood.benchmark.bundles import process_run_command
from medood.benchmark.mecam_augmentation import (
    arm_metrics,
    choose_autoaugment,
    compare_arms,
    training_overrides,
    validation_scores,
)
from medood.benchmark.stats import paired_mean_auroc_difference

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mecam_pathology_ood_classification"


def _arm(rng: np.random.Generator, shift: float, runs: int = 2) -> dict[str, np.ndarray]:
    return {"id_val": rng.normal(0, 1, (60, runs)), "a": rng.normal(shift, 1, (40, runs)),
            "b": rng.normal(shift, 1, (30, runs))}  # fmt: skip


def test_training_outputs_stay_in_the_run_folder(tmp_path: Path) -> None:
    o = training_overrides(tmp_path / "run", tmp_path / "data", False, 1)
    assert o["autoaugment"] is False and o["seed"] == 1 and o["dataset_dir"] == str((tmp_path / "data").absolute())
    for key in ("ckpt_path", "ckpt_dir", "resume_dir", "log_dir", "output_dir"):
        assert o[key].startswith(str((tmp_path / "run").absolute()))
    cmd = process_run_command([Path("b/inference.yaml"), Path("b/train.yaml")], {"autoaugment": False, "seed": 1})
    assert cmd[-4:] == ["--config_file", "['b/inference.yaml', 'b/train.yaml']", "--autoaugment=False", "--seed=1"]
    assert fire.parser.DefaultParseValue(cmd[-2].split("=")[1]) is False  # 'false' would be a truthy string


def test_paired_mean_difference_over_runs() -> None:
    rng = np.random.default_rng(0)
    a, b = _arm(rng, 1.5), _arm(rng, 0.3)
    one = paired_mean_auroc_difference(a["id_val"][:, 0], [a["a"][:, 0]], b["id_val"][:, 0], [b["a"][:, 0]], 50)
    col = paired_mean_auroc_difference(a["id_val"][:, :1], [a["a"][:, :1]], b["id_val"][:, :1], [b["a"][:, :1]], 50)
    assert "runs" not in one and col == {**one, "runs": [one["difference"]]}  # one run: the 1-D figures
    both = paired_mean_auroc_difference(a["id_val"], [a["a"], a["b"]], b["id_val"], [b["a"], b["b"]], 200)
    runs, ci = np.asarray(both["runs"]), np.asarray(both["ci"])
    assert runs.shape == (2,) and both["difference"] == pytest.approx(runs.mean())
    assert ci[0] > 0  # clearly better in both runs
    with pytest.raises(ValueError, match="runs"):
        paired_mean_auroc_difference(a["id_val"], [a["a"][:, :1]], b["id_val"], [b["a"][:, :1]])


def test_rule_needs_the_auroc_interval_above_zero_and_no_accuracy_loss() -> None:
    rng = np.random.default_rng(1)
    good, base = _arm(rng, 2.0), _arm(rng, 0.2)
    right, wrong = np.ones((60, 2)), (rng.random((60, 2)) < 0.5).astype(float)
    m = arm_metrics(good, right, "id_val", n_boot=50)
    assert m["accuracy"] == 1.0 and len(m["runs"]) == 2 and set(m["runs"][0]) == {"a", "b"}
    assert m["mean_auroc"] == pytest.approx(np.mean(m["run_mean_aurocs"]))
    wins, why = choose_autoaugment(compare_arms(good, right, base, right, "id_val", n_boot=200))
    assert wins and "above 0" in why
    loses_accuracy, _ = choose_autoaugment(compare_arms(good, wrong, base, right, "id_val", n_boot=200))
    assert not loses_accuracy
    same, why = choose_autoaugment(compare_arms(base, right, base, right, "id_val", n_boot=50))
    assert not same and "not above 0" in why


def test_validation_scores_are_the_bundles_mecam_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    items = []
    for i in range(3):
        path = tmp_path / f"x{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        items.append({"image": str(path), "label": 0})
    got = validation_scores(BUNDLE, BUNDLE / "models" / "model.pt", {"id": items, "one": items[:1]}, batch_size=2)
    assert got["id"]["score"].shape == (3,) and set(got["id"]["pred"]) <= {0, 1, 2}
    assert got["one"]["score"][0] == pytest.approx(got["id"]["score"][0], rel=1e-5)  # batching does not matter
