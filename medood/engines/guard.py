"""``medood guard``: add a per-case OOD score to an existing MONAI bundle without retraining it.

:func:`build_guard` reads a model-zoo bundle (``configs/inference.json|yaml``, ``models/model.pt``), runs its
network with its own preprocessing and inferer over an in-distribution data list (hooks on the chosen layers, one
pass), fits a feature-map detector (``spectral`` by default), records its scores on in-distribution validation
cases (the threshold at the requested false-alarm rate), and writes a **companion bundle**:

* ``configs/inference.json``: the original inference config, unchanged except ``bundle_root`` (the original
  bundle, absolute) plus ``guard_*`` entries and one ``initialize`` step that attaches
  :class:`~medood.handlers.guard.GuardScoreWriter` to the original evaluator. Running it runs the original network
  once per batch; the hooks read that same pass. The original outputs are written exactly as before, plus
  ``scores.csv`` (``case,score,flagged``) and ``guard.json``;
* ``configs/metadata.json`` (the original's, with a ``guard`` section), ``configs/logging.conf`` (copied),
  ``docs/README.md`` and ``models/guard.pt`` (the detector's fitted buffers; no network weights).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from torch import nn

from medood.data.errors import DataError
from medood.detectors.base_featuremap import FeatureMapDetector
from medood.detectors.registry import get_detector_class
from medood.handlers.guard import FeatureCalibrationHandler, FeatureFitHandler
from medood.networks.feature_maps import encoder_stages
from medood.utils.checkpoints import load_state, save_state
from medood.utils.io import atomic_write_bytes, atomic_write_text, read_json_object

__all__ = ["build_guard", "find_inference_config", "read_id_datalist"]

logger = logging.getLogger(__name__)


def find_inference_config(bundle: Path, config: str | None = None) -> Path:
    """``configs/inference.json`` or ``.yaml`` of a bundle (or ``config``, relative to the bundle)."""
    candidates = (
        [bundle / config] if config else [bundle / "configs" / f"inference.{e}" for e in ("json", "yaml", "yml")]
    )
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(bundle, "has no configs/inference.json or .yaml", "pass --config with the inference config")


def _resolve(entry: Any, root: Path, image_key: str) -> dict[str, Any]:
    item = {image_key: entry} if isinstance(entry, str) else dict(entry)
    for k, v in item.items():
        if isinstance(v, str) and not os.path.isabs(v) and (root / v).exists():
            item[k] = str((root / v).resolve())
    if image_key not in item:
        raise DataError(root, f"a data-list entry has no {image_key!r}: {entry}")
    return item


def read_id_datalist(
    path: str | os.PathLike[str],
    fit_key: str = "training",
    val_key: str | None = "validation",
    val_fraction: float = 0.2,
    image_key: str = "image",
    seed: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """In-distribution cases to fit on and to set the threshold on.

    Args:
        path: a JSON list of cases (paths or dicts) or a dict of lists (Decathlon style); relative paths start at
            the file's folder.
        fit_key: the list to fit on (dict form). Defaults to ``"training"``.
        val_key: the validation list (dict form); if absent, ``val_fraction`` of the fit list is held out.
        val_fraction: held-out fraction when there is no validation list (seeded). Defaults to 0.2.
        image_key: the image key. Defaults to ``"image"``.
        seed: seed of the hold-out split. Defaults to 0.

    Raises:
        DataError: unreadable file, missing list, or too few cases.
    """
    p = Path(path)
    try:
        content = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise DataError(p, f"is not a readable JSON data list ({err})") from err
    if isinstance(content, Mapping):
        if fit_key not in content:
            raise DataError(
                p, f"has no list {fit_key!r}", f"lists: {[k for k, v in content.items() if isinstance(v, list)]}"
            )
        fit, val = list(content[fit_key]), list(content.get(val_key, [])) if val_key else []
    elif isinstance(content, list):
        fit, val = list(content), []
    else:
        raise DataError(p, "must hold a list of cases or a dict of lists")
    if not val:
        order = list(range(len(fit)))
        random.Random(seed).shuffle(order)
        n_val = max(1, round(val_fraction * len(fit)))
        val, fit = [fit[i] for i in sorted(order[:n_val])], [fit[i] for i in sorted(order[n_val:])]
    if len(fit) < 2 or not val:
        raise DataError(p, f"has {len(fit)} fit and {len(val)} validation cases; need at least 2 and 1")
    root = p.parent
    return [_resolve(e, root, image_key) for e in fit], [_resolve(e, root, image_key) for e in val]


def _run_pass(parser: ConfigParser, network: nn.Module, items: Sequence[dict], handler: Any, image_key: str) -> None:
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer") if "inferer" in parser else SimpleInferer()
    device = parser.get_parsed_content("device") if "device" in parser else torch.device("cpu")
    loader = DataLoader(Dataset(list(items), transform=preprocessing), batch_size=1, shuffle=False, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=device, val_data_loader=loader, network=network, inferer=inferer, val_handlers=[handler], decollate=False
    )
    evaluator.run()


def _first_image(parser: ConfigParser, item: dict, image_key: str, device: Any) -> torch.Tensor:
    sample = parser.get_parsed_content("preprocessing")(dict(item))
    return torch.as_tensor(sample[image_key])[None].float().to(device)


def build_guard(
    bundle: str | os.PathLike[str],
    datalist: str | os.PathLike[str],
    out: str | os.PathLike[str],
    detector: str = "spectral",
    layers: Sequence[str] | None = None,
    n_stages: int = 2,
    false_alarm_rate: float = 0.05,
    detector_args: Mapping[str, Any] | None = None,
    config: str | None = None,
    ckpt: str | None = None,
    network_id: str = "network",
    evaluator_id: str = "evaluator",
    image_key: str = "image",
    fit_key: str = "training",
    val_key: str | None = "validation",
    seed: int = 0,
) -> Path:
    """Fit a detector on a bundle's own forward pass and write the companion bundle (see the module docstring).

    Returns:
        The companion bundle folder.
    """
    src, dest = Path(bundle).resolve(), Path(out).resolve()
    cfg_path = find_inference_config(src, config)
    parser = ConfigParser()
    parser.read_config(str(cfg_path))
    parser["bundle_root"] = str(src)
    for key in (network_id, evaluator_id, "preprocessing"):
        if key not in parser:
            raise DataError(cfg_path, f"has no {key!r} entry", "pass --network-id / --evaluator-id")
    network = parser.get_parsed_content(network_id)
    load_state(network, ckpt or src / "models" / "model.pt", key="model")
    network.eval()
    fit, val = read_id_datalist(datalist, fit_key, val_key, image_key=image_key, seed=seed)
    if layers is None:
        device = next(network.parameters()).device
        layers = encoder_stages(network, n_stages, example=_first_image(parser, fit[0], image_key, device))
        logger.info("guard: hooking the deepest encoder stages %s", layers)
    cls = get_detector_class(detector)
    if not issubclass(cls, FeatureMapDetector) or not cls.requires_fit:
        raise ValueError(f"{detector!r} is not a fitted feature-map detector (e.g. spectral, mahalanobis_pool)")
    det_args = {"layers": list(layers), **dict(detector_args or {})}
    det = cls(**det_args)
    _run_pass(parser, network, fit, FeatureFitHandler(det, image_key), image_key)
    _run_pass(parser, network, val, FeatureCalibrationHandler(det, image_key), image_key)
    threshold = det.calibration.quantile(1.0 - false_alarm_rate, "score")
    save_state(det, dest / "models" / "guard.pt")
    info = {
        "detector": detector, "detector_args": det_args, "threshold": threshold, "false_alarm_rate": false_alarm_rate,
        "n_fit": len(fit), "n_val": len(val), "original_bundle": str(src), "id_datalist": str(Path(datalist).resolve()),
    }  # fmt: skip
    _write_companion(src, dest, cfg_path, cls, info, evaluator_id, image_key)
    logger.info(
        "guard: companion bundle in %s (threshold %.4g at %.0f%% false alarms)", dest, threshold, 100 * false_alarm_rate
    )
    return dest


def _write_companion(
    src: Path, dest: Path, cfg_path: Path, cls: type, info: dict[str, Any], evaluator_id: str, image_key: str
) -> None:
    config = ConfigParser.load_config_file(str(cfg_path))
    init = config.get("initialize", [])
    config.update(
        {
            "bundle_root": str(src),
            "guard_root": str(dest),
            "guard_state": "$@guard_root + '/models/guard.pt'",
            "guard_detector": {
                "_target_": "medood.utils.checkpoints.load_state",
                "module": {"_target_": f"{cls.__module__}.{cls.__name__}", **info["detector_args"]},
                "path": "@guard_state",
            },
            "guard_false_alarm_rate": info["false_alarm_rate"],
            "guard_output_dir": "$@output_dir" if "output_dir" in config else "$@guard_root + '/eval'",
            "guard_writer": {
                "_target_": "medood.handlers.guard.GuardScoreWriter",
                "detector": "@guard_detector",
                "output_dir": "@guard_output_dir",
                "false_alarm_rate": "@guard_false_alarm_rate",
                "image_key": image_key,
            },
            "initialize": [*(init if isinstance(init, list) else [init]), f"$@guard_writer.attach(@{evaluator_id})"],
        }
    )
    atomic_write_text(dest / "configs" / "inference.json", json.dumps(config, indent=2) + "\n")
    meta_path = src / "configs" / "metadata.json"
    meta = read_json_object(meta_path) if meta_path.is_file() else {}
    version = f"{meta.get('version', '0.0.0')}+guard"
    meta.update(
        version=version,
        changelog={version: f"medood guard: {info['detector']} OOD score on the original network's forward pass"},
        name=f"{meta.get('name', src.name)} + medood guard",
        guard={**info, "score_convention": "higher = more out-of-distribution; is_ood = score > threshold"},
    )
    atomic_write_text(dest / "configs" / "metadata.json", json.dumps(meta, indent=2) + "\n")
    if (src / "configs" / "logging.conf").is_file():
        atomic_write_bytes(dest / "configs" / "logging.conf", (src / "configs" / "logging.conf").read_bytes())
    atomic_write_text(dest / "docs" / "README.md", _readme(src, dest, info))


def _readme(src: Path, dest: Path, info: dict[str, Any]) -> str:
    return f"""# {src.name} + medood guard

A companion bundle made by `medood guard`: it runs the original bundle `{src}` unchanged (its network runs once
per case) and adds a per-case out-of-distribution score from forward hooks on the same pass.

* detector: `{info["detector"]}` with `{json.dumps(info["detector_args"])}` (fitted buffers in `models/guard.pt`;
  no network weights are copied);
* fitted on {info["n_fit"]} in-distribution cases of `{info["id_datalist"]}`, threshold {info["threshold"]:.6g} =
  the {100 * (1 - info["false_alarm_rate"]):g}th percentile of the scores of {info["n_val"]} in-distribution
  validation cases (false-alarm rate {info["false_alarm_rate"]:g}).

```bash
python -m monai.bundle run --config_file {dest}/configs/inference.json [--output_dir OUT] [...the original options]
```

Outputs: everything the original bundle writes, plus `scores.csv` (`case,score,flagged`; higher = more OOD) and
`guard.json` in the output folder. A case with `is_ood = 1` is unlike the data the guard was fitted on: do not
trust its output. `bundle_root` points at the original bundle and `guard_root` at this folder (absolute paths;
override them on the command line if either moves).
"""
