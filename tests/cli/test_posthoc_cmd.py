"""``medood posthoc``: help text, a tiny train + evaluate run, and bad input giving exit status 2."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from medood.cli import main
from medood.cli.posthoc_cmd import ARCH_CHOICES
from medood.engines.posthoc import posthoc_detector_names
from medood.networks.classifiers import ARCHS, build_classifier
from medood.utils.checkpoints import save_checkpoint
from tests.helpers.class_folders import CLASSES, SMALL_FIT, make_class_folders, one_thread


def _fake_checkpoint(path: Path, image_size: int = 16) -> Path:
    """An untrained classifier saved in the `medood posthoc train` format (no training needed)."""
    net = build_classifier("resnet10", len(CLASSES))
    config = {"arch": "resnet10", "class_names": CLASSES, "image_size": image_size, "normalize": False}
    return save_checkpoint({"model": net.state_dict(), "config": config}, path)


def test_help_is_the_documentation(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["posthoc", "--help"], ["posthoc", "evaluate", "--help"], ["posthoc", "train", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "ROOT/train/<class>/*" in text, "the data layout is documented"
    assert "ROOT/ood_near/<kind>/*" in text
    assert "95 % of the ID test images are accepted" in text
    assert "higher = more OOD" in text
    assert "--detectors" in text
    assert "--checkpoint" in text
    assert "--epochs" in text
    assert set(ARCH_CHOICES) == set(ARCHS), "the CLI's architecture list follows medood.networks.classifiers.ARCHS"


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    data = make_class_folders(tmp_path / "data")
    model_dir = tmp_path / "model"
    argv = [
        "posthoc",
        "train",
        "--data",
        str(data),
        "--out",
        str(model_dir),
        "--epochs",
        "2",
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    with one_thread():
        assert main(argv) == 0
    train = json.loads((model_dir / "train.json").read_text())
    assert train["class_names"] == CLASSES
    assert train["image_size"] == 16
    assert 1 <= train["best_epoch"] <= 2
    assert "best validation accuracy" in capsys.readouterr().out

    out = tmp_path / "eval"
    argv = [
        "posthoc",
        "evaluate",
        "--data",
        str(data),
        "--checkpoint",
        str(model_dir / "model.pt"),
        "--out",
        str(out),
        "--detector-args",
        json.dumps(SMALL_FIT),
        "--no-progress",
        "--threads",
        "1",
    ]
    with one_thread():  # restores the thread count that --threads 1 changes
        assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["ood_sets"]) == {"ood_far/grey", "ood_far/xray", "ood_near/blue_dye", "ood_near/instrument"}
    assert results["detectors"] == posthoc_detector_names()
    assert results["n_train"] == 18
    assert all(math.isfinite(v) for t in results["results"].values() for m in t.values() for v in m.values())
    fitted = torch.load(out / "detectors.pt", weights_only=True)
    assert set(fitted) == set(posthoc_detector_names())
    stdout = capsys.readouterr().out
    assert torch.get_num_threads() == threads, "the thread count is restored"
    assert "mean AUROC" in stdout
    assert "nero" in stdout


def _exit_code_and_log(argv: list[str], caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(argv)
    return code, caplog.text


def test_missing_class_folder_is_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_class_folders(tmp_path / "data", n_train=2, n_eval=1)
    for f in (data / "val" / "polyp").iterdir():
        f.unlink()
    (data / "val" / "polyp").rmdir()
    code, log = _exit_code_and_log(["posthoc", "train", "--data", str(data), "--out", str(tmp_path / "m")], caplog)
    assert code == 2
    assert str(data / "val") in log, log
    assert "polyp" in log


def test_bad_evaluate_inputs_are_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_class_folders(tmp_path / "data", n_train=2, n_eval=1)
    ckpt = _fake_checkpoint(tmp_path / "model.pt")
    base = ["posthoc", "evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]

    empty = tmp_path / "empty_ood"
    (empty / "kind").mkdir(parents=True)
    code, log = _exit_code_and_log([*base, "--ood", str(empty)], caplog)
    assert code == 2
    assert str(empty / "kind") in log, log
    assert "no images" in log

    code, log = _exit_code_and_log([*base, "--ood", str(tmp_path / "nowhere")], caplog)
    assert code == 2
    assert str(tmp_path / "nowhere") in log, log
    assert "does not exist" in log

    code, log = _exit_code_and_log([*base, "--detectors", "msp,nonsense"], caplog)
    assert code == 2
    assert "nonsense" in log

    code, log = _exit_code_and_log([*base, "--detector-args", "{knn"], caplog)
    assert code == 2
    assert "--detector-args" in log

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    argv = ["posthoc", "evaluate", "--data", str(data), "--checkpoint", str(bad), "--out", str(tmp_path / "o")]
    code, log = _exit_code_and_log(argv, caplog)
    assert code == 2
    assert str(bad) in log, log
    assert not (tmp_path / "o" / "results.json").exists()


def test_evaluate_skips_unreadable_images_lists_them_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_class_folders(tmp_path / "data")
    ckpt = _fake_checkpoint(tmp_path / "model.pt")
    (data / "train" / CLASSES[0] / "zz_text.png").write_text("not an image")
    xray = data / "ood_far" / "xray"
    n_xray = len(list(xray.iterdir()))
    (xray / "zz_cut.png").write_bytes(next(xray.iterdir()).read_bytes()[:30])
    out = tmp_path / "o"
    argv = ["posthoc", "evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(out),
            "--detectors", "msp,energy", "--no-progress"]  # fmt: skip
    with one_thread():
        assert main(argv) == 1
    rows = list(csv.DictReader(open(out / "errors.csv")))
    assert sorted(Path(r["file"]).name for r in rows) == ["zz_cut.png", "zz_text.png"]
    results = json.loads((out / "results.json").read_text())
    assert results["ood_set_sizes"]["ood_far/xray"] == n_xray, "the good images of the set are all scored"
    assert "2 images failed and were skipped" in capsys.readouterr().err
