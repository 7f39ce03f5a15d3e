"""An AutoAugment-like random augmentation policy from MONAI / torch operations (no torchvision).

MECAM's official training applies AutoAugment (the ImageNet policy: sub-policies of two image operations, each with
a probability and a magnitude) on top of its affine / colour / Cutout recipe. :class:`RandPolicy` draws, for every
image, ``num_ops`` operations uniformly from :data:`POLICY_OPS` and applies each with probability ``op_prob`` at a
magnitude drawn uniformly in ``[0, magnitude]`` (a fraction of each operation's maximum in :data:`MAX_MAGNITUDE`;
geometric and additive operations get a random sign). It is a random policy in the spirit of AutoAugment, **not**
the searched ImageNet policy. The operations are AutoAugment's: geometry with :class:`monai.transforms.Affine`
(rotate, shear, translate; 2D and 3D), histogram equalisation with :class:`monai.transforms.HistogramNormalize`,
and the intensity operations (contrast, brightness, solarize, posterize, autocontrast, invert, colour saturation,
sharpness) in torch on channel-first images scaled to ``[0, 1]`` (the output is clipped to ``[0, 1]``; colour is
skipped for non-RGB images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import Affine, HistogramNormalize, RandomizableTransform

from medood.transforms._shared import SharedDrawd
from medood.transforms.color import LUMA

__all__ = ["MAX_MAGNITUDE", "POLICY_OPS", "RandPolicy", "RandPolicyd"]

#: Each operation's maximum (magnitude 1): degrees, shear factor, fraction of the size, blend factor, bits, etc.
MAX_MAGNITUDE: dict[str, float] = {
    "identity": 0.0, "rotate": 30.0, "shear": 0.3, "translate": 0.3, "contrast": 0.9, "brightness": 0.9,
    "color": 0.9, "sharpness": 0.9, "solarize": 1.0, "posterize": 4.0, "autocontrast": 0.0, "equalize": 0.0,
    "invert": 0.0,
}  # fmt: skip
POLICY_OPS: tuple[str, ...] = tuple(MAX_MAGNITUDE)
_SIGNED = {"rotate", "shear", "translate", "contrast", "brightness", "color", "sharpness"}


class RandPolicy(RandomizableTransform):
    """Apply ``num_ops`` operations drawn from ``ops``, each with probability ``op_prob`` (AutoAugment-like).

    Args:
        num_ops: operations drawn (uniformly, with replacement) per image. Defaults to 2 (AutoAugment's
            sub-policies hold two).
        magnitude: the largest magnitude, a fraction of :data:`MAX_MAGNITUDE` in ``[0, 1]``. Defaults to 0.5.
        op_prob: probability of each drawn operation. Defaults to 0.5.
        ops: the operations to draw from. Defaults to :data:`POLICY_OPS`.
        prob: probability of the whole policy. Defaults to 1.0.

    Raises:
        ValueError: an unknown operation, ``num_ops < 1`` or a magnitude / probability outside ``[0, 1]``.
    """

    def __init__(
        self, num_ops: int = 2, magnitude: float = 0.5, op_prob: float = 0.5, ops: tuple[str, ...] = POLICY_OPS,
        prob: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__(prob)
        unknown = [o for o in ops if o not in MAX_MAGNITUDE]
        if unknown or num_ops < 1 or not 0.0 <= magnitude <= 1.0 or not 0.0 <= op_prob <= 1.0:
            raise ValueError(
                f"need ops from {list(POLICY_OPS)}, num_ops >= 1, magnitude and op_prob in [0, 1]; got unknown "
                f"{unknown}, {num_ops}, {magnitude}, {op_prob}"
            )
        self.num_ops, self.magnitude, self.op_prob, self.ops = num_ops, magnitude, op_prob, tuple(ops)
        self.drawn: list[tuple[str, float]] = []

    def randomize(self, data: object = None) -> None:
        """Draw whether to apply the policy, and the operations with their signed magnitudes."""
        super().randomize(None)
        self.drawn = []
        for _ in range(self.num_ops):
            op = self.ops[int(self.R.randint(len(self.ops)))]
            level = float(self.R.uniform(0.0, self.magnitude)) * MAX_MAGNITUDE[op]
            sign = -1.0 if op in _SIGNED and self.R.uniform() < 0.5 else 1.0
            if self.R.uniform() < self.op_prob:
                self.drawn.append((op, sign * level))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """Return ``img`` (channel-first, ``[0, 1]``, 2D or 3D) with the drawn operations applied in order."""
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        out = torch.as_tensor(img).float()
        for op, level in self.drawn:
            out = apply_op(out, op, level)
        return out.clamp(0.0, 1.0)


def apply_op(img: torch.Tensor, op: str, level: float) -> torch.Tensor:
    """One operation at ``level`` (in the operation's own unit, see :data:`MAX_MAGNITUDE`) on a ``[0, 1]`` image."""
    nd = img.ndim - 1
    if op in ("rotate", "shear", "translate"):
        affine = {
            "rotate": {"rotate_params": [math.radians(level)] + [0.0] * (0 if nd == 2 else 2)},
            "shear": {"shear_params": [level] + [0.0] * (1 if nd == 2 else 5)},
            "translate": {"translate_params": [level * s for s in img.shape[1:]]},
        }[op]
        moved = Affine(**affine, padding_mode="zeros", image_only=True)(img)  # type: ignore[arg-type]
        return torch.as_tensor(moved)
    mean = img.mean(dim=tuple(range(1, img.ndim)), keepdim=True)
    if op == "contrast":
        return mean.mean(0, keepdim=True) + (1.0 + level) * (img - mean.mean(0, keepdim=True))
    if op == "brightness":
        return (1.0 + level) * img
    if op == "color":
        if img.shape[0] != 3:
            return img
        grey = (img * torch.tensor(LUMA, dtype=img.dtype).view(3, *[1] * nd)).sum(0, keepdim=True)
        return grey + (1.0 + level) * (img - grey)
    if op == "sharpness":
        kernel = torch.ones(img.shape[0], 1, *[3] * nd, dtype=img.dtype) / 3**nd
        conv = F.conv2d if nd == 2 else F.conv3d
        blurred = conv(img[None], kernel, padding=1, groups=img.shape[0])[0]
        return blurred + (1.0 + level) * (img - blurred)
    if op == "solarize":
        return torch.where(img >= 1.0 - level, 1.0 - img, img)
    if op == "posterize":
        levels = 2.0 ** (8 - round(level))
        return torch.floor(img * (levels - 1) + 0.5) / (levels - 1)
    if op == "autocontrast":
        dims = tuple(range(1, img.ndim))
        lo, hi = img.amin(dim=dims, keepdim=True), img.amax(dim=dims, keepdim=True)
        return torch.where(hi > lo, (img - lo) / (hi - lo).clamp_min(1e-8), img)
    if op == "equalize":
        return torch.as_tensor(HistogramNormalize(num_bins=256, min=0, max=1)(img)).float()
    if op == "invert":
        return 1.0 - img
    return img  # identity


class RandPolicyd(SharedDrawd):
    """Dictionary version of :class:`RandPolicy` (the same drawn operations for every key of an item)."""

    def __init__(
        self, keys: KeysCollection, num_ops: int = 2, magnitude: float = 0.5, op_prob: float = 0.5,
        ops: tuple[str, ...] = POLICY_OPS, prob: float = 1.0, allow_missing_keys: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(keys, prob, allow_missing_keys)
        self.policy = self.inner = RandPolicy(num_ops, magnitude, op_prob, ops, 1.0)
