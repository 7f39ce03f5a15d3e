"""The contract every registered detector honours, parametrised over the registry x spatial dims.

The cases come from the registry at collection time and each detector's example from the detector itself, so a
new detector file is covered with no edit here (``test_contract_discovery.py`` checks that).
"""

from __future__ import annotations

import functools

import pytest

from medood.detectors import OODDetector, list_detectors
from tests.detectors import contract

CASES = contract.contract_cases()


@functools.cache
def _fitted(name: str, sd: int) -> OODDetector:
    """One fitted detector per case, shared by the tests of this module (they only read it)."""
    return contract.fit_detector(name, sd)


@pytest.mark.parametrize("name", list_detectors())
def test_registry_attributes(name: str) -> None:
    contract.check_registry_attributes(name)


@pytest.mark.parametrize(("name", "sd"), CASES)
def test_not_fitted_error(name: str, sd: int) -> None:
    contract.check_not_fitted(name, sd)


@pytest.mark.parametrize(("name", "sd"), contract.direction_params())
def test_higher_score_on_obviously_shifted_inputs(name: str, sd: int) -> None:
    contract.check_direction(_fitted(name, sd), name, sd)


@pytest.mark.parametrize(("name", "sd"), CASES)
def test_shapes_roundtrip_determinism(name: str, sd: int) -> None:
    contract.check_outputs(_fitted(name, sd), name, sd)
