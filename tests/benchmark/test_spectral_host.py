"""The spectral seed's own baselines (medood.benchmark.spectral_host), its claim (spectral_claim) and the bench
``id_fit`` split they are fitted on."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medood.benchmark.page import results_markdown, seed_claims
from medood.benchmark.report import task_results
from medood.benchmark.runner import BUNDLES, TaskSpec, run_task
from medood.benchmark.spectral_host import FIT_SET, host_family, volume_host
from medood.data.demo import bench
from medood.data.demo.brain_set import save_nifti

SPECTRAL: tuple[str, tuple[str, ...], str] = ("spectral_brain_mri_ood_classification", ("inference.yaml",), ".")
ROWS = ("seg_entropy@spectral", "mc_dropout@spectral", "mahalanobis_pool@spectral", "spectral@spectral")


def _volumes(folder: Path, n: int, rng: np.random.Generator, noise: float = 0.0) -> Path:
    """``n`` small brain-like blobs (a bright ellipsoid at 5 mm), with ``noise`` added (an OOD set)."""
    folder.mkdir(parents=True, exist_ok=True)
    z, y, x = np.mgrid[:20, :24, :20]
    blob = (((z - 10) / 8) ** 2 + ((y - 12) / 10) ** 2 + ((x - 10) / 8) ** 2 < 1).astype(np.float32)
    for i in range(n):
        image = blob * (5 + rng.random(blob.shape)) + noise * rng.random(blob.shape)
        save_nifti(folder / f"sub-{i:03d}_T1w.nii.gz", image.astype(np.float32), np.diag([5.0, 5.0, 5.0, 1.0]))
    return folder


def _manifest(root: Path, fit: bool = True, shift: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    sets = {"id_val": {"role": "id_val"}, "id_test": {"role": "id_test"}, "noisy": {"role": "ood_test"}}
    if shift:
        sets["noise_s1"] = {"role": "shift"}
    for name, s in sets.items():
        s["dir"] = str(_volumes(root / name, 2, rng, 4.0 if name == "noisy" else 0.0))
    if fit:
        sets[FIT_SET] = {"role": FIT_SET, "dir": str(_volumes(root / FIT_SET, 3, rng))}
    return {"sets": sets}


def test_host_family_scores_every_set_with_the_four_rows(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    sets = {k: Path(v["dir"]) for k, v in manifest["sets"].items() if k != FIT_SET}
    host = volume_host(BUNDLES / SPECTRAL[0])
    assert host.layers == ["input_block"] and not host.network.training
    fam = host_family(host, sets, Path(manifest["sets"][FIT_SET]["dir"]), "spectral", mc_samples=2)
    assert set(fam.scores) == set(ROWS) == set(fam.cost)
    for row in ROWS:
        assert set(fam.scores[row]) == set(sets)
        for cases in fam.scores[row].values():
            assert len(cases) == 2 and all(math.isfinite(v) for v in cases.values())
        assert fam.cost[row]["seconds_per_image"] > 0 and "id_fit" in fam.cost["mahalanobis_pool@spectral"]["how"]
    assert set(fam.scores["spectral@spectral"]["noisy"]) == {f"sub-{i:03d}_T1w" for i in range(2)}
    assert fam.family["rows"] == {"seg_entropy": ROWS[0], "mc_dropout": ROWS[1], "mahalanobis_pool": ROWS[2]}
    assert ["spectral", "seg_entropy@spectral"] in fam.family["pairs"]
    assert ["spectral@spectral", "mahalanobis_pool@spectral"] in fam.family["pairs"]


def test_runner_adds_the_family_only_where_an_id_fit_set_exists(tmp_path: Path, monkeypatch: Any) -> None:
    from medood.benchmark import runner

    monkeypatch.setattr(runner, "_run_bundle", lambda *a: None)  # the seed's own bundle run is not tested here
    monkeypatch.setattr(runner, "host_family", functools.partial(host_family, mc_samples=2))  # fast
    spec = TaskSpec("toy", "toy", {"spectral": SPECTRAL}, seeds=("spectral",), volume_host=("spectral",))
    result = run_task(spec, _manifest(tmp_path / "a", shift=True), tmp_path / "runs")
    assert set(result.scores) == set(ROWS) and set(result.scores[ROWS[0]]) == {"id_val", "id_test", "noisy"}, (
        "ID and test OOD sets only: no robustness shifts for the host's baselines"
    )
    assert result.same_host["spectral"]["rows"]["mc_dropout"] == "mc_dropout@spectral"
    assert not run_task(spec, _manifest(tmp_path / "b", fit=False), tmp_path / "runs").scores  # real data: no id_fit


MANIFEST = {"sets": {"id_val": {"role": "id_val"}, "id_test": {"role": "id_test"}, "a": {"role": "ood_test"},
                     "b": {"role": "ood_test"}}}  # fmt: skip
FAMILY = {"host": "h", "rows": {"seg_entropy": ROWS[0], "mc_dropout": ROWS[1], "mahalanobis_pool": ROWS[2]},
          "sentence": "Rows `<detector>@spectral`: the spectral host.",
          "refit": ROWS[3], "pairs": [["spectral", r] for r in ROWS] + [["spectral@spectral", ROWS[2]]]}  # fmt: skip


def _claim(shifts: dict[str, tuple[float, float]], seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spectral claim on scores whose OOD sets ``a`` / ``b`` are shifted by ``shifts[detector]``."""
    rng = np.random.default_rng(seed)

    def draw(prefix: str, mu: float, n: int) -> dict[str, float]:
        return {f"{prefix}{i}": float(x) for i, x in enumerate(rng.normal(mu, 1, n))}

    scores = {d: {"id_val": draw("v", 0, 60), "id_test": draw("t", 0, 200), "a": draw("a", m[0], 100),
                  "b": draw("b", m[1], 100)} for d, m in shifts.items()}  # fmt: skip
    res = task_results(MANIFEST, scores, {}, ("spectral",), 0.1, 200, same_host={"spectral": FAMILY})
    claim = next(c for c in seed_claims({"brain_volume_ood": res}, None) if c["method"] == "Spectral")
    return res, claim


def test_spectral_claim_holds_when_above_uncertainty_everywhere_and_not_below_mahalanobis() -> None:
    res, claim = _claim({"spectral": (2.5, 2.5), ROWS[0]: (0.5, 0.5), ROWS[1]: (0.3, 0.3), ROWS[2]: (1.0, 1.0),
                         ROWS[3]: (2.5, 2.5)})  # fmt: skip
    assert [p["baseline"] for p in res["paired_same_host"]["spectral"]["pairs"]] == [*ROWS, ROWS[2]]
    assert claim["holds"] is True and "above on 2 of 2 OOD kinds" in claim["our_figure"]
    assert "at least level with pooled Mahalanobis" in claim["why"]
    page = results_markdown({"machine": "t", "command": "pytest", "alpha": 0.1, "n_boot": 200, "seconds": 1.0,
                             "tasks": {"brain_volume_ood": res}, "seeds": [claim], "not_done": []})  # fmt: skip
    assert "**spectral** vs mc_dropout@spectral: mean over 2 sets" in page
    assert "**spectral@spectral** vs mahalanobis_pool@spectral" in page and "vs spectral@spectral" in page
    assert res["paired"]["spectral"]["baseline"] == ROWS[2]  # the overall ranking: the refitted seed is no baseline


@pytest.mark.parametrize(
    ("entropy", "mahalanobis", "holds", "said"),
    [
        ((0.5, 3.5), 1.0, False, "below on b"),  # significantly below entropy on one kind refutes it
        ((0.5, 0.5), 3.5, False, "below pooled Mahalanobis"),  # above uncertainty everywhere, Mahalanobis bar missed
        ((0.5, 2.5), 1.0, None, "undecided (interval spans 0) on b"),  # level with entropy on one kind
    ],
)
def test_spectral_claim_refuted_or_undecided(entropy: tuple[float, float], mahalanobis: float, holds: Any,
                                             said: str) -> None:  # fmt: skip
    _, claim = _claim({"spectral": (2.5, 2.5), ROWS[0]: entropy, ROWS[1]: (0.3, 0.3),
                       ROWS[2]: (mahalanobis, mahalanobis), ROWS[3]: (2.5, 2.5)})  # fmt: skip
    assert claim["holds"] is holds and said in claim["our_figure"] + claim["why"]


def test_spectral_claim_not_measured_without_its_host_family() -> None:
    _, claim = _claim({"spectral": (2.5, 2.5), "mecam": (1.0, 1.0)})  # no row of the family: no paired tests
    assert claim["holds"] is None and "did not run" in claim["why"]


def test_id_fit_split_is_disjoint_deterministic_and_added_to_an_old_manifest(tmp_path: Path, monkeypatch: Any) -> None:
    jobs, sets = bench.brain_plan(quick=True)
    assert sets[FIT_SET] == {"dir": "id_fit", "role": "id_fit"}
    fit = [j for j in jobs if j[0] == "id_fit"]
    assert len(fit) == 20 and all(j[3] == ("T1w", "T2w", "FLAIR") for j in fit)
    codes = {bench._code(f) for f in ("id_fit", "id_val", "id_test", "seg_val", "seg_test")}
    assert len(codes) == 5  # subject seeds (seed, 7, code of the folder, index): no subject of id_val / id_test
    small = ([("id_val", 0, "none", ("T1w",)), ("id_fit", 0, "none", ("T1w",)), ("id_fit", 1, "none", ("T1w",))],
             {"id_val": {"dir": "id_val", "role": "id_val"}, FIT_SET: {"dir": "id_fit", "role": "id_fit"}})  # fmt: skip
    monkeypatch.setattr(bench, "brain_plan", lambda quick=False: small)
    root = tmp_path / "brain_mri"
    bench._brain_job(root, 2026, small[0][0])
    old: dict[str, Any] = {"seed": 2026, "quick": True, "sets": {"id_val": {"dir": "id_val", "role": "id_val", "n": 1}}}
    (root / bench.MANIFEST).write_text(json.dumps(old))
    before = (root / "id_val" / "sub-000_T1w.nii.gz").read_bytes()
    bench.build_bench(tmp_path, only=["brain_volume_ood"], workers=1)  # kept, and the missing id_fit written
    manifest = json.loads((root / bench.MANIFEST).read_text())
    assert manifest["sets"][FIT_SET]["n"] == 2 and manifest["sets"]["id_val"] == old["sets"]["id_val"]
    assert (root / "id_val" / "sub-000_T1w.nii.gz").read_bytes() == before
    again = tmp_path / "again"
    bench._brain_job(again, 2026, small[0][1])
    fitted = (root / "id_fit" / "sub-000_T1w.nii.gz").read_bytes()
    assert (again / "id_fit" / "sub-000_T1w.nii.gz").read_bytes() == fitted != before


def test_a_kind_where_both_are_perfect_is_level_and_leaves_the_claim_undecided() -> None:
    from medood.benchmark.spectral_claim import spectral_claim

    def test(*ci: float) -> dict[str, Any]:
        return {"difference": sum(ci) / 2, "ci": list(ci), "p": 0.01}

    def pair(a: str, b: str, x: dict[str, Any]) -> dict[str, Any]:
        return {"a": a, "baseline": b, "sets": {"x": x, "y": test(0.1, 0.3)}, "mean": test(0.05, 0.15)}

    task = {"mean_auroc": {"spectral": 0.99, ROWS[0]: 0.7, ROWS[1]: 0.6, ROWS[2]: 0.9, ROWS[3]: 0.99},
            "paired_same_host": {"spectral": {"pairs": [pair("spectral", ROWS[0], test(0, 0)),
                                                        pair("spectral", ROWS[1], test(0.1, 0.2)),
                                                        pair(ROWS[3], ROWS[2], test(0, 0.1))]}}}  # fmt: skip
    figure, holds, why = spectral_claim(task) or ("", True, "")
    assert holds is None and "level (the same AUROC on every resample, e.g. both 100) on x" in figure
    assert "above on 1 of 2 OOD kinds" in figure and "above on 2 of 2" in figure and "level with one" in why
