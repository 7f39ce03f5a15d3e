"""Ignite trainers for networks that detectors own (autoencoders, VQ-VAE, token transformers).

MONAI's ``SupervisedTrainer`` computes ``loss(network(x), y)``; self-supervised stages need more freedom (the
target is the input, a quantisation loss, token corruption). :class:`StepTrainer` keeps everything of
``SupervisedTrainer`` (handlers, AMP, optimizer, prepare_batch, events) and delegates one training step to a
``loss_function(network, inputs, targets) -> (loss, outputs)`` callable, e.g. the stage losses in
:mod:`medood.losses`.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import Tensor

__all__ = ["StepEvaluator", "StepTrainer"]


class StepTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose loss function sees the network and the batch.

    ``loss_function(network, inputs, targets)`` returns ``(loss, outputs)`` where ``outputs`` is a dict of
    tensors to expose in ``engine.state.output`` (e.g. ``{"pred": reconstruction, "quant_loss": q}``); scalar
    entries are logged by ``StatsHandler(output_transform=from_engine([...], first=True))``.

    Unlike ``SupervisedTrainer``, outputs are not decollated by default (``decollate=False``): there is no
    per-item postprocessing in these stages and loss logging reads the batched dict.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)

    def _iteration(self, engine: Any, batchdata: dict[str, Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if isinstance(inputs, MetaTensor):  # metadata tracking only slows training down
            inputs = inputs.as_tensor()
        if isinstance(targets, MetaTensor):
            targets = targets.as_tensor()
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        device_type = inputs.device.type if isinstance(inputs, Tensor) else "cpu"
        with torch.autocast(device_type, enabled=bool(engine.amp), **engine.amp_kwargs):
            loss, outputs = engine.loss_function(engine.network, inputs, targets)
        engine.state.output.update(outputs)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and device_type == "cuda" and getattr(engine, "scaler", None) is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class StepEvaluator(SupervisedEvaluator):
    """Validation counterpart of :class:`StepTrainer`: evaluates ``loss_function(network, inputs, targets)``.

    ``amp=True`` runs the loss under ``torch.autocast`` of the input's device type (bundles pass
    :func:`medood.engines.distributed.amp_enabled`, which keeps the CPU in float32).

    ``engine.state.output`` holds ``loss`` and the loss function's outputs, so an ignite ``Average`` of the
    loss (``output_transform=lambda o: o["loss"]``) can be the key metric (lower is better: pass
    ``metric_cmp_fn="$lambda cur, prev: cur < prev"``).

    Args:
        *args: as ``SupervisedEvaluator``.
        loss_function: the stage loss (use a fixed seed so that validation is repeatable).
        **kwargs: as ``SupervisedEvaluator``; ``decollate`` defaults to False.
    """

    def __init__(self, *args: Any, loss_function: Any, **kwargs: Any) -> None:
        kwargs.setdefault("decollate", False)
        super().__init__(*args, **kwargs)
        self.loss_function = loss_function
        if callable(getattr(loss_function, "reseed", None)):  # identical random corruptions at every validation
            from ignite.engine import Events

            self.add_event_handler(Events.STARTED, lambda _e: loss_function.reseed())

    def _iteration(self, engine: Any, batchdata: dict[str, Tensor]) -> dict:
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        device_type = inputs.device.type if isinstance(inputs, Tensor) else "cpu"
        with engine.mode(engine.network), torch.autocast(device_type, enabled=bool(engine.amp), **engine.amp_kwargs):
            loss, outputs = self.loss_function(engine.network, inputs, targets)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.LOSS: loss.detach(), **outputs}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
