"""A reoriented in-distribution volume is never an OOD case of any benchmark set, bundle evaluation or bench script.

Every brain bundle reorients to RAS, so the demo's ``reoriented_pir`` (a healthy subject stored PIR) is an ordinary
healthy volume after preprocessing. The one definition is :data:`medood.data.demo.ood.ID_AFTER_PREPROCESSING`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medood.data.contrasts import contrast_evaluation_datalist
from medood.data.demo import bench
from medood.data.demo.ood import BRAIN_OOD_KINDS, ID_AFTER_PREPROCESSING, T1W_ONLY_KINDS, ood_contrasts
from medood.data.multitask import brain_case_sets

ROOT = Path(__file__).resolve().parents[2]
CONTRASTS = ("T1w", "T2w", "FLAIR")


@pytest.fixture
def brain_dir(tmp_path: Path) -> Path:
    """A dataset.json with two ID test subjects and one OOD entry per generated kind (empty files)."""
    content: dict[str, list[dict[str, str]]] = {"test": [], "ood": []}
    plan: dict[str, list[tuple[str, str | None]]] = {
        "test": [("sub-000", None), ("sub-001", None)],
        "ood": [(f"ood-{k}", k) for k in BRAIN_OOD_KINDS],
    }
    for key, cases in plan.items():
        for case, kind in cases:
            entry = {"case": case, **({"ood_type": kind} if kind else {})}
            for c in CONTRASTS:
                rel = f"{key}/{case}_{c}.nii.gz"
                (tmp_path / key).mkdir(exist_ok=True)
                (tmp_path / rel).write_bytes(b"")
                entry[c] = rel
            content[key].append(entry)
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    return tmp_path


def test_the_one_definition() -> None:
    assert ID_AFTER_PREPROCESSING == ("reoriented_pir",) and set(ID_AFTER_PREPROCESSING) <= set(BRAIN_OOD_KINDS)
    assert ood_contrasts("reoriented_pir", CONTRASTS) == ()
    assert ood_contrasts(T1W_ONLY_KINDS[0], CONTRASTS) == ("T1w",) and ood_contrasts("inverted_t1w", ("T2w",)) == ()
    assert ood_contrasts("heavy_noise", CONTRASTS) == CONTRASTS


def test_benchmark_plan_drops_id_kinds_even_if_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "BRAIN_BENCH_OOD", {**bench.BRAIN_BENCH_OOD, "reoriented_pir": "near"})
    jobs, sets = bench.brain_plan(quick=True)
    assert "reoriented_pir" not in sets and not any(kind == "reoriented_pir" for _, _, kind, _ in jobs)
    assert sets["heavy_noise"]["role"] == "ood_test"


def test_datalists_and_case_sets(brain_dir: Path) -> None:
    items = contrast_evaluation_datalist(brain_dir)
    assert {d["ood_set"] for d in items if d["is_ood"]} == set(BRAIN_OOD_KINDS) - set(ID_AFTER_PREPROCESSING)
    sets = brain_case_sets(brain_dir)
    assert not any(s in ID_AFTER_PREPROCESSING for _, s in sets.values())
    assert sets["ood-heavy_noise_FLAIR"] == ("brain_FLAIR", "heavy_noise") and "ood-inverted_t1w_T2w" not in sets


@pytest.mark.parametrize(
    ("bundle", "key"),
    [
        ("heatmap_brain_mri_ood_classification", "datalist"),
        ("mecam_brain_mri_ood_classification", "datalist"),
        ("spectral_brain_mri_ood_classification", "case_sets"),
    ],
)
def test_bundle_evaluations(brain_dir: Path, bundle: str, key: str) -> None:
    configs = ROOT / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.yaml"), str(configs / "evaluate.yaml")])
    parser.update({"bundle_root": str(configs.parent), "dataset_dir": str(brain_dir)})
    content = parser.get_parsed_content(key)
    if key == "case_sets":
        ood = [case for case, (_, s) in content.items() if s != "id"]
    else:
        ood = [d["case"] for d in content if d["is_ood"]]
    assert ood and not any("reoriented" in case for case in ood), bundle


def test_bench_spectral_script(brain_dir: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_spectral_under_test", ROOT / "scripts" / "bench_spectral.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        content = json.loads((brain_dir / "dataset.json").read_text())
        content["spacing_mm"] = [2.0, 2.0, 2.0]
        content["training"] = content["test"]
        (brain_dir / "dataset.json").write_text(json.dumps(content))
        evals = module.brain_items(brain_dir, tmp_path / "work", 0, 0)["eval"]
    finally:
        del sys.modules[spec.name]
    ood_sets = {e["set"] for e in evals if e["set"] != "id"}
    assert ood_sets == set(BRAIN_OOD_KINDS) - set(ID_AFTER_PREPROCESSING)
