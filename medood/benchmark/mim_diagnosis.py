"""Per-stage figures of MIM-OOD on validation lesions (``scripts/diagnose_mim.py``): which stage limits the result.

On the foreground slices of each volume (:func:`slice_stats`: tokens, the token detector's probabilities, the
in-painter's masked NLL, the AR baseline's token NLL, the tokenizer's reconstruction, lesion fractions per token):

* token flagging (:func:`token_figures`, :func:`threshold_sweep`, :func:`per_case`): ranking and recall / precision
  of each flagging (:func:`token_flags`) against lesion tokens, healthy flag rates;
* in-painter and tokenizer (:func:`inpainter_figures`): what in-painting every lesion token heals and disturbs,
  the tokenizer's healthy residual floor;
* the token detector on synthetic anomalies (:func:`synthetic_figures`) and paired timing (:func:`paired_timing`);
* all of them and the oracle flags (:func:`stage_figures`). The page: :mod:`medood.benchmark.mim_diagnosis_page`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medood.benchmark.stage_maps import flag_quality, ranking
from medood.losses import ImageAnomalyTokenLoss
from medood.metrics import auroc
from medood.transforms import RandSlicesd

__all__ = [
    "dilate",
    "inpainter_figures",
    "paired_timing",
    "per_case",
    "slice_stats",
    "stage_figures",
    "synthetic_figures",
    "threshold_sweep",
    "token_figures",
    "token_flags",
]


def dilate(mask: Tensor, r: int) -> Tensor:
    """Token masks ``(N, h, w)`` dilated by ``r`` tokens (a ``2r + 1`` square; ``r <= 0``: as they are)."""
    return mask if r <= 0 else F.max_pool2d(mask.float()[:, None], 2 * r + 1, 1, r)[:, 0] > 0


@torch.no_grad()
def slice_stats(net: Any, ar: Any, vol: dict[str, Tensor], same_tokenizer: bool) -> dict[str, Tensor]:
    """Token-level and pixel-level quantities of every foreground slice of one volume (model space)."""
    x = vol["image"][None]
    slices, pos, index = net.slices_of(x)
    zs = torch.tensor([z for _, z in index])
    grab = lambda v: net.pad_slices(v[None].movedim(4, 1)[0][zs])[0]  # noqa: E731 - (N, 1, H', W') like the slices
    slices = net.pad_slices(slices)[0]
    s = net.tokenizer.downsample
    out: dict[str, list[Tensor]] = {}
    for i in range(0, len(slices), net.slice_batch):
        sl, p = slices[i : i + net.slice_batch], pos[i : i + net.slice_batch]
        tok = net.tokenize(sl, p)
        row = {
            "tokens": tok,
            "atd": net.token_anomaly(tok, p),
            "nll": net.token_nll(tok, p),
            "ar_nll": ar.token_nll(tok if same_tokenizer else ar.tokenize(sl, p), p),
            "recon": net.decode(tok),
        }
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    res = {k: torch.cat(v) for k, v in out.items()}
    res.update(slices=slices, positions=pos, brain=F.avg_pool2d((slices > 0).float(), s)[:, 0] > 0)
    if "label" in vol:
        lesion_px = grab(vol["label"])
        res.update(lesion_px=lesion_px > 0.5, twin=grab(vol["twin"]), lesion_frac=F.avg_pool2d(lesion_px, s)[:, 0])
    return res


def token_flags(net: Any, ar: Any, st: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tokens each flagging (``atd``, ``nll``, ``union``, ``ar``) in-paints, on one volume's :func:`slice_stats`.

    MIM: the detector's own decision (``flag_scores``: configured thresholds, hysteresis and dilation); AR: its
    resampling threshold, no dilation, as it runs.
    """
    configured, out = net.flagging, {}
    for mode in ("atd", "nll", "union"):
        net.flagging = mode
        out[mode] = net.flag_scores(st["atd"], st["nll"])
    net.flagging = configured
    return {**out, "ar": st["ar_nll"] > ar.threshold_nll}


def token_figures(net: Any, ar: Any, lesion_stats: list[dict], healthy_stats: list[dict]) -> dict[str, Any]:
    """Ranking and flag figures over the brain tokens of lesioned slices, healthy flag rates."""
    scores: dict[str, list[Tensor]] = {"atd": [], "nll": [], "ar_nll": []}
    fl: dict[str, list[Tensor]] = {k: [] for k in ("atd", "nll", "union", "ar")}
    t25, tany = [], []
    for st in lesion_stats:
        keep = st["brain"] & st["lesion_px"].flatten(1).any(1)[:, None, None]
        for k in scores:
            scores[k].append(st[k][keep])
        for k, v in token_flags(net, ar, st).items():
            fl[k].append(v[keep])
        t25.append(st["lesion_frac"][keep] >= 0.25)
        tany.append(st["lesion_frac"][keep] > 0)
    y25, yany = torch.cat(t25), torch.cat(tany)
    res: dict[str, Any] = {
        "n_tokens": int(y25.numel()),
        "n_lesion_tokens_25": int(y25.sum()),
        "n_lesion_tokens_any": int(yany.sum()),
    }
    for k, vs in scores.items():
        s = torch.cat(vs).float()
        res[f"{k}_ranking"] = {"lesion_25": ranking(s, y25), "lesion_any": ranking(s, yany)}
    healthy_flags = [(token_flags(net, ar, st), st["brain"]) for st in healthy_stats]
    for k, fs in fl.items():
        f = torch.cat(fs)
        healthy = torch.cat([hf[k][brain] for hf, brain in healthy_flags])
        res[f"{k}_flags"] = {
            "lesion_25": flag_quality(f, y25),
            "lesion_any": flag_quality(f, yany),
            "healthy_flag_rate": float(healthy.float().mean()),
        }
    return res


def threshold_sweep(
    lesion_stats: list[dict], healthy_stats: list[dict], key: str, thresholds: dict[str, float]
) -> list[dict[str, Any]]:
    """Recall / precision (25 % lesion tokens) and healthy flag rate of ``stats[key] > t``, dilation 0 and 1."""
    rows = []
    for name, t in thresholds.items():
        for r in (0, 1):
            hits = [(dilate(st[key] > t, r), st) for st in lesion_stats]
            keep = [st["brain"] & st["lesion_px"].flatten(1).any(1)[:, None, None] for _, st in hits]
            f = torch.cat([h[k] for (h, _), k in zip(hits, keep)])
            y = torch.cat([st["lesion_frac"][k] >= 0.25 for (_, st), k in zip(hits, keep)])
            healthy = torch.cat([dilate(st[key] > t, r)[st["brain"]] for st in healthy_stats])
            rows.append(
                {
                    "threshold": name,
                    "value": t,
                    "dilation": r,
                    **flag_quality(f, y),
                    "healthy_flag_rate": float(healthy.float().mean()),
                }
            )
    return rows


def inpainter_figures(net: Any, lesion_stats: list[dict], healthy_stats: list[dict]) -> dict[str, Any]:
    """All lesion tokens in-painted (dilated as configured): what is healed, what is disturbed; tokenizer floor."""
    acc: dict[str, list[Tensor]] = {k: [] for k in ("rec_in", "inp_in", "contrast", "heal_rec", "heal_inp")}
    out_rec, out_inp, ring_rec, ring_inp = [], [], [], []
    with torch.no_grad():
        for st in lesion_stats:
            mask = dilate(st["lesion_frac"] >= 0.25, net.mask_dilation)
            x, rec, lesion = st["slices"], st["recon"], st["lesion_px"]
            x_hat = torch.cat(
                [
                    net.decode(net.inpaint(st["tokens"][i : i + 64], mask[i : i + 64], st["positions"][i : i + 64]))
                    for i in range(0, len(x), 64)
                ]
            )
            brain = x > 0
            acc["rec_in"].append((x - rec).abs()[lesion])
            acc["inp_in"].append((x - x_hat).abs()[lesion])
            acc["contrast"].append((x - st["twin"]).abs()[lesion])
            acc["heal_rec"].append((rec - st["twin"]).abs()[lesion])
            acc["heal_inp"].append((x_hat - st["twin"]).abs()[lesion])
            ring = F.interpolate(mask.float()[:, None], scale_factor=net.tokenizer.downsample) > 0
            out_rec.append((x - rec).abs()[brain & ~lesion])
            out_inp.append((x - x_hat).abs()[brain & ~lesion])
            ring_rec.append((x - rec).abs()[brain & ring & ~lesion])
            ring_inp.append((x - x_hat).abs()[brain & ring & ~lesion])
    m = {k: float(torch.cat(v).mean()) for k, v in acc.items()}
    healthy = torch.cat([(st["slices"] - st["recon"]).abs()[st["slices"] > 0] for st in healthy_stats])
    p50, p99 = (float(torch.quantile(healthy[torch.randperm(healthy.numel())[:2_000_000]], q)) for q in (0.5, 0.99))
    lesion_rec = torch.cat(acc["rec_in"])
    return {
        "inpainter": {
            "residual_in_lesion_after_inpainting": m["inp_in"],
            "residual_in_lesion_tokenizer_only": m["rec_in"],
            "lesion_contrast_to_healthy_twin": m["contrast"],
            "distance_to_twin_in_lesion_tokenizer_only": m["heal_rec"],
            "distance_to_twin_in_lesion_after_inpainting": m["heal_inp"],
            "healed_fraction": 1.0 - m["heal_inp"] / max(m["contrast"], 1e-9),
            "residual_outside_lesion_after": float(torch.cat(out_inp).mean()),
            "residual_outside_lesion_before": float(torch.cat(out_rec).mean()),
            "residual_inpainted_ring_after": float(torch.cat(ring_inp).mean()),
            "residual_inpainted_ring_before": float(torch.cat(ring_rec).mean()),
        },
        "tokenizer": {
            "healthy_residual_p50": p50,
            "healthy_residual_p99": p99,
            "lesion_residual_mean": float(lesion_rec.mean()),
            "lesion_residual_p50": float(lesion_rec.median()),
            "lesion_fraction_above_healthy_p99": float((lesion_rec > p99).float().mean()),
        },
    }


def per_case(net: Any, ar: Any, lesion_stats: list[dict], cases: list[dict]) -> list[dict[str, Any]]:
    """Recall of every flagging on the lesion tokens (>= 25 %) of each validation lesion."""
    rows = []
    for st, c in zip(lesion_stats, cases):
        target = st["lesion_frac"] >= 0.25
        row: dict[str, Any] = {"case": c["case"], "lesion_type": c["lesion_type"], "lesion_tokens": int(target.sum())}
        row.update({f"recall_{k}": flag_quality(v, target)["recall"] for k, v in token_flags(net, ar, st).items()})
        rows.append(row)
    return rows


@torch.no_grad()
def paired_timing(net: Any, volume: Tensor, repeats: int = 3) -> dict[str, float]:
    """Median detector seconds on one volume per flagging, the flaggings interleaved (fair under a varying load)."""
    times: dict[str, list[float]] = {m: [] for m in ("atd", "nll", "union")}
    for _ in range(repeats):
        for mode, values in times.items():
            net.flagging = mode
            start = time.perf_counter()
            net.predict_map(volume[None])
            values.append(time.perf_counter() - start)
    return {m: float(np.median(v)) for m, v in times.items()}


@torch.no_grad()
def synthetic_figures(net: Any, healthy: list[dict], generators: Callable[[], Any]) -> dict[str, float]:
    """Token-detector AUROC on synthetic anomalies of the healthy validation slices (16 per volume, seeded).

    Tells "the detector does not learn its training task" from "it learns it but that does not transfer to
    lesions": the image-space ``generators()`` (fresh ones per use, e.g. those of the bundle's
    ``configs/train_detector_image.yaml``) and the token-space corruptions.
    """
    items = [it for c in healthy for it in RandSlicesd("image", num_samples=16, uniform=True)({"image": c["image"]})]
    x, pos = torch.stack([torch.as_tensor(i["image"]) for i in items]), torch.stack([i["position"] for i in items])
    brain = F.avg_pool2d((x > 0).float(), net.tokenizer.downsample)[:, 0] > 0
    out = {}
    for name, kw in (("image_space", {"token_prob": 0.0}), ("token_space", {"token_prob": 1.0})):
        loss = ImageAnomalyTokenLoss(net.tokenizer, generators=generators(), clean_prob=0.0, seed=12345, **kw)
        tokens, target = loss.make_batch(x, pos)
        prob = torch.cat([net.token_anomaly(tokens[i : i + 64], pos[i : i + 64]) for i in range(0, len(x), 64)])
        out[f"atd_auroc_{name}"] = auroc(prob[brain].numpy(), target[brain].numpy())
        out[f"anomalous_token_fraction_{name}"] = float(target[brain].mean())
    return out


def stage_figures(
    net: Any,
    ar: Any,
    lesioned: list[dict],
    healthy: list[dict],
    record: dict[str, Any],
    generators: Callable[[], Any],
) -> tuple[dict[str, Any], dict]:
    """Token, in-painter and tokenizer figures, and the oracle flags of every validation volume.

    Args:
        net: the MIM detector.
        ar: the AR baseline.
        lesioned: lesioned volumes in model space (``image``, ``label``, ``twin``: the healthy twin on the same
            intensity scale, ``case``, ``lesion_type``).
        healthy: healthy volumes in model space (``image``, ``case``).
        record: ``weights.same_tokenizer`` and ``nll_threshold.healthy_nll`` (the NLL sweep's thresholds).
        generators: the image-space anomaly generators of :func:`synthetic_figures`.

    Returns:
        The figures (``tokens``, ``sweeps``, ``inpainter``, ``tokenizer``, ``per_case``,
        ``seconds_per_volume_paired``, ``synthetic``) and the oracle token masks (``lesion``, ``healthy``).
    """
    same = record["weights"]["same_tokenizer"]
    lesion_stats = [slice_stats(net, ar, c, same) for c in lesioned]
    healthy_stats = [slice_stats(net, ar, c, same) for c in healthy]
    atd_thresholds = {f"p>{v:g}": v for v in (0.2, 0.5, 0.8, 0.95)}
    figures = {
        "tokens": token_figures(net, ar, lesion_stats, healthy_stats),
        "sweeps": {
            "atd": threshold_sweep(lesion_stats, healthy_stats, "atd", atd_thresholds),
            "nll": threshold_sweep(lesion_stats, healthy_stats, "nll", record["nll_threshold"].get("healthy_nll", {})),
        },
        **inpainter_figures(net, lesion_stats, healthy_stats),
        "per_case": per_case(net, ar, lesion_stats, lesioned),
        "seconds_per_volume_paired": paired_timing(net, healthy[0]["image"]),
        "synthetic": synthetic_figures(net, healthy, generators),
    }
    oracle = {
        "lesion": [dilate(st["lesion_frac"] >= 0.25, net.mask_dilation) for st in lesion_stats],
        "healthy": [torch.zeros(st["tokens"].shape, dtype=torch.bool) for st in healthy_stats],
    }
    return figures, oracle
