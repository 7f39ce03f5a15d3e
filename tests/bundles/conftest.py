from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers.bundles import BUNDLES, BundleRun, run_bundle


@pytest.fixture(scope="session")
def bundle_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], BundleRun]:
    """``bundle_run(name)``: the bundle's declared workflows run once per session (``tests.helpers.bundles``);
    the generic bundle test and the per-bundle tests read the same run. Tests that change the run's bundle root
    (models) work on a copy of it."""
    runs: dict[str, BundleRun] = {}

    def get(name: str) -> BundleRun:
        if name not in runs:
            runs[name] = run_bundle(BUNDLES / name, tmp_path_factory.mktemp(name))
        return runs[name]

    return get
