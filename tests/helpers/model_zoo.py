"""The model-zoo compatibility matrix of ``medood guard``: published inference configs, tiny synthetic cases.

The configs under ``tests/data/model_zoo/<bundle>/configs`` are copies of the MONAI model zoo's (Apache-2.0, see
``tests/data/model_zoo/NOTICE.md``). Each :class:`ZooCase` says what the tiny test changes by *overrides* (never by
editing the copy), how its synthetic in-distribution and out-of-distribution cases look, and which command-line
options point the bundle's own data list at them. :func:`run_matrix_case` builds a bundle folder with seeded
random weights, fits the guard, runs the original and the companion with the model zoo's command line
(``python -m monai.bundle run <run_id> --config_file ... --bundle_root ...``, executed in this process by default
to spare the interpreter start; ``subprocess=True`` runs it as a real command) and returns what the matrix checks.
Used by ``tests/engines/test_guard_model_zoo.py`` and ``scripts/bench_guard.py``.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image

ZOO = Path(__file__).resolve().parents[1] / "data" / "model_zoo"
REPO = Path(__file__).resolve().parents[2]
#: what the guard adds to the original outputs (errors.csv: the cases it skipped, empty if none; scores.csv,
#: thresholds.json and run.json: the run-folder files of its results)
GUARD_FILES = ("scores.csv", "guard.json", "errors.csv", "thresholds.json", "run.json")

# ----------------------------------------------------------------------------------------------- synthetic cases


def _grid(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Normalised radius of a randomly scaled ellipsoid / ellipse filling most of ``shape``."""
    axes = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radii = rng.uniform(0.7, 0.9, size=len(shape))
    return np.sqrt(sum((a / r) ** 2 for a, r in zip(axes, radii)))


def ct_volume(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """CT-like Hounsfield units: air -1000, soft tissue ~40, an organ ~90, a bony rim ~700."""
    r = _grid(shape, rng)
    organ = _grid(shape, rng) < 0.35
    body = np.where(organ, 90.0, 40.0) + 10 * rng.standard_normal(r.shape)
    return np.where(r < 1.0, np.where(r > 0.88, 700.0, body), -1000.0).astype(np.float32)


def mr_volume(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """MR-like: zero background, bright positive tissue with a smooth bias field and a darker core."""
    r = _grid(shape, rng)
    bias = 1.0 + 0.2 * np.linspace(-1, 1, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    tissue = np.where(r < 0.5, 250.0, 500.0) * bias + 20 * rng.standard_normal(r.shape)
    return np.where(r < 1.0, tissue, 0.0).astype(np.float32)


def colour_image(shape: Sequence[int], rng: np.random.Generator, kind: str) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``"endoscopy"`` (reddish tissue, dark vignette), ``"he"`` (pink stroma, purple
    nuclei) or ``"xray"`` (grey, the obvious shift of both)."""
    r = _grid(shape, rng)
    noise = rng.standard_normal((*shape, 3)) * 8
    if kind == "endoscopy":
        base = np.array([200.0, 90.0, 80.0]) * np.clip(1.2 - r, 0.1, 1.0)[..., None]
    elif kind == "he":
        base = np.broadcast_to(np.array([230.0, 170.0, 200.0]), (*shape, 3)).copy()
        for _ in range(6):
            c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            yy, xx = np.ogrid[: shape[0], : shape[1]]
            base[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < 16] = [90.0, 50.0, 140.0]
    else:
        base = np.repeat((np.clip(1.0 - r, 0, 1) * 220 + 20)[..., None], 3, axis=-1)
        noise = np.repeat(noise[..., :1], 3, axis=-1)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _nifti(path: Path, volume: np.ndarray, spacing: Sequence[float]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def _picture(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(str(path))
    return str(path)


# ------------------------------------------------------------------------------------------------ the matrix


Writer = Callable[[Path, str, str, np.random.Generator], dict[str, Any]]


@dataclass(frozen=True)
class ZooCase:
    """One published bundle in the matrix.

    Attributes:
        name: the model-zoo folder name.
        family: the network family (for the docs).
        write: ``(folder, name, kind, rng) -> data-list item``; ``kind`` is ``"id"`` or ``"ood"``.
        test_args: ``(test folder, items) -> command-line options`` that point the bundle's own data list there.
        overrides: what the tiny test changes (``{config id: value}``), for fitting and both runs.
        shift: the obvious modality shift of the OOD cases (for the docs).
        run_id: the bundle's run expression. Defaults to ``"run"``.
        tiny_network: the published network was replaced by a smaller one of its family (by ``overrides``).
        config: the inference config in ``configs/``. Defaults to ``"inference.json"``.
        weights: the checkpoint its ``CheckpointLoader`` reads in ``models/``. Defaults to ``"model.pt"``.
    """

    name: str
    family: str
    write: Writer
    test_args: Callable[[Path, list[dict[str, Any]]], dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    shift: str = ""
    run_id: str = "run"
    tiny_network: bool = False
    config: str = "inference.json"
    weights: str = "model.pt"


def _volume_writer(id_kind: str, ood_kind: str, shape: Sequence[int], spacing: Sequence[float]) -> Writer:
    make = {"ct": ct_volume, "mr": mr_volume}

    def write(folder: Path, name: str, kind: str, rng: np.random.Generator) -> dict[str, Any]:
        volume = make[id_kind if kind == "id" else ood_kind](shape, rng)
        return {"image": _nifti(folder / f"{name}.nii.gz", volume, spacing)}

    return write


def _brats_write(folder: Path, name: str, kind: str, rng: np.random.Generator) -> dict[str, Any]:
    make = mr_volume if kind == "id" else ct_volume
    return {
        "image": [
            _nifti(folder / name / f"{name}_{m}.nii.gz", make((24, 24, 16), rng), (1.0, 1.0, 1.0))
            for m in ("t1c", "t1", "t2", "flair")
        ]
    }


def _picture_writer(id_kind: str, ood_kind: str, shape: Sequence[int], suffix: str) -> Writer:
    def write(folder: Path, name: str, kind: str, rng: np.random.Generator) -> dict[str, Any]:
        return {
            "image": _picture(
                folder / f"{name}{suffix}", colour_image(shape, rng, id_kind if kind == "id" else ood_kind)
            )
        }

    return write


def _nuclei_write(folder: Path, name: str, kind: str, rng: np.random.Generator) -> dict[str, Any]:
    image = colour_image((32, 32), rng, "he" if kind == "id" else "xray")
    label = np.zeros((32, 32), np.uint8)
    label[12:20, 12:20] = 1  # the nucleus to classify (the guidance channel)
    return {
        "image": _picture(folder / "Test" / "Images" / f"{name}.png", image),
        "label": _picture(folder / "Test" / "Labels" / f"{name}.png", label),
    }


def _decathlon_args(folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    (folder / "test.json").write_text(json.dumps({"validation": items}))
    return {"data_list_file_path": str(folder / "test.json")}


def _dataset_dir(folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"dataset_dir": str(folder)}


def _brats_args(folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    datalist = folder / "datalist.json"
    datalist.write_text(
        json.dumps({"testing": [{"image": [os.path.relpath(p, folder) for p in i["image"]]} for i in items]})
    )
    return {"dataset_dir": str(folder), "data_list_file_path": str(datalist)}


def _prostate_args(folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    rows = "".join(f"{Path(i['image']).name}\n" for i in items)
    (folder / "test.csv").write_text("t2\n" + rows)
    return {"dataset_dir": str(folder) + "/"}


def _inbody_args(folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    (folder / "test_samples.json").write_text(json.dumps([{**i, "label": [1, 0]} for i in items]))
    return {"test_json": str(folder / "test_samples.json")}


def _nuclei_args(folder: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "dataset_dir": str(folder),
        "images": "$list(sorted(glob.glob(@dataset_dir + '/Test/Images/*.png')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/Test/Labels/*.png')))",
    }


_NO_WORKERS = {"dataloader#num_workers": 0}  # 2 shared cores: no loader processes (outputs do not depend on it)

CASES: dict[str, ZooCase] = {
    c.name: c
    for c in [
        ZooCase(
            "spleen_ct_segmentation", "UNet 3D", _volume_writer("ct", "mr", (40, 40, 32), (1.5, 1.5, 2.0)),
            lambda d, i: {"dataset_dir": str(d.parent)}, {**_NO_WORKERS, "inferer#roi_size": [32, 32, 32]}, "CT -> MR",
        ),
        ZooCase(
            "brats_mri_segmentation", "SegResNet 3D, 4 channels", _brats_write, _brats_args,
            {**_NO_WORKERS, "inferer#roi_size": [16, 16, 16]}, "4-channel MR -> CT",
        ),
        ZooCase(
            "swin_unetr_btcv_segmentation", "SwinUNETR 3D", _volume_writer("ct", "mr", (32, 32, 32), (1.5, 1.5, 2.0)),
            lambda d, i: {"dataset_dir": str(d.parent)},
            {
                **_NO_WORKERS, "inferer#roi_size": [32, 32, 32],
                # MONAI 1.5 removed SwinUNETR's img_size argument; tiny: feature_size 48 -> 12, and batch norm (the
                # published instance norm needs more than one voxel at 1/32 of the window, i.e. windows >= 64^3)
                "network_def": {"_target_": "SwinUNETR", "spatial_dims": 3, "in_channels": 1, "out_channels": 14,
                                "feature_size": 12, "use_checkpoint": False, "norm_name": "batch"},
                "preprocessing#transforms#0#reader": "NibabelReader",  # ITKReader needs itk (not installed)
            },
            "CT -> MR", tiny_network=True,
        ),
        ZooCase(
            "wholeBody_ct_segmentation", "SegResNet 3D, 105 classes",
            _volume_writer("ct", "mr", (32, 32, 32), (1.5, 1.5, 1.5)), lambda d, i: {"dataset_dir": str(d.parent)},
            {**_NO_WORKERS, "inferer#roi_size": [32, 32, 32], "network_def#init_filters": 8}, "CT -> MR",
            tiny_network=True,
        ),
        ZooCase(
            "prostate_mri_anatomy", "UNet 3D (6 levels)", _volume_writer("mr", "ct", (40, 40, 32), (0.5, 0.5, 0.5)),
            _prostate_args,
            {**_NO_WORKERS, "inferer#roi_size": [32, 32, 32], "network_def#channels": [4, 8, 16, 32, 64, 128]},
            "MR -> CT", tiny_network=True,
        ),
        ZooCase(
            "ventricular_short_axis_3label", "UNet 2D over slices (SliceInferer)",
            _volume_writer("mr", "ct", (48, 48, 4), (1.5, 1.5, 8.0)), _dataset_dir,
            {**_NO_WORKERS, "inferer#roi_size": [48, 48]}, "cine MR -> CT", run_id="evaluating",
        ),
        ZooCase(
            "endoscopic_tool_segmentation", "FlexibleUNet 2D (EfficientNet-B2)",
            _picture_writer("endoscopy", "xray", (80, 64), ".jpg"),
            lambda d, i: {"dataset_dir": str(d.parent.parent)},
            {**_NO_WORKERS, "preprocessing#transforms#2#spatial_size": [64, 64]}, "endoscopy -> grey radiograph",
        ),
        ZooCase(
            "endoscopic_inbody_classification", "SEResNet50 2D classifier",
            _picture_writer("endoscopy", "xray", (64, 64), ".png"), _inbody_args,
            {**_NO_WORKERS, "preprocessing#transforms#2#spatial_size": [64, 64]}, "endoscopy -> grey radiograph",
        ),
        ZooCase(
            "pediatric_abdominal_ct_segmentation", "DynUNet 3D (anisotropic strides), YAML config, **tiny**",
            _volume_writer("ct", "mr", (40, 40, 24), (1.5, 1.5, 3.0)), _decathlon_args,
            {
                **_NO_WORKERS, "inferer#roi_size": [64, 64, 32], "network_def#filters": [4, 8, 16, 32, 32, 32],
                "preprocessing#transforms#0#reader": "NibabelReader",  # ITKReader needs itk (not installed)
            },
            "CT -> MR", tiny_network=True, config="inference.yaml", weights="dynunet_FT.pt",
        ),
        ZooCase(
            "pathology_nuclei_classification", "DenseNet121 2D classifier (4 channels)", _nuclei_write, _nuclei_args,
            dict(_NO_WORKERS), "H&E -> grey radiograph",
        ),
    ]
}  # fmt: skip

#: Where each case's test files go, relative to the test folder (the bundles' own layouts).
_TEST_SUBDIR = {
    "spleen_ct_segmentation": "imagesTs", "swin_unetr_btcv_segmentation": "imagesTs",
    "wholeBody_ct_segmentation": "imagesTs", "endoscopic_tool_segmentation": "test/video0",
}  # fmt: skip


# ------------------------------------------------------------------------------------------------ running


def make_bundle(case: ZooCase, root: Path, seed: int = 0) -> Path:
    """A bundle folder: the copied configs (and the stand-in ``scripts``), seeded random weights."""
    bundle = root / case.name
    shutil.copytree(ZOO / case.name, bundle, dirs_exist_ok=True)
    parser = ConfigParser()
    sys.path.insert(0, str(bundle))  # configs may import the bundle's `scripts` when parsed
    try:
        parser.read_config(str(bundle / "configs" / case.config))
    finally:
        sys.path.remove(str(bundle))
    parser["bundle_root"] = str(bundle)
    for key, value in case.overrides.items():
        parser[key] = value
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), bundle / "models" / case.weights)  # the model zoo's format: a bare state dict
    return bundle


def write_cases(
    case: ZooCase, folder: Path, n_id: int, n_ood: int, seed: int, prefix: str = ""
) -> list[dict[str, Any]]:
    """``n_id`` in-distribution then ``n_ood`` shifted cases (seeded), as data-list items."""
    rng = np.random.default_rng(seed)
    items = [case.write(folder, f"{prefix}id{i:02d}", "id", rng) for i in range(n_id)]
    return items + [case.write(folder, f"{prefix}ood{i:02d}", "ood", rng) for i in range(n_ood)]


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)  # Python literals: what python-fire parses


def zoo_command(
    case: ZooCase,
    bundle: Path,
    output_dir: Path,
    options: dict[str, Any],
    subprocess_run: bool = False,
    config: str | None = None,
) -> float:
    """Run ``python -m monai.bundle run <run_id> --config_file <bundle>/configs/inference.json --bundle_root
    <bundle> --output_dir ... [--id value ...]`` from the bundle folder; returns the wall time in seconds."""
    argv = [
        "run", case.run_id, "--config_file", str(bundle / "configs" / (config or case.config)),
        "--bundle_root", str(bundle),
        "--output_dir", str(output_dir), *[a for k, v in options.items() for a in (f"--{k}", _cli_value(v))],
    ]  # fmt: skip
    start = time.perf_counter()
    if subprocess_run:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "monai.bundle", *argv], cwd=bundle, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{case.name}: monai.bundle run failed:\n{proc.stderr[-3000:]}")
    else:
        _in_process(argv, bundle)
    return time.perf_counter() - start


def _forget_scripts() -> None:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


def _in_process(argv: list[str], cwd: Path) -> None:
    """``python -m monai.bundle`` in this process (same argument parsing, no interpreter start)."""
    saved_argv, saved_cwd, saved_path = sys.argv, os.getcwd(), list(sys.path)
    sys.argv = ["monai.bundle", *argv]
    sys.path.insert(0, str(cwd))  # what `python -m` does with the working folder
    os.chdir(cwd)
    _forget_scripts()  # the bundle's own `scripts` package, not one imported before
    try:
        runpy.run_module("monai.bundle", run_name="__main__")
    except SystemExit as err:
        if err.code not in (0, None):
            raise RuntimeError(f"monai.bundle {' '.join(argv)} exited with {err.code}") from err
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        _forget_scripts()  # a bundle's own `scripts` package must not leak into the next bundle


def output_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative paths), the guard's own files left out."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name not in GUARD_FILES)


@dataclass
class MatrixResult:
    """What one bundle of the matrix gave."""

    name: str
    layers: list[str]
    outputs: list[str]
    identical: bool
    scores: dict[str, float]
    flagged: dict[str, int]
    seconds_original: list[float]
    seconds_companion: list[float]
    guard_info: dict[str, Any]

    @property
    def ratio(self) -> float:
        """Run time companion / original (medians of the repeats)."""
        return float(np.median(self.seconds_companion) / np.median(self.seconds_original))

    def auroc(self) -> float:
        """AUROC of the shifted cases (positive) against the in-distribution test cases."""
        from sklearn.metrics import roc_auc_score

        cases = sorted(self.scores)
        return float(roc_auc_score([int("ood" in c) for c in cases], [self.scores[c] for c in cases]))


def run_matrix_case(
    case: ZooCase,
    root: Path,
    n_fit: int = 4,
    n_val: int = 3,
    n_test: int = 2,
    alpha: float = 0.25,
    repeats: int = 1,
    subprocess_companion: bool = False,
) -> MatrixResult:
    """Bundle, guard, original and companion runs (alternating, ``repeats`` times) on the same test cases."""
    from medood.cli import main

    bundle = make_bundle(case, root)
    id_dir = root / "id_data"
    fit = write_cases(case, id_dir, n_fit, 0, seed=1, prefix="fit_")
    val = write_cases(case, id_dir, n_val, 0, seed=2, prefix="val_")
    (root / "id.json").write_text(json.dumps({"training": fit, "validation": val}))
    test_dir = root / "test_data" / _TEST_SUBDIR.get(case.name, "")
    items = write_cases(case, test_dir, n_test, n_test, seed=3)
    options = case.test_args(test_dir, items)
    companion = root / f"{case.name}_guarded"
    overrides = [f"{k}={json.dumps(v)}" for k, v in case.overrides.items()]
    status = main(
        ["guard", str(bundle), "--datalist", str(root / "id.json"), "--out", str(companion), "--alpha", str(alpha),
         *(["--override", *overrides] if overrides else [])]
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"{case.name}: medood guard exited with {status}")
    t_orig, t_comp = [], []
    for r in range(repeats):
        out_o, out_c = root / f"out_original_{r}", root / f"out_companion_{r}"
        t_orig.append(zoo_command(case, bundle, out_o, {**case.overrides, **options}))
        # the companion gets only the data options: the overrides used for fitting are in its config
        companion_cfg = "inference.json"  # a YAML original gives a JSON companion config
        t_comp.append(zoo_command(case, companion, out_c, options, subprocess_companion and r == 0, companion_cfg))
    files = output_files(out_o)
    match, _mismatch, _errors = filecmp.cmpfiles(out_o, out_c, files, shallow=False)
    identical = bool(files) and match == files and output_files(out_c) == files
    with open(out_c / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((companion / "configs" / "metadata.json").read_text())["guard"]
    return MatrixResult(
        case.name, meta["detector_args"]["layers"], files, identical, {r["case"]: float(r["score"]) for r in rows},
        {r["case"]: int(r["flagged"]) for r in rows}, t_orig, t_comp, json.loads((out_c / "guard.json").read_text()),
    )  # fmt: skip
