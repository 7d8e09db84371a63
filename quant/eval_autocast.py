"""The mixed precision a run evaluated under, reproduced on its exported model.

A --bf16 / --fp16 run is evaluated by transformers' Trainer under torch.autocast with float32
outputs (accelerate); its exported checkpoint records the dtype (`quantization_config`'s
`autocast_dtype`) and its loaded model runs the same way, so that the reloaded model gives the
run's recorded metrics bit for bit. Forward hooks (quant/forward_scoped.py): the model's class,
forward signature, state dict and deepcopy stay as they are.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from quant import forward_scoped
from quant.forward_scoped import ForwardScoped, attach, detach


AUTOCAST_DTYPES = ("bfloat16", "float16")


def autocast_dtype_of_run(run_args: dict[str, Any]) -> str | None:
    """The autocast dtype a run evaluated under: "bfloat16" (--bf16), "float16" (--fp16), or None
    (float32); `run_args` is results.json's (or config.json's) "args"."""
    if run_args.get("bf16") and run_args.get("fp16"):
        raise ValueError("the run's args set both bf16 and fp16; it cannot have evaluated under both")
    return "bfloat16" if run_args.get("bf16") else "float16" if run_args.get("fp16") else None


def _to_float32(output: Any) -> Any:
    """bf16/fp16 tensors of a forward's output as float32 (accelerate's convert_outputs_to_fp32)."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype in (torch.bfloat16, torch.float16) else output
    if isinstance(output, dict):  # ModelOutput included: replace its fields in place
        for key in list(output.keys()):
            output[key] = _to_float32(output[key])
        return output
    if isinstance(output, (tuple, list)):
        return type(output)(_to_float32(item) for item in output)
    return output


class EvalAutocast(ForwardScoped):
    """The model's forward runs under torch.autocast(dtype) on the device of its parameters, and
    its floating outputs come back as float32: what transformers' Trainer (through accelerate)
    does when it evaluates a --bf16 / --fp16 run. Forward hooks, so the model's class, forward
    signature, state dict and deepcopy stay as they are."""

    key = "_fliqs_eval_autocast"

    def __init__(self, model: nn.Module, dtype: str) -> None:
        self.dtype = dtype
        self._contexts: list[Any] = []
        super().__init__(model)

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        if self.paused:
            return
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        context = torch.autocast(device_type=device.type, dtype=getattr(torch, self.dtype))
        context.__enter__()
        self._contexts.append(context)

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not self._contexts:  # paused when the forward began
            return None
        self._contexts.pop().__exit__(None, None, None)
        return None if output is None else _to_float32(output)

    def _clear(self) -> None:
        while self._contexts:
            self._contexts.pop().__exit__(None, None, None)


def set_eval_autocast(model: nn.Module, dtype: str | None) -> nn.Module:
    """Make `model`'s forward run under torch.autocast(`dtype`) ("bfloat16" or "float16") with
    float32 outputs, as the Trainer evaluated a --bf16 / --fp16 run; None takes it off. Call the
    model (`model(**batch)`), not `model.forward`: it is a pair of forward hooks. Bit-for-bit
    agreement with the run holds on the device type it evaluated on (CPU autocast and CUDA
    autocast pick different kernels). Returns `model`."""
    if dtype is not None and dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast dtype {dtype!r} is not one of {', '.join(AUTOCAST_DTYPES)} (or None for float32)")
    detach(model, EvalAutocast)
    if dtype is not None:
        attach(model, EvalAutocast, dtype)
    return model


def eval_autocast_dtype(model: nn.Module) -> str | None:
    """The dtype `set_eval_autocast` gave `model`, or None."""
    scoped = model.__dict__.get(EvalAutocast.key)
    return None if scoped is None else scoped.dtype


def eval_autocast_paused(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Run `model` in float32 during the block (the ONNX export traces the float32 graph)."""
    return forward_scoped.paused(model, EvalAutocast)
