"""report.html: content, self-containment, the Ignite handler, the CLI, and a real headless-browser render."""

from __future__ import annotations

import re
import shutil

import pytest

from medood.cli import main
from medood.reports import RunReportHandler, read_run, write_report
from medood.reports.run_dir import display_window, thresholds_record, write_thresholds
from medood.utils.errors import DataError
from tests.helpers.run_folder import make_run_2d, make_run_3d


def test_read_run_parses_scores_slices_thresholds_and_files(tmp_path) -> None:
    run = read_run(make_run_3d(tmp_path), images_dir=tmp_path / "inputs")
    assert [c.name for c in run.cases] == ["sub-00_T1w", "sub-01_T1w", "sub-02_T1w"]
    case = run.cases[1]
    assert case.label == 1 and case.flagged == 1 and case.score == pytest.approx(2.0)
    assert case.image == tmp_path / "inputs" / "sub-01_T1w.nii.gz"
    assert case.mask is not None and case.mask.name == "sub-01_T1w_anomaly_seg.nii.gz"
    assert len(case.slice_scores[2]) == 8 and max(case.slice_scores[2]) == pytest.approx(2.0)
    assert run.window == (0.5, 2.0) and run.map_threshold == 0.5 and run.score_threshold == 1.0
    assert run.id_scores == [0.05, 0.08, 0.1]
    assert run.metrics is not None and run.metrics["volume"]["auroc"] == 1.0


def test_thresholds_defaults_and_bad_files(tmp_path) -> None:
    assert display_window(0.5) == (0.5, 2.0) and display_window(None) is None
    assert display_window(0.5, [0.1, 0.3]) == (0.1, 0.3)
    run_dir = make_run_3d(tmp_path, n_cases=2, thresholds=False)
    run = read_run(run_dir)
    assert run.window is None and run.id_scores == [pytest.approx(0.1, abs=0.01)]  # the label-0 case
    (run_dir / "thresholds.json").write_text('{"map_threshold": "high"}')
    with pytest.raises(DataError, match=r"thresholds.json: map_threshold must be a number"):
        read_run(run_dir)
    (run_dir / "thresholds.json").write_text("[1, 2")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_run(run_dir)
    (run_dir / "thresholds.json").unlink()
    (run_dir / "scores.csv").write_text("case,value\na,1\n")
    with pytest.raises(DataError, match=r"scores.csv: has no \['score'\] column"):
        read_run(run_dir)


def test_thresholds_from_a_calibration(tmp_path) -> None:
    import torch

    from medood.detectors.calibration import Calibration

    cal = Calibration()
    cal.update(torch.linspace(0, 1, 101), torch.linspace(0, 2, 1001))
    t = thresholds_record(cal, map_percentile=99.5, score_percentile=95)
    # split-conformal: the ceil(102 * 0.95) = 97th of 101 scores, the ceil(1002 * 0.995) = 997th of 1001 map values
    assert t["map_threshold"] == pytest.approx(1.992, abs=1e-5) and t["score_threshold"] == pytest.approx(0.96)
    assert t["window"] == pytest.approx([1.992, 4 * 1.992], abs=1e-4) and len(t["id_scores"]) == 101
    assert t["score_rule"]["rule"] == "split-conformal" and (t["score_rule"]["alpha"], t["score_rule"]["n"]) == (
        pytest.approx(0.05),
        101,
    )
    assert t["map_rule"]["n"] == 1001 and t["map_rule"]["scope"] == "per-voxel marginal"
    write_thresholds(tmp_path, t)
    assert (tmp_path / "thresholds.json").is_file()
    assert thresholds_record(Calibration())["map_threshold"] is None


def test_report_is_self_contained_and_shows_every_part(tmp_path) -> None:
    run_dir = make_run_3d(tmp_path)
    lesion = {"sub-01_T1w": str(run_dir / "sub-01_T1w_anomaly_seg.nii.gz")}
    path = write_report(read_run(run_dir, images_dir=tmp_path / "inputs"), lesions=lesion, slices_per_case=2)
    assert path == run_dir / "report.html"
    html = path.read_text()
    assert "Content-Security-Policy" in html and "<script" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 3 * 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:|//|file:)', html), "nothing may load from outside the page"
    assert html.count("<svg") == 1 + 3  # the distribution plus one slice-score curve per case
    assert "ID reference (healthy calibration)" in html and "volume.auroc" in html
    assert html.index("sub-01_T1w") < html.index('id="case-sub-00_T1w"'), "cases ranked by score"
    assert not list(run_dir.glob(".report.html.*")), "written atomically (no temporary file left)"


def test_report_2d_run_inlines_the_overlays_and_without_inputs(tmp_path) -> None:
    html = write_report(make_run_2d(tmp_path)).read_text()
    assert html.count("data:image/png;base64,") == 2 and "No in-distribution reference" in html
    only_maps = make_run_3d(tmp_path / "b", n_cases=1)  # inputs unknown: maps drawn alone
    assert write_report(only_maps).read_text().count("data:image/png") == 3


def test_handler_after_an_ignite_run_and_cli(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from ignite.engine import Engine

    run_dir = make_run_3d(tmp_path)
    datalist = [{"image": str(p), "label": None} for p in sorted((tmp_path / "inputs").glob("*.nii.gz"))]
    engine = Engine(lambda e, b: None)
    RunReportHandler(run_dir, datalist).attach(engine)
    engine.run([0, 1], max_epochs=1)
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png") == 9 and (run_dir / "open_in_slicer.py").is_file()
    assert RunReportHandler(tmp_path / "nowhere")() is None  # logged, not raised: the run's outputs exist
    with pytest.raises(DataError):
        RunReportHandler(tmp_path / "nowhere", raise_errors=True)()
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir), "--images", str(tmp_path / "inputs"), "--slices", "1"]) == 0
    assert "report.html" in capsys.readouterr().out and (run_dir / "report.html").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path) -> None:
    """Every image decodes (naturalWidth > 0) and the browser logs no error (CSP violations included)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    found = _chromium()
    if found is None:
        pytest.skip("chromium / chromedriver missing (apt-get install -y chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    run_dir = make_run_3d(tmp_path)
    page = write_report(read_run(run_dir, images_dir=tmp_path / "inputs"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)
    try:
        driver.get(page.as_uri())
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        n_svg = driver.execute_script("return document.querySelectorAll('svg').length")
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    finally:
        driver.quit()
    assert len(widths) == 9 and all(w > 0 for w in widths), widths
    assert n_svg == 4
    assert not errors, errors
