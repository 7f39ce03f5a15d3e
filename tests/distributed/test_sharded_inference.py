"""Sharded and resumable batch inference (``configs/multi_gpu_inference.yaml``; docs/scaling.md).

* every bundle ships ``multi_gpu_inference.yaml`` and it merges onto its ``inference.yaml``;
* 2 gloo processes (``torchrun``) write exactly the files of one process (2-D MECAM dermoscopy with an unreadable
  image, batches of 3: one ``scores.csv`` / ``errors.csv``, maps and overlays, byte for byte; NERO's post-hoc score
  writer: every detector's ``scores.csv`` and ``predictions.csv``);
* a 1-process 3-D run (MECAM brain MRI, batches of 2, with slice scores) killed by SIGKILL after its fourth case,
  one finished map deleted, then resumed by 2 processes: every file equals the uninterrupted run's, and the network
  saw only the batches holding a case that was not finished (each case once across the ranks); the same for the
  score writers: NERO's post-hoc writer (evaluate.yaml, a half-journalled batch) and the spectral bundle (a
  segmentation deleted), each resumed by 2 processes, and a finished NERO run resumed without any batch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medood.handlers.errors import failed_cases_in
from medood.io import run_folder as rf
from tests.helpers.brain_volumes import write_brain_dataset
from tests.helpers.bundles import BUNDLES, bundle_dirs, run_workflow
from tests.helpers.class_folders import make_class_folders, one_thread
from tests.helpers.distributed import REPO, free_port

MECAM_2D = BUNDLES / "mecam_dermoscopy_ood_classification"
MECAM_3D = BUNDLES / "mecam_brain_mri_ood_classification"
NERO = BUNDLES / "nero_endoscopy_ood_classification"
SPECTRAL = BUNDLES / "spectral_brain_mri_ood_classification"
#: 3-D overrides: a 16^3 field of view (the shipped weights are fully convolutional), slice scores along axis 2,
#: batches of 2 (6 cases: 3 batches)
TINY_3D = {"fov": [16, 16, 16], "inferer#slice_axes": [2], "batch_size": 2}

# a bundle run as `python -m monai.bundle run ...`, under torchrun or alone, that records the cases the network
# scores (calls.<rank>.<pid>: the batch's `case` field) and, with KILL_AFTER_MAPS=k, SIGKILLs itself right after
# writing map k + 1 (before its row is recorded), leaving a stale temporary file beside it
CHILD = r"""
import os, runpy, signal, sys
from pathlib import Path
import medood.handlers.writers as writers
from medood.engines.evaluator import OODEvaluator

calls = Path(os.environ["CALLS_DIR"]) / f"calls.{os.environ.get('RANK', '0')}.{os.getpid()}"
real_forward = OODEvaluator._forward

def counted(self, inputs, network, *args, **kwargs):
    with calls.open("a") as f:
        f.write("".join(f"{c}\n" for c in self.state.batch["case"]))
    return real_forward(self, inputs, network, *args, **kwargs)

OODEvaluator._forward = counted
kill_after = int(os.environ.get("KILL_AFTER_MAPS", "0"))
if kill_after:
    real_write, written = writers.write_map_nifti, []

    def write(array, affine, path, *args, **kwargs):
        out = real_write(array, affine, path, *args, **kwargs)
        written.append(path)
        if len(written) > kill_after:
            p = Path(path)
            (p.parent / f".{p.name}.k1ll3d.tmp.nii.gz").write_bytes(b"\x1f\x8b cut short")
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    writers.write_map_nifti = write
if os.environ.get("COUNT_ITERATIONS"):  # score-only bundles (SupervisedEvaluator): the cases of every iteration
    from monai.engines import SupervisedEvaluator
    from medood.utils.io import case_name
    real_iteration = SupervisedEvaluator._iteration

    def iteration(self, engine, batchdata):
        meta = getattr(batchdata["image"], "meta", None) or {}
        names = [case_name(f) for f in meta["filename_or_obj"]] if "filename_or_obj" in meta else batchdata["case"]
        with calls.open("a") as f:
            f.write("".join(f"{c}\n" for c in names))
        return real_iteration(self, engine, batchdata)

    SupervisedEvaluator._iteration = iteration
kill_records = int(os.environ.get("KILL_AFTER_RECORDS", "0"))
if kill_records:  # SIGKILL right after the k-th case is journalled (the next ones of its batch are not)
    from medood.io.run_folder import RunFolder
    real_record, recorded = RunFolder.record, []

    def record(self, *args, **kwargs):
        real_record(self, *args, **kwargs)
        recorded.append(1)
        if len(recorded) >= kill_records:
            os.kill(os.getpid(), signal.SIGKILL)

    RunFolder.record = record
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _bundle_root(tmp: Path, bundle: Path) -> Path:
    """A bundle root in ``tmp`` whose ``models/`` is the shipped one (read only)."""
    root = tmp / bundle.name
    root.mkdir()
    (root / "models").symlink_to(bundle / "models", target_is_directory=True)
    return root


def _run(tmp: Path, bundle: Path, configs: list[str], overrides: dict, nproc: int = 0, **env: str) -> int:
    """Run the bundle through :data:`CHILD` (``nproc`` > 0: under torchrun); returns the exit status."""
    script = tmp / "child.py"
    script.write_text(CHILD)
    cfg = bundle / "configs"
    args = [
        "run", "--config_file", repr([str(cfg / c) for c in configs]), "--meta_file", str(cfg / "metadata.json"),
        "--logging_file", str(cfg / "logging.conf"),
    ]  # fmt: skip
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
                     f"--rdzv-endpoint=127.0.0.1:{free_port()}"]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDOOD_PROGRESS": "0", "PYTHONPATH": str(REPO), **env}
    done = subprocess.run([*launcher, str(script), *args], env=full_env, capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, 1, -9):
        raise AssertionError(f"run failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return done.returncode


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a run folder (hidden ones included) but ``run.json``, whose cases and file list are kept."""
    got = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != rf.RUN_MANIFEST}
    manifest = json.loads((out / rf.RUN_MANIFEST).read_text())
    got["run.json:cases,files,status"] = json.dumps([manifest["cases"], manifest["files"], manifest["status"]]).encode()
    return got


def _inferred(calls: Path) -> list[str]:
    return sorted(line for p in calls.glob("calls.*") for line in p.read_text().splitlines())


def test_every_bundle_has_a_multi_gpu_inference_config_that_merges_onto_its_inference() -> None:
    for bundle in bundle_dirs():
        cfg = bundle / "configs"
        assert (cfg / "multi_gpu_inference.yaml").is_file(), f"{bundle.name} has no configs/multi_gpu_inference.yaml"
        parser = ConfigParser()
        parser.read_config([str(cfg / "inference.yaml"), str(cfg / "multi_gpu_inference.yaml")])
        assert "inference_sampler(@dataset, @dataloader#batch_size)" in parser["dist_sampler"], bundle.name
        assert parser["dataloader"]["sampler"] == "@dist_sampler", bundle.name
        assert "rank_zero_handlers" in parser["evaluator"]["val_handlers"], bundle.name
        assert any("cleanup" in str(x) for x in parser["finalize"]), bundle.name
        text = (cfg / "multi_gpu_inference.yaml").read_text() + str(parser["evaluator"]["val_handlers"])
        for ref in set(re.findall(r"@([A-Za-z_][\w#]*)", text)):
            assert ref in parser, f"{bundle.name}: multi_gpu_inference.yaml refers to @{ref}, which is not defined"


@pytest.mark.slow
def test_two_processes_write_the_files_of_one_2d(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data")
    (data / "test" / "polyp" / "broken.png").write_bytes(b"not a png")  # errors.csv gets one row
    root = _bundle_root(tmp_path, MECAM_2D)
    one, two = tmp_path / "one", tmp_path / "two"
    with one_thread(), pytest.raises(Exception) as failed:  # MONAI wraps it; checked below
        run_workflow(MECAM_2D, ["inference.yaml"], "infer", root, dataset_dir=str(data), output_dir=str(one),
                     batch_size=3)  # fmt: skip
    assert "1 of 10 cases failed" in str(failed_cases_in(failed.value))
    configs = ["inference.yaml", "multi_gpu_inference.yaml"]
    assert _run(tmp_path, MECAM_2D, configs, {"bundle_root": str(root), "dataset_dir": str(data),
                "output_dir": str(two), "batch_size": 3}, nproc=2, CALLS_DIR=str(tmp_path)) == 1  # fmt: skip
    inferred = _inferred(tmp_path)
    assert len(inferred) == 9 == len(set(inferred)), "each readable image scored exactly once across the ranks"
    assert len({p.name.split(".")[1] for p in tmp_path.glob("calls.*")}) == 2, "both ranks scored images"
    assert _files(two) == _files(one)
    assert len(rf.read_score_rows(two / rf.SCORES_CSV)) == 9
    assert (two / rf.ERRORS_CSV).read_text().splitlines()[1].startswith("polyp/broken,"), "one errors.csv, one row"
    assert len((two / rf.ERRORS_CSV).read_text().splitlines()) == 2


@pytest.mark.slow
def test_kill_9_then_two_process_resume_gives_the_uninterrupted_outputs_3d(tmp_path: Path) -> None:
    data = write_brain_dataset(tmp_path / "data")
    root = _bundle_root(tmp_path, MECAM_3D)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    with one_thread():
        run_workflow(MECAM_3D, ["inference.yaml"], "infer", root, dataset_dir=str(data), output_dir=str(clean),
                     **TINY_3D)  # fmt: skip
    cases = [r.case for r in rf.read_score_rows(clean / rf.SCORES_CSV)]
    assert len(cases) == 6 and (clean / rf.SLICE_SCORES_CSV).is_file()

    overrides = {"bundle_root": str(root), "dataset_dir": str(data), "output_dir": str(killed), **TINY_3D}
    first = tmp_path / "first"
    first.mkdir()
    assert _run(tmp_path, MECAM_3D, ["inference.yaml"], overrides, CALLS_DIR=str(first), KILL_AFTER_MAPS="4") == -9
    assert not (killed / rf.SCORES_CSV).exists() and list(killed.glob(".*.tmp.nii.gz")), "killed mid-run"
    assert (killed / rf.map_file(cases[4], "cam")).is_file(), "the fifth case's map was written, not its row"
    (killed / rf.map_file(cases[3], "cam")).unlink()  # a recorded row without its map: redone (with its batch)

    again = tmp_path / "again"
    again.mkdir()
    configs = ["inference.yaml", "multi_gpu_inference.yaml"]
    assert _run(tmp_path, MECAM_3D, configs, overrides, nproc=2, CALLS_DIR=str(again), MEDOOD_RUN_MODE="resume") == 0
    assert _inferred(again) == sorted(cases[2:]), "the network ran on the batches of unfinished cases only, once"
    assert len({p.name.split(".")[1] for p in again.glob("calls.*")}) == 2, "both ranks scored cases"
    assert _files(killed) == _files(clean), "every output file as the uninterrupted run's"


@pytest.mark.slow
def test_two_processes_write_the_posthoc_scores_of_one(tmp_path: Path) -> None:
    data = make_class_folders(tmp_path / "data")
    root = _bundle_root(tmp_path, NERO)
    one, two = tmp_path / "one", tmp_path / "two"
    overrides = {"dataset_dir": str(data), "batch_size": 2, "datalist_split": "test"}
    with one_thread():
        run_workflow(NERO, ["inference.yaml"], "infer", root, output_dir=str(one), **overrides)
    configs = ["inference.yaml", "multi_gpu_inference.yaml"]
    assert _run(tmp_path, NERO, configs, {"bundle_root": str(root), "output_dir": str(two), **overrides}, nproc=2,
                CALLS_DIR=str(tmp_path)) == 0  # fmt: skip
    files = _tree(one)
    assert len(files) > 20 and _tree(two) == files, "every file but run.json's id and times as one process's"
    assert len(rf.read_score_rows(two / "msp" / rf.SCORES_CSV)) == 9


def _tree(out: Path) -> dict[str, bytes]:
    """Every file under a run folder (sub-folders and hidden files included) but ``run.json``, whose cases and
    status are kept; a journal left behind would show."""
    got = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = json.loads(got.pop(rf.RUN_MANIFEST))
    got["run.json:cases,status"] = json.dumps([manifest["cases"], manifest["status"]]).encode()
    return got


@pytest.mark.slow
def test_nero_kill_9_then_two_process_resume_gives_the_uninterrupted_outputs(tmp_path: Path) -> None:
    """NERO's post-hoc writer (evaluate.yaml: 21 ID / OOD images, batches of 4, every detector's scores.csv,
    predictions.csv, results.json / .md): killed right after the fifth case's journal line (its batch half done),
    resumed by 2 processes: only batches 2-6 reach the network, and every file equals the uninterrupted run's."""
    data = make_class_folders(tmp_path / "data")
    root = _bundle_root(tmp_path, NERO)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    configs = ["inference.yaml", "evaluate.yaml"]
    overrides = {"bundle_root": str(root), "dataset_dir": str(data), "batch_size": 4}
    assert _run(tmp_path, NERO, configs, {**overrides, "output_dir": str(clean)}, CALLS_DIR=str(tmp_path)) == 0
    cases = [r.case for r in rf.read_score_rows(clean / "msp" / rf.SCORES_CSV)]
    assert len(cases) == 21 and (clean / rf.RESULTS_FILE).is_file()

    first, again, third = (tmp_path / n for n in ("first", "again", "third"))
    for folder in (first, again, third):
        folder.mkdir()
    overrides["output_dir"] = str(killed)
    assert _run(tmp_path, NERO, configs, overrides, CALLS_DIR=str(first), COUNT_ITERATIONS="1",
                KILL_AFTER_RECORDS="5") == -9  # fmt: skip
    assert not (killed / "predictions.csv").exists() and list(killed.glob(".progress.rank*.jsonl")), "killed mid-run"
    assert _run(tmp_path, NERO, [*configs, "multi_gpu_inference.yaml"], overrides, nproc=2, CALLS_DIR=str(again),
                COUNT_ITERATIONS="1", MEDOOD_RUN_MODE="resume") == 0  # fmt: skip
    assert _inferred(again) == sorted(cases[4:]), "the network ran on the batches of unfinished cases only, once"
    assert len({p.name.split(".")[1] for p in again.glob("calls.*")}) == 2, "both ranks scored cases"
    assert _tree(killed) == _tree(clean), "every output file as the uninterrupted run's"

    # resuming a finished run: nothing reaches the network, the files stay (kept rows read back from the CSVs)
    assert _run(tmp_path, NERO, configs, overrides, CALLS_DIR=str(third), COUNT_ITERATIONS="1",
                MEDOOD_RUN_MODE="resume") == 0  # fmt: skip
    assert _inferred(third) == []
    assert _tree(killed) == _tree(clean)


@pytest.mark.slow
def test_spectral_kill_9_then_resume_redoes_unfinished_and_broken_cases_only(tmp_path: Path) -> None:
    """The spectral bundle (6 volumes, batches of 1, a SaveImaged segmentation per case, scores.csv, guard.json):
    killed right after the second case's journal line, the first case's segmentation deleted, resumed by 2
    processes: the network runs on the first case and cases 3-6 only, and every file equals the uninterrupted
    run's."""
    data = write_brain_dataset(tmp_path / "data")
    root = _bundle_root(tmp_path, SPECTRAL)
    clean, killed, first, again = (tmp_path / n for n in ("clean", "killed", "first", "again"))
    for folder in (first, again):
        folder.mkdir()
    overrides = {"bundle_root": str(root), "dataset_dir": str(data), "pixdim": 10.0, "fov": [16, 24, 16]}
    assert _run(tmp_path, SPECTRAL, ["inference.yaml"], {**overrides, "output_dir": str(clean)},
                CALLS_DIR=str(tmp_path)) == 0  # fmt: skip
    cases = [r.case for r in rf.read_score_rows(clean / rf.SCORES_CSV)]
    assert len(cases) == 6 and all((clean / f"{c}_seg.nii.gz").is_file() for c in cases)

    overrides["output_dir"] = str(killed)
    assert _run(tmp_path, SPECTRAL, ["inference.yaml"], overrides, CALLS_DIR=str(first), COUNT_ITERATIONS="1",
                KILL_AFTER_RECORDS="2") == -9  # fmt: skip
    assert not (killed / rf.SCORES_CSV).exists() and (killed / f"{cases[1]}_seg.nii.gz").is_file()
    (killed / f"{cases[0]}_seg.nii.gz").unlink()  # a recorded case without its segmentation: redone
    configs = ["inference.yaml", "multi_gpu_inference.yaml"]
    assert _run(tmp_path, SPECTRAL, configs, overrides, nproc=2, CALLS_DIR=str(again), COUNT_ITERATIONS="1",
                MEDOOD_RUN_MODE="resume") == 0  # fmt: skip
    assert _inferred(again) == sorted([cases[0], *cases[2:]]), "unfinished and broken cases only, once"
    assert len({p.name.split(".")[1] for p in again.glob("calls.*")}) == 2, "both ranks scored cases"
    assert _tree(killed) == _tree(clean), "every output file as the uninterrupted run's"
