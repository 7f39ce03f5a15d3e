"""Prints how many kinds of bad input the corpus covered (and on how many inputs ``medood check`` and the loaders
agreed) at the end of a run that collected them."""

from __future__ import annotations

from typing import Any

_CORPUS_TEST = "test_bad_input_is_refused_with_a_clear_error"
_AGREEMENT_TESTS = ("test_check_refuses_what_the_loader_refuses", "test_check_accepts_what_the_loader_accepts")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, []) if r.when == "call"]
    agree = [r for r in reports if any(t in r.nodeid for t in _AGREEMENT_TESTS)]
    if agree:
        terminalreporter.write_line(
            f"medood check vs loaders: {len(agree)} corpus inputs; {sum(r.passed for r in agree)} judged alike"
        )
    ours = [r for r in reports if _CORPUS_TEST in r.nodeid]
    if not ours:
        return
    families: dict[str, int] = {}
    for r in ours:
        family = r.nodeid.split("[", 1)[1].split("-", 1)[0]
        families[family] = families.get(family, 0) + 1
    passed = sum(r.passed for r in ours)
    detail = ", ".join(f"{f} {n}" for f, n in sorted(families.items()))
    terminalreporter.write_line(
        f"bad-input corpus: {len(ours)} kinds ({detail}); {passed} refused with a one-line DataError naming the file"
    )
