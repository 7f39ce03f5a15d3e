"""Dictionary wrapper of a randomizable array transform whose one draw is shared by every key of an item."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["SharedDrawd"]


class SharedDrawd(RandomizableTransform, MapTransform):
    """One draw of an array transform shared by every key of an item, applied with probability ``prob``.

    Subclasses set ``self.inner``: an array transform with ``randomize()`` and ``__call__(img, randomize=False)``.
    """

    inner: Any

    def __init__(self, keys: KeysCollection, prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def set_random_state(self, seed: int | None = None, state: object = None) -> SharedDrawd:
        """Seed this transform and its array transform."""
        super().set_random_state(seed, state)  # type: ignore[arg-type]
        self.inner.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply the array transform to every key, the same draw for all."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.inner.randomize()
        for key in self.key_iterator(d):
            d[key] = self.inner(d[key], randomize=False)
        return d
