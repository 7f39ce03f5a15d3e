"""The spectral setting chosen on validation (``diagnose_spectral.py``), checked once on the benchmark's test kinds.

Run only after the choice is committed (it reads the test OOD kinds; nothing here changes the choice). Host and
signature bank as ``diagnose_spectral.py`` (the demo brain training volumes at every contrast); sets: the bench
``brain_mri`` ``id_test`` volumes against every ``ood_test`` kind, contrasts pooled as in the benchmark's brain
task. Compares the chosen setting with the bundle's setting before the choice (``--before``) and with the
baselines of the paper's claim on the same host and sets: softmax entropy (foreground / whole volume), MC dropout
(6 samples, foreground) and pooled Mahalanobis on the two deepest stages (fitted on the same bank).

Writes ``docs/benchmarks/spectral_setting_check.{json,md}``::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/check_spectral_setting.py --bench-dir /tmp/medood_benchmark/bench
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diagnose_spectral import BUNDLE, ROOT, aurocs, detector, fitted, load_host, scores, spectra
from torch import nn

from medood.data.demo.bench import read_manifest
from medood.data.multitask import brain_datalist, brain_transforms
from medood.detectors.base_featuremap import FeatureMapDetector
from medood.detectors.feature_mahalanobis import FeatureMahalanobisDetector
from medood.detectors.mc_dropout import MCDropoutDetector
from medood.detectors.seg_entropy import SegEntropyDetector
from medood.networks.feature_maps import FeatureRecorder, encoder_stages
from medood.utils.io import atomic_write_text

log = logging.getLogger("check_spectral_setting")


def baselines(net: nn.Module, deep: list[str], bank: list[dict], sets: dict[str, list[dict]], tf: Any) -> dict:
    """``{baseline: {set: scores}}`` of the uncertainty baselines and pooled Mahalanobis (one pass per volume)."""
    dets: dict[str, FeatureMapDetector] = {
        "entropy_foreground": SegEntropyDetector(region="foreground"),
        "entropy_volume": SegEntropyDetector(region="volume"),
        "mahalanobis_pool": FeatureMahalanobisDetector(layers=deep),
    }
    rec = FeatureRecorder(net, {n: n for n in [*deep, ""]})

    def features(item: dict) -> tuple[torch.Tensor, dict]:
        x = torch.as_tensor(tf(dict(item))["image"])[None].float()
        rec.pop_calls()
        with torch.no_grad():
            net(x)
        return x, {k: v[0] for k, v in rec.pop_calls().items()}

    maha = dets["mahalanobis_pool"]
    maha.reset_fit()
    for item in bank:
        maha.partial_fit_features(features(item)[1])
    maha.finalize_fit()
    for det in dets.values():
        det.mark_fitted()
    mc = MCDropoutDetector(model=net, n_samples=6, region="foreground")
    out: dict[str, dict[str, list[float]]] = {name: {} for name in [*dets, "mc_dropout"]}
    for name, items in sets.items():
        for item in items:
            x, feats = features(item)
            for key, det in dets.items():
                out[key].setdefault(name, []).append(float(det.score_features(feats).image_score[0]))
            out["mc_dropout"].setdefault(name, []).append(float(mc.score(x).image_score[0]))
    rec.remove()
    return {k: {n: np.asarray(v) for n, v in d.items()} for k, d in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench-dir", type=Path, default=Path("/tmp/medood_benchmark/bench"))
    ap.add_argument("--brain-dir", type=Path, default=ROOT / "demo_data" / "brain_mri")
    ap.add_argument("--choice", type=Path, default=ROOT / "docs" / "benchmarks" / "spectral_diagnosis.json")
    ap.add_argument("--before", nargs="+", default=["downsamples.1", "bottleneck"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "spectral_setting_check")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.perf_counter()
    chosen = json.loads(args.choice.read_text())["chosen"]
    net, parser = load_host(BUNDLE)
    stages = encoder_stages(net, 4)
    tf = brain_transforms(False, parser["pixdim"], parser["fov"])
    manifest = read_manifest(args.bench_dir / "brain_mri")
    sets = {k: s for k, s in manifest["sets"].items() if s["role"] in ("id_test", "ood_test")}
    items = {
        k: [{"image": str(p)} for p in sorted(Path(s["dir"]).iterdir()) if p.name.endswith((".nii", ".nii.gz"))]
        for k, s in sets.items()
    }
    bank = spectra(net, stages, brain_datalist(args.brain_dir / "dataset.json", "training", label_key=None), tf)
    test = {k: spectra(net, stages, v, tf) for k, v in items.items()}
    settings = {
        "chosen": (chosen["layers"], chosen["n_singular"], chosen["normalization"], chosen["combine"]),
        "before": ([stages.index(n) for n in args.before], None, "l2", "mean"),
    }
    result: dict[str, Any] = {"settings": {}, "n": {k: len(v) for k, v in items.items()}}
    for name, (lx, n_sing, norm, combine) in settings.items():
        det = fitted(detector([stages[i] for i in lx], n_sing, norm, combine), lx, bank, None)
        s = {k: scores(det, lx, v) for k, v in test.items()}
        result["settings"][name] = {
            "layers": [stages[i] for i in lx],
            "n_singular": n_sing,
            "normalization": norm,
            "combine": combine,
            "auroc": aurocs(s, "id_test"),
        }
    fit_items = brain_datalist(args.brain_dir / "dataset.json", "training", label_key=None)
    for name, s in baselines(net, [stages[-2], stages[-1]], fit_items, items, tf).items():
        result["settings"][name] = {"layers": [], "auroc": aurocs(s, "id_test")}
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["omp_threads"] = os.environ.get("OMP_NUM_THREADS")
    result["protocol"] = (
        f"bank: demo brain training volumes x contrast; test: {args.bench_dir}/brain_mri id_test "
        "against every ood_test kind (contrasts pooled); run after the validation choice"
    )
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    kinds = [k for k in result["settings"]["chosen"]["auroc"] if k != "mean"]
    lines = [
        "# Spectral: the validation choice checked on the test kinds",
        "",
        f"Generated by `scripts/check_spectral_setting.py` ({result['seconds']:.0f} s). {result['protocol']}. "
        f"Cases: {result['n']}.",
        "",
        "| setting | layers | " + " | ".join(kinds) + " | mean |",
        "|---|---|" + "---|" * (len(kinds) + 1),
    ]
    for name, r in result["settings"].items():
        vals = " | ".join(f"{r['auroc'][k]:.3f}" for k in kinds)
        lines.append(f"| {name} | {'+'.join(r['layers']) or '-'} | {vals} | **{r['auroc']['mean']:.3f}** |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    log.info(
        "wrote %s in %.0f s: %s",
        args.out,
        result["seconds"],
        {k: v["auroc"]["mean"] for k, v in result["settings"].items()},
    )


if __name__ == "__main__":
    main()
