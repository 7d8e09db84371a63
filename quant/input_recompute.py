"""A quantized input kept for backward as the recipe that made it, not as a tensor.

Layers that read one input at one format share one quantized tensor (quant/input_share.py), and
autograd keeps it once. A search that gives such layers different formats (BERT's query, key and
value; a ResNet block's first conv and its shortcut) makes one tensor per format, and each
layer's matmul keeps its own for the weight gradient: a search kept more activations than the
fixed-format model it is compared with (BERT-base: up to 24 of the projections' 12.6 MB inputs).

For those layers the matmul runs under saved-tensor hooks (`saved_as_recipe`): where it saves
Q(x) (or a view of it), the recipe is saved instead, which holds x itself, one tensor for every
format, the range the forward used and the settings. The backward recomputes Q(x) from them, once
per format (the layers at that format take the same tensor), with the forward's range and its
rounding core (`quant_utils.quantized_values`: the same kernel, without an autograd node): the
values and so every gradient equal the saved path's bit for bit. The cost is one quantizer call
per format in the backward (on a GPU, one kernel launch).

x changed in place after the forward would make the recomputed values wrong: that raises, as
autograd does for a saved tensor (a float model that saved x would fail the same way).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from quant.quant_module import _version


def hooks_usable() -> bool:
    """Whether a layer may push its own saved-tensor hooks here: not inside another user of them
    (non-reentrant activation checkpointing, torch.autograd.graph.save_on_cpu), whose tensors
    would then bypass it, nor where they are disabled (some torch.func transforms)."""
    autograd = torch._C._autograd
    top = getattr(autograd, "_top_saved_tensors_default_hooks", None)
    enabled = getattr(autograd, "_saved_tensors_hooks_is_enabled", None)
    if top is None or enabled is None:  # a torch without the queries: assume another user may be there
        return False
    try:
        return enabled() and top(False) is None
    except (RuntimeError, TypeError):  # a signature or state these queries do not expect: keep out
        return False


class RecomputedInput:
    """Q(x) of one format, recomputable: `compute()` must return the forward's Q(x) again, from
    `source` (x) unchanged since. Caches the value from the first unpack until each saved view of
    it has been unpacked once (the layers at this format, in one backward)."""

    __slots__ = ("source", "version", "compute", "name", "views", "_value", "_left")

    def __init__(self, source: torch.Tensor, compute: Callable[[], torch.Tensor], name: str) -> None:
        self.source = source
        self.version = _version(source)
        self.compute = compute
        self.name = name  # says which input, in an error
        self.views = 0  # saved views of it, one per layer's matmul that saved it
        self._value: torch.Tensor | None = None
        self._left = 0

    def value(self) -> torch.Tensor:
        if self._value is None:
            if _version(self.source) != self.version:
                raise RuntimeError(
                    f"the input of {self.name} was modified by an in-place operation after the forward: its "
                    f"quantized value is recomputed from it in the backward (the layers reading it run at "
                    f"different formats, or FLIQS_RECOMPUTE_INPUTS / --recompute_inputs is all). Do not modify it in "
                    f"place (autograd would refuse it too if it saved the tensor), or set FLIQS_RECOMPUTE_INPUTS=off "
                    f"to keep the quantized tensors instead")
            self._value, self._left = self.compute(), self.views
        value = self._value
        self._left -= 1
        if self._left <= 0:  # every layer has its copy: let it go (a second backward recomputes)
            self._value = None
        return value


class _SavedView(NamedTuple):
    """What a matmul saved of Q(x): the recipe and the view's geometry."""

    recomputed: RecomputedInput
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


def saved_as_recipe(x_q: torch.Tensor, recomputed: RecomputedInput) -> torch.autograd.graph.saved_tensors_hooks:
    """Saved-tensor hooks under which tensors on `x_q`'s storage (x_q and views of it, e.g. a
    Linear's 2-d view of a 3-d input) are saved as `recomputed` and the view's geometry."""
    storage = x_q.untyped_storage().data_ptr()
    device = x_q.device

    def pack(saved: torch.Tensor) -> Any:
        if saved.device == device and saved.untyped_storage().data_ptr() == storage:
            recomputed.views += 1
            return _SavedView(recomputed, saved.size(), saved.stride(), saved.storage_offset())
        return saved

    def unpack(packed: Any) -> torch.Tensor:
        if type(packed) is _SavedView:
            return packed.recomputed.value().as_strided(packed.size, packed.stride, packed.offset)
        return packed

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)
