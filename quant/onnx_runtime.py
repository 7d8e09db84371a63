"""An exported ONNX model's inputs, and whether the installed onnxruntime runs it.

Inputs: `example_inputs_for` builds the example batch export_onnx traces with, and so fixes the
ONNX model's inputs: those of the run's batches. A text model's are input_ids, attention_mask and,
where the tokenizer produces them and the forward takes them (BERT), token_type_ids
(`takes_token_type_ids`); a vision model's are pixel_values.

Runtimes: onnxruntime 1.32's CPU provider runs every format quant/onnx_ops.py expresses but
fp4_e2m1 (it has no FLOAT4E2M1 QuantizeLinear / DequantizeLinear / Cast kernel, so a model with
FP4 layers fails to load); INT2 at opset 25 runs. `onnxruntime_load_problem` tells, in one line,
whether the installed onnxruntime loads a model and what to do when it does not: export with
--opset 22 --onnx_unsupported float (FP4 and INT2 layers in float) or run it elsewhere (the ONNX
reference evaluator runs FP4).
"""
from __future__ import annotations

import inspect
import os
import re
from typing import Any, Mapping

import onnx
import torch
from torch import nn

from quant.onnx_ops import BASE_OPSET, ONNX_TYPES

_T = onnx.TensorProto


# --- example inputs -------------------------------------------------------------------------

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
