"""Launch 2-process (gloo) runs for the distributed tests: a function through ``ignite.distributed.Parallel``
(spawned processes) or a bundle through ``torchrun`` (a subprocess, as a user launches it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous of one test run)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(fn: Callable[..., Any], *args: Any, nproc: int = 2) -> None:
    """Run ``fn(local_rank, *args)`` in ``nproc`` spawned processes joined by a gloo process group."""
    import ignite.distributed as idist

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with idist.Parallel(backend="gloo", nproc_per_node=nproc, master_port=free_port()) as parallel:
        parallel.run(fn, *args)


def torchrun_bundle(
    bundle: Path, configs: Sequence[str], root: Path, overrides: dict[str, Any], nproc: int = 2, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc -m monai.bundle run`` of ``bundle``'s ``configs`` on ``root``.

    ``overrides`` are written to a YAML file merged after the configs. Raises with the output tail on failure.
    """
    extra = root / "test_overrides.yaml"
    extra.write_text(yaml.safe_dump(overrides))
    cfg = bundle / "configs"
    files = [str(cfg / c) for c in configs] + [str(extra)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}", "-m", "monai.bundle", "run", "--config_file", repr(files),
        "--bundle_root", str(root), "--meta_file", str(cfg / "metadata.json"),
        "--logging_file", str(cfg / "logging.conf"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDOOD_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}"
    return done
