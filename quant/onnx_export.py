"""ONNX export of a fake-quantized model with QuantizeLinear/DequantizeLinear (Q/DQ) nodes.

Every quantized layer is swapped (for the export only) for a `_QDQLayer` whose forward calls two
custom ops; `custom_translation_table` maps them to ONNX:
    weights      low-bit initializer (the grid codes in their ONNX type) -> DequantizeLinear
                 (scalar scale, or a 1-D per-channel scale with `axis`)
    activations  dynamic in-graph Q/DQ: scale = max(ReduceMax(Abs(x)) / fmt.max, tiny), the
                 fake-quant's per-tensor abs-max; per-token scales reduce each row of x viewed as
                 (tokens, features) and quantize per axis
    bf16 / fp16  Cast to that type and back (Clip first, since Cast does not saturate)

Formats ONNX expresses, with the opset that first has them in Q/DQ: int8 (18 = base), fp8_e4m3,
fp8_e5m2 (19), int4, int16 (21), fp4_e2m1 (23), int2 (25; both where the installed onnx defines the
type). Everything else (fp6, e3m4, generic eXmY, int3, int5..7, int9..15) and activation clipping
percentiles other than 100 have no ONNX form, nor has a format at an explicit opset below its own.
Decision: such layers raise `OnnxFormatError` listing every one of them (default), or with
unsupported="float" are exported in float (weights as their dequantized grid values, activations
unquantized) and listed in the report.

Runtimes: onnxruntime 1.32's CPU provider runs every format above but fp4_e2m1 (it has no
FLOAT4E2M1 QuantizeLinear / DequantizeLinear / Cast kernel, so a model with FP4 layers fails to
load); INT2 at opset 25 runs. `onnxruntime_load_problem` tells, in one line, whether the installed
onnxruntime loads a model and what to do when it does not: export with --opset 22
--onnx_unsupported float (FP4 and INT2 layers in float) or run it elsewhere (the ONNX reference
evaluator runs FP4).

A text model's ONNX inputs are those of the run's batches: input_ids, attention_mask and, where
the tokenizer produces them and the forward takes them (BERT), token_type_ids.

Geometry: the example forward of the export leaves every layer's recorded `macs_per_sample` as
it was (the example's sequence length or image size is not the run's). A model under evaluation
autocast (quant.eval_autocast.set_eval_autocast) is traced in float32: the ONNX graph is float32 with
Q/DQ, whatever mixed precision the run evaluated under.

Numerics against the PyTorch fake-quant model: weights are bit-exact (DQ computes codes * scale
in float32, as the fake-quant does). Activations differ only where QuantizeLinear's x / scale
and the fake-quant's x * (1 / scale) (torch's fake-quant convention) land on different sides of a
rounding boundary (one code; about 4e-7 of int8 codes on Gaussian data), plus float summation
order in MatMul/Conv kernels. Usually that is ~1e-7 on the logits (the tiny test models: ResNet
logits of ~0.5, BERT ~0.02; the tests allow atol 1e-5 + rtol 1e-4), but one code moved early in a
deep low-bit CNN can grow: a mixed INT4/INT8/FP8 per-channel ResNet-18 search gave up to 1.3 on
logits of ~4.5 for one random batch (one activation element of one FP8 layer). onnxruntime 1.32's CPU
provider has no FLOAT4E2M1 Q/DQ kernels: FP4 models are valid ONNX (the ONNX reference evaluator
runs them) but need another runtime (see Runtimes above).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn
from transformers.pytorch_utils import Conv1D

from quant import weight_group
from quant.export import writing
from quant.formats import CastFormat, FloatFormat, IntFormat, NumberFormat, SpecialCodes, parse_format
from quant.packing import grid_values_and_scale
from quant.quant_module import QuantModule
from quant.quant_utils import quantize
from quant.scales import Granularity
from quant.surgery import quantized_layers

BASE_OPSET = 18
_MAX_INLINE_BYTES = 1_800_000_000  # protobuf cannot serialise a model of 2 GiB or more
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


class OnnxFormatError(ValueError):
    """Some quantized layers use formats or options that ONNX Q/DQ cannot express."""


def _unsupported_reason(layer: QuantModule) -> str | None:
    problems = []
    for what, fmt in (("weight", layer.weight_format), ("activation", layer.act_format)):
        if fmt.quantizes and fmt not in ONNX_TYPES:
            problems.append(f"{what} format {fmt.name} has no ONNX type")
    act, percentile = layer.act_format, layer.act_range_percentile
    if act.quantizes and not isinstance(act, CastFormat) and percentile != 100:
        problems.append(f"act_range_percentile {percentile} (dynamic Q/DQ computes abs-max scales only)")
    return "; ".join(problems) or None


def required_opset(formats: set[NumberFormat]) -> int:
    return max([BASE_OPSET] + [ONNX_TYPES[f][1] for f in formats if f in ONNX_TYPES])


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


# Vision transformers whose position embeddings fix the image size (transformers interpolates them
# only when asked to at call time).
FIXED_IMAGE_SIZE_MODEL_TYPES = frozenset({"vit", "deit"})

TRANSLATION_TABLE = {torch.ops.fliqs_onnx.dequantize_weight.default: _onnx_dequantize_weight,
                     torch.ops.fliqs_onnx.quantize_activation.default: _onnx_quantize_activation}


def check_opset(opset: int) -> None:
    """ValueError unless the installed onnx and the Q/DQ ops here support `opset`."""
    if opset > onnx.defs.onnx_opset_version() or opset < BASE_OPSET:
        raise ValueError(f"opset {opset} is outside [{BASE_OPSET}, {onnx.defs.onnx_opset_version()}] (the installed "
                         f"onnx {onnx.__version__})")


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


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --- post-processing and report -------------------------------------------------------------

_STORED_TYPES = {onnx_type for onnx_type, _ in ONNX_TYPES.values()}


def _fold_low_bit_casts(model: onnx.ModelProto) -> None:
    """Cast(float initializer -> low-bit type) becomes a low-bit initializer: the exporter's own
    constant folding skips large tensors, and the file should hold the codes, not floats."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in list(graph.node):
        if node.op_type != "Cast" or node.input[0] not in initializers:
            continue
        to = next(attr.i for attr in node.attribute if attr.name == "to")
        if to not in _STORED_TYPES:
            continue
        source = initializers[node.input[0]]
        values = numpy_helper.to_array(source)
        typed = values.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        if not np.array_equal(typed.astype(values.dtype), values):
            raise RuntimeError(f"initializer {source.name!r} is not on the grid of ONNX type {to}")
        graph.node.remove(node)
        uses[source.name] -= 1
        name = node.output[0]
        if uses[source.name] == 0:  # the codes take the name of the float carrier they replace
            graph.initializer.remove(source)
            for consumer in graph.node:
                consumer.input[:] = [source.name if i == name else i for i in consumer.input]
            name = source.name
        graph.initializer.append(numpy_helper.from_array(typed, name=name))


def _keep_low_bit_casts(node: Any) -> bool | None:
    """Constant folding must not turn the Cast to a stored low-bit type into a float initializer."""
    if node.op_type == "Cast" and node.domain == "" and node.attributes["to"].as_int() in _STORED_TYPES:
        return False
    return None  # the optimizer's default rules


def _optimize(model: Any) -> None:
    """The exporter's graph clean-up (constant folding, dead code, CSE) without folding weights
    back to float. An onnxscript too old for `should_fold` leaves the graph as exported
    (valid and equivalent; onnxruntime folds constants itself when it loads the model)."""
    try:
        from onnxscript.optimizer import optimize_ir
        optimize_ir(model, should_fold=_keep_low_bit_casts)
    except (ImportError, TypeError):
        return


@dataclass(frozen=True)
class OnnxReport:
    path: str
    opset: int
    qdq_layers: dict[str, tuple[str, str]]  # name -> (weight format, activation format)
    float_layers: dict[str, str] = field(default_factory=dict)  # name -> why it could not be expressed
    num_quantize_linear: int = 0
    num_dequantize_linear: int = 0
    file_bytes: int = 0

    def summary(self) -> str:
        text = (f"{self.path}: opset {self.opset}, {len(self.qdq_layers)} layers with Q/DQ "
                f"({self.num_quantize_linear} QuantizeLinear, {self.num_dequantize_linear} DequantizeLinear), "
                f"{self.file_bytes} bytes")
        if self.float_layers:
            text += f"; {len(self.float_layers)} layers exported in float: " + "; ".join(
                f"{name} ({why})" for name, why in self.float_layers.items())
        return text


def _unsupported_message(problems: Mapping[str, str], what: str) -> str:
    listed = "\n".join(f"  {name}: {why}" for name, why in problems.items())
    expressible = ", ".join(f"{fmt.name} (opset {opset})" for fmt, (_, opset) in ONNX_TYPES.items())
    return (f"{len(problems)} quantized layers cannot be exported to ONNX {what}:\n{listed}\nONNX Q/DQ expresses "
            f"{expressible} and none, with abs-max activation scales; pass unsupported='float' "
            f"(--onnx_unsupported float) to export these layers in float instead")


@contextlib.contextmanager
def _exporter_noise_hidden() -> Iterator[None]:
    """torch's exporter warns, at every export, that torchvision is not installed (its detection
    ops, which no model here has) and that torch.export's own pytree code uses a deprecated
    class: four log lines and a FutureWarning about torch, none about the model."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def export_onnx(model: nn.Module, example_inputs: Mapping[str, torch.Tensor], path: str | os.PathLike,
                opset: int | None = None, *, unsupported: str = "raise", dynamic: bool = True) -> OnnxReport:
    """Export `model` (quantized layers holding their final formats) to ONNX with Q/DQ nodes.

    example_inputs: the forward's keyword arguments (e.g. input_ids + attention_mask, or
    pixel_values). opset: default the lowest that expresses every exported format. unsupported:
    "raise" (OnnxFormatError listing the layers) or "float" (see the module docstring). dynamic:
    every input dimension may vary (torch.export.Dim.AUTO; fixed ones are specialised).
    """
    if unsupported not in ("raise", "float"):
        raise ValueError(f"unsupported must be 'raise' or 'float', got {unsupported!r}")
    layers = quantized_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layers; quantize it with quant.surgery first")
    problems = {name: why for name, layer in layers.items() if (why := _unsupported_reason(layer))}
    if problems and unsupported == "raise":
        raise OnnxFormatError(_unsupported_message(problems, "(no ONNX form)"))
    needed = {name: required_opset({layer.weight_format, layer.act_format}) for name, layer in layers.items()
              if name not in problems}
    opset = max([BASE_OPSET, *needed.values()]) if opset is None else opset
    check_opset(opset)
    too_new = {name: f"needs opset {need}" for name, need in needed.items() if need > opset}
    if too_new and unsupported == "raise":
        raise OnnxFormatError(_unsupported_message(too_new, f"at opset {opset}"))
    problems.update(too_new)
    exported = {name: layer for name, layer in layers.items() if name not in problems}

    from quant.eval_autocast import eval_autocast_paused

    was_training = model.training
    geometry = {name: layer.macs_per_sample for name, layer in layers.items()}
    swapped = {name: _QDQLayer(layer, as_float=name in problems) for name, layer in layers.items()}
    # The stand-ins quantize their own weights: the grouped weight hooks stay out of the trace.
    with weight_group.paused(model), eval_autocast_paused(model):
        try:
            with torch.no_grad():  # the output names: the non-None fields of a ModelOutput, in order
                outputs = model.eval()(**example_inputs)
            output_names = list(outputs.keys()) if isinstance(outputs, Mapping) else None
            for name, stand_in in swapped.items():
                _set_submodule(model, name, stand_in)
            # Every dimension may vary but the image channels (which the first conv's weight fixes), and
            # the image size of a ViT/DeiT (its position embeddings are one per patch of that size).
            fixed = {("pixel_values", 1)}
            if getattr(getattr(model, "config", None), "model_type", None) in FIXED_IMAGE_SIZE_MODEL_TYPES:
                fixed |= {("pixel_values", 2), ("pixel_values", 3)}
            dims = {key: {d: torch.export.Dim.AUTO for d in range(t.dim()) if (key, d) not in fixed}
                    for key, t in example_inputs.items()}
            with _exporter_noise_hidden():
                program = torch.onnx.export(model, (), kwargs=dict(example_inputs), dynamo=True,
                                            opset_version=opset, custom_translation_table=TRANSLATION_TABLE,
                                            optimize=False, verbose=False, output_names=output_names,
                                            dynamic_shapes=dims if dynamic else None)
        finally:
            for name, layer in layers.items():
                _set_submodule(model, name, layer)  # type: ignore[arg-type]
                # The example forward records the geometry of layers that had none: the example's
                # shape is not the run's, so the cost a checkpoint records would be wrong.
                layer.macs_per_sample = geometry[name]
            model.train(was_training)
    _optimize(program.model)
    proto = program.model_proto
    _fold_low_bit_casts(proto)

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    external = sum(tensor.ByteSize() for tensor in proto.graph.initializer) > _MAX_INLINE_BYTES
    try:  # past protobuf's 2 GiB limit the initializers go to PATH.data next to the model
        with writing(path):  # a full disk names the file and the way out
            onnx.save_model(proto, tmp, save_as_external_data=external, location=f"{path.name}.data")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    op_types = [node.op_type for node in proto.graph.node]
    return OnnxReport(
        path=str(path), opset=opset,
        qdq_layers={name: (layer.weight_format.name, layer.act_format.name) for name, layer in exported.items()},
        float_layers=problems, num_quantize_linear=op_types.count("QuantizeLinear"),
        num_dequantize_linear=op_types.count("DequantizeLinear"), file_bytes=path.stat().st_size)


EXAMPLE_BATCH = 2


def _processor_side(processor: Any) -> int | None:
    for attr in ("crop_size", "size"):
        size = getattr(processor, attr, None)
        size = size if isinstance(size, Mapping) or isinstance(size, int) else getattr(size, "__dict__", None)
        if isinstance(size, int):
            return size
        if isinstance(size, Mapping):
            side = size.get("height") or size.get("shortest_edge")
            if side:
                return int(side)
    return None


def takes_token_type_ids(model: nn.Module, processor: Any = None) -> bool:
    """Whether the model's batches carry token_type_ids: its forward takes them and its tokenizer
    produces them (`model_input_names`); without a tokenizer, whether the config gives token types
    embeddings of their own (type_vocab_size > 1: BERT, not RoBERTa; GPT-2 has no such field)."""
    if "token_type_ids" not in inspect.signature(model.forward).parameters:
        return False
    names = getattr(processor, "model_input_names", None)
    if names is not None:
        return "token_type_ids" in names
    from eval.text_tokenizer import uses_token_type_ids  # the built-in tokenizer's own rule

    return uses_token_type_ids(model.config)


def example_inputs_for(model: nn.Module, processor: Any = None, *, seq_len: int = 16,
                       image_size: int | None = None) -> dict[str, torch.Tensor]:
    """One example batch for export: input_ids + attention_mask (+ token_type_ids where
    `takes_token_type_ids`: a second segment of type 1 in the second half, where the config has
    two types) for text, or pixel_values (vision). The image side is `image_size`, else the
    config's image_size, else the processor's size. Two examples: torch.export specialises
    dimensions of size 1, so a batch of one would give the ONNX model a fixed batch size of 1."""
    config = model.config
    main_input = getattr(model, "main_input_name", None)
    if main_input == "input_ids":
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (torch.export fixes dimensions of size 1, so the ONNX model would "
                             f"only take sequences of that length), got {seq_len}")
        input_ids = (torch.arange(seq_len) % config.vocab_size).expand(EXAMPLE_BATCH, seq_len).contiguous()
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if takes_token_type_ids(model, processor):
            token_type_ids = torch.zeros_like(input_ids)
            if getattr(config, "type_vocab_size", 0) > 1:
                token_type_ids[:, seq_len // 2:] = 1
            inputs["token_type_ids"] = token_type_ids
        return inputs
    if main_input == "pixel_values":
        config_side = getattr(config, "image_size", None)
        side = image_size or (config_side if isinstance(config_side, int) else None) or _processor_side(processor)
        if not side or side < 1:
            raise ValueError(f"cannot tell the image size of {type(model).__name__}: its config and processor do not "
                             f"give one; pass image_size (--image_size N)")
        return {"pixel_values": torch.zeros(EXAMPLE_BATCH, config.num_channels, side, side)}
    raise ValueError(f"{type(model).__name__} takes {main_input!r}; example inputs are built for input_ids (text) or "
                     f"pixel_values (vision) models; call export_onnx with your own example_inputs")


# --- can the installed onnxruntime run it? --------------------------------------------------

_MISSING_KERNEL = re.compile(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_FLOAT_TYPES = {_T.FLOAT, _T.DOUBLE, _T.INT64, _T.BOOL}


def _node_types(model: onnx.ModelProto, node_name: str) -> set[int]:
    """Element types (other than float32/float64/int64/bool) the node named `node_name` reads or
    writes: its initializers, the types shape inference gives its values, a Cast's target."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - the initializers and Cast targets alone then
        pass
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.value_info, *graph.input, *graph.output]:
        types.setdefault(value.name, value.type.tensor_type.elem_type)
    found: set[int] = set()
    for node in graph.node:
        if node.name != node_name:
            continue
        found |= {types[name] for name in [*node.input, *node.output] if name in types}
        found |= {attr.i for attr in node.attribute if node.op_type == "Cast" and attr.name == "to"}
    return found - _FLOAT_TYPES - {_T.UNDEFINED}


def onnxruntime_load_problem(path: str | os.PathLike, *, shown_as: str | os.PathLike | None = None) -> str | None:
    """None when the installed onnxruntime (CPU provider) loads the ONNX model at `path`; else one
    line naming what it lacks (the op, its opset, the element type) and the ways out. `shown_as`:
    the path to name in the line (default `path`). Needs onnxruntime (ImportError otherwise)."""
    import onnxruntime

    shown = str(shown_as if shown_as is not None else path)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the kernel lookup
    options.log_severity_level = 3  # errors only: the exception below says it once
    try:
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own classes (Fail, NotImplemented, ...)
        text = str(error)
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
        found = _MISSING_KERNEL.search(text)
        if found is None:
            return f"onnxruntime {onnxruntime.__version__} cannot load {shown}: {first}"
        op, op_opset, node = found.groups()
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001
            model = None
        types = _node_types(model, node) if model is not None else set()
        type_names = ", ".join(sorted(_T.DataType.Name(t) for t in types)) or "its input types"
        opsets = [opset for fmt, (onnx_type, opset) in ONNX_TYPES.items() if onnx_type in types]
        formats = ", ".join(sorted(fmt.name for fmt, (onnx_type, _) in ONNX_TYPES.items() if onnx_type in types))
        ways = f"run it with a runtime that implements {op} on {type_names}"
        if opsets and min(opsets) > BASE_OPSET:
            below = min(opsets) - 1
            ways = (f"export again with --opset {below} --onnx_unsupported float (its {formats} layers, and any "
                    f"other format newer than opset {below}, in float), or {ways}")
        return (f"onnxruntime {onnxruntime.__version__} cannot run {shown}: its CPU provider has no {op} (opset "
                f"{op_opset}) kernel for {type_names} (node {node!r}); {ways}")
    return None
