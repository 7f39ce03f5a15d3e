"""A failed batch ends with one line per failed case and the path of errors.csv, without a traceback unless
``--debug`` (or ``MEDOOD_DEBUG=1``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from medood.cli import main
from medood.data.skipping import CaseFailure
from medood.handlers.errors import FailedCasesError


def _failing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failures = [CaseFailure("a", "/x/a.png", "0-byte file", "LoadImage2Dd"), CaseFailure("b", "/x/b.png", "bomb")]

    def run(args: argparse.Namespace) -> int:
        raise RuntimeError("engine wrapper") from FailedCasesError(failures, tmp_path / "errors.csv", 5)

    import medood.cli.check_cmd as check_cmd

    monkeypatch.setattr(check_cmd, "run", run, raising=False)
    original = check_cmd.add_parser

    def add_parser(sub: argparse._SubParsersAction) -> None:
        original(sub)
        sub.choices["check"].set_defaults(func=run)

    monkeypatch.setattr(check_cmd, "add_parser", add_parser)


def test_failed_batch_prints_one_line_per_case_and_the_csv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _failing(monkeypatch, tmp_path)
    monkeypatch.delenv("MEDOOD_DEBUG", raising=False)
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "failed: a: /x/a.png: 0-byte file [LoadImage2Dd]",
        "failed: b: /x/b.png: bomb [load]",
        f"2 of 5 cases failed and were skipped; see {tmp_path / 'errors.csv'}",
    ]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str) -> None:
    _failing(monkeypatch, tmp_path)
    argv = ["check", str(tmp_path)]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("MEDOOD_DEBUG", "1")
    with pytest.raises(RuntimeError, match="engine wrapper"):
        main(argv)


_BUNDLE_LIKE = """
import sys
from medood.data.skipping import CaseFailure
from medood.handlers.errors import FailedCasesError, print_failed_cases_concisely
print_failed_cases_concisely()
failures = [CaseFailure("a", "/x/a.png", "0-byte file", "LoadImage2Dd")]
try:
    raise FailedCasesError(failures, "/out/errors.csv", 3)
except FailedCasesError as e:
    raise RuntimeError("Failed to evaluate ConfigExpression") from e  # as MONAI's config runner wraps it
"""


@pytest.mark.parametrize("debug", [False, True])
def test_uncaught_failed_batch_prints_its_lines_not_a_traceback(debug: bool) -> None:
    """``python -m monai.bundle run``: the FailedCasesWriter's hook prints the lines; exit status 1."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MEDOOD_DEBUG": "1" if debug else "0"}
    run = subprocess.run([sys.executable, "-c", _BUNDLE_LIKE], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    if debug:
        assert "Traceback (most recent call last):" in run.stderr
        return
    assert lines == [
        "failed: a: /x/a.png: 0-byte file [LoadImage2Dd]",
        "1 of 3 cases failed and were skipped; see /out/errors.csv",
        "(MEDOOD_DEBUG=1 shows the traceback)",
    ], run.stderr
