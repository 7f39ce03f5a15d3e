"""The legacy per-method pages (scripts/bench_{heatmap,mecam,spectral}.py, their medood.benchmark modules): every
sentence follows the numbers.

The old pages printed fixed prose on every run (e.g. that a decoder "ranks every OOD set below chance" while the
table had 66.7) and scored ``reoriented_pir`` (ID after preprocessing) as OOD.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from medood.benchmark.heatmap_page import markdown as heatmap_markdown
from medood.benchmark.mim_diagnosis_page import report_markdown
from medood.benchmark.runner import _resolved_settings
from medood.detectors import NERODetector
from medood.metrics.tables import method_standing

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _row(**auroc: float) -> dict[str, dict[str, float]]:
    return {d: {"auroc": a, "fpr95": 1 - a, "aupr_in": a, "aupr_out": a} for d, a in auroc.items()}


@pytest.fixture
def script() -> Iterator[Any]:
    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        loaded.append(spec.name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


def test_method_standing_follows_the_table() -> None:
    table = {"pd": _row(heatmap=0.667, msp=0.9), "ct": _row(heatmap=0.3, msp=0.6), "x": _row(heatmap=1.0, msp=1.0)}
    text = method_standing(table, "heatmap", "Heatmap decoder")
    assert text.startswith("Heatmap decoder: rank 2 of 2 by mean AUROC (65.6; best other: msp 83.3)")
    assert "best (or tied) on: x;" in text and "pd (66.7 vs msp 90.0)" in text
    assert "below chance (AUROC < 50) on 1 of 3 OOD sets: ct (30.0)." in text


def test_heatmap_page_has_no_fixed_claims() -> None:
    table = {"wrong_contrast_pd": _row(heatmap=0.667, msp=0.5), "ct_head": _row(heatmap=0.9, msp=0.8)}
    summary = {
        "classifier": "c.pt", "id_test_accuracy": 0.9, "n_id_test": 48, "ood_set_sizes": {"wrong_contrast_pd": 3,
        "ct_head": 1}, "mean_abs_h": {"id_test": 0.1}, "mean_abs_h_ratio_to_id": {"ct_head": 2.0},
        "nero_k_effective": {"k": 175, "k_effective": 64, "d": 64},
        "cost": {"images": 4, "input_shape": [1, 8, 8, 8], "batch_size": 4, "forward_ms_per_image": 1.0,
                 "decoder_ms_per_image": 1.0, "decoder_over_forward": 1.0, "score_over_forward": 2.0,
                 "decoder_parameters": 10},
    }  # fmt: skip
    page = heatmap_markdown({"machine": "m", "tasks": {"t": table}, "task_summary": {"t": summary}})
    assert "below chance" not in page.replace("below chance (AUROC < 50) on 0 of 2 OOD sets", "")
    assert "rank 1 of 2" in page and "t 64 of D = 64" in page and "docs/results.md" in page


def test_spectral_page_drops_id_after_preprocessing_sets() -> None:
    from medood.benchmark import spectral_page as bench  # the page scripts/bench_spectral.py writes

    row = _row(spectral=0.9, mahalanobis_pool=0.8, seg_entropy=0.95, seg_entropy_volume=0.5, mc_dropout=0.0)
    tasks, dropped = bench.protocol_tables({"brain_T1w": {"anisotropic": row, "reoriented_pir": _row(spectral=0.1)}})
    assert dropped == ["reoriented_pir"] and list(tasks["brain_T1w"]) == ["anisotropic"]
    (line,) = bench.standing(tasks)
    assert "spectral 0.900; ahead of 2 of 3 uncertainty scores" in line and "Mahalanobis 0.800 (level or ahead)" in line
    assert line.endswith("level with (e.g. both 1.000) or ahead of spectral: anisotropic.")


def test_benchmark_records_neros_resolved_k() -> None:
    """The one protocol's hosts have D = 128 < 175: NERO's clamp is written next to its cost, not silent."""
    g = torch.Generator().manual_seed(0)
    feats, labels = (
        {"features": torch.rand(40, 8, generator=g), "logits": torch.rand(40, 3, generator=g)},
        torch.arange(40) % 3,
    )
    weight, bias = torch.randn(3, 8, generator=g), torch.zeros(3)
    full = NERODetector(weight=weight, bias=bias).fit_features(feats, labels)
    assert (
        _resolved_settings(full)
        == "; k = 175 resolved to k_effective = 8, feature-norm term off (k >= D, as the official code)"
    )
    assert _resolved_settings(NERODetector(weight=weight, bias=bias, k=4).fit_features(feats, labels)).endswith(
        "term on"
    )
    assert _resolved_settings(object()) == ""


PAGES = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


@pytest.mark.parametrize(
    ("name", "page"),
    [
        ("bench_heatmap", "heatmap"),
        ("bench_mecam", "mecam"),
        ("bench_posthoc", "posthoc"),
        ("bench_spectral", "spectral"),
        ("bench_mim", "mim"),
        ("bench_mim_shift", "mim_shift"),
        ("tune_mim_validation", "mim_validation_tuning"),
        ("tune_mim_validation", "mim_validation_stress"),
        ("diagnose_mim", "mim_diagnosis"),
        ("diagnose_spectral", "spectral_diagnosis"),
        ("compare_multitask", "spectral_multitask"),
        ("choose_mecam_augmentation", "mecam_augmentation"),
        ("choose_heatmap_variant", "heatmap_variants"),
        ("diagnose_mecam", "mecam_diagnosis"),
    ],
)
def test_committed_pages_are_their_json_rendered(script: Any, name: str, page: str, monkeypatch: Any) -> None:
    """Each committed page is what its script writes from the committed JSON (the shared table writers of
    medood.benchmark changed no byte of them)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))  # a script imports its siblings as it does when run
    module = script(name)
    report = json.loads((PAGES / f"{page}.json").read_text())
    render = {
        "mim_validation_tuning": lambda r: module.markdown(r, f"{page}.json"),
        "mim_validation_stress": module.__dict__.get("stress_markdown"),
        "mim_diagnosis": report_markdown,  # medood.benchmark.mim_diagnosis_page, the page diagnose_mim writes
    }.get(page, module.__dict__.get("markdown", module.__dict__.get("render")))
    assert render(report) == (PAGES / f"{page}.md").read_text()
