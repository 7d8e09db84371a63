"""The command `python -m quant.export RUN_DIR --out DIR [--onnx]` (console script `fliqs-export`).

It writes a finished run's final model with quant.export's `export_quantized_checkpoint` and,
with --onnx, quant.onnx_export's ONNX model next to it. Kept apart from quant/export.py, which
holds the checkpoint format and its writer for any caller (eval_run's --export_dir, the Python
API): here are only the command's flags, the checks of --out against the run it reads, and its
error lines (`cli`: one line on stderr, exit 2 for a bad request and 1 where the export failed).

`python -m quant.export` runs quant/export.py as `__main__`, a second copy of that module; its
`__main__` block calls `cli` here, which uses the real quant.export (the ExportWriteError that
quant.onnx_export raises). `main` and `cli` stay importable from quant.export.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from quant.export import (ExportReport, ExportWriteError, check_has_low_bit_layers, check_out_dir,
                          export_quantized_checkpoint, make_parents, remove_empty_dirs, writing)

RunLoader = Callable[[str], tuple[nn.Module, Any]]
PROG, SCRIPT = "python -m quant.export", "fliqs-export"
DEFAULT_SEQ_LEN = 16  # tokens in a text model's ONNX example input


def _check_out_outside_run(out: Path, run_dir: Path) -> None:
    """--out may not be the run directory, one of its parents, or inside it: with --overwrite the
    export would replace what it reads, and the run's next rerun would leave an export inside it
    stale (as eval_run's --export_dir)."""
    out_abs, run_abs = out.resolve(), run_dir.resolve()
    if out_abs == run_abs or out_abs in run_abs.parents or run_abs in out_abs.parents:
        raise ValueError(f"--out {str(out)!r} would overwrite or lie inside the run {str(run_dir)!r} it exports (its "
                         f"directory, a parent of it, or a folder in it); choose a directory outside it, e.g. "
                         f"{str(Path('deploy') / run_abs.name)!r}")


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
    check_out_dir(out, args.overwrite)
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
        from quant.onnx_ops import check_opset

        check_opset(args.opset)
    model, processor = load_run(args.run_dir)
    check_has_low_bit_layers(model)  # before minutes of ONNX export
    onnx_tmp, runtime_problem, created = None, None, []
    try:
        if args.onnx:  # before the checkpoint, so an ONNX failure leaves nothing behind
            from quant.onnx_export import export_onnx
            from quant.onnx_runtime import example_inputs_for, onnxruntime_load_problem

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
    except KeyboardInterrupt:  # the export removed its temporary files on the way out
        sys.stderr.write(f"{prog}: interrupted; its temporary files were removed\n")
        return 130
    except Exception as error:  # noqa: BLE001 - e.g. torch.export or loading: one line, not a traceback
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        sys.stderr.write(f"{prog}: error: {type(error).__name__}: {first}\n")
        return 1
    return 0
