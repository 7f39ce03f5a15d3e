"""Every bundle in ``bundles/`` (found by globbing: a new bundle is covered with no change here), run as its
``configs/workflows.yaml`` declares (``tests/helpers/bundles.py``): every workflow config it ships is used, each
workflow is ``check_properties()`` clean and runs (train -> infer -> evaluate ...) on tiny synthetic data, and
``ckpt_export`` gives TorchScript that computes what the eager network computes, or fails as the spec's documented
exception says (so the exception is dropped once export works)."""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export
from monai.data import load_net_with_metadata

from medood.cli import main
from medood.io.run_folder import RUN_MANIFEST, read_score_rows
from medood.utils.checkpoints import load_state
from tests.helpers.bundles import DATA_KINDS, BundleRun, bundle_dirs, load_spec, workflow_configs

BUNDLES = bundle_dirs()
EXPORT_MODES = ("script", "trace", "none")
#: the keys of configs/workflows.yaml (tests/helpers/bundles.py): a misspelt key fails instead of being ignored
SPEC_KEYS = {"data", "reuses", "overrides", "workflows", "multi_gpu", "export"}
WORKFLOW_KEYS = {"name", "type", "configs", "overrides", "data", "writes"}
EXPORT_KEYS = {"net_id", "configs", "ckpt", "key_in_ckpt", "input_shape", "mode", "reason", "note"}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_spec_declares_every_shipped_workflow_config(bundle: Path) -> None:
    spec = load_spec(bundle)
    assert set(spec) <= SPEC_KEYS, f"{bundle.name}: unknown keys {set(spec) - SPEC_KEYS}"
    names = [w.get("name") for w in spec["workflows"]]
    assert len(set(names)) == len(names) and all(names), f"{bundle.name}: workflow names must be unique: {names}"
    used: set[str] = set()
    for workflow in spec["workflows"]:
        assert set(workflow) <= WORKFLOW_KEYS, f"{bundle.name} {workflow['name']}: unknown keys"
        assert workflow.get("type") in ("train", "infer"), f"{bundle.name} {workflow['name']}: type train | infer"
        assert workflow.get("data", spec.get("data")) in DATA_KINDS, f"{bundle.name} {workflow['name']}: data kind"
        missing = [c for c in workflow["configs"] if not (bundle / "configs" / c).is_file()]
        assert not missing, f"{bundle.name} {workflow['name']}: no such configs {missing}"
        used.update(workflow["configs"])
    for config, targets in spec.get("multi_gpu", {}).items():  # the multi-process overrides (tests/distributed)
        assert config.startswith("multi_gpu_") and (bundle / "configs" / config).is_file(), f"{bundle.name}: {config}"
        assert targets and set(targets) <= set(names), f"{bundle.name}: {config} names unknown workflows {targets}"
        used.add(config)
    trains = [c for c in workflow_configs(bundle) if c.startswith("train")]
    if trains:  # every trainable bundle can train under torchrun (the model zoo's multi_gpu_train convention)
        assert "multi_gpu_train.yaml" in spec.get("multi_gpu", {}), f"{bundle.name}: no multi_gpu_train.yaml"
    unused = sorted(workflow_configs(bundle) - used)
    assert not unused, f"{bundle.name} ships configs no declared workflow runs: {unused}"
    for sibling in spec.get("reuses", []):
        assert (bundle.parent / sibling / "configs").is_dir(), f"{bundle.name} reuses a missing bundle {sibling}"
    export = spec.get("export")
    assert export, f"{bundle.name}: declare what ckpt_export gives (export: mode script | trace | none)"
    assert set(export) <= EXPORT_KEYS, f"{bundle.name}: unknown export keys {set(export) - EXPORT_KEYS}"
    assert export.get("mode") in EXPORT_MODES, f"{bundle.name}: export mode must be one of {EXPORT_MODES}"
    assert export["mode"] == "script" or export.get("reason"), f"{bundle.name}: say why export is {export['mode']}"
    assert all(isinstance(s, int) for s in export["input_shape"]), f"{bundle.name}: export input_shape"


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_workflows_run_on_tiny_data(bundle: Path, bundle_run: Callable[[str], BundleRun]) -> None:
    """Each declared workflow in order: check_properties() clean, runs, writes what it declares; shipped files of the
    bundle (and of the bundles it reuses) unchanged (all asserted by ``run_bundle``)."""
    run = bundle_run(bundle.name)
    assert run.done == [w["name"] for w in run.spec["workflows"]]
    _assert_flagged(run)


def _assert_flagged(run: BundleRun) -> None:
    """Every ``scores.csv`` a workflow wrote has ``flagged``: 0 / 1 from the split-conformal threshold stored with
    the weights, or blank for every case when the tiny calibration set is too small for alpha or there is none (then
    the run's ``thresholds.json``, where it writes one, records the refusal or has no score threshold)."""
    found = sorted(run.root.glob("eval/**/scores.csv"))
    assert found, f"{run.bundle.name}: no scores.csv written"
    for path in found:
        rows = list(csv.DictReader(path.open()))
        assert rows and "flagged" in rows[0], f"{path.relative_to(run.root)}: no flagged column"
        flags = {r["flagged"] for r in rows}
        assert flags <= {"0", "1"} or flags == {""}, f"{path}: flagged must be 0 / 1 (or blank when refused): {flags}"
        record = path.parent / "thresholds.json"
        if flags == {""} and record.is_file():
            content = json.loads(record.read_text())
            refused = "refused" in (content.get("score_rule") or {})
            assert refused or content["score_threshold"] is None, f"{record}: blank flags beside a threshold"


# ---------------------------------------------------------------------------------------------- export
def _export(run: BundleRun, path: Path, use_trace: bool) -> Path:
    """``ckpt_export`` of the spec's network from the run's trained checkpoint, as a user would call it."""
    spec, cfg = run.spec["export"], run.bundle / "configs"
    ckpt_export(
        net_id=spec.get("net_id", "network_def"),
        filepath=str(path),
        ckpt_file=str(run.root / spec.get("ckpt", "models/model.pt")),
        meta_file=str(cfg / "metadata.json"),
        config_file=[str(cfg / c) for c in spec.get("configs", ["inference.yaml"])],
        key_in_ckpt=spec.get("key_in_ckpt", "model"),
        use_trace=use_trace,
        input_shape=spec["input_shape"],
        bundle_root=str(run.root),
        **run.overrides(),
    )
    return path


def _parser(run: BundleRun) -> ConfigParser:
    spec, cfg = run.spec["export"], run.bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / c) for c in spec.get("configs", ["inference.yaml"])])
    parser.read_meta(str(cfg / "metadata.json"))
    parser.update({"bundle_root": str(run.root), **run.overrides()})
    return parser


def _eager_and_inputs(run: BundleRun) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The eager network with the run's weights, and inputs on which a trace that froze data-dependent control flow
    (the batch size, which slices hold foreground ...) goes wrong, unlike the random image it was traced on: two
    preprocessed test images, the first with the second half of its last axis blanked, and both as one batch."""
    spec = run.spec["export"]
    parser = _parser(run)
    net = parser.get_parsed_content(spec.get("net_id", "network_def"))
    load_state(net, run.root / spec.get("ckpt", "models/model.pt"))
    dataset = parser.get_parsed_content("dataset")
    inputs = [torch.as_tensor(dataset[i]["image"]).as_subclass(torch.Tensor)[None] for i in range(2)]
    assert [list(x.shape) for x in inputs] == [spec["input_shape"]] * 2, "export input_shape = a preprocessed image"
    blanked = inputs[0].clone()
    blanked[..., blanked.shape[-1] // 2 :] = 0
    return net.eval(), [*inputs, blanked, torch.cat(inputs)]


def _mismatch(exported: Path, eager: torch.nn.Module, inputs: list[torch.Tensor], version: str) -> str | None:
    """Why the exported network differs from the eager one on ``inputs`` (not the random one traced), or ``None``."""
    ts, meta, _ = load_net_with_metadata(str(exported))
    assert meta["version"] == version, "the bundle's metadata travels with the TorchScript file"
    for x in inputs:
        with torch.no_grad():
            expected, got = eager(x), ts(x)
        try:
            torch.testing.assert_close(torch.as_tensor(got), torch.as_tensor(expected), rtol=1e-4, atol=1e-5)
        except AssertionError as err:
            return str(err)
    return None


def _try_export(run: BundleRun, path: Path, use_trace: bool) -> tuple[Path | None, str | None]:
    try:
        return _export(run, path, use_trace), None
    except Exception as err:  # what scripting / tracing raises varies (ValueError, RuntimeError, NotSupportedError)
        return None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # what a trace freezes: the spec's reason says
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_ckpt_export_matches_the_eager_network(
    bundle: Path, bundle_run: Callable[[str], BundleRun], tmp_path: Path
) -> None:
    run = bundle_run(bundle.name)
    spec = run.spec["export"]
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    eager, inputs = _eager_and_inputs(run)
    scripted, script_error = _try_export(run, tmp_path / "scripted.ts", use_trace=False)
    if spec["mode"] == "script":
        assert scripted is not None, f"{bundle.name}: ckpt_export (script) failed: {script_error}"
        assert _mismatch(scripted, eager, inputs, version) is None
        return
    assert scripted is None, f"{bundle.name} scripts now: set export mode to script and drop the reason"
    traced, trace_error = _try_export(run, tmp_path / "traced.ts", use_trace=True)
    if spec["mode"] == "trace":
        assert traced is not None, f"{bundle.name}: ckpt_export --use_trace failed: {trace_error}"
        assert _mismatch(traced, eager, inputs, version) is None
        return
    wrong = trace_error or _mismatch(traced, eager, inputs, version)  # type: ignore[arg-type]
    assert wrong, f"{bundle.name} exports by tracing now (same output on test images): set export mode to trace"


# ---------------------------------------------------------------------------------------------- run folders
def _scene_references(script: Path) -> list[tuple[str, str | None, str, str | None]]:
    """The ``CASES`` entries of an ``open_in_slicer.py`` (case, input, map file, mask file)."""
    text = script.read_text()
    block = text[text.index("CASES = [") + len("CASES = ") : text.index("\n]\n") + 2]
    return [tuple(entry) for entry in ast.literal_eval(block)]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_run_folders_have_one_scores_layout_and_report_and_scene(
    bundle: Path, bundle_run: Callable[[str], BundleRun]
) -> None:
    """Every ``scores.csv`` any workflow wrote parses with the one reader (``case,score,flagged`` first, the same
    columns everywhere); ``medood report`` and ``medood slicer-scene`` work on every run folder with results, with
    an image per case that has a map or overlay, and a scene whose every file reference exists."""
    run = bundle_run(bundle.name)
    found = sorted(run.root.glob("eval/**/scores.csv"))
    assert found, f"{bundle.name}: no workflow wrote a scores.csv"
    for path in found:
        rows = read_score_rows(path)
        header = next(csv.reader(path.open()))
        assert header[:3] == ["case", "score", "flagged"], f"{path}: {header}"
        assert set(header[3:]) <= {"label", "image", "ood_set"}, f"{path}: unknown columns {header[3:]}"
        assert rows, f"{path}: no rows"
    for folder in sorted({p.parent for p in found if (p.parent / RUN_MANIFEST).is_file()}):
        manifest = json.loads((folder / RUN_MANIFEST).read_text())
        kind = manifest["map_kind"]
        assert manifest["status"] == "complete" and manifest["cases"]
        assert main(["report", str(folder)]) == 0
        html = (folder / "report.html").read_text()
        with_pictures = [c for c in manifest["cases"] if (folder / f"{c}_{kind}_map.nii.gz").is_file()]
        assert html.count("<img ") >= min(len(with_pictures), 40), f"{folder}: report images missing"
        if not with_pictures:
            continue
        assert main(["slicer-scene", str(folder)]) == 0
        refs = _scene_references(folder / "open_in_slicer.py")
        assert [r[0] for r in refs] == [c for c in manifest["cases"] if c in with_pictures]
        for case, image, amap, mask in refs:
            assert amap == f"{case}_{kind}_map.nii.gz" and (folder / amap).is_file()
            assert mask is None or (folder / mask).is_file()
            assert image is None or Path(image).is_file()
