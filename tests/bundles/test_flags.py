"""Boolean options given on the command line as text reach their consumers as bools.

``python -m monai.bundle run ... --amp false`` parses its overrides with python-fire, which leaves ``false``
(unlike ``False``) a string: a truthy one. Every workflow of every bundle is parsed here with the string overrides
the command line gives (``fire.parser.DefaultParseValue``), and the config items that consume ``amp``,
``resume`` and ``load_pretrain`` (and the other flags whose expressions load a file) are evaluated. Nothing is
trained: the bundle root is an empty folder, so a flag read as True fails to find its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fire
import pytest
from monai.bundle import ConfigParser

from medood.engines import TrainingCheckpoint
from medood.utils.errors import DataError
from tests.helpers.bundles import bundle_dirs, load_spec
from tests.helpers.class_folders import one_thread

CHECKPOINT = "medood.engines.TrainingCheckpoint"
#: what a flag's expressions need besides the file they load, stubbed: the MIM stages resume a trainer built on
#: data; the Heatmap-OOD networks load their classifier's weights whatever ``load_pretrain`` says, and NERO's
#: detectors are built on its network
STUBS: dict[str, dict[str, Any]] = {
    "resume": {"train#trainer": "$None", "resume_objects": {}},
    "load_pretrain": {"network_def": "$torch.nn.Identity()", "network": "$torch.nn.Identity()", "detectors": {}},
}


def _cli(word: str) -> Any:
    """``word`` as ``monai.bundle run`` (python-fire) hands it to the config."""
    return fire.parser.DefaultParseValue(word)


def _items(config: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(id, value)`` of a config, depth first."""
    children = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    for key, value in children:
        cid = f"{path}#{key}" if path else str(key)
        yield cid, value
        yield from _items(value, cid)


def _parser(bundle: Path, workflow: dict[str, Any], root: Path, **overrides: Any) -> ConfigParser:
    """One workflow's merged configs with the spec's tiny overrides, ``root`` as bundle root, then ``overrides``."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in workflow["configs"]])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    tiny = {**load_spec(bundle).get("overrides", {}), **workflow.get("overrides", {})}
    parser.update({**tiny, "bundle_root": str(root), **overrides})
    return parser


def _value(bundle: Path, workflow: dict[str, Any], root: Path, cid: str, **overrides: Any) -> Any:
    """The evaluated config item ``cid`` of :func:`_parser`."""
    return _parser(bundle, workflow, root, **overrides).get_parsed_content(cid)


def _cause(error: BaseException) -> BaseException:
    """The first error of a chain (MONAI re-raises an expression's error as a ``RuntimeError``)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _find(bundle: Path, root: Path, match: Any) -> dict[str, dict[str, Any]]:
    """The ids ``match(value)`` selects, each with the first workflow that defines it."""
    found: dict[str, dict[str, Any]] = {}
    for workflow in load_spec(bundle)["workflows"]:
        for cid, value in _items(_parser(bundle, workflow, root).get()):
            if match(value) and cid not in found:
                found[cid] = workflow
    return found


@pytest.mark.parametrize("bundle", bundle_dirs(), ids=lambda p: p.name)
def test_amp_false_from_the_command_line_is_false(bundle: Path, tmp_path: Path) -> None:
    found = _find(bundle, tmp_path, lambda v: isinstance(v, str) and "amp_enabled(@amp" in v)
    assert found, f"{bundle.name}: no item reads @amp through amp_enabled"
    for cid, wf in found.items():
        for word, expected in (("false", False), ("FALSE", False), ("true", True)):
            got = _value(bundle, wf, tmp_path, cid, amp=_cli(word), device="$torch.device('cuda')")
            assert got is expected, f"{bundle.name} {wf['name']} {cid}: --amp {word} gave {got!r}"
        with pytest.raises(RuntimeError) as refused:  # MONAI wraps what an expression raises
            _value(bundle, wf, tmp_path, cid, amp=_cli("flase"), device="$torch.device('cuda')")
        assert "amp must be true or false" in str(_cause(refused.value))


@pytest.mark.parametrize("bundle", bundle_dirs(), ids=lambda p: p.name)
def test_resume_false_from_the_command_line_is_false(bundle: Path, tmp_path: Path) -> None:
    found = _find(bundle, tmp_path, lambda v: isinstance(v, dict) and v.get("_target_") == CHECKPOINT)
    for cid, wf in found.items():  # the trainer's checkpoint, built without the objects it saves
        for word, expected in (("false", False), ("no", False), ("true", True)):
            ckpt = _value(bundle, wf, tmp_path, cid, **{f"{cid}#objects": {}, "resume": _cli(word)})
            assert isinstance(ckpt, TrainingCheckpoint) and ckpt.resume is expected, f"{bundle.name} {cid} {word}"
    expressions = _find(bundle, tmp_path, lambda v: isinstance(v, str) and "as_flag(@resume" in v)
    assert found or expressions, f"{bundle.name}: no item consumes @resume"
    _check_loading(bundle, tmp_path, "resume", expressions)


@pytest.mark.parametrize("flag", ["load_pretrain", "half_precision_weights"])
@pytest.mark.parametrize("bundle", bundle_dirs(), ids=lambda p: p.name)
def test_loading_flags_false_from_the_command_line_load_nothing(bundle: Path, flag: str, tmp_path: Path) -> None:
    found = _find(bundle, tmp_path, lambda v: isinstance(v, str) and f"@{flag}" in v)
    if flag == "load_pretrain":
        assert found, f"{bundle.name}: no item consumes @load_pretrain"
    _check_loading(bundle, tmp_path, flag, found)


def _check_loading(bundle: Path, root: Path, flag: str, found: dict[str, dict[str, Any]]) -> None:
    """``--<flag> false`` evaluates without touching a file; ``--<flag> true`` looks for one in the empty root."""
    with one_thread():
        for cid, wf in found.items():
            stubs = {k: v for k, v in STUBS.get(flag, {}).items() if k != cid}
            assert f"as_flag(@{flag}, " in str(_parser(bundle, wf, root).get(cid)), f"{bundle.name} {cid} ignores it"
            for word in ("false", "off"):
                _value(bundle, wf, root, cid, **stubs, **{flag: _cli(word)})  # nothing to load: no error
            with pytest.raises(RuntimeError) as loading:
                _value(bundle, wf, root, cid, **stubs, **{flag: _cli("true")})
            assert isinstance(_cause(loading.value), (DataError, FileNotFoundError)), f"{bundle.name} {cid}"


@pytest.mark.parametrize("bundle", [b for b in bundle_dirs() if b.name.startswith("mecam_")], ids=lambda p: p.name)
def test_mecam_augmentation_flags_from_the_command_line(bundle: Path, tmp_path: Path) -> None:
    shuffles = _find(
        bundle, tmp_path, lambda v: isinstance(v, str) and v.startswith("$not ") and "@class_balanced" in v
    )
    assert shuffles, f"{bundle.name}: no shuffle item reads @class_balanced"
    for cid, wf in shuffles.items():  # shuffle when the sampler does not draw class-balanced
        assert _value(bundle, wf, tmp_path, cid, class_balanced=_cli("false")) is True
        assert _value(bundle, wf, tmp_path, cid, class_balanced=_cli("true")) is False
    policies = _find(bundle, tmp_path, lambda v: isinstance(v, str) and "@autoaugment" in v)
    assert len(policies) == (0 if bundle.name.startswith("mecam_brain") else 1), f"{bundle.name}: {list(policies)}"
    for cid, wf in policies.items():
        for word, expected in (("false", False), ("False", False), ("true", True)):
            chain = _value(bundle, wf, tmp_path, cid, autoaugment=_cli(word))
            assert any(type(t).__name__ == "RandPolicyd" for t in chain) is expected, f"{bundle.name} {word}"
