"""Run a bundle the way its ``configs/workflows.yaml`` declares, on tiny synthetic data, through MONAI's
``ConfigWorkflow``; shared by the generic bundle test (``tests/bundles/test_bundles.py``) and the per-bundle tests,
which assert method behaviour on the same runs.

``configs/workflows.yaml`` (not a MONAI config) holds:

- ``data``: the default data kind, a key of :data:`DATA_KINDS` (what the test writes; its config overrides, e.g.
  ``dataset_dir``, come first);
- ``reuses``: sibling bundles whose shipped files the workflows read; they are linked beside the temporary bundle
  root, so ``@bundle_root + '/../<sibling>'`` resolves, and must be left unchanged by the run;
- ``overrides``: config overrides of every workflow (tiny images, 1 epoch, tiny networks);
- ``workflows``: in run order, each ``{name, type: train | infer, configs: [merge order], overrides, data, writes}``;
  ``writes`` are globs under the bundle root that must match a non-empty file after the workflow (each workflow's
  ``output_dir`` is ``eval/<name>``);
- ``multi_gpu``: ``{override config: [workflow names]}``: the multi-process overrides (``multi_gpu_train.yaml``,
  ``multi_gpu_fit.yaml``: DDP, ``DistributedSampler``, rank-0 handlers, distributed fitting) merged LAST onto those
  workflows here; in one process they change nothing (world size 1), so the run checks that they merge and run
  (``tests/distributed`` runs them under ``torchrun`` with 2 processes);
- ``export``: what ``ckpt_export`` gives: ``{net_id, configs, ckpt, key_in_ckpt, input_shape, mode, reason}`` with
  ``mode`` ``script``, ``trace`` (scripting fails: ``reason`` says why) or ``none`` (neither works: ``reason``).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigWorkflow

from tests.helpers.brain_volumes import write_brain_dataset, write_lesion_dataset
from tests.helpers.class_folders import CLASSES, make_class_folders, one_thread, write_medmnist_npz

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SPEC = "workflows.yaml"
#: files in ``configs/`` that are not workflow configs
NOT_WORKFLOW_CONFIGS = {"metadata.json", SPEC}
NPZ_COLOURS = [(200, 90, 90), (150, 60, 40), (230, 220, 200)]


def bundle_dirs() -> list[Path]:
    """Every bundle in the repository (a folder of ``bundles/`` with ``configs/``)."""
    return sorted(p for p in BUNDLES.iterdir() if (p / "configs").is_dir())


def workflow_configs(bundle: Path) -> set[str]:
    """The workflow config files a bundle ships (``configs/*.yaml|json`` but metadata and the spec)."""
    files = [p.name for p in (bundle / "configs").iterdir() if p.suffix in (".yaml", ".yml", ".json")]
    return set(files) - NOT_WORKFLOW_CONFIGS


def load_spec(bundle: Path) -> dict[str, Any]:
    """The bundle's ``configs/workflows.yaml``.

    Raises:
        AssertionError: the bundle has none (every bundle must say how it is exercised).
    """
    path = bundle / "configs" / SPEC
    assert path.is_file(), (
        f"{bundle.name} has no configs/{SPEC}: declare how its workflows are run (data kind, config merge order, "
        f"tiny overrides) and what ckpt_export gives; see tests/helpers/bundles.py and any other bundle's file"
    )
    spec = yaml.safe_load(path.read_text())
    assert isinstance(spec, dict) and spec.get("workflows"), f"{path}: no `workflows` list"
    return spec


# ---------------------------------------------------------------------------------------------- data kinds
def _class_folders(root: Path) -> dict[str, Any]:
    """``class_folders/`` (train / val / test per class, ood_near and ood_far) and ``other_organ/`` beside it (a
    second set of the same layout, e.g. auxiliary OOD data for the heatmap decoders)."""
    make_class_folders(root / "other_organ")
    return {"dataset_dir": str(make_class_folders(root / "class_folders")), "class_names": CLASSES}


def _medmnist_npz(root: Path) -> dict[str, Any]:
    """``pathmnist.npz`` (3 classes, 12 per split, 12 x 12 pixels) and ``otherset.npz`` (one OOD set, 6 per split)."""
    root.mkdir(parents=True, exist_ok=True)
    write_medmnist_npz(root / "otherset.npz", [(20, 20, 20)], 6)
    write_medmnist_npz(root / "pathmnist.npz", NPZ_COLOURS, 12)
    return {"dataset_dir": str(root), "class_names": ["a", "b", "c"]}


def _demo_brain_pathology(root: Path) -> dict[str, Any]:
    """The demo generator's brain MRI (2 / 1 / 2 subjects, 3 OOD) with tissue labels, and pathology patches."""
    from medood.data.demo import build_demo
    from medood.data.demo.tissue import write_tissue_labels

    build_demo(root, only=["brain_mri"], n_train=2, n_val=1, n_test=2, n_ood=3)
    build_demo(root, only=["pathology"], n_train=2, n_val=1, n_test=1, n_ood=1)
    write_tissue_labels(root / "brain_mri")
    return {"dataset_dir": str(root / "brain_mri"), "pathology_dir": str(root / "pathology")}


#: data kind -> writer(root) returning the config overrides that point the bundle at the data
DATA_KINDS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "class_folders_2d": _class_folders,
    "brain_volumes": lambda root: {"dataset_dir": str(write_brain_dataset(root))},
    "brain_lesions": lambda root: {"dataset_dir": str(write_lesion_dataset(root))},
    "medmnist_npz": _medmnist_npz,
    "demo_brain_pathology": _demo_brain_pathology,
}


# ---------------------------------------------------------------------------------------------- running
def run_workflow(bundle: Path, configs: Sequence[str], kind: str, root: Path, **overrides: Any) -> ConfigWorkflow:
    """Initialise, check (``check_properties()`` clean), run and finalise one workflow of ``bundle``.

    Args:
        bundle: the repository's bundle folder (its configs are read from there).
        configs: config file names in ``configs/``, in merge order.
        kind: ``train`` or ``infer`` (MONAI's workflow type: the required properties checked).
        root: the ``bundle_root`` (models and outputs are written there).
        **overrides: config overrides.
    """
    cfg = bundle / "configs"
    wf = ConfigWorkflow(
        config_file=[str(cfg / c) for c in configs], meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"), workflow_type=kind, bundle_root=str(root), **overrides,
    )  # fmt: skip
    wf.initialize()
    problems = wf.check_properties()
    assert not problems, f"{bundle.name} {list(configs)} ({kind}): check_properties() -> {problems}"
    wf.run()
    wf.finalize()
    return wf


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class BundleRun:
    """A bundle run as its spec declares: ``root`` is the temporary bundle root (``models/``, ``eval/<workflow>/``,
    and ``snapshots/<workflow>/``, a copy of ``models/`` after each workflow)."""

    bundle: Path
    root: Path
    spec: dict[str, Any]
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)

    def overrides(self, workflow: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The config overrides of a workflow (``None`` = the bundle's defaults): data, bundle, workflow."""
        workflow = workflow or {}
        kind = workflow.get("data", self.spec["data"])
        if kind not in self.data:
            assert kind in DATA_KINDS, f"{self.bundle.name}: unknown data kind {kind!r} (known: {sorted(DATA_KINDS)})"
            self.data[kind] = DATA_KINDS[kind](self.root.parents[1] / "data" / kind)
        return {**self.data[kind], **self.spec.get("overrides", {}), **workflow.get("overrides", {})}

    def configs(self, workflow: Mapping[str, Any]) -> list[str]:
        """The workflow's configs in merge order, with the ``multi_gpu`` overrides declared for it last."""
        extra = [c for c, names in self.spec.get("multi_gpu", {}).items() if workflow["name"] in names]
        return [*workflow["configs"], *extra]

    def output(self, workflow: str) -> Path:
        """The ``output_dir`` of a workflow."""
        return self.root / "eval" / workflow

    def snapshot(self, workflow: str) -> Path:
        """The ``models/`` folder as it was after a workflow (file times kept)."""
        return self.root / "snapshots" / workflow

    def extra(self, configs: Sequence[str], kind: str, root: Path | None = None, **overrides: Any) -> ConfigWorkflow:
        """Run a workflow the spec does not declare (a test's own variant) with the bundle's overrides, on the run's
        bundle root unless ``root`` is given. Workflows that change ``models/`` must get a copy as ``root``."""
        return run_workflow(self.bundle, configs, kind, root or self.root, **{**self.overrides(), **overrides})

    def run(self, workflow: Mapping[str, Any]) -> None:
        """Run one declared workflow, check what it writes and snapshot ``models/``."""
        name, start = workflow["name"], time.time_ns()
        overrides = {**self.overrides(workflow), "output_dir": str(self.output(name))}
        run_workflow(self.bundle, self.configs(workflow), workflow["type"], self.root, **overrides)
        for pattern in workflow.get("writes", []):
            found = [p for p in self.root.glob(pattern) if p.is_file() and p.stat().st_size > 0]
            assert found, f"{self.bundle.name}: workflow {name!r} wrote nothing matching {pattern!r}"
            fresh = [p for p in found if p.stat().st_mtime_ns >= start]
            assert fresh, f"{self.bundle.name}: workflow {name!r} did not write {pattern!r} (an earlier one did)"
        if (self.root / "models").is_dir():
            shutil.copytree(self.root / "models", self.snapshot(name))
        self.done.append(name)


def run_bundle(bundle: Path, tmp: Path) -> BundleRun:
    """Run every workflow ``bundle``'s spec declares, in order, under ``tmp`` (single-threaded).

    Raises:
        AssertionError: a workflow fails its property check or writes less than declared, or a shipped file of
            the bundle or of a reused sibling changed.
    """
    spec = load_spec(bundle)
    root = tmp / "bundles" / bundle.name
    root.mkdir(parents=True)
    watched = [bundle] + [BUNDLES / name for name in spec.get("reuses", [])]
    for sibling in watched[1:]:
        (root.parent / sibling.name).symlink_to(sibling, target_is_directory=True)
    before = [_digest(folder) for folder in watched]
    run = BundleRun(bundle, root, spec)
    with one_thread():
        for workflow in spec["workflows"]:
            run.run(workflow)
    for folder, digest in zip(watched, before):
        assert _digest(folder) == digest, f"running {bundle.name} changed shipped files of {folder.name}"
    return run
