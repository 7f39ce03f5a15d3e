"""Bounded memory: a compressed bomb under the budget (a few hundred MB decoded from well under 1 MB) is read in a
subprocess whose peak resident memory during the read (``VmHWM`` reset through ``/proc/self/clear_refs`` after
the imports, so neither the import peak nor library pages the kernel dropped meanwhile count; where the reset is
not allowed, ``ru_maxrss`` above the resident size after the imports, an upper bound) stays under 2x the decoded
float32 size; one above
the budget is refused from its header, before any pixel is decoded (its peak stays at the baseline)."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.reliability.corpus.broken import nifti_bomb

ROOT = Path(__file__).resolve().parents[2]
SIDE_3D = 320  # 320^3 float32 voxels: 125 MiB decoded from ~0.5 MB
SIDE_2D = 4000  # 4000^2 RGB: 183 MiB as float32 from ~50 KB

_PROBE = """
import json, resource, sys
from medood.data import read_image_2d, load_volume, load_dicom_series
import os

def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

try:  # reset the high-water mark to the resident size now: the read's own peak, whatever the import peak was
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = base_max = status_kib("VmRSS")
    reset = True
except OSError:  # no reset: the resident size now as baseline (an upper bound of the read's peak)
    base, base_max, reset = status_kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
path = sys.argv[1]
try:
    if os.path.isdir(path):
        x = load_dicom_series(path)
    else:
        x = read_image_2d(path, scale=True) if path.endswith('.png') else load_volume(path)
    shape, error = list(x.shape), None
except Exception as e:
    shape, error = None, str(e)
peak = status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "base_max_kib": base_max, "peak_kib": peak, "shape": shape, "error": error}))
"""


def _nifti_bomb(path: Path, side: int) -> Path:
    """A float32 side^3 volume of zeros with two bright voxels, gzip-streamed (never held in memory)."""
    header = nib.Nifti1Header()
    header.set_data_shape((side,) * 3)
    header.set_data_dtype(np.float32)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    plane = np.zeros((side, side), np.float32)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header.binaryblock + b"\x00" * 4)
        for z in range(side):
            plane[3, 5] = 1.0 if z in (7, 200) else 0.0
            f.write(plane.tobytes())
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bomb(path: Path, side: int) -> Path:
    """An 8-bit RGB side x side PNG, black with one red pixel, its IDAT compressed row by row."""
    comp = zlib.compressobj(9)
    parts = []
    row = bytearray(1 + 3 * side)
    for y in range(side):
        row[1:4] = b"\xff\x00\x00" if y == 11 else b"\x00\x00\x00"
        parts.append(comp.compress(bytes(row)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )
    return path


def _probe(path: Path, budget: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MEDOOD_MAX_IMAGE_BYTES": budget}
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nifti", "png"])
def test_compressed_bomb_under_the_budget_peaks_below_twice_its_float32_size(tmp_path: Path, fmt: str) -> None:
    if fmt == "nifti":
        path, shape = _nifti_bomb(tmp_path / "bomb.nii.gz", SIDE_3D), [1, SIDE_3D, SIDE_3D, SIDE_3D]
    else:
        path, shape = _png_bomb(tmp_path / "bomb.png", SIDE_2D), [3, SIDE_2D, SIDE_2D]
    decoded = 4 * int(np.prod(shape))
    assert path.stat().st_size < decoded / 200, "a compression bomb"
    found = _probe(path, "1G")
    assert found["error"] is None and found["shape"] == shape, found
    extra = (found["peak_kib"] - found["base_kib"]) * 1024
    assert extra <= 2 * decoded, f"peak {extra / 2**20:.0f} MiB above baseline for {decoded / 2**20:.0f} MiB float32"


@pytest.mark.slow
def test_bomb_above_the_budget_is_refused_from_its_header(tmp_path: Path) -> None:
    path = nifti_bomb(tmp_path / "bomb.nii.gz", side=SIDE_3D)  # the header alone: no voxel data at all
    found = _probe(path, "100M")
    assert "above the memory budget of 100.0 MiB" in found["error"] and "MEDOOD_MAX_IMAGE_BYTES" in found["error"]
    assert (found["peak_kib"] - found["base_max_kib"]) * 1024 < 20 * 2**20, "no new peak: nothing was decoded"


def _dicom_series(folder: Path, side: int, n: int) -> Path:
    """``n`` uncompressed ``side`` x ``side`` int16 slices of one series (pydicom's MR_small, resized)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    src, uid = pydicom.dcmread(get_testdata_file("MR_small.dcm")), generate_uid()
    plane = np.zeros((side, side), np.int16)
    for k in range(n):
        ds = src.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), k + 1
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 2.0 * k]
        ds.Rows = ds.Columns = side
        plane[5, 7] = 100 + k
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"img{k:03d}.dcm")
    return folder


@pytest.mark.slow
def test_dicom_series_peaks_below_twice_its_float32_size(tmp_path: Path) -> None:
    side, n = 512, 96  # 96 MiB as float32
    path = _dicom_series(tmp_path / "series", side, n)
    found = _probe(path, "1G")
    assert found["error"] is None and found["shape"] == [1, side, side, n], found
    decoded = 4 * side * side * n
    extra = (found["peak_kib"] - found["base_kib"]) * 1024
    assert extra <= 2 * decoded, f"peak {extra / 2**20:.0f} MiB above baseline for {decoded / 2**20:.0f} MiB float32"
