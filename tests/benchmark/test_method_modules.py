"""The per-method benchmark modules the thin scripts call (issue 22 item 6): shared frames, runs and pages.

Each page is generated from a small synthetic JSON here; the committed pages are checked against their JSON in
``test_legacy_pages.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medood.benchmark.heatmap_variant_choice import markdown as variants_markdown
from medood.benchmark.heatmap_variant_choice import timed_scores
from medood.benchmark.mecam_augmentation_choice import BUNDLES as MECAM_AUG_BUNDLES
from medood.benchmark.mecam_augmentation_choice import model_for, validation_sets
from medood.benchmark.mecam_page import markdown as mecam_markdown
from medood.benchmark.posthoc_bench import _fit_one, stream_fit
from medood.benchmark.posthoc_page import FIT_BOUNDS
from medood.benchmark.posthoc_page import markdown as posthoc_markdown
from medood.benchmark.script import docstring_rule, run_choice
from medood.benchmark.spectral_diagnosis import bench_sets, choose_setting, layer_sets, setting_grid
from medood.benchmark.tables import pct, pct_ci
from medood.detectors.mecam import all_exit_subsets


def _row(**auroc: float) -> dict[str, dict[str, float]]:
    return {d: {"auroc": a, "fpr95": 1 - a, "aupr_in": a, "aupr_out": a} for d, a in auroc.items()}


def test_pct_cells() -> None:
    assert pct(0.1234) == "12.3" and pct(0.1234, "+") == "+12.3" and pct(-0.01, "+") == "-1.0"
    assert pct_ci(0.02, [-0.01, 0.05], "+") == "+2.0 [-1.0, +5.0]"


def test_docstring_rule_is_the_second_paragraph_on_one_line() -> None:
    def rule() -> None:
        """Summary.

        A wins only if
        its interval lies above 0.

        Args: none.
        """

    assert docstring_rule(rule) == "A wins only if its interval lies above 0."


def test_run_choice_writes_the_page_after_every_task(tmp_path: Path, monkeypatch: Any) -> None:
    out = tmp_path / "choice.json"
    monkeypatch.setattr(sys, "argv", ["choose_x.py", "--seeds", "1"])

    def run_task(task: str) -> dict[str, Any]:
        if task == "b":  # the first task's page is already written
            assert list(json.loads(out.read_text())["tasks"]) == ["a"]
            assert out.with_suffix(".md").read_text() == "a"
        return {"chosen": task}

    result = run_choice(out, "choose_x.py", {"seeds": 1, "rule": "r"}, ["a", "b"], run_task,
                        lambda r: ",".join(r["tasks"]))  # fmt: skip
    keys = list(result)
    assert keys[keys.index("command") :] == ["command", "omp_threads", "seeds", "rule", "tasks", "seconds"]
    assert result["command"] == "python scripts/choose_x.py --seeds 1"
    assert json.loads(out.read_text())["tasks"] == {"a": {"chosen": "a"}, "b": {"chosen": "b"}}
    assert out.with_suffix(".md").read_text() == "a,b"


def test_stream_fit_feeds_every_row_through_the_real_head() -> None:
    weight, bias = torch.randn(3, 4), torch.arange(3.0)
    calls: list[Any] = []

    class Det:
        def reset_fit(self) -> None:
            calls.append("reset")

        def partial_fit_features(self, feats: dict[str, torch.Tensor], y: torch.Tensor) -> None:
            torch.testing.assert_close(feats["logits"], feats["features"] @ weight.T + bias)
            assert (feats["features"] >= 0).all() and y.max() < 3
            calls.append(len(y))

        def finalize_fit(self) -> None:
            calls.append("final")

    stream_fit(Det(), 5, weight, bias, batch=2)
    assert calls == ["reset", 2, 2, 1, "final"]
    seconds, peak_mb, _ = _fit_one("mahalanobis", 64, weight, bias, torch.get_num_threads(), 16)
    assert seconds > 0 and peak_mb >= 0


def test_posthoc_page_from_a_small_json() -> None:
    res = {
        "machine": "m", "overhead_all_over_forward": 1.05, "odin_over_forward": 3.0,
        "overhead_detail": {"images": 64, "score_features_ms_per_batch_of_64": {"msp": 0.5}},
        "fit_seconds": {"knn": {"10": 0.1, "20": 0.2}}, "fit_peak_mb": {"knn": {"10": 1.0, "20": 2.0}},
        "fit_detail": {"feature_dim": 8, "classes": 3, "batch_size": 4, "memory_method": "RSS",
                       "no_fit_needed": ["msp"], "plateau_check": {"knn": {"n": 40, "seconds": 0.4, "peak_mb": 2.5}}},
        "tasks": {"t": {"near": _row(msp=0.6, knn=0.9)}},
        "task_summary": {"t": {"classifier": "c", "id_test_accuracy": 0.5, "n_train": 7, "ood_set_sizes": {"near": 3},
                               "mean": {"knn": {"auroc": 0.9, "fpr95": 0.1}, "msp": {"auroc": 0.6, "fpr95": 0.4}}}},
    }  # fmt: skip
    page = posthoc_markdown(res)
    assert "**1.050**" in page and "64 images" in page and "| msp | 0.50 |" in page
    assert f"| knn | 0.10 | 0.20 | 0.40 | 1.0 | 2.0 | 2.5 | {FIT_BOUNDS['knn']} |" in page
    assert "s @ N=40" in page and "No fit needed: msp." in page
    assert page.index("| knn | 90.0 / 10.0") < page.index("| msp | 60.0 / 40.0") and "OOD sets: near (3)" in page


def test_mecam_page_from_a_small_json() -> None:
    ablation = {"near": {"exits_" + "".join(map(str, s)): {"auroc": 0.5 + 0.01 * i, "fpr95": 0.5}
                         for i, s in enumerate(all_exit_subsets())}}  # fmt: skip
    cost = {"cam_grid": "input", "input_shape": [3, 8, 8], "batch_size": 4, "images": 8, "repeats": 3,
            "forward_seconds": 0.01, "mecam_seconds": 0.02, "mecam_over_forward": 2.0,
            "ms_per_image_mecam": 2.5}  # fmt: skip
    res = {
        "machine": "m", "tasks": {"t": {"near": _row(mecam=0.8, msp=0.7)}}, "exit_ablation": {"t": ablation},
        "cost": {"t": cost}, "cam_grid": {"t": {"input": {"auroc": 0.8, "fpr95": 0.2, "cost": cost}}},
        "task_summary": {"t": {"bundle": "b", "id_test_accuracy_final_exit": 0.9, "n_train": 5, "n_id_test": 4,
                               "ood_set_sizes": {"near": 2}, "exits": [0, 1, 2, 3]}},
    }  # fmt: skip
    page = mecam_markdown(res)
    assert "MECAM: rank 1 of 2" in page and "| **mecam** | 80.0 / 20.0 |" in page
    assert (
        "t: mean AUROC over the subsets 50.0 (exits_0) to 64.0 (exits_0123); the configured exits [0, 1, 2, 3]." in page
    )
    assert "| t (input) | 3x8x8 | 4 | 8 | 3 | 0.010 | 0.020 | **2.00** | 2.50 |" in page
    assert "| t | input | 80.0 | 20.0 | 2.00 |" in page


def test_spectral_layer_sets_grid_and_choice() -> None:
    assert layer_sets(["a", "b", "c", "d"]) == [(0,), (1,), (2,), (3,), (2, 3), (1, 2, 3), (0, 1, 2, 3)]
    g = torch.Generator().manual_seed(0)
    stages = ["s0", "s1", "s2", "s3"]
    bank = [torch.rand(12, 6, generator=g, dtype=torch.float64) + 1 for _ in stages]
    val = {"id_val": [torch.rand(6, 6, generator=g, dtype=torch.float64) + 1 for _ in stages],
           "val_x": [torch.rand(6, 6, generator=g, dtype=torch.float64) * 50 + 1 for _ in stages]}  # fmt: skip
    contrast = {k: np.array(["T1w", "T2w", "FLAIR"] * 2) for k in val}
    grid = setting_grid(stages, bank, val, contrast)
    assert {r["n_singular"] for r in grid} == {None, 4}  # 8 and 16 reach the 6 channels: the same as all
    assert {len(r["layers"]) for r in grid if r["combine"] == "normalized"} == {2, 3, 4}
    assert set(grid[0]["auroc"]) == {"val_x", "mean"} and set(grid[0]["auroc_per_contrast"]) == {"T1w", "T2w", "FLAIR"}

    def row(layers: list[int], auroc: float, norm: str = "l2") -> dict[str, Any]:
        return {"layers": layers, "n_singular": None, "normalization": norm, "combine": "mean",
                "auroc": {"mean": auroc}}  # fmt: skip

    rows = [row([0], 0.90), row([1], 0.898), row([2], 0.95, "ratio"), row([3], 0.946)]
    cur, best, chosen = choose_setting(rows, row([1], 0.0), margin=0.005)
    assert cur is rows[1] and best is rows[2] and chosen is rows[3]  # the current is too far; l2 beats ratio
    assert choose_setting(rows, row([3], 0.0), margin=0.005)[2] is rows[3]


def test_spectral_bench_sets_are_validation_only(tmp_path: Path) -> None:
    sets = {}
    for name, role in (("id_val", "id_val"), ("val_gibbs", "ood_val"), ("id_test", "id_test"), ("ct", "ood_test")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "case1_FLAIR.nii.gz").touch()
        sets[name] = {"dir": str(tmp_path / name), "role": role}
    out = bench_sets({"sets": sets}, brain=True)
    assert list(out) == ["id_val", "val_gibbs"] and out["val_gibbs"][0]["contrast"] == "FLAIR"


def test_heatmap_variant_timed_scores_and_page() -> None:
    class Det:
        def score(self, x: torch.Tensor) -> Any:
            return type("Out", (), {"image_score": x.flatten(1).mean(1)})()

    images = {"id_val": torch.zeros(40, 1, 2, 2), "val_spike": torch.ones(3, 1, 2, 2)}
    scores, per_image = timed_scores(Det(), images)
    assert scores["id_val"].shape == (40,) and scores["val_spike"].tolist() == [1.0] * 3 and per_image > 0
    m = {"sets": {"val_spike": {"auroc": 0.9, "auroc_ci": [0.8, 1.0], "fpr95": 0.2, "fpr95_ci": [0.1, 0.3]}},
         "run_mean_aurocs": [0.9, 0.8], "mean_auroc": 0.85, "train_seconds": [10, 20],
         "seconds_per_image": 0.002}  # fmt: skip
    other = {**m, "vs_default": {"difference": 0.02, "ci": [-0.01, 0.05], "runs": [0.03, 0.01]}}
    result = {"command": "c", "seconds": 9, "machine": "m", "omp_threads": "1", "variants": "v", "epochs": 2,
              "epochs_note": "n", "seeds": 2, "n_boot": 10, "rule": "r",
              "tasks": {"t": {"bundle": "b", "n": {"id_val": 40}, "variants": {"default": m, "ensemble5": other},
                              "training": {"id_images": 4, "aux_corruptions": ["blur"], "held_out": ["spike"],
                                           "other_organ_images": 2, "batch_size": 8, "lr": 0.001},
                              "chosen": "default", "why": {"ensemble5": "not above 0"}}}}  # fmt: skip
    page = variants_markdown(result)
    assert "| default | 90.0 [80.0, 100.0] / 20.0 [10.0, 30.0] | 85.0 (80.0-90.0) | reference | 15 | 2.00 |" in page
    assert "| +2.0 [-1.0, +5.0]; runs +3.0 +1.0 |" in page
    assert "**Choice: default.** ensemble5: not above 0." in page


def test_mecam_augmentation_shipped_arm_and_validation_sets(tmp_path: Path) -> None:
    bundle = Path(__file__).resolve().parents[2] / "bundles" / MECAM_AUG_BUNDLES["pathology"]
    seed = json.loads((bundle / "configs" / "metadata.json").read_text())["training"]["seed"]
    weights, record = model_for("pathology", "false", seed, tmp_path)
    assert weights == bundle / "models" / "model.pt" and record["shipped"] is True
    assert record["model"] == f"bundles/{bundle.name}/models/model.pt" and not any(tmp_path.iterdir())
    for folder in ("val/b", "val/a", "val_ood/spike", "test/a"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "x.png")
    manifest = {"sets": {"ood": {"dir": str(tmp_path / "val_ood/spike"), "role": "ood_val"},
                         "id": {"dir": str(tmp_path / "val"), "role": "id_val"},
                         "test": {"dir": str(tmp_path / "test"), "role": "id_test"}}}  # fmt: skip
    sets, labels = validation_sets(manifest, ["b", "a"])
    assert list(sets) == ["id", "ood"] and labels.tolist() == [0, 1]  # labels in the bundle's class order


def test_mecam_augmentation_other_arms_are_trained_runs(tmp_path: Path, monkeypatch: Any) -> None:
    import medood.benchmark.mecam_augmentation_choice as choice

    seen: dict[str, Any] = {}

    def fake_train(bundle: Path, overrides: dict[str, Any], run: Path, root: Path) -> dict[str, Any]:
        seen.update(overrides=overrides, run=run, root=root)
        return {"command": f"python -m monai.bundle run {root}/bundles/x", "seconds": 1.0, "model": str(run / "m.pt")}

    monkeypatch.setattr(choice, "train_run", fake_train)
    weights, record = model_for("pathology", "true", 0, tmp_path)
    assert seen["run"] == tmp_path / "pathology" / "autoaugment_true_seed0" and seen["overrides"]["autoaugment"] is True
    assert weights == seen["run"] / "m.pt" and record["command"] == "python -m monai.bundle run bundles/x"
