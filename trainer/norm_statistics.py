"""Normalisation statistics during a search: undone for a dropped step, re-estimated for the answer.

BatchNorm's running statistics change in every training forward pass, outside the optimizer. A
step whose sample gave a non-finite loss is dropped whole, so its changes to them are undone from
a snapshot taken when its cycle began (`BufferSnapshot`). Once the search has picked its formats,
the statistics, averaged over every sampled format until then, can be re-estimated for that one
assignment (`recalibrate_batchnorm`); no weight changes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import nn

# (the buffers a training forward may change, a copy of each): what `BufferSnapshot.restore` writes back.
Snapshot = tuple[list[torch.Tensor], list[torch.Tensor]]


def _changes_in_forward(module: nn.Module, name: str, buffer: torch.Tensor) -> bool:
    """Floating-point buffers (running statistics), and the normalisation layers' batch counter,
    which a training forward increments and which weighs the running averages under
    momentum=None. Other integer buffers (position ids, masks) are constants: not copied."""
    return buffer.is_floating_point() or (name == "num_batches_tracked"
                                          and isinstance(module, nn.modules.batchnorm._NormBase))


class BufferSnapshot:
    """Copies of the model's buffers that a training forward changes, into tensors allocated once.

    The copies are device-side, all in one multi-tensor copy: no sync with the device, and one
    launch instead of one per buffer (ResNet-18 has 40 such buffers, and on a GPU each launch
    costs host time in every step)."""

    def __init__(self) -> None:
        self._modules: tuple[nn.Module, list[nn.Module]] | None = None  # (model, its modules)
        self._copies: list[torch.Tensor] = []

    def relist_modules(self) -> None:
        """List the model's modules again at the next snapshot (at each train(): they may have
        changed between runs)."""
        self._modules = None

    def changing_buffers(self, model: nn.Module) -> list[torch.Tensor]:
        """The buffers of `model` that a training forward changes (floating-point ones and the
        normalisation layers' `num_batches_tracked`), in `model.buffers()` order. Its modules are
        listed once per model and `relist_modules` (walking them took ~180 us per step for
        BERT-base, which has no such buffer), so modules must not be added or replaced during
        training; their buffer slots are read at every call, so a buffer registered or replaced
        on one of them is still the one copied."""
        if self._modules is None or self._modules[0] is not model:
            self._modules = (model, list(model.modules()))
        seen: set[int] = set()  # a buffer shared by two modules is listed once, as buffers() does
        buffers = []
        for module in self._modules[1]:
            for name, buffer in module._buffers.items():
                if buffer is not None and _changes_in_forward(module, name, buffer) and id(buffer) not in seen:
                    seen.add(id(buffer))
                    buffers.append(buffer)
        return buffers

    def take(self, model: nn.Module) -> Snapshot:
        """Copy `model`'s changing buffers (the previous snapshot's copies are reused)."""
        buffers = self.changing_buffers(model)
        saved = self._copies
        if len(saved) != len(buffers) or any(a.shape != b.shape or a.device != b.device or a.dtype != b.dtype
                                             for a, b in zip(saved, buffers)):
            saved = self._copies = [b.detach().clone() for b in buffers]
        elif buffers:
            with torch.no_grad():
                torch._foreach_copy_(saved, buffers)
        return buffers, saved

    @staticmethod
    def restore(snapshot: Snapshot) -> None:
        """Write the copies back into the buffers they were taken from."""
        buffers, saved = snapshot
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved)


def recalibrate_batchnorm(model: nn.Module, batches: Iterator[dict[str, Any]],
                          prepare: Callable[[dict[str, Any]], dict[str, Any]] = lambda b: b) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average over
    `batches` (forward passes in train mode, no gradient). Returns the number of batches used.
    Every module's own train/eval mode and every norm's momentum are restored afterwards (also on
    an error), so a norm kept in eval mode on purpose stays in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    modes = [(module, module.training) for module in model.modules()]
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(**prepare(batch))
                used += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for module, training in modes:
            module.training = training
    return used
