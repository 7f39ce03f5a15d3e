"""Training and batch-inference throughput of a bundle under ``torchrun`` with 1 and 2 processes:
``docs/benchmarks/scale.json``.

The workload is the NERO endoscopy bundle's classifier training exactly as a user launches it (``inference.yaml``,
``train.yaml``, ``multi_gpu_train.yaml``; DDP, ``DistributedSampler``, gloo on the CPU, nccl on a GPU) on the
demo endoscopy training set (180 images of 64 x 64, batch size per process ``--batch-size``). Each run trains
``--epochs`` epochs without validation; the first is a warm-up (caching, allocator), the figures are the median
epoch time of the others. A case is one training image; an iteration is one optimiser step of every process (2
processes take half the steps of 1 per epoch, each on twice the global batch). Runs alternate 1, 2, 1, 2, ...
(``--repeats`` pairs) so that the load of a shared machine hits both alike; the ratio is the median of the pairs'
cases-per-second ratios. Every process uses ``OMP_NUM_THREADS=1`` (``--threads``): 2 processes use 2 cores.

``--task inference`` measures sharded batch inference instead (its figures go under the file's ``inference`` key,
the training figures stay): the MIM brain-MRI bundle (``inference.yaml`` + ``multi_gpu_inference.yaml``, shipped
weights) scores the demo brain-MRI test cases; the time is rank 0's evaluator run from its start to the merged
``scores.csv`` (every rank's rows gathered), i.e. without process start-up and model loading.

Usage::

    nice .venv/bin/python scripts/bench_scale.py [--dataset-dir demo_data/endoscopy] [--out docs/benchmarks/scale.json]
    nice .venv/bin/python scripts/bench_scale.py --task inference [--dataset-dir demo_data/brain_mri]

The same script with ``--worker`` is what ``torchrun`` starts (one process per rank).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "nero_endoscopy_ood_classification"
CONFIGS = ["inference.yaml", "train.yaml", "multi_gpu_train.yaml"]
INFER_BUNDLE = REPO / "bundles" / "mim_brain_mri_anomaly_segmentation"
INFER_CONFIGS = ["inference.yaml", "multi_gpu_inference.yaml"]

logger = logging.getLogger("bench_scale")


def worker(args: argparse.Namespace) -> None:
    """One rank: build the bundle's trainer, train, and (rank 0) write the epoch times to ``args.result``."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from medood.utils.distributed import get_rank, get_world_size

    cfg = BUNDLE / "configs"
    wf = ConfigWorkflow(
        config_file=[str(cfg / c) for c in CONFIGS], meta_file=str(cfg / "metadata.json"), workflow_type="train",
        bundle_root=args.bundle_root, dataset_dir=args.dataset_dir, epochs=args.epochs, val_interval=10_000,
        batch_size=args.batch_size, seed=0, amp=args.amp,
    )  # fmt: skip
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    ends: list[float] = []
    trainer.add_event_handler(Events.EPOCH_STARTED(once=1), lambda _e: ends.append(time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _e: ends.append(time.perf_counter()))
    trainer.run()
    if get_rank() == 0:
        epochs = [b - a for a, b in itertools.pairwise(ends)]
        result = {
            "world_size": get_world_size(),
            "epoch_seconds": epochs,
            "iterations_per_epoch": trainer.state.epoch_length,
            "cases_per_epoch": len(wf.parser.get_parsed_content("train#dataset")),
            "device": str(wf.parser.get_parsed_content("device")),
        }
        Path(args.result).write_text(json.dumps(result))
    wf.finalize()


def infer_worker(args: argparse.Namespace) -> None:
    """One rank of a sharded inference run; rank 0 writes its evaluator's run time to ``args.result``."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from medood.utils.distributed import get_rank, get_world_size

    cfg = INFER_BUNDLE / "configs"
    wf = ConfigWorkflow(
        config_file=[str(cfg / c) for c in INFER_CONFIGS], meta_file=str(cfg / "metadata.json"), workflow_type="infer",
        bundle_root=str(INFER_BUNDLE), dataset_dir=str(args.dataset_dir), output_dir=args.bundle_root, amp=args.amp,
    )  # fmt: skip
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    marks: list[float] = []
    evaluator.add_event_handler(Events.STARTED, lambda _e: marks.append(time.perf_counter()))
    evaluator.add_event_handler(Events.COMPLETED, lambda _e: marks.append(time.perf_counter()))  # after the merge
    evaluator.run()
    if get_rank() == 0:
        cases = sum(1 for _ in (Path(args.bundle_root) / "scores.csv").open()) - 1
        result = {"world_size": get_world_size(), "seconds": marks[1] - marks[0], "cases": cases,
                  "device": str(wf.parser.get_parsed_content("device"))}  # fmt: skip
        Path(args.result).write_text(json.dumps(result))
    wf.finalize()


def launch(nproc: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One ``torchrun --nproc_per_node=nproc`` run of :func:`worker` (or :func:`infer_worker`); its figures."""
    result = work / f"result_{nproc}_{time.time_ns()}.json"
    root = work / f"bundle_{nproc}_{time.time_ns()}"
    root.mkdir(exist_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
        str(Path(__file__).resolve()), "--worker", "--bundle-root", str(root), "--dataset-dir", str(args.dataset_dir),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--result", str(result),
        "--task", args.task,
    ] + (["--amp"] if args.amp else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MEDOOD_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun --nproc_per_node={nproc} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    out = json.loads(result.read_text())
    if args.task == "inference":
        out.update(wall_seconds=time.perf_counter() - start, cases_per_second=out["cases"] / out["seconds"])
        logger.info("%d process(es): %.3f cases/s (%d cases in %.1f s)", nproc, out["cases_per_second"],
                    out["cases"], out["seconds"])  # fmt: skip
        return out
    timed = out["epoch_seconds"][1:]  # the first epoch is the warm-up
    seconds = statistics.median(timed)
    out.update(
        timed_epochs=len(timed),
        median_epoch_seconds=seconds,
        cases_per_second=out["cases_per_epoch"] / seconds,
        iterations_per_second=out["iterations_per_epoch"] / seconds,
    )
    logger.info("%d process(es): %.1f cases/s (epochs %s s)", nproc, out["cases_per_second"], out["epoch_seconds"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "demo_data" / "endoscopy")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "scale.json")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run, the first a warm-up")
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--repeats", type=int, default=2, help="alternating (1, 2)-process pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--amp", action="store_true", help="mixed precision (GPU only; ignored on the CPU)")
    parser.add_argument("--task", choices=["train", "inference"], default="train")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundle-root", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (infer_worker if args.task == "inference" else worker)(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.task == "inference" and args.dataset_dir == REPO / "demo_data" / "endoscopy":
        args.dataset_dir = REPO / "demo_data" / "brain_mri"
    if not args.dataset_dir.is_dir():  # a worktree without its own demo data
        args.dataset_dir = Path("/work/main/demo_data") / args.dataset_dir.name
    import torch

    from medood.utils.io import atomic_write_text
    from medood.utils.machine import describe_machine

    torch.set_num_threads(args.threads)  # what every worker process uses (OMP_NUM_THREADS), for describe_machine
    machine = describe_machine()
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for nproc in (1, 2):
                runs[nproc].append(launch(nproc, args, Path(tmp)))
    ratios = [b["cases_per_second"] / a["cases_per_second"] for a, b in zip(runs[1], runs[2])]
    if args.task == "inference":
        write_inference(args, machine, runs, ratios)
        return
    report = {
        "workload": (
            f"NERO endoscopy classifier (MONAI ResNet-10, 2D, 64 x 64 RGB), bundle train.yaml + multi_gpu_train.yaml "
            f"under torchrun, {args.epochs} epochs of the demo training set (first = warm-up), batch {args.batch_size} "
            f"per process, no validation, OMP_NUM_THREADS={args.threads} per process"
        ),
        "machine": machine,
        "backend": "nccl" if runs[1][0]["device"].startswith("cuda") else "gloo",
        "amp": bool(args.amp),
        "processes": {
            str(n): {
                "cases_per_second": statistics.median(r["cases_per_second"] for r in rs),
                "iterations_per_second": statistics.median(r["iterations_per_second"] for r in rs),
                "runs": rs,
            }
            for n, rs in runs.items()
        },
        "speedup_2_over_1": statistics.median(ratios),
        "speedup_per_pair": ratios,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    logger.info("2 / 1 processes: %.2fx cases per second; wrote %s", report["speedup_2_over_1"], args.out)


def write_inference(args: argparse.Namespace, machine: str, runs: dict[int, list[dict[str, Any]]],
                    ratios: list[float]) -> None:  # fmt: skip
    """Put the inference figures under the ``inference`` key of ``args.out`` (the training figures stay)."""
    from medood.utils.io import atomic_write_text

    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report["inference"] = {
        "workload": (
            "MIM brain-MRI anomaly segmentation (shipped weights, 3D 80 x 96 x 80 at 2 mm, batch 1 per process), "
            "bundle inference.yaml + multi_gpu_inference.yaml under torchrun on the demo brain-MRI test cases; "
            f"rank 0's evaluator run until the merged scores.csv, OMP_NUM_THREADS={args.threads} per process"
        ),
        "machine": machine,
        "backend": "nccl" if runs[1][0]["device"].startswith("cuda") else "gloo",
        "processes": {
            str(n): {"cases_per_second": statistics.median(r["cases_per_second"] for r in rs), "runs": rs}
            for n, rs in runs.items()
        },
        "speedup_2_over_1": statistics.median(ratios),
        "speedup_per_pair": ratios,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    logger.info("inference 2 / 1 processes: %.2fx cases per second; wrote %s", report["inference"]["speedup_2_over_1"],
                args.out)  # fmt: skip


if __name__ == "__main__":
    main()
