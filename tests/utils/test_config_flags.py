from __future__ import annotations

import numpy as np
import pytest

from medood.utils import as_flag

TRUE = [True, 1, np.bool_(True), "true", "True", "TRUE", " yes ", "Yes", "on", "ON", "1"]
FALSE = [False, 0, np.bool_(False), "false", "False", "FALSE", "no", "NO", "off", "Off", "0", " false\n"]


@pytest.mark.parametrize("value", TRUE)
def test_true_spellings(value: object) -> None:
    assert as_flag(value, "amp") is True


@pytest.mark.parametrize("value", FALSE)
def test_false_spellings(value: object) -> None:
    assert as_flag(value, "amp") is False


@pytest.mark.parametrize("value", ["flase", "", "t", "2", 2, -1, 0.0, 1.0, None, [], "none"])
def test_anything_else_is_refused_naming_the_option(value: object) -> None:
    with pytest.raises(ValueError, match=r"^autoaugment must be true or false .*got"):
        as_flag(value, "autoaugment")
