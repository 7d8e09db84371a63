"""Low-bit checkpoints: their format, and writing what the search found in its real low-bit form.

Layout of a checkpoint directory (HF style):
    config.json        the model's config plus `quantization_config` (quant_method "fliqs"):
                       per layer its weight/activation formats, scale granularities, clipping
                       percentiles, weight shape and storage dtype
    fliqs_model.safetensors
                       quantized layers as `{layer}.weight_codes` (quant.packing storage) and
                       `{layer}.weight_scale` (float32; per tensor or per output channel, absent
                       for none/bf16/fp16); every other parameter and buffer as it is
    tokenizer / image processor files, when one is given

`load_quantized_checkpoint` (quant/checkpoint_load.py) rebuilds the fake-quant model: weights are
the dequantized codes and are not re-quantized (`weight_prequantized`), so its outputs equal the
exported model's bit for bit. A run evaluated under mixed precision (--bf16 / --fp16:
torch.autocast, as transformers' Trainer does) records that dtype as `autocast_dtype`, and the
loaded model runs its forward under the same autocast (`set_eval_autocast`), so it reproduces the
run's evaluation, not a float32 one. The weights file is deliberately not named model.safetensors:
transformers' own `from_pretrained` only warns about an unknown quant_method and would then return
the model with every quantized layer freshly initialised; without its weights file it fails
instead.

CLI: python -m quant.export RUN_DIR --out DIR [--onnx]   (quant/export_cli.py, `main`)
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from quant.formats import NumberFormat, parse_format
from quant.eval_autocast import AUTOCAST_DTYPES, eval_autocast_dtype
from quant.packing import PackedTensor, grid_values_and_scale, pack
from quant.quant_module import BYTES_PER_MIB, QuantModule
from quant.surgery import has_low_bit_layers, quantized_layers

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


def check_out_dir(out: Path, overwrite: bool) -> None:
    cwd, resolved = Path.cwd().resolve(), out.resolve()
    if out.exists() and (resolved == cwd or resolved in cwd.parents):
        # Replacing it would swap a directory this process (and the user's shell) stands in.
        what = "the current directory" if resolved == cwd else "a directory that holds the current one"
        raise FileExistsError(f"{out} is {what}; replace another directory, or write a new one")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; give a directory to create (or an existing one to replace with "
                              "--overwrite)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another directory or replace it (--overwrite, "
                              "overwrite=True in Python)")


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
    check_out_dir(out, overwrite)
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
    tmp = old = None
    try:  # each OS error names what the user will find at `out`, not the temporary directory
        with writing(out):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        with writing(out / CONFIG_NAME):
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        with writing(out / WEIGHTS_NAME):
            # One metadata key: safetensors writes a map's keys in a random order (two exports of
            # one model would differ in bytes); config.json names the quant_method.
            save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
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
        if old is not None:  # overwrite failed after the swap began: the old export back in place
            with contextlib.suppress(OSError):
                if (old / out.name).exists() and not out.exists():
                    os.replace(old / out.name, out)
            if not (old / out.name).exists():
                shutil.rmtree(old, ignore_errors=True)
        remove_empty_dirs(created)
        raise
    nbytes = _tensor_nbytes(out / WEIGHTS_NAME)
    return ExportReport(
        path=str(out), file_bytes=(out / WEIGHTS_NAME).stat().st_size,
        code_bytes=sum(nbytes[name + CODES_SUFFIX] for name in layers),
        scale_bytes=sum(nbytes.get(name + SCALE_SUFFIX, 0) for name in layers),
        padding_bytes=padding, memory_cost_mib=sum(layer.memory_cost() for layer in layers.values()),
        num_quantized_layers=len(layers))


if __name__ == "__main__":
    # `python -m quant.export` runs this file as __main__, a second copy of the module: run the
    # command on the real quant.export, whose ExportWriteError is the one quant.onnx_export raises.
    from quant.export_cli import cli

    raise SystemExit(cli())
