"""Dropping a step: a sample whose loss is not finite does not touch the weights.

The search samples formats that can overflow (FP4 everywhere, say). Such a cycle's gradients are
dropped before the optimizer step, so the step leaves the weights and the optimizer state as
they are. Without loss scaling that is setting them to None (optimizers skip parameters without
gradients). fp16's GradScaler instead asserts when a step has no gradient to check: there every
gradient is made NaN, the scaler skips the step as for an overflow, and afterwards its scale,
growth count and the learning-rate schedule are put back on the course they had without fp16.
"""
from __future__ import annotations

from typing import Any

import torch
import transformers.optimization
from torch import nn
from transformers import Trainer, TrainerCallback

# Schedulers the Trainer steps on evaluation metrics rather than once per optimizer step.
_METRIC_DRIVEN_SCHEDULERS = tuple(cls for cls in (torch.optim.lr_scheduler.ReduceLROnPlateau,
                                                  getattr(transformers.optimization, "GreedyLR", None)) if cls)


class DroppedSteps(TrainerCallback):
    """Drops a cycle's gradients (`drop_gradients`, before the optimizer step) and, as a
    callback of `trainer`, repairs fp16's loss scaling after that step."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._scaler_state: dict[str, Any] | None = None  # before a dropped step under a GradScaler

    def drop_gradients(self, model: nn.Module) -> None:
        """Drop the gradients of every micro-batch of the cycle so that the optimizer step leaves
        the weights and the optimizer state as they are."""
        scaler = self.trainer.accelerator.scaler
        if scaler is None or not scaler.is_enabled():
            model.zero_grad(set_to_none=True)  # optimizers skip parameters without gradients
            return
        # A GradScaler asserts when a step has no gradient to check for infs. Make every gradient
        # NaN instead: it then skips the optimizer step as for an overflow (on every DDP rank,
        # since all see the same mean loss), and on_optimizer_step undoes the rest of that.
        for param in model.parameters():
            if param.requires_grad:
                if param.grad is None:
                    param.grad = torch.full_like(param, float("nan"))
                else:
                    param.grad.fill_(float("nan"))
        self._scaler_state = scaler.state_dict()  # scale and growth count

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After the optimizer step of a sample dropped under fp16's loss scaling (which the
        GradScaler took for an overflow): give the scaler back its scale and growth count, and
        advance the learning-rate schedule, which the Trainer does not after a skipped step. The
        sample's formats, not the scale, made that step overflow: without this, a search meeting
        many such samples would shrink the scale until fp16 gradients underflow, and its schedule
        would lag global_step unlike the same search without fp16."""
        saved, self._scaler_state = self._scaler_state, None
        if saved is None:
            return
        trainer = self.trainer
        trainer.accelerator.scaler.load_state_dict(saved)
        # A fused optimizer skips inside its own step, unseen by accelerate: then the Trainer steps the schedule.
        if trainer.accelerator.optimizer_step_was_skipped and not isinstance(trainer.lr_scheduler,
                                                                             _METRIC_DRIVEN_SCHEDULERS):
            trainer.lr_scheduler.step()
