"""Adding a detector is one file plus its registration: a throw-away detector defined here is picked up by the
registry-wide contract (its cases, its tiny example, every check) with no edit to the contract test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

from medood.detectors import OODDetector, OODOutput, get_detector, list_detectors, register_detector
from medood.detectors import registry as detector_registry
from tests.detectors import contract


class BrightnessDetector(OODDetector):
    """Score = |mean intensity - the training mean| / training std (a fitted statistic in buffers)."""

    mean: Tensor
    std: Tensor

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def reset_fit(self) -> None:
        self._values: list[Tensor] = []

    def partial_fit_features(self, features: Mapping[str, Tensor], labels: Tensor | None = None) -> None:
        self._values.append(features["image"].flatten(1).mean(1))

    def finalize_fit(self) -> None:
        v = torch.cat(self._values)
        self.mean.fill_(float(v.mean()))
        self.std.fill_(float(v.std()) + self.eps)

    def score_features(self, features: Mapping[str, Tensor]) -> OODOutput:
        return OODOutput((features["image"].flatten(1).mean(1) - self.mean).abs() / self.std)

    @classmethod
    def tiny_config(cls, spatial_dims: int) -> dict[str, Any]:
        return {"eps": 1e-4}


@pytest.fixture
def throwaway() -> Iterator[str]:
    name = "throwaway_brightness"
    register_detector(name)(BrightnessDetector)
    yield name
    detector_registry._REGISTRY.pop(name)


def test_a_new_detector_file_is_covered_with_no_test_edit(throwaway: str) -> None:
    assert throwaway in list_detectors()
    assert {(throwaway, 2), (throwaway, 3)} <= set(contract.contract_cases())
    assert isinstance(get_detector(throwaway), BrightnessDetector)
    contract.check_registry_attributes(throwaway)
    for sd in (2, 3):
        contract.check_not_fitted(throwaway, sd)
        det = contract.fit_detector(throwaway, sd)
        contract.check_direction(det, throwaway, sd)
        contract.check_outputs(det, throwaway, sd)


def test_the_contract_catches_a_broken_detector(throwaway: str) -> None:
    """The checks can fail: a detector that forgets its fitted state in the state dict is caught."""

    class Forgetful(BrightnessDetector):
        def __init__(self, eps: float = 1e-6) -> None:
            super().__init__(eps)
            self._buffers.pop("mean")
            self.mean = torch.zeros(())  # a plain attribute: not saved, so the round trip loses it

        def finalize_fit(self) -> None:
            super().finalize_fit()

    register_detector(throwaway)(Forgetful)
    det = contract.fit_detector(throwaway, 2)
    with pytest.raises(AssertionError):
        contract.check_outputs(det, throwaway, 2)
