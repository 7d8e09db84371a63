"""The ONNX form of the fake-quant formats: their ONNX types, the custom ops, and the Q/DQ layer.

For an export (quant.onnx_export) every quantized layer is swapped for a `_QDQLayer` whose forward
calls two custom ops: eagerly they compute the fake-quant, and `TRANSLATION_TABLE` (the exporter's
custom_translation_table) maps them to ONNX:
    weights      low-bit initializer (the grid codes in their ONNX type) -> DequantizeLinear
                 (scalar scale, or a 1-D per-channel scale with `axis`)
    activations  dynamic in-graph Q/DQ: scale = max(ReduceMax(Abs(x)) / fmt.max, tiny), the
                 fake-quant's per-tensor abs-max; per-token scales reduce each row of x viewed as
                 (tokens, features) and quantize per axis
    bf16 / fp16  Cast to that type and back (Clip first, since Cast does not saturate)
The ops are registered with torch.library when this module is first imported (once per process).

Formats ONNX expresses (`ONNX_TYPES`), with the opset that first has them in Q/DQ: int8 (18 =
base), fp8_e4m3, fp8_e5m2 (19), int4, int16 (21), fp4_e2m1 (23), int2 (25; both where the installed
onnx defines the type). Everything else (fp6, e3m4, generic eXmY, int3, int5..7, int9..15) and
activation clipping percentiles other than 100 have no ONNX form, nor has a format at an explicit
opset below its own (what export_onnx then does: quant/onnx_export.py).

Numerics against the PyTorch fake-quant model: weights are bit-exact (DQ computes codes * scale
in float32, as the fake-quant does). Activations differ only where QuantizeLinear's x / scale
and the fake-quant's x * (1 / scale) (torch's fake-quant convention) land on different sides of a
rounding boundary (one code; about 4e-7 of int8 codes on Gaussian data), plus float summation
order in MatMul/Conv kernels. Usually that is ~1e-7 on the logits (the tiny test models: ResNet
logits of ~0.5, BERT ~0.02; the tests allow atol 1e-5 + rtol 1e-4), but one code moved early in a
deep low-bit CNN can grow: a mixed INT4/INT8/FP8 per-channel ResNet-18 search gave up to 1.3 on
logits of ~4.5 for one random batch (one activation element of one FP8 layer). FP4 models are
valid ONNX (the ONNX reference evaluator runs them) but onnxruntime 1.32's CPU provider has no
FLOAT4E2M1 Q/DQ kernels (quant/onnx_runtime.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from quant.formats import CastFormat, FloatFormat, IntFormat, NumberFormat, SpecialCodes, parse_format
from quant.packing import grid_values_and_scale
from quant.quant_module import QuantModule
from quant.quant_utils import quantize
from quant.scales import Granularity

BASE_OPSET = 18
_TINY = float(torch.finfo(torch.float32).tiny)
_T = onnx.TensorProto


def _onnx_types() -> dict[NumberFormat, tuple[int, int]]:
    """format -> (ONNX element type, first opset with it in Q/DQ), for what this onnx defines."""
    types = {IntFormat(8): (_T.INT8, BASE_OPSET), IntFormat(16): (_T.INT16, 21), IntFormat(4): (_T.INT4, 21),
             FloatFormat(4, 3, SpecialCodes.FN): (_T.FLOAT8E4M3FN, 19),
             FloatFormat(5, 2, SpecialCodes.IEEE): (_T.FLOAT8E5M2, 19),
             parse_format("bf16"): (_T.BFLOAT16, BASE_OPSET), parse_format("fp16"): (_T.FLOAT16, BASE_OPSET)}
    if hasattr(_T, "FLOAT4E2M1"):
        types[FloatFormat(2, 1, SpecialCodes.FINITE)] = (_T.FLOAT4E2M1, 23)
    if hasattr(_T, "INT2"):
        types[IntFormat(2)] = (_T.INT2, 25)
    return types


ONNX_TYPES = _onnx_types()


def required_opset(formats: set[NumberFormat]) -> int:
    return max([BASE_OPSET] + [ONNX_TYPES[f][1] for f in formats if f in ONNX_TYPES])


def check_opset(opset: int) -> None:
    """ValueError unless the installed onnx and the Q/DQ ops here support `opset`."""
    if opset > onnx.defs.onnx_opset_version() or opset < BASE_OPSET:
        raise ValueError(f"opset {opset} is outside [{BASE_OPSET}, {onnx.defs.onnx_opset_version()}] (the installed "
                         f"onnx {onnx.__version__})")


# --- custom ops: eager = the fake-quant, ONNX = Q/DQ ----------------------------------------

@torch.library.custom_op("fliqs_onnx::dequantize_weight", mutates_args=())
def dequantize_weight(values: torch.Tensor, scale: torch.Tensor, onnx_type: int, axis: int) -> torch.Tensor:
    if scale.dim() == 0:
        return values * scale
    return values * scale.reshape([-1 if d == axis else 1 for d in range(values.dim())])


@dequantize_weight.register_fake
def _(values: torch.Tensor, scale: torch.Tensor, onnx_type: int, axis: int) -> torch.Tensor:
    return torch.empty_like(values)


@torch.library.custom_op("fliqs_onnx::quantize_activation", mutates_args=())
def quantize_activation(x: torch.Tensor, fmt_name: str, per_row: bool) -> torch.Tensor:
    granularity = Granularity.PER_TOKEN if per_row else Granularity.PER_TENSOR
    return quantize(x, parse_format(fmt_name), granularity, dim=-1).clone()


@quantize_activation.register_fake
def _(x: torch.Tensor, fmt_name: str, per_row: bool) -> torch.Tensor:
    return torch.empty_like(x)


def _onnx_dequantize_weight(values, scale, onnx_type: int, axis: int):
    from onnxscript import opset18 as op

    typed = op.Cast(values, to=onnx_type)  # folded into a low-bit initializer after export
    if onnx_type in (_T.BFLOAT16, _T.FLOAT16):
        return op.Cast(typed, to=_T.FLOAT)
    return op.DequantizeLinear(typed, scale, axis=axis)


def _onnx_quantize_activation(x, fmt_name: str, per_row: bool):
    from onnxscript import ir
    from onnxscript import opset18 as op

    fmt = parse_format(fmt_name)
    onnx_type = ONNX_TYPES[fmt][0]
    if isinstance(fmt, CastFormat):
        clipped = op.Clip(x, op.Constant(value_float=-fmt.max), op.Constant(value_float=fmt.max))
        return op.Cast(op.Cast(clipped, to=onnx_type), to=_T.FLOAT)
    if per_row:  # x is (rows, features): one scale per row, quantized along axis 0
        amax = op.ReduceMax(op.Abs(x), op.Constant(value_ints=[1]), keepdims=0)
    else:
        amax = op.ReduceMax(op.Abs(x), keepdims=0)
    scale = op.Max(op.Div(amax, op.Constant(value_float=fmt.max)), op.Constant(value_float=_TINY))
    if per_row:  # per-axis zero points must be 1-D like the scale
        zero = op.Cast(op.Mul(scale, op.Constant(value_float=0.0)), to=onnx_type)
    else:
        zero = op.Constant(value=ir.tensor(np.zeros((), onnx.helper.tensor_dtype_to_np_dtype(onnx_type))))
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero, axis=0), scale, zero, axis=0)


TRANSLATION_TABLE = {torch.ops.fliqs_onnx.dequantize_weight.default: _onnx_dequantize_weight,
                     torch.ops.fliqs_onnx.quantize_activation.default: _onnx_quantize_activation}


# --- export-only layers ----------------------------------------------------------------------

_OWN_TENSORS = ("weight", "bias", "weight_codes", "weight_scale")  # the stand-in's, never its float layer's


class _QDQLayer(nn.Module):
    """A quantized layer's computation written with the custom ops (export only). `as_float`:
    weights as their dequantized grid values, activations unquantized."""

    def __init__(self, layer: QuantModule, as_float: bool) -> None:
        super().__init__()
        if layer.weight.dtype != torch.float32:
            raise ValueError(f"ONNX export needs float32 weights, got {layer.weight.dtype}; call model.float() first")
        # The float layer only for its geometry; tensors live here, so ONNX names them like the
        # checkpoint: {layer}.weight_codes, {layer}.weight_scale, {layer}.bias (or {layer}.weight).
        self.float_layer = layer.to_float()  # type: ignore[attr-defined]
        self.float_layer.weight, self.float_layer.bias = None, None
        # A loaded checkpoint's layer carries its scale as a buffer (quant.export), which to_float
        # copies: the stand-in holds its own.
        self.float_layer._buffers.pop("weight_scale", None)
        self.bias = layer.bias
        fmt = layer.weight_format
        self.weight_onnx_type = None if as_float or not fmt.quantizes else ONNX_TYPES[fmt][0]
        self.weight_axis = layer.weight_channel_dim % layer.weight.dim()
        if self.weight_onnx_type is None:
            self.register_buffer("weight", layer.quantized_weight().detach().clone())
        else:
            values, scale = grid_values_and_scale(layer)
            scale = torch.ones(()) if scale is None else scale
            self.register_buffer("weight_codes", values)  # float carrier, stored low-bit after export
            self.register_buffer("weight_scale", scale.reshape(()) if scale.numel() == 1 else scale.flatten())
        act = layer.act_format
        self.act_format_name = None if as_float or not act.quantizes else act.name
        self.act_per_row = layer.act_granularity is Granularity.PER_TOKEN and not isinstance(act, CastFormat)
        self.act_feature_dim = layer.act_feature_dim

    def __getattr__(self, name: str) -> Any:
        # Model code may read the replaced layer's geometry (MobileNetV2's TF padding reads
        # stride and kernel_size): the float layer holds it.
        try:
            return super().__getattr__(name)
        except AttributeError:
            float_layer = self.__dict__.get("_modules", {}).get("float_layer")
            if float_layer is None or name in _OWN_TENSORS or not hasattr(float_layer, name):
                raise
            return getattr(float_layer, name)

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.act_per_row:
            return quantize_activation(x, self.act_format_name, False)
        moved = x.movedim(self.act_feature_dim, -1)  # per token: one scale per row of (tokens, features)
        rows = quantize_activation(moved.reshape(-1, moved.shape[-1]), self.act_format_name, True)
        return rows.reshape(moved.shape).movedim(-1, self.act_feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_format_name is not None:
            x = self._quantize_input(x)
        weight = self.weight if self.weight_onnx_type is None else dequantize_weight(
            self.weight_codes, self.weight_scale, self.weight_onnx_type, self.weight_axis)
        layer = self.float_layer
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, weight, self.bias)
        if isinstance(layer, Conv1D):
            return torch.addmm(self.bias, x.view(-1, x.size(-1)), weight).view(x.size()[:-1] + (layer.nf,))
        return F.linear(x, weight, self.bias)
