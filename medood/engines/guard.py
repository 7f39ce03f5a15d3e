"""``medood guard``: add a per-case OOD score to an existing MONAI bundle without retraining it.

:func:`build_guard` reads a model-zoo bundle (``configs/inference.json|yaml``, ``models/model.pt``), runs its
network with its own preprocessing and inferer over an in-distribution data list (hooks on the chosen layers, one
pass), fits a feature-map detector (``spectral`` by default), scores in-distribution validation cases and sets
the threshold with the one rule of medood, :func:`medood.utils.conformal.conformal_threshold` (refusing a
validation list too small for the requested false-alarm rate unless ``allow_small_calibration``), and writes a
**companion bundle**, a complete bundle folder that runs the model-zoo way
(``python -m monai.bundle run --config_file <companion>/configs/inference.json --bundle_root <companion>``):

* ``configs/inference.json``: the original inference config (with the ``overrides`` used for fitting), plus
  ``guard_*`` entries and one ``initialize`` step that attaches :class:`~medood.handlers.guard.GuardScoreWriter`
  to the original evaluator. Running it runs the original network once per batch; the hooks read that same pass.
  The original outputs are written exactly as before, plus the guard's results through the one run-folder
  writer (``scores.csv``: ``case,score,flagged,image``; ``thresholds.json``; ``run.json``) and ``guard.json``;
* ``configs/metadata.json`` (the original's, with a ``guard`` section), the original's other ``configs/`` files
  (copied), ``docs/README.md`` and ``models/guard.pt`` (the detector's fitted buffers);
* links to everything else of the original bundle (``models/model.pt``, ``scripts/``, data lists...), so every
  ``@bundle_root`` path of the original config resolves in the companion (copies where links are impossible).

Layer discovery sees what the network sees at inference: the bundle's ``preprocessing`` of the first fit case,
then its ``inferer`` (one sliding window, one slice), then :func:`~medood.networks.feature_maps.encoder_stages`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
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
from medood.handlers.errors import FailedCasesError, FailedCasesWriter
from medood.handlers.guard import FeatureCalibrationHandler, FeatureFitHandler
from medood.networks.feature_maps import encoder_stages, first_network_input
from medood.utils.checkpoints import load_state, save_state
from medood.utils.conformal import CalibrationSizeError, conformal_threshold, min_calibration_size
from medood.utils.io import atomic_copy, atomic_write_bytes, atomic_write_text, read_json_object

__all__ = ["build_guard", "discover_layers", "find_inference_config", "guard_threshold", "read_id_datalist"]

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


def _resolve_path(v: Any, root: Path) -> Any:
    if isinstance(v, list):
        return [_resolve_path(x, root) for x in v]
    if isinstance(v, str) and not os.path.isabs(v) and (root / v).exists():
        return str((root / v).resolve())
    return v


def _resolve(entry: Any, root: Path, image_key: str) -> dict[str, Any]:
    item = {image_key: entry} if isinstance(entry, (str, list)) else dict(entry)
    item = {k: _resolve_path(v, root) for k, v in item.items()}
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
        val_fraction: held-out fraction in ``(0, 1)`` when there is no validation list (seeded). Defaults to 0.2.
        image_key: the image key. Defaults to ``"image"``.
        seed: seed of the hold-out split. Defaults to 0.

    Raises:
        DataError: unreadable file, missing list, or too few cases.
    """
    p = Path(path)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
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


def _parsed(parser: ConfigParser, key: str, cfg_path: Path, what: str) -> Any:
    try:
        return parser.get_parsed_content(key)
    except Exception as err:
        raise DataError(cfg_path, f"entry {key!r} ({what}) cannot be built: {err}") from err


def _amp(parser: ConfigParser, evaluator_id: str) -> bool:
    key = f"{evaluator_id}#amp"
    return bool(parser.get_parsed_content(key)) if key in parser else False


def _run_pass(
    parser: ConfigParser,
    ids: Mapping[str, str],
    network: nn.Module,
    items: Sequence[dict],
    handler: Any,
    image_key: str,
    errors_dir: Path,
) -> FailedCasesWriter:
    """One pass of the bundle's own preprocessing and inferer (and its device and amp) over ``items``.

    Bad cases are skipped and listed in ``errors_dir/errors.csv`` (the returned writer knows them).
    """
    loader = DataLoader(Dataset(list(items), transform=parser.get_parsed_content(ids["preprocessing"])), batch_size=1)
    failed = FailedCasesWriter(errors_dir, image_key=image_key, raise_on_failure=False)
    evaluator = SupervisedEvaluator(
        device=parser.get_parsed_content("device") if "device" in parser else torch.device("cpu"),
        val_data_loader=loader,
        network=network,
        inferer=parser.get_parsed_content(ids["inferer"]) if ids["inferer"] in parser else SimpleInferer(),
        val_handlers=[handler, failed],
        amp=_amp(parser, ids["evaluator"]),
        decollate=False,
    )
    evaluator.run()
    return failed


def discover_layers(
    parser: ConfigParser, ids: Mapping[str, str], network: nn.Module, item: dict, image_key: str, n_stages: int,
    cfg_path: Path,
) -> list[str]:  # fmt: skip
    """The encoder stages of the network as the bundle runs it: preprocessing, then one call of its inferer.

    Raises:
        DataError: naming the config entry (``preprocessing``, ``inferer`` or the network) that failed.
    """
    sample = _parsed(parser, ids["preprocessing"], cfg_path, "the preprocessing")(dict(item))
    if isinstance(sample, list):  # a preprocessing that samples patches returns a list
        sample = sample[0]
    weight = next(network.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    image = torch.as_tensor(sample[image_key])[None].float().to(device)
    inferer = _parsed(parser, ids["inferer"], cfg_path, "the inferer") if ids["inferer"] in parser else SimpleInferer()
    try:
        example = first_network_input(inferer, network, image)
    except Exception as err:
        raise DataError(
            cfg_path, f"entry {ids['inferer']!r} ({type(inferer).__name__}) failed on the preprocessed "
            f"{item[image_key]} (shape {tuple(image.shape)}): {err}"
        ) from err  # fmt: skip
    try:
        return encoder_stages(network, n_stages, example=example[:1])
    except Exception as err:
        raise DataError(
            cfg_path, f"entry {ids['network']!r} ({type(network).__name__}) cannot be hooked on the "
            f"{ids['inferer']!r} input of shape {tuple(example.shape)}: {err}",
            "name its feature layers with --layers (module names of network.named_modules())",
        ) from err  # fmt: skip


def guard_threshold(scores: Sequence[float], alpha: float, allow_small: bool = False) -> dict[str, Any]:
    """The split-conformal threshold of in-distribution validation ``scores`` (:func:`conformal_threshold`).

    With too few scores for ``alpha`` it raises :class:`CalibrationSizeError`, or, with ``allow_small``, takes the
    largest validation score and records a warning (the false-alarm rate is then not guaranteed).

    Returns:
        ``{"rule", "threshold", "alpha", "n", "rank", "expected_rate"[, "warning"]}``.
    """
    try:
        return conformal_threshold(scores, alpha).to_dict()
    except CalibrationSizeError as err:
        if not allow_small:
            raise
        warning = f"--allow-small-calibration: {err}; the threshold is the largest validation score"
        logger.warning("guard: %s", warning)
        return {
            "rule": "largest validation score (too few cases for split-conformal)", "threshold": float(max(scores)),
            "alpha": alpha, "n": len(scores), "rank": len(scores), "expected_rate": None, "warning": warning,
        }  # fmt: skip


def _checkpoint(parser: ConfigParser, src: Path) -> Path:
    """The weights the bundle loads.

    A ``CheckpointLoader``'s ``load_path`` (top level or among the ``handlers``), else ``models/model.pt``.
    """
    raw = parser.get()

    def loader(v: Any) -> bool:
        return isinstance(v, dict) and str(v.get("_target_", "")).endswith("CheckpointLoader")

    candidates = [k for k, v in raw.items() if loader(v)]
    handlers = raw.get("handlers")
    if isinstance(handlers, list):
        candidates += [f"handlers#{i}" for i, h in enumerate(handlers) if loader(h)]
    for key in candidates:
        try:
            return Path(parser.get_parsed_content(f"{key}#load_path"))
        except Exception:  # an unresolvable path: fall back to the model-zoo default
            continue
    return src / "models" / "model.pt"


def _bundle_importable(src: Path) -> None:
    """Make the bundle's own ``scripts`` package importable, as ``monai.bundle run`` does.

    Its config may ``$import scripts...``; a ``scripts`` module imported from elsewhere before is dropped.
    """
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    if (src / "scripts").is_dir():
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            origin = getattr(sys.modules[name], "__file__", None)
            if origin is None or not Path(origin).resolve().is_relative_to(src):
                del sys.modules[name]


def build_guard(
    bundle: str | os.PathLike[str],
    datalist: str | os.PathLike[str],
    out: str | os.PathLike[str],
    detector: str = "spectral",
    layers: Sequence[str] | None = None,
    n_stages: int = 2,
    alpha: float = 0.05,
    detector_args: Mapping[str, Any] | None = None,
    config: str | None = None,
    ckpt: str | None = None,
    network_id: str = "network",
    evaluator_id: str = "evaluator",
    inferer_id: str = "inferer",
    preprocessing_id: str = "preprocessing",
    image_key: str = "image",
    fit_key: str = "training",
    val_key: str | None = "validation",
    val_fraction: float = 0.2,
    allow_small_calibration: bool = False,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Fit a detector on a bundle's own forward pass and write the companion bundle (see the module docstring).

    Args:
        bundle: the original bundle folder.
        datalist: in-distribution cases (see :func:`read_id_datalist`).
        out: the companion bundle folder.
        detector: a fitted feature-map detector. Defaults to ``"spectral"``.
        layers: module names to hook; ``None`` finds the ``n_stages`` deepest encoder stages through the bundle's
            preprocessing and inferer.
        n_stages: see ``layers``. Defaults to 2.
        alpha: the requested false-alarm rate on in-distribution cases. Defaults to 0.05.
        detector_args: more detector options.
        config: the inference config relative to the bundle (default ``configs/inference.json|yaml``).
        ckpt: the network weights (default: what the config's ``CheckpointLoader`` loads, else
            ``models/model.pt``).
        network_id: config id of the network. Defaults to ``"network"``.
        evaluator_id: config id of the evaluator. Defaults to ``"evaluator"``.
        inferer_id: config id of the inferer (absent: a simple inferer). Defaults to ``"inferer"``.
        preprocessing_id: config id of the preprocessing. Defaults to ``"preprocessing"``.
        image_key: data key of the image. Defaults to ``"image"``.
        fit_key: list of the data list to fit on. Defaults to ``"training"``.
        val_key: validation list; absent: ``val_fraction`` of the fit list. Defaults to ``"validation"``.
        val_fraction: see ``val_key``. Defaults to 0.2.
        allow_small_calibration: proceed (with a warning recorded in ``guard.json``) when the validation list is
            too small for ``alpha``. Defaults to False.
        overrides: config overrides (``{id: value}``, as ``monai.bundle run --id value``) used for fitting and
            written into the companion.
        seed: seed of the hold-out split. Defaults to 0.

    Returns:
        The companion bundle folder.

    Raises:
        CalibrationSizeError: too few validation cases for ``alpha`` (before anything is computed).
        DataError: a missing config entry, an unreadable data list or checkpoint, a network that cannot be hooked.
    """
    src, dest = Path(bundle).resolve(), Path(out).resolve()
    if dest == src:
        raise ValueError("the companion bundle must go to another folder than the original")
    cfg_path = find_inference_config(src, config)
    _bundle_importable(src)
    parser = ConfigParser()
    parser.read_config(str(cfg_path))
    parser["bundle_root"] = str(src)
    for key, value in dict(overrides or {}).items():
        parser[key] = value
    ids = {"network": network_id, "evaluator": evaluator_id, "inferer": inferer_id, "preprocessing": preprocessing_id}
    for what, key in ids.items():
        if key not in parser and what != "inferer":
            raise DataError(cfg_path, f"has no {key!r} entry (the {what})", f"pass --{what}-id")
    fit, val = read_id_datalist(datalist, fit_key, val_key, val_fraction, image_key=image_key, seed=seed)
    if len(val) < min_calibration_size(alpha) and not allow_small_calibration:
        raise CalibrationSizeError(len(val), alpha, "in-distribution validation cases")
    network = _parsed(parser, network_id, cfg_path, "the network")
    load_state(network, ckpt or _checkpoint(parser, src), key="model")
    network.eval()
    if layers is None:
        layers = discover_layers(parser, ids, network, fit[0], image_key, n_stages, cfg_path)
        logger.info("guard: hooking the deepest encoder stages %s", layers)
    cls = get_detector_class(detector)
    if not issubclass(cls, FeatureMapDetector) or not cls.requires_fit:
        raise ValueError(f"{detector!r} is not a fitted feature-map detector (e.g. spectral, mahalanobis_pool)")
    det_args = {"layers": list(layers), **dict(detector_args or {})}
    det = cls(**det_args)
    calibration = FeatureCalibrationHandler(det, image_key)
    passes = [
        _run_pass(parser, ids, network, fit, FeatureFitHandler(det, image_key), image_key, dest / "eval" / "fit"),
        _run_pass(parser, ids, network, val, calibration, image_key, dest / "eval" / "val"),
    ]
    rule = guard_threshold(calibration.values, alpha, allow_small_calibration)
    save_state(det, dest / "models" / "guard.pt")
    info = {
        "detector": detector, "detector_args": det_args, "threshold": rule["threshold"], "false_alarm_rate": alpha,
        "threshold_rule": rule, "n_fit": len(fit), "n_val": len(val), "original_bundle": str(src),
        "id_datalist": str(Path(datalist).resolve()), "overrides": dict(overrides or {}),
    }  # fmt: skip
    _write_companion(src, dest, cfg_path, cls, info, evaluator_id, image_key)
    logger.info(
        "guard: companion bundle in %s (threshold %.4g, %s, alpha %g, n %d)",
        dest, rule["threshold"], rule["rule"], alpha, len(val),
    )  # fmt: skip
    failures = [f for p in passes for f in p.failures(None)]
    if failures:  # the guard is written from the good cases; the run still fails, naming the bad ones
        raise FailedCasesError(failures, next(p.csv_path for p in passes if p.failures(None)), len(fit) + len(val))
    return dest


def _link(target: Path, link: Path) -> None:
    """``link`` -> ``target`` (a symbolic link; a copy where the file system has none)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    try:
        link.symlink_to(target, target_is_directory=target.is_dir())
    except OSError:
        atomic_copy(target, link)


def _mirror(src: Path, dest: Path, written: set[str], outputs: set[Path]) -> None:
    """Make every ``@bundle_root`` path of the original resolve in the companion.

    Copies the ``configs/`` files, links the rest (``models/model.pt``, ``scripts/``, data lists...), never the
    original's output folders.
    """
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(".") or entry.name == "__pycache__" or entry.resolve() in outputs:
            continue
        if entry.is_dir() and entry.name in ("configs", "models", "docs"):
            for sub in sorted(entry.iterdir()):
                rel = f"{entry.name}/{sub.name}"
                if rel in written:
                    continue
                if entry.name == "configs" and sub.is_file():
                    atomic_write_bytes(dest / rel, sub.read_bytes())
                else:
                    _link(sub.resolve(), dest / rel)
        elif entry.name not in written:
            _link(entry.resolve(), dest / entry.name)


def _output_dirs(cfg_path: Path, src: Path, overrides: Mapping[str, Any]) -> set[Path]:
    parser = ConfigParser()
    parser.read_config(str(cfg_path))
    parser["bundle_root"] = str(src)
    for key, value in overrides.items():
        parser[key] = value
    try:
        out = Path(parser.get_parsed_content("output_dir")) if "output_dir" in parser else None
    except Exception:  # an output folder that cannot be resolved without run-time options
        return set()
    # a relative output folder ("./output") is relative to where the bundle is run: the model zoo runs from its folder
    return set() if out is None else {out.resolve(), (src / out).resolve()}


def _write_companion(
    src: Path, dest: Path, cfg_path: Path, cls: type, info: dict[str, Any], evaluator_id: str, image_key: str
) -> None:
    edit = ConfigParser(ConfigParser.load_config_file(str(cfg_path)))
    for key, value in info["overrides"].items():
        edit[key] = value
    config = edit.get()
    init = config.get("initialize", [])
    config.update(
        {
            "bundle_root": str(dest),
            "guard_state": "$@bundle_root + '/models/guard.pt'",
            "guard_detector": {
                "_target_": "medood.utils.checkpoints.load_state",
                "module": {"_target_": f"{cls.__module__}.{cls.__name__}", **info["detector_args"]},
                "path": "@guard_state",
            },
            "guard_threshold": info["threshold"],
            "guard_output_dir": "@output_dir" if "output_dir" in config else "$@bundle_root + '/eval'",
            "guard_writer": {
                "_target_": "medood.handlers.guard.GuardScoreWriter",
                "detector": "@guard_detector",
                "output_dir": "@guard_output_dir",
                "threshold": "@guard_threshold",
                "false_alarm_rate": info["false_alarm_rate"],
                "threshold_info": info["threshold_rule"],
                "image_key": image_key,
            },
            "guard_failed_cases": {  # bad cases skipped, listed in errors.csv (the original loader is wrapped)
                "_target_": "medood.handlers.FailedCasesWriter",
                "output_dir": "@guard_output_dir",
                "image_key": image_key,
            },
            "initialize": [
                *(init if isinstance(init, list) else [init]),
                f"$@guard_writer.attach(@{evaluator_id})",
                f"$@guard_failed_cases.attach(@{evaluator_id})",
            ],
        }
    )
    rel_cfg = cfg_path.relative_to(src).with_suffix(".json").as_posix() if cfg_path.is_relative_to(src) else None
    rel_cfg = rel_cfg or "configs/inference.json"
    atomic_write_text(dest / rel_cfg, json.dumps(config, indent=2) + "\n")
    meta_path = src / "configs" / "metadata.json"
    meta = read_json_object(meta_path) if meta_path.is_file() else {}
    version = f"{meta.get('version', '0.0.0')}+guard"
    meta.update(
        version=version,
        changelog={version: f"medood guard: {info['detector']} OOD score on the original network's forward pass"},
        name=f"{meta.get('name', src.name)} + medood guard",
        guard={**info, "score_convention": "higher = more out-of-distribution; flagged = score > threshold"},
    )
    atomic_write_text(dest / "configs" / "metadata.json", json.dumps(meta, indent=2) + "\n")
    atomic_write_text(dest / "docs" / "README.md", _readme(src, dest, info))
    written = {rel_cfg, "configs/metadata.json", "docs/README.md", "models/guard.pt"}
    written.add(cfg_path.relative_to(src).as_posix())
    _mirror(src, dest, written, _output_dirs(cfg_path, src, info["overrides"]) | {dest})


def _readme(src: Path, dest: Path, info: dict[str, Any]) -> str:
    rule = info["threshold_rule"]
    warning = f"\n\n**Warning:** {rule['warning']}" if rule.get("warning") else ""
    return f"""# {src.name} + medood guard

A companion bundle made by `medood guard`: it runs the original bundle `{src}` unchanged (its network runs once
per case) and adds a per-case out-of-distribution score from forward hooks on the same pass.

* detector: `{info["detector"]}` with `{json.dumps(info["detector_args"])}` (fitted buffers in `models/guard.pt`;
  the network weights are links to the original's `models/`);
* fitted on {info["n_fit"]} in-distribution cases of `{info["id_datalist"]}`; threshold {info["threshold"]:.6g}
  ({rule["rule"]}, requested false-alarm rate {info["false_alarm_rate"]:g}, {info["n_val"]} validation cases).{warning}

```bash
python -m monai.bundle run --config_file {dest}/configs/inference.json --bundle_root {dest} [...the original options]
```

Outputs: everything the original bundle writes, plus `scores.csv` (`case,score,flagged,image`; higher = more OOD),
`thresholds.json`, `run.json` (the run manifest: rerunning into the same folder needs `MEDOOD_RUN_MODE=overwrite`
or `resume`) and `guard.json` in the output folder. A case with `flagged = 1` is unlike the data the guard was
fitted on: do not trust its output. `bundle_root` is this folder; its `models/`, `scripts/` and other entries
link to the original.
"""
