"""Loading a low-bit checkpoint back: the fake-quant model that quant.export's
`export_quantized_checkpoint` wrote, rebuilt from its config.json and weights file.

The layout it reads, and why the loaded model reproduces the exported one bit for bit, is
described in quant/export.py, which holds the format's constants and its writer. This module
is the reading side, separate so each side stays one concept; `load_quantized_checkpoint` and
`read_quantization_config` stay importable from quant.export.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from quant.eval_autocast import AUTOCAST_DTYPES, set_eval_autocast
from quant.export import CODES_SUFFIX, CONFIG_NAME, FORMAT_VERSION, QUANT_METHOD, SCALE_SUFFIX, WEIGHTS_NAME
from quant.formats import parse_format
from quant.packing import PackedTensor, storage_dtype, unpack
from quant.quant_module import QuantConfig
from quant.scales import Granularity
from quant.surgery import QuantSpec, quantize_model, quantized_layers


def _dequantize(packed: PackedTensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    values = unpack(packed)
    return (values if scale is None else values * scale).to(dtype)


def read_quantization_config(path: str | os.PathLike) -> dict[str, Any]:
    """The `quantization_config` of a checkpoint written by `export_quantized_checkpoint`."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist; pass a directory written by "
                                f"export_quantized_checkpoint")
    quant_config = json.loads(config_file.read_text()).get("quantization_config")
    if not isinstance(quant_config, dict) or quant_config.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"{config_file} has no quantization_config with quant_method {QUANT_METHOD!r}; it was not "
                         f"written by quant.export (a float checkpoint loads with from_pretrained)")
    if quant_config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_file}: quantization_config format_version {quant_config.get('format_version')!r} "
                         f"is not {FORMAT_VERSION}, the version this code reads")
    return quant_config


def _check_model_type_known(path: str | os.PathLike) -> None:
    """ValueError, with the way out, for a checkpoint of a model type transformers does not know:
    a model of the user's own, whose classes this process has not registered (transformers' own
    error suggests upgrading transformers)."""
    from transformers import CONFIG_MAPPING

    model_type = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8")).get("model_type")
    if model_type is None or model_type in CONFIG_MAPPING:
        return
    raise ValueError(f"{Path(path) / CONFIG_NAME} has model_type {model_type!r}, which transformers does not know: a "
                     f"model of your own; register its classes in this process before loading, "
                     f"AutoConfig.register({model_type!r}, YourConfig) and, for its head, e.g. "
                     f"AutoModelForSequenceClassification.register(YourConfig, YourModel)")


def _build_architecture(config: Any, dtype: torch.dtype) -> nn.Module:
    """The class config.json's `architectures` names, found through the transformers Auto classes."""
    import transformers

    wanted = (getattr(config, "architectures", None) or [None])[0]
    known = []
    for auto_cls in (transformers.AutoModelForSequenceClassification, transformers.AutoModelForImageClassification,
                     transformers.AutoModelForCausalLM, transformers.AutoModelForTokenClassification,
                     transformers.AutoModelForMaskedLM, transformers.AutoModel):
        if type(config) not in auto_cls._model_mapping:
            continue
        model_cls = auto_cls._model_mapping[type(config)]
        known.append(model_cls.__name__)
        if model_cls.__name__ == wanted:
            return auto_cls.from_config(config, dtype=dtype)
    raise ValueError(f"config.json names architecture {wanted!r}, which no transformers Auto class builds for "
                     f"{type(config).__name__}; buildable: {', '.join(known) or 'none'} (a model of your own: register "
                     f"it before loading, e.g. AutoModelForSequenceClassification.register({type(config).__name__}, "
                     f"{wanted or 'YourModel'}))")


def _quant_config(name: str, entry: dict[str, Any]) -> QuantConfig:
    weight_granularity = Granularity(entry["weight_granularity"])
    act_granularity = Granularity(entry["act_granularity"])
    if weight_granularity is Granularity.PER_TOKEN or act_granularity is Granularity.PER_CHANNEL:
        raise ValueError(f"layer {name!r}: weight scales are per_tensor or per_channel and activation scales "
                         f"per_tensor or per_token, got {weight_granularity.value} / {act_granularity.value}")
    return QuantConfig(weight_format=parse_format(entry["weight_format"]), act_format=parse_format(entry["act_format"]),
                       per_channel=weight_granularity is Granularity.PER_CHANNEL,
                       per_token=act_granularity is Granularity.PER_TOKEN,
                       weight_range_percentile=float(entry["weight_range_percentile"]),
                       act_range_percentile=float(entry["act_range_percentile"]))


def load_quantized_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Rebuild the fake-quant model of a low-bit checkpoint (CPU, eval mode).

    Layers hold their formats and scale options; weights are the dequantized codes with
    `weight_prequantized = True` and the scale kept as a non-persistent `weight_scale` buffer
    (so the model can be exported again). `macs_per_sample` is restored where it was recorded.
    A checkpoint of a --bf16 / --fp16 run (`autocast_dtype`) gives a model whose forward runs
    under that autocast with float32 outputs, as the run evaluated it (`set_eval_autocast`; pass
    None to it for a float32 forward).
    """
    from transformers import AutoConfig

    quant_config = read_quantization_config(path)
    _check_model_type_known(path)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    del config.quantization_config  # the bare architecture; quantization is applied below
    dtype = getattr(torch, quant_config["model_dtype"])
    autocast_dtype = quant_config.get("autocast_dtype")  # absent from checkpoints written before it was recorded
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"{Path(path) / CONFIG_NAME}: quantization_config autocast_dtype {autocast_dtype!r} is not "
                         f"one of {', '.join(AUTOCAST_DTYPES)} or null; write it again with quant.export")
    model = _build_architecture(config, dtype)
    entries: dict[str, dict[str, Any]] = quant_config["layers"]
    groups: dict[QuantConfig, list[str]] = {}
    for name, entry in entries.items():
        groups.setdefault(_quant_config(name, entry), []).append(name)
    for layer_config, names in groups.items():
        quantize_model(model, QuantSpec(tuple(names), layer_config))

    tensors = load_file(str(Path(path) / WEIGHTS_NAME))
    scales: dict[str, torch.Tensor] = {}
    for name, entry in entries.items():
        fmt = parse_format(entry["weight_format"])
        codes = tensors.pop(name + CODES_SUFFIX, None)
        scale = tensors.pop(name + SCALE_SUFFIX, None)
        if codes is None or (scale is None and fmt.takes_scale):
            raise ValueError(f"{WEIGHTS_NAME} lacks the codes or scale of layer {name!r} ({fmt.name}); the checkpoint "
                             f"is incomplete, export it again")
        if codes.dtype != storage_dtype(fmt):
            raise ValueError(f"layer {name!r}: {fmt.name} codes must be {storage_dtype(fmt)}, found {codes.dtype}")
        try:
            tensors[f"{name}.weight"] = _dequantize(PackedTensor(codes, tuple(entry["weight_shape"]), fmt), scale,
                                                    getattr(torch, entry["weight_dtype"]))
        except ValueError as error:  # codes of another shape than config.json's weight_shape
            raise ValueError(f"layer {name!r}: {error}; the checkpoint's files disagree, export it again") from None
        if scale is not None:
            scales[name] = scale
    for alias, source in quant_config["tied_parameters"].items():
        tensors[alias] = tensors[source]
    model.load_state_dict(tensors, strict=True)
    for name, layer in quantized_layers(model).items():
        layer.weight_prequantized = True
        layer.macs_per_sample = entries[name]["macs_per_sample"]
        if name in scales:
            layer.register_buffer("weight_scale", scales[name], persistent=False)
    return set_eval_autocast(model.eval(), autocast_dtype)
