"""The AutoAugment-like random policy (MONAI / torch ops): each operation, seeding, dict version, 2D and 3D."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medood.transforms import RandPolicy, RandPolicyd
from medood.transforms.policy import MAX_MAGNITUDE, POLICY_OPS, apply_op


def _image(channels: int = 3, *size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(channels, *(size or (16, 16)), generator=g) * 0.6 + 0.2


@pytest.mark.parametrize("op", [o for o in POLICY_OPS if o != "identity"])
def test_every_operation_changes_the_image_and_keeps_shape(op: str) -> None:
    img = _image()
    out = apply_op(img, op, MAX_MAGNITUDE[op] * 0.8)
    assert out.shape == img.shape and not torch.allclose(out, img), op
    vol = _image(1, 8, 8, 8)
    assert apply_op(vol, op, MAX_MAGNITUDE[op] * 0.8).shape == vol.shape, "3D, one channel"


def test_known_values() -> None:
    img = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    torch.testing.assert_close(apply_op(img, "invert", 0.0), 1 - img)
    torch.testing.assert_close(apply_op(img, "solarize", 0.5), torch.tensor([[[0.1, 0.1], [0.5, 0.3]]]))
    torch.testing.assert_close(apply_op(img, "autocontrast", 0.0), torch.tensor([[[0.0, 1.0], [0.5, 0.25]]]))
    torch.testing.assert_close(apply_op(img, "brightness", -0.5), img * 0.5)


def test_policy_is_seeded_clipped_and_the_dict_version_shares_the_draw() -> None:
    img = _image()
    a, b = RandPolicy(num_ops=3, magnitude=1.0, op_prob=1.0), RandPolicy(num_ops=3, magnitude=1.0, op_prob=1.0)
    a.set_random_state(3)
    b.set_random_state(3)
    outs = [a(img) for _ in range(4)]
    assert all(torch.equal(o, b(img)) for o in outs), "same seed, same draws"
    assert all(0.0 <= float(o.min()) and float(o.max()) <= 1.0 for o in outs)
    assert len(a.drawn) == 3 and not torch.equal(outs[0], outs[1])
    assert torch.equal(RandPolicy(op_prob=0.0)(img), img.float()), "no operation drawn: unchanged"
    d = RandPolicyd(["image", "copy"], num_ops=2, magnitude=1.0, op_prob=1.0).set_random_state(5)
    out = d({"image": img, "copy": img.clone(), "label": 1})
    assert torch.equal(out["image"], out["copy"]) and out["label"] == 1
    with pytest.raises(ValueError, match="ops from"):
        RandPolicy(ops=("warp",))


@pytest.mark.parametrize("bundle", ["mecam_dermoscopy_ood_classification", "mecam_pathology_ood_classification"])
def test_mecam_training_offers_the_policy_before_cutout_off_by_default(bundle: str) -> None:
    root = Path(__file__).resolve().parents[2] / "bundles" / bundle
    names = {}
    for on in (None, True):
        parser = ConfigParser()
        parser.read_config([str(root / "configs" / "inference.yaml"), str(root / "configs" / "train.yaml")])
        parser["bundle_root"] = str(root)
        if on:
            parser["autoaugment"] = True
        names[on] = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "RandPolicyd" not in names[None]
    assert names[True][-3:] == ["RandPolicyd", "RandCoarseDropoutd", "EnsureTyped"]
