"""Host time per quantizer call: what a layer's quantizer costs the CPU, next to one torch launch.

On a GPU the training step is bound by the host's work between launches (benchmarks/RESULTS.md),
so a quantizer's cost there is its host time, not its kernel's. On a small tensor (4096 elements
by default: its kernels take a few microseconds) each variant runs `--inner` calls in a row
between two device syncs; the time per call is the host's, as long as the device keeps up:

    aten add              x + 1: one torch kernel launch, the reference
    range                 the abs-max the layers compute first (`quant.scales.abs_max`)
    kernel launch         the fused kernel alone: `fused_fake_quantize_from_range` (its checks, the
                          output's allocation and Triton's `kernel[grid](...)`)
    quantize fwd          `quantize(x, fmt, per_tensor)`, no gradient
    quantize fwd+bwd      with a gradient: forward, then `backward` (the autograd engine's
                          start included, which a training step pays once, not per layer)
    linear fwd+bwd        a float nn.Linear(64, 64) on a (64, 64) input, forward and backward
    quant linear fwd+bwd  the same layer quantized (weight and input; one layer, so its weight
                          takes the per-layer path): what quantization adds to a layer

The kernel row needs CUDA and Triton; the others run on the CPU too (there, nothing overlaps and
the times are the work itself).

Launching the compiled kernel directly, past Triton's per-call dispatch (binding, specializing
and keying the arguments), was tried on an H200 and saved nothing: 30.0 against 28.8 us per
launch (benchmarks/RESULTS.md, seventh session).

    python -m benchmarks.bench_launch --device cuda --out benchmarks/out/launch_gpu.json
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
from torch import nn

from benchmarks.common import add_runtime_args, environment_info, finish, median_ratio, resolve_clock, setup_runtime, \
    time_interleaved
from quant import fused_quantize
from quant.formats import parse_format
from quant.quant_linear import QuantLinear
from quant.quant_module import QuantConfig
from quant.quant_utils import quantize
from quant.scales import Granularity, abs_max
from eval.cli_flags import OnceArgumentParser

KERNEL_LAUNCH = "kernel launch"


def build_variants(x: torch.Tensor, fmt_token: str) -> dict[str, Callable[[], Any]]:
    fmt = parse_format(fmt_token)
    x_grad = x.detach().clone().requires_grad_(True)
    grad = torch.ones_like(x)
    linear = nn.Linear(64, 64).to(x.device)
    quant_linear = QuantLinear.from_float(nn.Linear(64, 64).to(x.device), QuantConfig(fmt, fmt))
    layer_input = torch.randn(64, 64, device=x.device)

    def fwd_bwd(module: nn.Module) -> Callable[[], None]:
        return lambda: module(layer_input).sum().backward()

    variants: dict[str, Callable[[], Any]] = {
        "aten add": lambda: x + 1.0,
        "range": lambda: abs_max(x, Granularity.PER_TENSOR),
    }
    launch = _kernel_launch(x, fmt)
    if launch is not None:
        variants[KERNEL_LAUNCH] = launch
    variants.update({
        "quantize fwd": lambda: quantize(x, fmt, Granularity.PER_TENSOR),
        "quantize fwd+bwd": lambda: torch.autograd.backward(quantize(x_grad, fmt, Granularity.PER_TENSOR), grad),
        "linear fwd+bwd": fwd_bwd(linear),
        "quant linear fwd+bwd": fwd_bwd(quant_linear),
    })
    return variants


def _kernel_launch(x: torch.Tensor, fmt: Any) -> Callable[[], Any] | None:
    """The fused kernel given the range (`fused_fake_quantize_from_range`, what the layers' forward
    calls on CUDA: its checks, the output's allocation and Triton's launch), or None where it does
    not run (no CUDA or no Triton)."""
    if not (x.is_cuda and fused_quantize.is_available()):
        return None
    value_range = x.detach().abs().amax().reshape(1).float()
    return lambda: fused_quantize.fused_fake_quantize_from_range(x, fmt, value_range, need_mask=False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_args(parser, repeats=20, warmup=3)
    parser.add_argument("--size", type=int, default=4096, help="elements of the quantized tensor (default 4096)")
    parser.add_argument("--format", default="int8", help="the quantizers' format (default int8)")
    parser.add_argument("--inner", type=int, default=200, help="calls in a row per variant and round (default 200)")
    args = parser.parse_args(argv)
    if args.size < 1 or args.inner < 1:
        parser.error(f"--size and --inner must be >= 1, got {args.size} and {args.inner}")
    device = setup_runtime(args)
    clock = resolve_clock(args)
    x = torch.randn(args.size, device=device)
    variants = build_variants(x, args.format)
    timings = time_interleaved(variants, repeats=args.repeats, warmup=args.warmup, device=device, clock=clock,
                               inner=args.inner)
    results = [{**timing.summary(), "us_per_call": timing.median_ms * 1e3,
                "ratio_to_aten_add": median_ratio(timings, name, "aten add")} for name, timing in timings.items()]
    rows = [[r["name"], r["us_per_call"], r["ratio_to_aten_add"]] for r in results]
    return finish("launch", args, environment_info(device, args.threads, clock), results,
                  ["variant", "us per call", "x aten add"], rows, size=args.size, format=args.format)


if __name__ == "__main__":
    main()
