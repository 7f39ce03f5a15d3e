"""The benchmark package: intervals, paired tests, calibrated flag rates, the bench-set plan, the page's schema,
and the committed page recomputed from its per-case scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medood.benchmark.page import results_markdown, seed_claims
from medood.benchmark.report import SCORES_FILE, read_scores_table, task_results, write_scores_table
from medood.benchmark.stats import bootstrap_metrics, paired_auroc_difference, paired_mean_auroc_difference
from medood.data.demo.bench import BRAIN_BENCH_OOD, brain_plan

DOCS = Path(__file__).resolve().parents[2] / "docs"
DETECTOR_KEYS = {"auroc", "auroc_ci", "fpr95", "fpr95_ci", "aupr_in", "aupr_out", "flagged_id_rate", "alpha"}


def test_bootstrap_interval_is_seeded_and_holds_the_estimate() -> None:
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(0, 1, 200), rng.normal(1, 1, 100)
    m = bootstrap_metrics(id_s, ood_s, n_boot=200, seed=3)
    assert m["auroc"] == pytest.approx(roc_auc_score(np.r_[np.zeros(200), np.ones(100)], np.r_[id_s, ood_s]))
    lo, hi = m["auroc_ci"]
    assert lo < m["auroc"] < hi and 0.05 < hi - lo < 0.2  # n = 200 / 100: a few AUROC points each side
    assert bootstrap_metrics(id_s, ood_s, n_boot=200, seed=3) == m


def test_paired_difference() -> None:
    rng = np.random.default_rng(1)
    id_s, ood_s = rng.normal(0, 1, 150), rng.normal(1, 1, 100)
    same = paired_auroc_difference(id_s, ood_s, id_s, ood_s, n_boot=100)
    assert same["difference"] == 0 and same["ci"] == [0, 0]
    worse = paired_auroc_difference(id_s, ood_s, id_s + rng.normal(0, 2, 150), ood_s + rng.normal(0, 2, 100), 200)
    assert worse["difference"] > 0 and worse["ci"][0] > 0 and worse["p"] < 0.05
    with pytest.raises(ValueError, match="same cases"):
        paired_auroc_difference(id_s, ood_s, id_s[:-1], ood_s)


def test_paired_mean_difference_pairs_training_runs() -> None:
    rng = np.random.default_rng(2)
    id_a, near, far = rng.normal(0, 1, (120, 3)), rng.normal(0.5, 1, (80, 3)), rng.normal(2, 1, (60, 3))
    id_b = id_a + rng.normal(0, 2, (120, 3))
    oods_b = [near + rng.normal(0, 2, (80, 3)), far + rng.normal(0, 2, (60, 3))]
    runs = paired_mean_auroc_difference(id_a, [near, far], id_b, oods_b, 200)
    assert len(runs["runs"]) == 3 and runs["difference"] == pytest.approx(np.mean(runs["runs"]))
    assert runs["ci"][0] > 0 and all(r > 0 for r in runs["runs"]), "a is b without the added noise"
    first = paired_mean_auroc_difference(id_a[:, 0], [near[:, 0], far[:, 0]], id_b[:, 0], [o[:, 0] for o in oods_b])
    assert "runs" not in first and first["difference"] == pytest.approx(runs["runs"][0]), "run 0 alone"


def test_brain_plan_sizes_and_reoriented_scans_are_never_ood() -> None:
    jobs, sets = brain_plan(quick=True)
    assert "reoriented_pir" not in BRAIN_BENCH_OOD and not any("reorient" in j[0] + j[2] for j in jobs)
    volumes: dict[str, int] = {}
    for folder, _, _, contrasts in jobs:
        volumes[folder] = volumes.get(folder, 0) + len(contrasts)
    assert volumes["id_test"] >= 60 and volumes["seg_test"] >= 60
    for name, s in sets.items():
        if s["role"] == "ood_test":
            assert volumes[s["dir"]] >= 30, name
    assert {s["family"] for s in sets.values() if s["role"] == "ood_test"} == {"near", "far"}
    val_kinds = {n for n, s in sets.items() if s["role"] == "ood_val"}
    assert val_kinds and not val_kinds & {n for n, s in sets.items() if s["role"] == "ood_test"}


def _toy(rng: np.random.Generator) -> tuple[dict, dict]:
    manifest = {"sets": {"id_val": {"role": "id_val"}, "id_test": {"role": "id_test"},
                         "far": {"role": "ood_test", "family": "far"}, "noise_s1": {"role": "shift"}}}  # fmt: skip
    scores = {}
    for d, shift in (("base", 1.0), ("seed", 2.0)):
        scores[d] = {
            "id_val": {f"v{i}": float(x) for i, x in enumerate(rng.normal(0, 1, 99))},
            "id_test": {f"t{i}": float(x) for i, x in enumerate(rng.normal(0, 1, 400))},
            "far": {f"o{i}": float(x) for i, x in enumerate(rng.normal(shift, 1, 100))},
            "noise_s1": {f"n{i}": float(x) for i, x in enumerate(rng.normal(0.5, 1, 60))},
        }
    return manifest, scores


def test_task_results_schema_flags_and_page(tmp_path: Path) -> None:
    manifest, scores = _toy(np.random.default_rng(2))
    res = task_results(manifest, scores, {}, ("seed",), alpha=0.1, n_boot=100)
    assert res["n_id"] == 400 and res["sets"]["far"]["n"] == 100
    entry = res["sets"]["far"]["detectors"]["seed"]
    assert DETECTOR_KEYS <= set(entry) and entry["alpha"] == 0.1
    # conformal threshold on 99 ID validation scores at alpha 0.1: about 10 % of fresh ID scores flagged
    assert 0.03 < entry["flagged_id_rate"] < 0.2
    assert res["robustness"]["seed"]["noise_s1"] > entry["flagged_id_rate"]  # the shifted ID set raises more flags
    assert res["paired"]["seed"]["baseline"] == "base" and res["paired"]["seed"]["sets"]["far"]["difference"] > 0
    payload = {"machine": "test", "command": "pytest", "alpha": 0.1, "n_boot": 100, "seconds": 1.0,
               "tasks": {"toy": res}, "seeds": seed_claims({"toy": res}, None), "not_done": []}  # fmt: skip
    page = results_markdown(payload)
    assert f"{100 * res['mean_auroc']['seed']:.1f}" in page and "**seed**" in page
    rows = [("toy", s, d, c, v) for d, by in scores.items() for s, cs in by.items() for c, v in cs.items()]
    back = read_scores_table(write_scores_table(tmp_path / SCORES_FILE, rows))
    assert back["toy"]["seed"]["far"] == pytest.approx(scores["seed"]["far"], rel=1e-8)


@pytest.mark.skipif(not (DOCS / "results.json").is_file(), reason="no committed docs/results.json")
def test_committed_page_recomputes_from_its_per_case_scores() -> None:
    payload = json.loads((DOCS / "results.json").read_text())
    table = read_scores_table(DOCS / SCORES_FILE)
    checked = 0
    for task, res in payload["tasks"].items():
        for set_name, entry in res["sets"].items():
            for det, m in list(entry["detectors"].items())[:3]:
                id_key = "seg_val" if task == "brain_anomaly_segmentation" else "id_test"
                ood_key = "seg_test" if task == "brain_anomaly_segmentation" else set_name
                id_s = list(table[task][det][id_key].values())
                ood_s = list(table[task][det][ood_key].values())
                assert len(ood_s) == entry["n"]
                labels = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
                assert roc_auc_score(labels, np.r_[id_s, ood_s]) == pytest.approx(m["auroc"], abs=1e-9)
                checked += 1
    assert checked >= 3
    assert set(payload) >= {"machine", "tasks", "seeds"}
    for s in payload["seeds"]:
        assert set(s) == {"method", "claim", "paper_figure", "our_figure", "holds", "why"}


def test_2d_shifts_are_deterministic_and_grow_with_strength(tmp_path: Path) -> None:
    from PIL import Image

    from medood.data.demo.bench import SHIFTS_2D, _corrupt_png

    rng = np.random.default_rng(0)
    src = tmp_path / "id.png"
    Image.fromarray((rng.uniform(0.2, 0.8, (32, 32, 3)) * 255).astype(np.uint8)).save(src)
    ref = np.asarray(Image.open(src), np.float64)
    for name, levels in SHIFTS_2D.items():
        change = []
        for k, option in enumerate(levels):
            a, b = tmp_path / f"{name}{k}a.png", tmp_path / f"{name}{k}b.png"
            _corrupt_png(src, a, name, 7, option)
            _corrupt_png(src, b, name, 7, option)
            out = np.asarray(Image.open(a).convert("RGB"), np.float64)
            assert np.array_equal(out, np.asarray(Image.open(b).convert("RGB"), np.float64)), name
            change.append(np.abs(out - ref).mean())
        assert 0 < change[0] < change[-1], (name, change)


def test_real_class_folder_layout_gives_a_manifest(tmp_path: Path) -> None:
    """``--data DIR``: a real dataset sorted into class folders becomes the same kind of manifest."""
    from medood.benchmark import manifest_from_folders

    for folder in ("train/nevus", "train/melanoma", "val/nevus", "test/nevus", "ood_near/ruler", "ood_far/xray"):
        (tmp_path / "dermoscopy" / folder).mkdir(parents=True)
    m = manifest_from_folders(tmp_path / "dermoscopy")
    assert m["classes"] == ["melanoma", "nevus"]
    roles = {k: (v["role"], v.get("family")) for k, v in m["sets"].items()}
    assert roles == {"id_val": ("id_val", None), "id_test": ("id_test", None), "ruler": ("ood_test", "near"),
                     "xray": ("ood_test", "far")}  # fmt: skip
