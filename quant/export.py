"""Low-bit checkpoints: write what the search found in its real low-bit form, and load it back.

Layout of a checkpoint directory (HF style):
    config.json        the model's config plus `quantization_config` (quant_method "fliqs"):
                       per layer its weight/activation formats, scale granularities, clipping
                       percentiles, weight shape and storage dtype
    fliqs_model.safetensors
                       quantized layers as `{layer}.weight_codes` (quant.packing storage) and
                       `{layer}.weight_scale` (float32; per tensor or per output channel, absent
                       for none/bf16/fp16); every other parameter and buffer as it is
    tokenizer / image processor files, when one is given

`load_quantized_checkpoint` rebuilds the fake-quant model: weights are the dequantized codes and
are not re-quantized (`weight_prequantized`), so its outputs equal the exported model's bit for
bit. A run evaluated under mixed precision (--bf16 / --fp16: torch.autocast, as transformers'
Trainer does) records that dtype as `autocast_dtype`, and the loaded model runs its forward under
the same autocast (`set_eval_autocast`), so it reproduces the run's evaluation, not a float32
one. The weights file is deliberately not named model.safetensors: transformers' own
`from_pretrained` only warns about an unknown quant_method and would then return the model with
every quantized layer freshly initialised; without its weights file it fails instead.

CLI: python -m quant.export RUN_DIR --out DIR [--onnx]   (see `main`)
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from quant.formats import CastFormat, NumberFormat, parse_format
from quant.eval_autocast import AUTOCAST_DTYPES, eval_autocast_dtype, set_eval_autocast
from quant.packing import PackedTensor, grid_values_and_scale, pack, storage_dtype, unpack
from quant.quant_module import BYTES_PER_MIB, QuantConfig, QuantModule
from quant.scales import Granularity
from quant.surgery import QuantSpec, has_low_bit_layers, quantize_model, quantized_layers

QUANT_METHOD = "fliqs"
FORMAT_VERSION = 1
WEIGHTS_NAME = "fliqs_model.safetensors"  # not model.safetensors: see above
CONFIG_NAME = "config.json"
CODES_SUFFIX = ".weight_codes"
SCALE_SUFFIX = ".weight_scale"


@dataclass(frozen=True)
class ExportReport:
    """Bytes on disk of the quantized weights next to the memory cost the search optimised.

    code_bytes - padding_bytes equals the memory cost up to rounding each layer's packed stream
    up to whole bytes; scale_bytes is the overhead the cost model does not count.
    """

    path: str
    file_bytes: int  # the weights file, everything included
    code_bytes: int  # quantized layers' weight codes as stored
    scale_bytes: int  # their float32 scales
    padding_bytes: int  # storage beyond weight_format.bits (int9..int15 held in int16)
    memory_cost_mib: float  # sum of layer.memory_cost()
    num_quantized_layers: int

    @property
    def quantized_weight_bytes(self) -> int:
        return self.code_bytes + self.scale_bytes

    @property
    def quantized_weight_mib(self) -> float:
        return self.quantized_weight_bytes / BYTES_PER_MIB

    @property
    def file_mib(self) -> float:
        return self.file_bytes / BYTES_PER_MIB

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields and the derived sizes (for results.json)."""
        return {**asdict(self), "quantized_weight_bytes": self.quantized_weight_bytes,
                "quantized_weight_mib": self.quantized_weight_mib, "file_mib": self.file_mib}

    def summary(self) -> str:
        return (f"{self.path}: {self.num_quantized_layers} quantized layers; their weights take "
                f"{self.quantized_weight_bytes} bytes ({self.quantized_weight_mib:.6f} MiB) on disk = codes "
                f"{self.code_bytes} + scales {self.scale_bytes} (padding {self.padding_bytes}); search memory "
                f"cost {self.memory_cost_mib:.6f} MiB; {WEIGHTS_NAME} {self.file_bytes} bytes "
                f"({self.file_mib:.6f} MiB)")


# --- writing ---------------------------------------------------------------------------------

# Errnos whose way out is more room, and those whose way out is a location this user may write.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) reports an I/O error


class ExportWriteError(OSError):
    """An OS error while writing an export, naming the file or folder being written and the way
    out; its str is the whole message (no errno prefix), which the CLI prints as it is."""

    def __init__(self, path: str | os.PathLike, error: OSError) -> None:
        reason = error.strerror or str(error) or type(error).__name__
        super().__init__(error.errno, reason, str(path))
        if error.errno in _NO_ROOM:
            way_out = "free space or pass another --out"
        elif error.errno in _NOT_ALLOWED:
            way_out = "pass an --out you can write to"
        else:
            way_out = "pass another --out"
        code = f" (errno {error.errno})" if error.errno else ""
        self.what = f"cannot write {path}: {reason}{code}"  # without the CLI's way out (--out)
        self.message = f"{self.what}; {way_out}"

    def __str__(self) -> str:
        return self.message


def as_os_error(error: BaseException) -> OSError | None:
    """`error` as an OSError where it is one, or safetensors' SafetensorError wrapping one (it
    reports "I/O error: ... (os error 28)"); None for anything else."""
    if isinstance(error, OSError):
        return error
    match = _RUST_OS_ERROR.search(str(error))
    if match is None or not isinstance(error, SafetensorError):
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code))


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OS error of the writes inside into an ExportWriteError naming `path` (the file or
    folder as the user will find it, not the temporary one actually written)."""
    try:
        yield
    except ExportWriteError:
        raise
    except Exception as error:  # noqa: BLE001 - only OS errors are turned; the rest passes unchanged
        os_error = as_os_error(error)
        if os_error is None:
            raise
        raise ExportWriteError(path, os_error) from error


def _dequantize(packed: PackedTensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    values = unpack(packed)
    return (values if scale is None else values * scale).to(dtype)


def _layer_entry(layer: QuantModule, packed: PackedTensor) -> dict[str, Any]:
    return {"weight_format": layer.weight_format.name, "act_format": layer.act_format.name,
            "weight_granularity": layer.weight_granularity.value, "act_granularity": layer.act_granularity.value,
            "weight_range_percentile": layer.weight_range_percentile,
            "act_range_percentile": layer.act_range_percentile, "weight_shape": list(packed.shape),
            "weight_dtype": str(layer.weight.dtype).removeprefix("torch."),
            "weight_storage": str(packed.data.dtype).removeprefix("torch."), "macs_per_sample": layer.macs_per_sample}


def _check_round_trips(name: str, fmt: NumberFormat) -> None:
    if parse_format(fmt.name) != fmt:
        raise ValueError(f"layer {name!r}: format {fmt!r} is written as {fmt.name!r}, which parses to a different "
                         f"format; use formats from quant.formats.parse_format")


def _storage_key(tensor: torch.Tensor) -> tuple:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


def _state_tensors(model: nn.Module, layers: dict[str, QuantModule]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every state_dict tensor but the quantized weights, tied duplicates folded into aliases."""
    quantized_keys = {f"{name}.weight" for name in layers}
    first_key: dict[tuple, str] = {}
    tensors, aliases = {}, {}
    for key, tensor in model.state_dict().items():
        ident = _storage_key(tensor)
        if ident in first_key:
            if key in quantized_keys and first_key[ident] in quantized_keys:
                raise ValueError(f"quantized layers' weights {first_key[ident]!r} and {key!r} share storage (tied "
                                 f"weights), and each layer stores its own low-bit codes; untie them before "
                                 f"quantizing (quant.surgery.quantize_model refuses tied layers)")
            if key in quantized_keys or first_key[ident] in quantized_keys:
                low_bit, other = (key, first_key[ident]) if key in quantized_keys else (first_key[ident], key)
                raise ValueError(f"{low_bit!r} is a quantized layer's weight, stored as low-bit codes, and shares "
                                 f"storage with {other!r} (tied weights), which would lose its float values; untie "
                                 f"them before quantizing (give the layer a copy of the weight: "
                                 f"nn.Parameter(w.detach().clone())) or leave the layer unquantized")
            aliases[key] = first_key[ident]
            continue
        first_key[ident] = key
        if key not in quantized_keys:
            tensors[key] = tensor.detach().cpu().contiguous()
    return tensors, aliases


def _tensor_nbytes(path: Path) -> dict[str, int]:
    """Bytes of every tensor in a safetensors file, read from its header (what is on disk)."""
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
    return {key: end - start for key, info in header.items() if key != "__metadata__"
            for start, end in [info["data_offsets"]]}


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; give a directory to create (or an existing one to replace with "
                              "--overwrite)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another directory or replace it (--overwrite, "
                              "overwrite=True in Python)")


def _check_out_outside_run(out: Path, run_dir: Path) -> None:
    """--out may not be the run directory, one of its parents, or inside it: with --overwrite the
    export would replace what it reads, and the run's next rerun would leave an export inside it
    stale (as eval_run's --export_dir)."""
    out_abs, run_abs = out.resolve(), run_dir.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents or run_abs in out_abs.parents:
        raise ValueError(f"--out {str(out)!r} would overwrite or lie inside the run {str(run_dir)!r} it exports (its "
                         f"directory, a parent of it, or a folder in it); choose a directory outside it, e.g. "
                         f"{str(Path('deploy') / run_abs.name)!r}")


def _apply_umask(directory: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; give the usual ones (0777/0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for item in directory.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def make_parents(out: Path) -> list[Path]:
    """Create the missing parent directories of `out`; those created, deepest first, for
    `remove_empty_dirs` to take back when the export fails."""
    created = [parent for parent in out.parents if not parent.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_dirs(created: Sequence[Path]) -> None:
    """Remove the directories `make_parents` created (deepest first), as long as they are empty."""
    for directory in created:
        try:
            directory.rmdir()
        except OSError:  # not empty (something else wrote there meanwhile) or already gone
            break


def check_has_low_bit_layers(model: nn.Module) -> None:
    """ValueError unless `model` has a quantized layer whose weights or inputs leave float."""
    layers = quantized_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quantized layers; quantize it with quant.surgery first")
    if not has_low_bit_layers(layers):
        raise ValueError(f"every quantized layer of {type(model).__name__} is at format none (a float model): there "
                         "is no low-bit model to export; save it with save_pretrained instead")


_FROM_MODEL = "from the model"


def export_quantized_checkpoint(model: nn.Module, out_dir: str | os.PathLike, processor: Any = None, *,
                                overwrite: bool = False, autocast_dtype: str | None = _FROM_MODEL) -> ExportReport:
    """Write `model` (quantized layers holding their final formats) as a low-bit checkpoint.

    Atomic: everything is written to a temporary sibling directory that is renamed to `out_dir`
    at the end, so a failure leaves nothing behind (parent directories it created included). An
    existing `out_dir` is an error unless `overwrite`. `autocast_dtype`: the mixed precision the
    model is evaluated under ("bfloat16" for a --bf16 run, "float16" for --fp16, None for float32),
    recorded for the loader; default: the model's own (`set_eval_autocast`, which
    `eval.eval_run.load_run_model` sets from the run's flags).
    """
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    if autocast_dtype == _FROM_MODEL:
        autocast_dtype = eval_autocast_dtype(model)
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype {autocast_dtype!r} is not one of {', '.join(AUTOCAST_DTYPES)} (or None for "
                         f"float32)")
    layers = quantized_layers(model)
    check_has_low_bit_layers(model)
    if not hasattr(model, "config") or not hasattr(model.config, "to_json_string"):
        raise ValueError(f"{type(model).__name__} has no transformers config; the export writes a transformers "
                         f"checkpoint (config.json and weights), so it needs a PreTrainedModel: define your model as a "
                         f"transformers.PreTrainedModel subclass with a PretrainedConfig (docs/extending.md, 'A model "
                         f"of your own')")
    tensors, aliases = _state_tensors(model, layers)
    entries: dict[str, Any] = {}
    padding = 0
    for name, layer in layers.items():
        _check_round_trips(name, layer.weight_format)
        _check_round_trips(name, layer.act_format)
        try:
            values, scale = grid_values_and_scale(layer)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"layer {name!r}: {error}") from error
        packed = pack(values, layer.weight_format)
        for key in (name + CODES_SUFFIX, name + SCALE_SUFFIX):
            if key in tensors:
                raise ValueError(f"{type(model).__name__} already has a tensor named {key!r}; it cannot be exported")
        tensors[name + CODES_SUFFIX] = packed.data.contiguous()
        if scale is not None:
            tensors[name + SCALE_SUFFIX] = scale.contiguous()
        entries[name] = _layer_entry(layer, packed)
        padding += packed.nbytes - math.ceil(values.numel() * layer.weight_format.bits / 8)
    config = json.loads(model.config.to_json_string(use_diff=False))
    config["architectures"] = [type(model).__name__]
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "autocast_dtype": autocast_dtype, "layers": entries, "tied_parameters": aliases,
    }

    with writing(out.parent):
        created = make_parents(out)
    tmp = None
    try:  # each OS error names what the user will find at `out`, not the temporary directory
        with writing(out):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        with writing(out / CONFIG_NAME):
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        with writing(out / WEIGHTS_NAME):
            save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt", "quant_method": QUANT_METHOD})
        if processor is not None:
            with writing(f"{out} (the {type(processor).__name__} files)"):
                processor.save_pretrained(str(tmp))
        with writing(out):
            _apply_umask(tmp)
            if out.exists():  # overwrite: swap the old directory out, then delete it
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.replace(out, old / out.name)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        raise
    nbytes = _tensor_nbytes(out / WEIGHTS_NAME)
    return ExportReport(
        path=str(out), file_bytes=(out / WEIGHTS_NAME).stat().st_size,
        code_bytes=sum(nbytes[name + CODES_SUFFIX] for name in layers),
        scale_bytes=sum(nbytes.get(name + SCALE_SUFFIX, 0) for name in layers),
        padding_bytes=padding, memory_cost_mib=sum(layer.memory_cost() for layer in layers.values()),
        num_quantized_layers=len(layers))


# --- loading ---------------------------------------------------------------------------------

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
        if codes is None or (scale is None and fmt.quantizes and not isinstance(fmt, CastFormat)):
            raise ValueError(f"{WEIGHTS_NAME} lacks the codes or scale of layer {name!r} ({fmt.name}); the checkpoint "
                             f"is incomplete, export it again")
        if codes.dtype != storage_dtype(fmt):
            raise ValueError(f"layer {name!r}: {fmt.name} codes must be {storage_dtype(fmt)}, found {codes.dtype}")
        tensors[f"{name}.weight"] = _dequantize(PackedTensor(codes, tuple(entry["weight_shape"]), fmt), scale,
                                                getattr(torch, entry["weight_dtype"]))
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


# --- CLI -------------------------------------------------------------------------------------

RunLoader = Callable[[str], tuple[nn.Module, Any]]
PROG, SCRIPT = "python -m quant.export", "fliqs-export"
DEFAULT_SEQ_LEN = 16  # tokens in a text model's ONNX example input


def export_prog() -> str:
    """The command's name in its messages, as the user typed it: `fliqs-export` or `python -m
    quant.export`."""
    from eval.cli_flags import program_name

    return program_name(PROG, SCRIPT, ("quant.export",))


def build_arg_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from eval.cli_flags import OnceArgumentParser  # a flag given twice is an error, as in every CLI

    parser = OnceArgumentParser(
        prog=prog,
        description="Write a finished run's final model as a low-bit checkpoint (and optionally ONNX).")
    parser.add_argument("run_dir", help="output directory of a finished run ({output_root_dir}/{task}/{exp_name})")
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--onnx", action="store_true", help="also write OUT/model.onnx with Q/DQ nodes")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: the lowest that expresses every format used; with a lower one, "
                        "layers whose format needs more count as unsupported: e.g. --opset 22 --onnx_unsupported "
                        "float for onnxruntime, which has no FP4 kernels)")
    parser.add_argument("--onnx_unsupported", choices=("raise", "float"), default=None,
                        help="layers whose format ONNX cannot express (at --opset): fail (raise) or export them in "
                        "float (default raise)")
    parser.add_argument("--seq_len", type=int, default=None,
                        help="tokens in the ONNX example input (text models; default 16)")
    parser.add_argument("--image_size", type=int, default=None, help="pixels per side of the ONNX example input "
                        "(vision models; default: from the config or image processor)")
    return parser


def _run_image_size(run_dir: str, model: nn.Module, processor: Any) -> int | None:
    """The image side a from-scratch vision run trained at (its --image_size, else its task's
    native size), read from results.json; None where the config or processor tells instead."""
    results = Path(run_dir) / "results.json"
    if processor is not None or isinstance(getattr(model.config, "image_size", None), int) or not results.is_file():
        return None
    run_args = json.loads(results.read_text()).get("args", {})
    if run_args.get("image_size"):
        return int(run_args["image_size"])
    from eval.run_setup import NATIVE_IMAGE_SIZE

    return NATIVE_IMAGE_SIZE.get(run_args.get("task"))


def main(argv: Sequence[str] | None = None, *, load_run: RunLoader | None = None,
         prog: str = PROG) -> ExportReport:
    """CLI entry point; `load_run` defaults to eval.eval_run.load_run_model (imported lazily)."""
    args = build_arg_parser(prog).parse_args(argv)
    if load_run is None:
        from eval.eval_run import load_run_model as load_run
    out = Path(args.out)
    # Everything about --out is checked before minutes of loading and ONNX export.
    _check_out_outside_run(out, Path(args.run_dir))
    _check_out_dir(out, args.overwrite)
    from eval.run_args import check_can_write_under

    check_can_write_under(str(out), "--out")
    onnx_only = [f"--{name}" for name in ("opset", "onnx_unsupported", "seq_len", "image_size")
                 if getattr(args, name) is not None]
    if onnx_only and not args.onnx:
        verb, pronoun = ("applies", "it") if len(onnx_only) == 1 else ("apply", "them")
        raise ValueError(f"{', '.join(onnx_only)} only {verb} to the ONNX export: add --onnx, or drop {pronoun}")
    args.seq_len = DEFAULT_SEQ_LEN if args.seq_len is None else args.seq_len
    args.onnx_unsupported = args.onnx_unsupported or "raise"
    if args.seq_len < 2:
        raise ValueError(f"--seq_len must be >= 2 (a length of 1 would fix the ONNX model's sequence length), got "
                         f"{args.seq_len}")
    if args.image_size is not None and args.image_size < 1:
        raise ValueError(f"--image_size must be >= 1, got {args.image_size}")
    if args.onnx:
        missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"--onnx needs the packages {', '.join(missing)}: pip install 'fliqs[onnx]' (or pip "
                             "install onnx onnxruntime onnxscript); nothing was written")
    if args.onnx and args.opset is not None:
        from quant.onnx_export import check_opset

        check_opset(args.opset)
    model, processor = load_run(args.run_dir)
    check_has_low_bit_layers(model)  # before minutes of ONNX export
    onnx_tmp, runtime_problem, created = None, None, []
    try:
        if args.onnx:  # before the checkpoint, so an ONNX failure leaves nothing behind
            from quant.onnx_export import example_inputs_for, export_onnx, onnxruntime_load_problem

            inputs = example_inputs_for(model, processor, seq_len=args.seq_len,
                                        image_size=args.image_size or _run_image_size(args.run_dir, model, processor))
            with writing(out.parent):
                created = make_parents(out)
            with writing(out):
                onnx_tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.onnx-", dir=out.parent))
            try:
                onnx_report = export_onnx(model, inputs, onnx_tmp / "model.onnx", opset=args.opset,
                                          unsupported=args.onnx_unsupported)
            except ExportWriteError as error:  # name it where it would have been, not in the temporary folder
                raise ExportWriteError(out / Path(error.filename).name, error) from error
            if importlib.util.find_spec("onnxruntime") is not None:  # valid ONNX, but can this onnxruntime run it?
                try:
                    runtime_problem = onnxruntime_load_problem(onnx_tmp / "model.onnx", shown_as=out / "model.onnx")
                except Exception:  # noqa: BLE001 - only a note: never a reason to fail the export
                    runtime_problem = None
        report = export_quantized_checkpoint(model, out, processor, overwrite=args.overwrite)
        print(report.summary())
        if onnx_tmp is not None:
            for item in onnx_tmp.iterdir():
                with writing(out / item.name):
                    os.replace(item, out / item.name)
            print(onnx_report.summary().replace(str(onnx_tmp), str(out)))
            if runtime_problem is not None:
                print(f"{prog}: note: {runtime_problem}", file=sys.stderr)
    except BaseException:
        if onnx_tmp is not None:
            shutil.rmtree(onnx_tmp, ignore_errors=True)
            onnx_tmp = None
        remove_empty_dirs(created)  # the parents of --out this command created, when the export failed
        raise
    finally:
        if onnx_tmp is not None:
            shutil.rmtree(onnx_tmp, ignore_errors=True)
    return report


def cli(argv: Sequence[str] | None = None) -> int:
    """`python -m quant.export` / `fliqs-export`: every failure is one line on stderr; exit 2 for a
    bad request (arguments, the run, --out), as the other commands, and 1 where the export failed."""
    prog = export_prog()
    try:
        main(sys.argv[1:] if argv is None else argv, prog=prog)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return 2
    except ExportWriteError as error:  # the disk, not the request: names the path and the way out already
        sys.stderr.write(f"{prog}: error: {error}\n")
        return 1
    except Exception as error:  # noqa: BLE001 - e.g. torch.export or loading: one line, not a traceback
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        sys.stderr.write(f"{prog}: error: {type(error).__name__}: {first}\n")
        return 1
    return 0


if __name__ == "__main__":
    # Run quant.export's own cli, not __main__'s copy: quant.onnx_export raises quant.export's
    # ExportWriteError, which a class defined again in __main__ would not catch.
    from quant.export import cli as _module_cli

    raise SystemExit(_module_cli())
