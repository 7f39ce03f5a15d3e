"""Batch mode goes on past bad cases: SafeDataset records them, SkippingDataLoader drops them, FailedCasesWriter
writes errors.csv and fails the run at the very end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.transforms import Compose, Lambdad

from medood.data import CaseFailure, SafeCacheDataset, SafeDataset, SkippingDataLoader
from medood.data.readers import load_volume
from medood.data.transforms import LoadVolumed
from medood.handlers import FailedCasesError, FailedCasesWriter
from tests.reliability.corpus import KINDS
from tests.reliability.corpus.nifti import vol, write_nifti


def _folder(tmp: Path, n_good: int = 3) -> list[dict[str, str]]:
    """Good volumes g0.. and three bad ones (random bytes, a 4D file, NaN voxels), interleaved."""
    tmp.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_good):
        items.append({"image": str(write_nifti(tmp / f"g{i}.nii.gz", vol(seed=i)))})
    (tmp / "noise.nii.gz").write_bytes(b"\x00\x01garbage" * 50)
    fmri = write_nifti(tmp / "fmri.nii.gz", vol((8, 8, 8, 3)))
    nan = vol()
    nan[0, 0, 0] = np.nan
    write_nifti(tmp / "nan.nii.gz", nan)
    bad = [str(tmp / "noise.nii.gz"), str(fmri), str(tmp / "nan.nii.gz")]
    return [items[0], {"image": bad[0]}, items[1], {"image": bad[1]}, {"image": bad[2]}, *items[2:]]


LOAD = Compose([LoadVolumed("image")])


def test_safe_dataset_returns_a_failure_record_for_each_bad_item(tmp_path: Path) -> None:
    data = _folder(tmp_path)
    ds = SafeDataset(data, LOAD)
    out = [ds[i] for i in range(len(ds))]
    failures = [o for o in out if isinstance(o, CaseFailure)]
    assert [f.case for f in failures] == ["noise", "fmri", "nan"]
    assert [Path(f.file).name for f in failures] == ["noise.nii.gz", "fmri.nii.gz", "nan.nii.gz"]
    assert "wrong magic bytes" in failures[0].error and "4D with 3 volumes" in failures[1].error
    assert "1 NaN" in failures[2].error and all("\n" not in f.error for f in failures)
    good = [o for o in out if not isinstance(o, CaseFailure)]
    assert [tuple(o["image"].shape) for o in good] == [(1, 12, 13, 14)] * 3


def test_explicit_case_ids_are_used(tmp_path: Path) -> None:
    (tmp_path / "x.nii.gz").write_bytes(b"junk")
    failure = SafeDataset([{"image": str(tmp_path / "x.nii.gz"), "case": "patient-7"}], LOAD)[0]
    assert failure == CaseFailure("patient-7", str(tmp_path / "x.nii.gz"), failure.error, "LoadVolumed")


def test_programming_errors_are_not_swallowed(tmp_path: Path) -> None:
    broken = Compose([LoadVolumed("image"), Lambdad("image", lambda x: x.no_such_method())])
    ds = SafeDataset([{"image": str(write_nifti(tmp_path / "g.nii.gz"))}], broken)
    with pytest.raises(RuntimeError) as info:
        ds[0]
    assert isinstance(info.value.__cause__, AttributeError)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_drops_failures_and_never_yields_an_empty_batch(tmp_path: Path, num_workers: int) -> None:
    loader = SkippingDataLoader(SafeDataset(_folder(tmp_path), LOAD), batch_size=2, num_workers=num_workers)
    batches = list(loader)
    # items: g0 bad | g1 bad | bad g2 -> batches of 1 good each; the bad-only pair is skipped entirely
    assert [b["image"].shape[0] for b in batches] == [1, 1, 1]
    assert [Path(b["image"].meta["filename_or_obj"][0]).name for b in batches] == [
        "g0.nii.gz",
        "g1.nii.gz",
        "g2.nii.gz",
    ]
    assert sorted(f.case for f in loader.failures) == ["fmri", "nan", "noise"]
    list(loader)
    assert len(loader.failures) == 3, "failures are those of the last pass, not accumulated"


def test_loader_has_no_length() -> None:
    with pytest.raises(TypeError, match="no length"):
        len(SkippingDataLoader(SafeDataset([{"image": "x"}]), batch_size=1))


def test_every_corrupt_nifti_kind_of_the_corpus_is_skipped_not_raised(tmp_path: Path) -> None:
    items = []
    for kind in (k for k in KINDS if k.read is load_volume):  # the kinds LoadVolumed's defaults refuse
        folder = tmp_path / kind.name
        folder.mkdir()
        built = kind.build(folder)
        items.append({"image": str(built[0] if isinstance(built, tuple) else built), "case": kind.name})
    items.append({"image": str(write_nifti(tmp_path / "good.nii.gz")), "case": "good"})
    loader = SkippingDataLoader(SafeDataset(items, LOAD), batch_size=1)
    assert [b["case"] for b in loader] == [["good"]]
    assert [f.case for f in loader.failures] == [it["case"] for it in items[:-1]]


def _engine(loader: SkippingDataLoader, seen: list[str]) -> Engine:
    def step(engine: Engine, batch: dict) -> None:
        seen.extend(Path(p).name for p in batch["image"].meta["filename_or_obj"])

    engine = Engine(step)
    engine.data_loader = loader  # as MONAI workflows hold it
    return engine


def test_writer_lists_failures_and_fails_the_run_after_the_other_completed_handlers(tmp_path: Path) -> None:
    loader = SkippingDataLoader(SafeDataset(_folder(tmp_path / "in"), LOAD), batch_size=1)
    seen: list[str] = []
    engine = _engine(loader, seen)
    FailedCasesWriter(tmp_path / "out").attach(engine)
    finished: list[str] = []
    engine.add_event_handler(Events.COMPLETED, lambda _: finished.append("scores.csv"))  # attached after the writer
    with pytest.raises(FailedCasesError, match=r"^3 of 6 cases failed and were skipped; see .*errors\.csv$") as info:
        engine.run(loader)
    lines = info.value.lines()
    assert len(lines) == 4 and lines[0].startswith("failed: noise: ") and "[LoadVolumed]" in lines[0]
    assert seen == ["g0.nii.gz", "g1.nii.gz", "g2.nii.gz"], "each good case once: the loader is never restarted"
    assert finished == ["scores.csv"], "the failure is raised after every other end-of-run handler"
    rows = list(csv.DictReader(open(tmp_path / "out" / "errors.csv", encoding="utf-8")))
    assert [r["case"] for r in rows] == ["noise", "fmri", "nan"]
    assert rows[1]["file"].endswith("fmri.nii.gz") and "4D with 3 volumes" in rows[1]["reason"]
    assert {r["stage"] for r in rows} == {"LoadVolumed"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["errors.csv"]


def test_clean_run_writes_a_header_only_errors_csv_and_does_not_raise(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "errors.csv").write_text("case,file,stage,reason\nold,old.nii.gz,load,stale\n")
    items = [{"image": str(write_nifti(tmp_path / f"g{i}.nii.gz"))} for i in range(2)]
    loader = SkippingDataLoader(SafeDataset(items, LOAD), batch_size=1)
    engine = _engine(loader, [])
    FailedCasesWriter(out).attach(engine)
    engine.run(loader)
    assert (out / "errors.csv").read_text() == "case,file,stage,reason\n", "a stale errors.csv is replaced"


def test_writer_without_raise_and_with_an_explicit_source(tmp_path: Path) -> None:
    class Log:
        failures = [CaseFailure("a", "/x/a.nii", "bad header"), CaseFailure("b\udce9", "/x/b\udce9.nii", "oops")]

    engine = Engine(lambda e, b: None)
    FailedCasesWriter(tmp_path, source=Log(), raise_on_failure=False).attach(engine)
    engine.run([torch.zeros(1)])
    rows = list(csv.reader(open(tmp_path / "errors.csv", encoding="utf-8")))
    header = ["case", "file", "stage", "reason"]
    assert rows == [header, ["a", "/x/a.nii", "load", "bad header"], ["b\\xe9", "/x/b\\xe9.nii", "load", "oops"]]


@pytest.mark.parametrize(("batch_size", "num_workers"), [(1, 0), (2, 0), (2, 2)])
def test_writer_makes_a_plain_monai_loader_skip_bad_cases(tmp_path: Path, batch_size: int, num_workers: int) -> None:
    """The one mechanism of every bundle: the handler alone turns the workflow's DataLoader(Dataset) into a
    skipping one (same order and batch size), so a bundle config needs no other change."""
    from monai.data import DataLoader, Dataset

    data = Dataset(_folder(tmp_path / "in"), LOAD)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    seen: list[str] = []
    engine = _engine(loader, seen)  # type: ignore[arg-type]
    engine.state.epoch_length = 3  # what a MONAI workflow computed from len(loader) before the handler came
    FailedCasesWriter(tmp_path / "out").attach(engine)
    wrapped = engine.data_loader
    assert isinstance(wrapped, SkippingDataLoader) and (wrapped.batch_size, wrapped.num_workers) == (
        batch_size,
        num_workers,
    )
    with pytest.raises(FailedCasesError, match="3 of 6 cases failed"):
        engine.run(engine.data_loader)
    assert seen == ["g0.nii.gz", "g1.nii.gz", "g2.nii.gz"], "each good case once, in order"
    rows = list(csv.DictReader(open(tmp_path / "out" / "errors.csv", encoding="utf-8")))
    assert [r["case"] for r in rows] == ["noise", "fmri", "nan"] and {r["stage"] for r in rows} == {"LoadVolumed"}


def test_safe_cache_dataset_leaves_bad_training_files_out_and_the_writer_fails_the_run(tmp_path: Path) -> None:
    """A training set with 3 bad files: cached without them (the loader keeps a length), errors.csv lists them."""
    data = _folder(tmp_path / "train")
    ds = SafeCacheDataset(data, LOAD, progress=False)
    assert len(ds) == 3 and [f.case for f in ds.failures] == ["noise", "fmri", "nan"]
    loader = DataLoader(ds, batch_size=2)
    assert len(loader) == 2, "a training loader keeps its length: the bad files are gone before the first epoch"
    seen: list[tuple[int, ...]] = []
    engine = Engine(lambda e, b: seen.append(tuple(b["image"].shape)))
    FailedCasesWriter(tmp_path / "out", source=ds, filename="errors_train.csv").attach(engine)
    with pytest.raises(FailedCasesError):
        engine.run(loader, max_epochs=2)
    assert seen == [(2, 1, 12, 13, 14), (1, 1, 12, 13, 14)] * 2, "both epochs ran over the 3 good volumes"
    rows = list(csv.DictReader(open(tmp_path / "out" / "errors_train.csv")))
    assert [r["case"] for r in rows] == ["noise", "fmri", "nan"]
    with pytest.raises(ValueError, match="runtime_cache"):
        SafeCacheDataset(data, LOAD, runtime_cache=True)
