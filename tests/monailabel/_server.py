"""Start ``medood label serve`` on loopback for the HTTP tests, and snapshot folders to prove nothing was written."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = "mim_brain_mri_anomaly_segmentation"
AFFINE = np.array([[-4.0, 0, 0, 80], [0, 4.0, 0, -90], [0, 0, 4.0, -70], [0, 0, 0, 1]])
#: qform / sform code of the test studies (4 = MNI): every NIfTI the server writes must keep it.
XFORM_CODE = 4


def write_study(path: Path, shape: tuple[int, int, int] = (40, 48, 36), seed: int = 0) -> Path:
    """A small synthetic T1-like volume with a bright blob, qform / sform code :data:`XFORM_CODE`."""
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.float32)
    x, y, z = shape
    vol[x // 5 : 4 * x // 5, y // 6 : 5 * y // 6, z // 6 : 5 * z // 6] = 100.0
    vol += (vol > 0) * 10 * rng.random(shape).astype(np.float32)
    vol[x // 2 - 2 : x // 2 + 2, y // 2 - 2 : y // 2 + 2, z // 2 - 2 : z // 2 + 2] = 300  # a bright blob
    img = nib.Nifti1Image(vol, AFFINE)
    img.set_qform(AFFINE, code=XFORM_CODE)
    img.set_sform(AFFINE, code=XFORM_CODE)
    nib.save(img, str(path))
    return path


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def label_server(
    studies: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> Iterator[str]:
    """Run ``medood label serve`` over ``studies`` on a free loopback port; yields its URL, stops it afterwards."""
    import requests

    port = free_port()
    log_path = studies.parent / f"server_{port}.log"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "medood.cli", "label", "serve", "--studies", str(studies), "--bundle", BUNDLE]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=studies.parent
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(480):
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {log_path.read_text()[-3000:]}")
                try:
                    if requests.get(f"{url}/auth/", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.5)
            else:
                pytest.fail("server did not answer within 240 s")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` (relative path -> sha256 and mtime), to prove a request wrote or deleted nothing."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.name.endswith(".log") and ".medood_label_app" not in p.parts:
                out[str(p)] = f"{hashlib.sha256(p.read_bytes()).hexdigest()}:{p.stat().st_mtime_ns}"
    return out
