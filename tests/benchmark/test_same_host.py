"""Seed methods against the post-hoc baselines on their own classifier: the runner's same-classifier families and
the paired test that must pick the best baseline among the seed's own rows, not the overall best."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medood.benchmark.bundles import bundle_classifier
from medood.benchmark.page import results_markdown, seed_claims
from medood.benchmark.report import task_results
from medood.benchmark.runner import BUNDLES, TaskSpec, run_task
from medood.benchmark.stats import paired_auroc_difference, paired_mean_auroc_difference
from medood.networks.nets import FinalExitClassifier

PATHOLOGY = ["background_stroma", "dab_rich", "haematoxylin_rich"]  # the pathology bundles' label order
MECAM: tuple[str, tuple[str, ...], str] = ("mecam_pathology_ood_classification", ("inference.yaml",), ".")


def _pngs(folder: Path, n: int, base: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = np.clip(base + rng.integers(-20, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{folder.name}_{i}.png")


def _manifest(root: Path) -> dict:
    """A tiny bench-like task: 8 training images per class, ID validation / test and one OOD set."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(PATHOLOGY):
        _pngs(root / "data" / "train" / name, 8, 60 + 60 * c, rng)
        _pngs(root / "id_test" / name, 2, 60 + 60 * c, rng)
        _pngs(root / "id_val" / name, 2, 60 + 60 * c, rng)
    _pngs(root / "ood" / "bright", 5, 250, rng)
    sets = {"id_val": {"role": "id_val"}, "id_test": {"role": "id_test"}, "bright": {"role": "ood_test"}}
    for s in sets:
        sets[s]["dir"] = str(root / ("ood/bright" if s == "bright" else s))
    return {"train_dir": str(root / "data"), "classes": PATHOLOGY, "sets": sets}


def test_bundle_classifier_is_mecams_final_exit() -> None:
    clf = bundle_classifier(BUNDLES / MECAM[0])
    assert isinstance(clf.network, FinalExitClassifier) and not clf.network.training
    assert clf.class_names == PATHOLOGY and clf.image_size == 64
    assert clf.weights == (BUNDLES / MECAM[0] / "models" / "model.pt").resolve()


def test_runner_builds_the_family_on_the_seeds_own_classifier(tmp_path: Path) -> None:
    """No task host: the only post-hoc rows are the family on MECAM's final exit, named ``<detector>@mecam``."""
    manifest = _manifest(tmp_path)
    spec = TaskSpec("toy", "toy", {"mecam": MECAM}, seeds=("mecam",), same_host=("mecam",))
    result = run_task(spec, manifest, tmp_path / "runs")
    rows = result.same_host["mecam"]["rows"]
    assert rows["msp"] == "msp@mecam" and rows["vim"] == "vim@mecam" and len(rows) >= 10
    assert "final exit" in result.same_host["mecam"]["host"] and "mecam_pathology" in result.same_host["mecam"]["host"]
    assert all(r in result.scores and set(result.scores[r]) == set(manifest["sets"]) for r in rows.values())
    assert len(result.scores["msp@mecam"]["bright"]) == 5 and "msp" not in result.scores  # no task-host rows
    assert len(result.scores["mecam"]["bright"]) == 5  # the seed scored the same cases
    assert "final exit" in result.cost["vim@mecam"]["how"]


def test_a_classifier_with_a_family_already_is_not_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endoscopy heatmap's classifier is the NERO bundle's, the task's host: its family is reused, not rerun."""
    from medood.benchmark import runner

    calls: list[str] = []

    def family(*args: Any) -> dict[str, str]:  # the family's fit and scoring are not what is tested here
        calls.append(args[4])
        return {"msp": "msp" + args[4], "nero": "nero" + args[4]}

    monkeypatch.setattr(runner, "_run_family", family)
    heatmap: tuple[str, tuple[str, ...], str] = ("heatmap_endoscopy_ood_classification", ("inference.yaml",), ".")
    spec = TaskSpec("toy", "toy", {"heatmap": heatmap, "mecam": MECAM}, seeds=("nero", "heatmap", "mecam"),
                    posthoc_host="nero_endoscopy_ood_classification", same_host=("heatmap", "mecam"))  # fmt: skip
    result = run_task(spec, _manifest(tmp_path), tmp_path / "runs")
    assert calls == ["", "@mecam"]  # the task's family, then MECAM's classifier only
    assert result.same_host["heatmap"] is result.same_host["nero"]  # NERO and the heatmap share the task's host
    assert result.same_host["heatmap"]["rows"] == {"msp": "msp", "nero": "nero"}
    assert result.same_host["mecam"]["rows"]["msp"] == "msp@mecam"


MANIFEST = {"sets": {"id_val": {"role": "id_val"}, "id_test": {"role": "id_test"}, "a": {"role": "ood_test"},
                     "b": {"role": "ood_test"}}}  # fmt: skip


def _scores(rng: np.random.Generator, shifts: dict[str, float]) -> dict:
    """Per detector: normal ID scores, and two OOD sets shifted by the detector's ``shift``."""

    def draw(prefix: str, mu: float, n: int) -> dict[str, float]:
        return {f"{prefix}{i}": float(x) for i, x in enumerate(rng.normal(mu, 1, n))}

    return {d: {"id_val": draw("v", 0, 60), "id_test": draw("t", 0, 300), "a": draw("a", m, 150),
                "b": draw("b", m, 150)} for d, m in shifts.items()}  # fmt: skip


def test_paired_test_names_the_best_baseline_on_the_seeds_own_classifier() -> None:
    """The overall best (``vim``, another host) is not the same-host best (``vim@mecam``); MSP there is weaker."""
    scores = _scores(np.random.default_rng(4), {"vim": 2.5, "mecam": 1.5, "vim@mecam": 1.0, "msp@mecam": 0.3})
    family = {"host": "the final exit of MECAM", "rows": {"vim": "vim@mecam", "msp": "msp@mecam"}}
    res = task_results(MANIFEST, scores, {}, ("mecam",), 0.1, 200, same_host={"mecam": family})
    assert res["paired"]["mecam"]["baseline"] == "vim" and res["paired"]["mecam"]["mean"]["difference"] < 0
    own = res["paired_same_host"]["mecam"]
    assert own["baseline"] == "vim@mecam" and own["host"] == family["host"] and set(own["sets"]) == {"a", "b"}
    assert own["mean"]["ci"][0] > 0 and own["msp"]["baseline"] == "msp@mecam" and own["msp"]["mean"]["ci"][0] > 0
    aurocs = {d: [res["sets"][s]["detectors"][d]["auroc"] for s in ("a", "b")] for d in ("mecam", "vim@mecam")}
    expected = np.mean(np.subtract(aurocs["mecam"], aurocs["vim@mecam"]))
    assert own["mean"]["difference"] == pytest.approx(expected)

    claims = {c["method"]: c for c in seed_claims({"pathology": res}, None)}
    mecam = claims["MECAM"]
    assert mecam["holds"] is True and "vim@mecam" in mecam["our_figure"] and "same classifier" in mecam["our_figure"]
    assert "host differs" not in mecam["why"]
    page = results_markdown({"machine": "t", "command": "pytest", "alpha": 0.1, "n_boot": 200, "seconds": 1.0,
                             "tasks": {"pathology": res}, "seeds": list(claims.values()), "not_done": []})  # fmt: skip
    assert "ON ITS OWN CLASSIFIER" in page and "**mecam** vs vim@mecam (best baseline on the final exit" in page
    assert "**mecam** vs best baseline vim:" in page  # the overall ranking's test is kept


def test_heatmap_below_msp_on_its_classifier_refutes_its_claim() -> None:
    scores = _scores(np.random.default_rng(5), {"heatmap": 0.5, "vim@heatmap": 0.5, "msp@heatmap": 1.5})
    family = {"host": "h", "rows": {"vim": "vim@heatmap", "msp": "msp@heatmap"}}
    res = task_results(MANIFEST, scores, {}, ("heatmap",), 0.1, 200, same_host={"heatmap": family})
    assert res["paired_same_host"]["heatmap"]["baseline"] == "msp@heatmap"  # MSP is also the best there
    heatmap = next(c for c in seed_claims({"pathology": res}, None) if c["method"] == "Heatmap-OOD")
    assert heatmap["holds"] is False and "MSP on that classifier" in heatmap["our_figure"]


def test_mean_paired_difference_of_one_set_is_the_per_set_test() -> None:
    rng = np.random.default_rng(6)
    id_a, ood_a = rng.normal(0, 1, 80), rng.normal(1, 1, 50)
    id_b, ood_b = id_a + rng.normal(0, 1, 80), ood_a + rng.normal(0, 1, 50)
    one = paired_mean_auroc_difference(id_a, [ood_a], id_b, [ood_b], n_boot=100, seed=2)
    assert one == paired_auroc_difference(id_a, ood_a, id_b, ood_b, n_boot=100, seed=2)
    same = paired_mean_auroc_difference(id_a, [ood_a, ood_b], id_a, [ood_a, ood_b], n_boot=50)
    assert same["difference"] == 0 and same["ci"] == [0, 0]
    with pytest.raises(ValueError, match="same cases"):
        paired_mean_auroc_difference(id_a, [ood_a], id_b, [ood_b[:-1]])
