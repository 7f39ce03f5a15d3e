"""Every kind of broken input in the corpus is refused with a one-line DataError naming the file and the problem."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from medood.utils.errors import DataError, printable_path
from tests.reliability.corpus import ACCEPTED, KINDS, AcceptedKind, BadKind

FAMILIES = {"nifti", "dicom", "image2d", "npz", "datalist", "config", "checkpoint"}


def test_corpus_covers_at_least_40_kinds_across_every_family() -> None:
    assert len(KINDS) >= 40
    assert len({k.id for k in KINDS}) == len(KINDS), "kind ids must be unique"
    assert {k.family for k in KINDS} == FAMILIES


@pytest.mark.parametrize("kind", KINDS, ids=[k.id for k in KINDS])
def test_bad_input_is_refused_with_a_clear_error(kind: BadKind, tmp_path: Path) -> None:
    built = kind.build(tmp_path)
    given, culprit = built if isinstance(built, tuple) else (built, built)
    with pytest.raises(DataError) as info:
        kind.read(given)
    err = info.value
    message = str(err)
    assert os.path.abspath(err.path) == os.path.abspath(culprit), f"names {err.path}, expected {culprit}"
    assert message.startswith(printable_path(err.path) + ": ")
    assert "\n" not in message, "one line"
    message.encode("utf-8")  # printable and writable to a CSV, even for a non-UTF-8 file name
    assert re.search(kind.problem, message), f"{message!r} does not match {kind.problem!r}"


def test_refused_code_never_runs(tmp_path: Path) -> None:
    """The YAML tag and the checkpoint pickle would create ``pwned``; both are refused before that."""
    ids = ("config-python_object_tag", "checkpoint-pickle_that_runs_code", "checkpoint-archive_calling_os_system")
    for kind_id in (*ids, "checkpoint-legacy_pickle_calling_os_system"):
        kind = next(k for k in KINDS if k.id == kind_id)
        folder = tmp_path / kind.name
        folder.mkdir()
        with pytest.raises(DataError):
            kind.read(kind.build(folder))
        assert not (folder / "pwned").exists(), kind_id


@pytest.mark.parametrize("kind", ACCEPTED, ids=[k.name for k in ACCEPTED])
def test_odd_input_is_accepted_with_its_documented_conversion(kind: AcceptedKind, tmp_path: Path) -> None:
    kind.check(kind.read(kind.build(tmp_path)))
