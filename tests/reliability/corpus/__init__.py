"""A corpus of broken inputs, generated in a temporary folder (no committed binaries).

Every :class:`BadKind` builds one broken input and names the medood reader a run would use on it; the corpus
tests check that the reader refuses it with a one-line :class:`~medood.utils.errors.DataError` that names the
file at fault and says what is wrong. :data:`ACCEPTED` lists the odd inputs medood accepts with a documented
conversion instead. One module per family of inputs registers its kinds on import.
"""

from __future__ import annotations

from tests.reliability.corpus import checkpoints, configs, datalists, dicom, images, nifti, npz
from tests.reliability.corpus.accepted import ACCEPTED, AcceptedKind
from tests.reliability.corpus.registry import KINDS, BadKind

__all__ = ["ACCEPTED", "KINDS", "AcceptedKind", "BadKind"]
_FAMILY_MODULES = (checkpoints, configs, datalists, dicom, images, nifti, npz)
