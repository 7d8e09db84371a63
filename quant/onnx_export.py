"""ONNX export of a fake-quantized model with QuantizeLinear/DequantizeLinear (Q/DQ) nodes.

`export_onnx` swaps every quantized layer (for the export only) for quant.onnx_ops' `_QDQLayer`,
whose custom ops become Q/DQ nodes, traces the model with torch.onnx (dynamo), cleans the graph up
(constant folding that keeps the weights as low-bit initializers: `_fold_low_bit_casts`,
`_optimize`; the exporter's per-node source metadata dropped: `_drop_node_metadata`), writes the file (initializers past protobuf's 2 GiB limit go to PATH.data) and
returns an `OnnxReport`. The example inputs and the onnxruntime load check: quant/onnx_runtime.py.

Layers whose formats or options have no ONNX form (quant/onnx_ops.py: `ONNX_TYPES`, abs-max
activation scales only), or need an opset above an explicit `opset`: they raise `OnnxFormatError`
listing every one of them (default), or with unsupported="float" are exported in float (weights
as their dequantized grid values, activations unquantized) and listed in the report.

Geometry: the example forward of the export leaves every layer's recorded `macs_per_sample` as
it was (the example's sequence length or image size is not the run's). A model under evaluation
autocast (quant.eval_autocast.set_eval_autocast) is traced in float32: the ONNX graph is float32 with
Q/DQ, whatever mixed precision the run evaluated under.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from quant import weight_group
from quant.export import writing
from quant.formats import parse_format
from quant.onnx_ops import BASE_OPSET, ONNX_TYPES, TRANSLATION_TABLE, _QDQLayer, check_opset, required_opset
from quant.quant_module import QuantModule
from quant.surgery import quantized_layers

_MAX_INLINE_BYTES = 1_800_000_000  # protobuf cannot serialise a model of 2 GiB or more

# Vision transformers whose position embeddings fix the image size (transformers interpolates them
# only when asked to at call time).
FIXED_IMAGE_SIZE_MODEL_TYPES = frozenset({"vit", "deit"})


# --- layers with no ONNX form ---------------------------------------------------------------

class OnnxFormatError(ValueError):
    """Some quantized layers use formats or options that ONNX Q/DQ cannot express."""


def _unsupported_reason(layer: QuantModule) -> str | None:
    problems = []
    for what, fmt in (("weight", layer.weight_format), ("activation", layer.act_format)):
        if fmt.quantizes and fmt not in ONNX_TYPES:
            problems.append(f"{what} format {fmt.name} has no ONNX type")
    act, percentile = layer.act_format, layer.act_range_percentile
    if act.takes_scale and percentile != 100:
        problems.append(f"act_range_percentile {percentile} (dynamic Q/DQ computes abs-max scales only)")
    return "; ".join(problems) or None


def _unsupported_message(problems: Mapping[str, str], what: str) -> str:
    listed = "\n".join(f"  {name}: {why}" for name, why in problems.items())
    expressible = ", ".join(f"{fmt.name} (opset {opset})" for fmt, (_, opset) in ONNX_TYPES.items())
    return (f"{len(problems)} quantized layers cannot be exported to ONNX {what}:\n{listed}\nONNX Q/DQ expresses "
            f"{expressible} and none, with abs-max activation scales; pass unsupported='float' "
            f"(--onnx_unsupported float) to export these layers in float instead")


# --- graph clean-up and report --------------------------------------------------------------

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


def _drop_node_metadata(model: onnx.ModelProto) -> None:
    """Remove the exporter's per-node metadata (the torch stack trace, module class hierarchy, ...,
    with this machine's absolute paths): most of a small model's file, and none of its meaning."""
    graphs = [model.graph, *(function for function in model.functions)]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            for attribute in node.attribute:  # subgraphs (If, Loop, Scan)
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)


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
        # What each exported layer became: Q/DQ where a side takes a scale, else Casts (bf16/fp16)
        # or nothing (format none on both sides).
        kinds = [("Q/DQ" if any(parse_format(f).takes_scale for f in formats) else
                  "casts only" if any(parse_format(f).quantizes for f in formats) else "format none")
                 for formats in self.qdq_layers.values()]
        text = (f"{self.path}: opset {self.opset}, {kinds.count('Q/DQ')} layers with Q/DQ "
                f"({self.num_quantize_linear} QuantizeLinear, {self.num_dequantize_linear} DequantizeLinear)")
        for kind in ("casts only", "format none"):
            if kinds.count(kind):
                text += f", {kinds.count(kind)} with {kind}" if kind == "casts only" else \
                    f", {kinds.count(kind)} at {kind} on both sides"
        text += f", {self.file_bytes} bytes"
        if self.float_layers:
            text += f"; {len(self.float_layers)} layers exported in float: " + "; ".join(
                f"{name} ({why})" for name, why in self.float_layers.items())
        return text


# --- the export -----------------------------------------------------------------------------

def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


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
    _drop_node_metadata(proto)

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

