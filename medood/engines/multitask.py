"""Training and calibration of the multi-task segmentation host (one network, several datasets / contexts).

* :class:`MultiTaskTrainer`: MONAI ``SupervisedTrainer`` over one loader per task, batches interleaved
  (:class:`~medood.data.multitask.InterleavedLoader`), logging each task's mean loss per epoch;
* :func:`collect_logits`: a seeded sample of voxel logits and labels per task (inside each image's foreground),
  plus the per-class Dice counts of the full argmax segmentations;
* :func:`fit_temperature`: the temperature ``T`` minimising the voxel negative log-likelihood of
  ``softmax(logits / T)`` on validation data (Guo et al.'s temperature scaling);
* :func:`calibration_report`: expected calibration error and NLL per task before / after temperature scaling,
  and Dice, on held-out data (Karimi & Gholipour's multi-task calibration claim, measured).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from torch import Tensor, nn

from medood.data.multitask import InterleavedLoader
from medood.metrics.seg_calibration import expected_calibration_error

__all__ = ["MultiTaskTrainer", "calibration_report", "collect_logits", "fit_temperature"]

logger = logging.getLogger(__name__)


class MultiTaskTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` over interleaved per-task loaders that logs every task's mean loss per epoch.

    Args:
        device: where to train.
        max_epochs: epochs.
        task_loaders: ``{task: loader}`` (a batch never mixes loaders, so its loss is its loader's).
        *args: as ``SupervisedTrainer`` after ``train_data_loader`` (``network``, ``optimizer``, ``loss_function``).
        **kwargs: as ``SupervisedTrainer``.

    Attributes:
        task_losses: ``{task: [mean loss of epoch 1, ...]}``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        task_loaders: Mapping[str, Iterable[Any]],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        loader = InterleavedLoader(task_loaders)
        kwargs.setdefault("epoch_length", len(loader))
        super().__init__(torch.device(device), max_epochs, loader, *args, **kwargs)
        self.interleaved = loader
        self.task_losses: dict[str, list[float]] = defaultdict(list)
        self._sums: dict[str, list[float]] = {}
        from ignite.engine import Events

        self.add_event_handler(Events.EPOCH_STARTED, lambda _e: self._sums.clear())
        self.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _record(self, engine: Any) -> None:
        output = engine.state.output
        task = self.interleaved.current or "all"
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        total = self._sums.setdefault(task, [0.0, 0.0])
        total[0] += float(loss)
        total[1] += 1

    def _log(self, engine: Any) -> None:
        parts = []
        for task, (total, n) in sorted(self._sums.items()):
            self.task_losses[task].append(total / n)
            parts.append(f"{task} {total / n:.4f}")
        logger.info("epoch %d mean loss per task: %s", engine.state.epoch, ", ".join(parts))


def _foreground(image: Tensor) -> Tensor:
    """Voxels that count for calibration: inside the image (non-zero input), or all of a 2D slab."""
    if image.shape[-1] == 1:
        return torch.ones_like(image[:, 0], dtype=torch.bool)
    return image[:, 0] != 0


@torch.no_grad()
def collect_logits(
    network: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    voxels_per_case: int = 20_000,
    seed: int = 0,
) -> dict[str, dict[str, Tensor]]:
    """Per task: a seeded sample of foreground voxel logits ``(N, K)`` and labels, and Dice counts.

    Returns:
        ``{task: {"logits": (N, K), "labels": (N,), "inter": (K,), "pred": (K,), "true": (K,)}}`` (the last three
        count voxels of the full argmax segmentations, for per-class Dice).
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(list))
    network.eval()
    for batch in loader:
        image = torch.as_tensor(batch["image"]).to(device)
        label = torch.as_tensor(batch["label"]).to(device).long()[:, 0]
        logits = torch.as_tensor(network(image)).float()
        k = logits.shape[1]
        pred = logits.argmax(1)
        for i, task in enumerate(batch.get("task", ["all"] * image.shape[0])):
            store = out[str(task)]
            store["inter"].append(torch.bincount(pred[i][label[i] == pred[i]].reshape(-1), minlength=k).cpu())
            store["pred"].append(torch.bincount(pred[i].reshape(-1), minlength=k).cpu())
            store["true"].append(torch.bincount(label[i].reshape(-1), minlength=k).cpu())
            fg = _foreground(image[i : i + 1])[0]
            vox = logits[i].reshape(k, -1)[:, fg.reshape(-1)].T.cpu()
            lab = label[i].reshape(-1)[fg.reshape(-1)].cpu()
            if vox.shape[0] > voxels_per_case:
                keep = torch.randperm(vox.shape[0], generator=gen)[:voxels_per_case]
                vox, lab = vox[keep], lab[keep]
            store["logits"].append(vox)
            store["labels"].append(lab)
    return {
        task: {
            "logits": torch.cat(s["logits"]),
            "labels": torch.cat(s["labels"]),
            **{c: torch.stack(s[c]).sum(0) for c in ("inter", "pred", "true")},
        }
        for task, s in out.items()
    }


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The temperature ``T > 0`` minimising ``NLL(softmax(logits / T), labels)`` (LBFGS on ``log T``)."""
    z, y = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def _task_metrics(data: Mapping[str, Tensor], temperature: float) -> dict[str, Any]:
    z, y = data["logits"].double(), data["labels"]
    present = torch.nonzero(data["true"][1:] > 0).reshape(-1) + 1  # the task's foreground classes
    dice = 2 * data["inter"][present] / (data["pred"][present] + data["true"][present]).clamp_min(1)
    return {
        "ece_before": expected_calibration_error(torch.softmax(z, 1), y),
        "ece_after": expected_calibration_error(torch.softmax(z / temperature, 1), y),
        "nll_before": float(nn.functional.cross_entropy(z, y)),
        "nll_after": float(nn.functional.cross_entropy(z / temperature, y)),
        "dice_per_class": {int(c): float(d) for c, d in zip(present.tolist(), dice.tolist())},
        "mean_dice": float(dice.double().mean()) if dice.numel() else float("nan"),
        "n_voxels": int(y.numel()),
    }


def calibration_report(
    network: nn.Module,
    val_loader: Iterable[Mapping[str, Any]],
    test_loader: Iterable[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    voxels_per_case: int = 20_000,
) -> dict[str, Any]:
    """Fit one temperature on the validation voxels of every task; ECE / NLL before and after, and Dice, per task.

    Returns:
        ``{"temperature": T, "validation": {task: metrics}, "test": {task: metrics}}``; ECE is top-label with 15
        equal-width bins over foreground voxels (brain) / all pixels (2D patches).
    """
    val = collect_logits(network, val_loader, device, voxels_per_case)
    temperature = fit_temperature(
        torch.cat([v["logits"] for v in val.values()]), torch.cat([v["labels"] for v in val.values()])
    )
    test = collect_logits(network, test_loader, device, voxels_per_case)
    test_metrics = {t: _task_metrics(d, temperature) for t, d in sorted(test.items())}
    report = {
        "temperature": temperature,
        "validation": {t: _task_metrics(d, temperature) for t, d in sorted(val.items())},
        "test": test_metrics,
    }
    for task, m in test_metrics.items():
        logger.info(
            "%s: ECE %.4f -> %.4f (T=%.3f), mean Dice %.3f",
            task,
            m["ece_before"],
            m["ece_after"],
            temperature,
            m["mean_dice"],
        )
    return report
