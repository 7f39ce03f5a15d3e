"""Model-zoo metadata rules for every bundle (MONAI's verify_metadata needs a schema download; CI is offline),
and MONAI's verify_net_in_out on the flagship's network definition."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BUNDLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "bundles").iterdir() if (p / "configs").is_dir())
REQUIRED = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
            "task", "description", "authors", "copyright", "network_data_format")
TENSOR_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data", "channel_def")


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_layout_and_metadata(bundle: Path) -> None:
    for rel in ("configs/metadata.json", "configs/inference.yaml", "configs/logging.conf", "LICENSE",
                "docs/README.md", "large_files.yml"):
        assert (bundle / rel).is_file(), f"{bundle.name} lacks {rel}"
    assert not list(bundle.rglob("*.py")), "bundles hold configs and docs only; code lives in medood"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    missing = [k for k in REQUIRED if k not in meta]
    assert not missing, f"{bundle.name} metadata lacks {missing}"
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert "image" in fmt["inputs"] and fmt["outputs"], "verify_net_in_out and MONAI Label read inputs.image"
    for name, spec in {**fmt["inputs"], **fmt["outputs"]}.items():
        assert all(k in spec for k in TENSOR_KEYS), f"{bundle.name}: {name} lacks {set(TENSOR_KEYS) - set(spec)}"
    import monai
    import numpy
    import torch

    assert meta["monai_version"] == monai.__version__
    assert torch.__version__.startswith(meta["pytorch_version"])
    assert meta["numpy_version"] == numpy.__version__


def test_flagship_network_in_out_with_the_shipped_weights() -> None:
    """What MONAI's verify_net_in_out checks (it cannot load weights, and an unfitted detector refuses to score):
    the shipped detector maps a float32 volume of the declared input shape to a single-channel float32 map."""
    import torch
    from monai.bundle import ConfigParser

    from medood.utils.checkpoints import load_state as load_weights

    bundle = next(b for b in BUNDLES if b.name == "mim_brain_mri_anomaly_segmentation")
    assert (bundle / "models" / "model.pt").is_file(), "the shipped weights are committed in models/"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(bundle)})
    net = parser.get_parsed_content("network_def")
    load_weights(net, bundle / "models" / "model.pt")
    shape = meta["inputs"]["image"]["spatial_shape"]
    x = torch.rand(1, meta["inputs"]["image"]["num_channels"], *shape)
    x[..., :4] = 0  # some background, as a skull-stripped volume has
    with torch.no_grad():
        out = net.eval()(x)
    assert out.shape == (1, meta["outputs"]["pred"]["num_channels"], *shape)
    assert out.dtype == getattr(torch, meta["outputs"]["pred"]["dtype"])


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_metadata_validates_offline_against_the_vendored_schema(bundle: Path) -> None:
    from medood.utils.bundle_metadata import validate_metadata, verify_metadata_with_monai

    meta = validate_metadata(bundle / "configs" / "metadata.json")
    assert meta["version"] in meta["changelog"]
    verify_metadata_with_monai(bundle / "configs" / "metadata.json")  # MONAI's own check, schema pre-placed


def test_vendored_schema_rejects_what_it_should(tmp_path: Path) -> None:
    from medood.utils.bundle_metadata import schema_path, validate_metadata
    from medood.utils.errors import DataError

    assert schema_path().is_file()
    good = json.loads((BUNDLES[0] / "configs" / "metadata.json").read_text())
    cases = {
        "missing authors": ({k: v for k, v in good.items() if k != "authors"}, "'authors' is a required property"),
        "bad version": ({**good, "version": "one"}, "version: 'one' does not match"),
        "no changelog entry": ({**good, "version": "9.9.9"}, "'9.9.9' has no entry in changelog"),
        "bad dtype": (
            {**good, "network_data_format": {"inputs": {"image": {**good["network_data_format"]["inputs"]["image"],
                                                                  "dtype": "float"}},
                                             "outputs": good["network_data_format"]["outputs"]}},
            "network_data_format/inputs/image/dtype",
        ),
    }
    for name, (meta, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(meta))
        with pytest.raises(DataError, match=re.escape(message)):
            validate_metadata(path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json: is not valid JSON"):
        validate_metadata(tmp_path / "broken.json")
