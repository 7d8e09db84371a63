"""State a quantized model holds for the length of each of its forwards.

The weight group (quant/weight_group.py) and the input share (quant/input_share.py) both set
something up when the model's forward starts and drop it when the forward ends, also when it
raises. A `ForwardScoped` owns that pair of hooks; `attach` keeps one instance per model (in
`model.__dict__`, under the class's `key`), replacing an earlier one, and `detach` removes it.
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, TypeVar

from torch import nn


class ForwardScoped:
    """Subclasses define `key`, `_before_forward` (the model's forward pre-hook) and `_clear`
    (run when the forward ends, raised or not, and at `remove`)."""

    key: ClassVar[str]  # where `attach` keeps the instance in model.__dict__

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.paused = False  # see `paused()`: the hooks stay, a subclass skips its work
        self._handles = [model.register_forward_pre_hook(self._before_forward),
                         model.register_forward_hook(self._after_forward, always_call=True)]

    def remove(self) -> None:
        """Take the hooks off the model and drop what a forward left."""
        for handle in self._handles:
            handle.remove()
        self._clear()

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        raise NotImplementedError

    def _after_forward(self, module: nn.Module, args: tuple, output: object) -> None:
        self._clear()

    def _clear(self) -> None:
        raise NotImplementedError


Scoped = TypeVar("Scoped", bound=ForwardScoped)


def attach(model: nn.Module, cls: type[Scoped], *args: Any) -> Scoped:
    """A new `cls(model, *args)` on `model`, replacing (and removing) an earlier one."""
    detach(model, cls)
    scoped = cls(model, *args)
    model.__dict__[cls.key] = scoped
    return scoped


def detach(model: nn.Module, cls: type[ForwardScoped]) -> None:
    """Remove `model`'s `cls` instance, if it has one."""
    scoped = model.__dict__.pop(cls.key, None)
    if scoped is not None:
        scoped.remove()


@contextlib.contextmanager
def paused(model: nn.Module, cls: type[ForwardScoped]) -> Iterator[None]:
    """Set `model`'s `cls` instance's `paused` during the block (nothing if it has none, or is
    paused already). Its hooks stay where they are, so their order among the model's other hooks
    does not change."""
    scoped = model.__dict__.get(cls.key)
    if scoped is None or scoped.paused:
        yield
        return
    scoped.paused = True
    try:
        yield
    finally:
        scoped.paused = False
