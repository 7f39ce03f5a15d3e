"""Every bundle in ``bundles/`` (found by globbing: a new bundle is covered with no change here) keeps the good cases
of a bad batch: its ``infer`` workflow (as ``configs/workflows.yaml`` declares it, on the run's trained models) over
a folder mixing good inputs of the bundle's data kind with the four broken inputs of
:mod:`tests.reliability.corpus.broken` (truncated, 0-byte, text with the image extension, header-only bomb) scores
every good case, lists every bad one in ``errors.csv`` (file, stage, reason) and fails the run at the end
(:class:`~medood.handlers.FailedCasesError`: exit status 1 under ``python -m monai.bundle run``)."""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from medood.handlers import FailedCasesError
from medood.utils.io import case_name
from tests.helpers.bundles import BundleRun, bundle_dirs, run_workflow
from tests.helpers.class_folders import one_thread
from tests.reliability.corpus.broken import BROKEN, write_broken

BUNDLES = bundle_dirs()
N_GOOD = 3


def _datalist(run: BundleRun, configs: list[str], overrides: dict) -> list[dict]:
    parser = ConfigParser()
    parser.read_config([str(run.bundle / "configs" / c) for c in configs])
    parser.read_meta(str(run.bundle / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(run.root), **overrides})
    return list(parser.get_parsed_content("datalist"))


def _image(item: dict) -> Path:
    value = item["image"]
    return Path(value[0] if isinstance(value, (list, tuple)) else value)


def _case(item: dict) -> str:
    return str(item["case"]) if "case" in item else case_name(str(_image(item)))


def _failed(err: BaseException) -> FailedCasesError | None:
    while err is not None and not isinstance(err, FailedCasesError):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return err


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_mixed_batch_scores_every_good_case_and_lists_every_bad_one(
    bundle: Path, bundle_run: Callable[[str], BundleRun], tmp_path: Path
) -> None:
    run = bundle_run(bundle.name)
    infer = next(w for w in run.spec["workflows"] if w["name"] == "infer")
    overrides = run.overrides(infer)
    good = [_image(item) for item in _datalist(run, infer["configs"], overrides)[:N_GOOD]]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, src in enumerate(good):  # flat copies: the names stay distinct
        shutil.copy(src, mixed / f"good{i}_{src.name}")
    bad = write_broken(mixed, good[0])
    out = tmp_path / "out"
    overrides = {**overrides, "dataset_dir": str(mixed), "output_dir": str(out)}
    items = _datalist(run, infer["configs"], overrides)
    bad_names = {p.name for p in bad.values()}
    assert len(items) == len(good) + len(BROKEN), "the bundle's datalist lists every input of the folder"
    good_cases = {_case(it) for it in items if _image(it).name not in bad_names}
    bad_cases = {_case(it): _image(it).name for it in items if _image(it).name in bad_names}

    with one_thread(), pytest.raises(Exception) as info:
        run_workflow(bundle, infer["configs"], infer["type"], run.root, **overrides)
    failed = _failed(info.value)
    assert failed is not None, f"{bundle.name}: the run did not end with FailedCasesError: {info.value!r}"
    assert f"{len(BROKEN)} of {len(items)} cases failed" in str(failed) and "\n" not in str(failed)

    rows = list(csv.DictReader(open(out / "errors.csv", encoding="utf-8")))
    assert {r["case"]: Path(r["file"]).name for r in rows} == bad_cases, f"{bundle.name}: errors.csv {rows}"
    assert all(r["stage"] and r["reason"] for r in rows)
    reasons = {Path(r["file"]).name.split(".")[0]: r["reason"] for r in rows}
    assert re.search("memory budget|decompression bomb", reasons["broken_bomb"]), reasons["broken_bomb"]
    assert "0-byte" in reasons["broken_empty"]

    score_files = sorted(out.rglob("scores.csv"))
    assert score_files, f"{bundle.name}: no scores.csv for the good cases"
    for path in score_files:
        cases = {r["case"] for r in csv.DictReader(open(path, encoding="utf-8"))}
        assert cases == good_cases, f"{bundle.name}: {path.relative_to(out)} scores {sorted(cases)}"
