"""Throughput of fake quantization against a plain copy and torch's own fake-quant kernels.

On one large float32 tensor shaped (channels, size / channels), for each format and scale
granularity: the forward of `fake_quantize` (scale given), the forward given the range instead
(`fq range fwd`: on a GPU the kernel derives the scale, as for the layers), forward + backward
(with the straight-through mask), computing the abs-max scale alone, and `quantize` forward +
backward (range + fake quantization, what the layers run each step); on a GPU also the eager forward
that the fused kernel (quant/fused_quantize.py) replaces; next to `x.clone()` (the
memory-bandwidth limit: read + write of every element) and `torch.fake_quantize_per_tensor_affine`
/ `torch.fake_quantize_per_channel_affine` (INT8 and INT4 grids). All variants run interleaved
in one process (benchmarks/common.py).

Bandwidth model: forward moves 8 bytes per element (read x, write the result), as the copy
does; forward + backward 16 (plus the 1-byte mask); the scale 4 (read x); `quantize` 12 (read x
for the range, then read and write; an abs-max scale needs no mask). "% copy" is the
copy's time scaled by that model over the variant's time, so 100% means copy speed.

    python -m benchmarks.bench_quantizer                          # CPU, 4M elements, 1 thread
    python -m benchmarks.bench_quantizer --device cuda --compile  # + a torch.compile'd core

--compile adds a torch.compile'd forward of the same rounding core (per format and
granularity), checks it is bit-identical to the eager result and times it too.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from benchmarks.common import (
    add_runtime_args,
    environment_info,
    format_table,
    resolve_clock,
    setup_runtime,
    time_interleaved,
    write_json,
)
from quant import fused_quantize
from quant.formats import IntFormat, NumberFormat, parse_format
from quant.quant_utils import _eager_forward, _FakeQuantizeFunction, fake_quantize_unchecked, quantize
from quant.scales import Granularity, abs_max, compute_scale
from eval.cli_flags import OnceArgumentParser

DEFAULT_FORMATS = "int8,int4,fp8_e4m3,fp4_e2m1"
# On a GPU, 64M elements (256 MB): large enough that the time is memory traffic, not kernel
# launches (a copy of 16M elements takes ~40 us on an H200, about one launch's CPU cost).
DEFAULT_SIZE = {"cpu": 4 * 2**20, "cuda": 64 * 2**20}
# layer_path: `quantize` with an abs-max scale reads x for the range, then reads it again and
# writes the result; no element can saturate, so there is no mask and backward is the identity.
BYTES_PER_ELEMENT = {"copy": 8, "forward": 8, "forward_backward": 16, "scale": 4, "layer_path": 12}
TORCH_GRIDS = {"int8": IntFormat(8), "int4": IntFormat(4)}


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # a key of BYTES_PER_ELEMENT
    fmt: str | None
    granularity: str | None
    fn: Callable[[], Any]


def _compiled_forward(fmt: NumberFormat) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """torch.compile of the forward rounding core (no mask), as fake_quantize computes it."""
    from quant.rounding import _quantize_scaled_  # the private core: only this option needs it

    def forward(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        q, _ = _quantize_scaled_(x * torch.reciprocal(scale), fmt, need_mask=False)
        return q * scale

    return torch.compile(forward, dynamic=False)


def build_variants(x: torch.Tensor, formats: list[NumberFormat], granularities: list[Granularity],
                   use_compile: bool) -> tuple[list[Variant], dict[str, bool]]:
    x_grad = x.detach().clone().requires_grad_()
    upstream = torch.randn_like(x)
    variants = [Variant("copy", "copy", None, None, x.clone)]
    exact: dict[str, bool] = {}
    for granularity in granularities:
        for fmt in formats:
            scale = compute_scale(x, fmt, granularity, dim=0)
            tag = f"{fmt.name}/{granularity.value}"

            def forward(fmt=fmt, scale=scale) -> torch.Tensor:
                return fake_quantize_unchecked(x, fmt, scale)

            def range_forward(fmt=fmt, value_range=abs_max(x, granularity, dim=0)) -> torch.Tensor:
                # As the layers call it on a GPU: the kernel derives the scale from the range.
                return _FakeQuantizeFunction.apply(x, fmt, value_range, False, True)

            def forward_backward(fmt=fmt, scale=scale) -> torch.Tensor:
                return torch.autograd.grad(fake_quantize_unchecked(x_grad, fmt, scale), x_grad, upstream)[0]

            def layer_path(fmt=fmt, granularity=granularity) -> torch.Tensor:
                return torch.autograd.grad(quantize(x_grad, fmt, granularity, dim=0), x_grad, upstream)[0]

            if x.is_cuda and fused_quantize.is_available():
                # Side by side: the ~8-pass eager path the fused kernel replaces ("before").
                def eager_forward(fmt=fmt, scale=scale) -> torch.Tensor:
                    return _eager_forward(x, fmt, scale, need_mask=False)[0]  # what _forward falls back to

                variants.append(Variant(f"eager fwd {tag}", "forward", fmt.name, granularity.value, eager_forward))
            variants += [
                Variant(f"fq fwd {tag}", "forward", fmt.name, granularity.value, forward),
                Variant(f"fq range fwd {tag}", "forward", fmt.name, granularity.value, range_forward),
                Variant(f"fq fwd+bwd {tag}", "forward_backward", fmt.name, granularity.value, forward_backward),
                Variant(f"scale {tag}", "scale", fmt.name, granularity.value,
                        lambda fmt=fmt, g=granularity: compute_scale(x, fmt, g, dim=0)),
                Variant(f"quantize fwd+bwd {tag}", "layer_path", fmt.name, granularity.value, layer_path),
            ]
            if use_compile:
                compiled = _compiled_forward(fmt)
                exact[tag] = torch.equal(compiled(x, scale).view(torch.int32), forward().view(torch.int32))
                variants.append(Variant(f"compiled fwd {tag}", "forward", fmt.name, granularity.value,
                                        lambda c=compiled, s=scale: c(x, s)))
        variants += _torch_variants(x, x_grad, upstream, granularity)
    return variants, exact


def _torch_variants(x: torch.Tensor, x_grad: torch.Tensor, upstream: torch.Tensor,
                    granularity: Granularity) -> list[Variant]:
    """torch's fake-quant kernels on the same tensor, scale and grid (zero point 0)."""
    out = []
    for name, fmt in TORCH_GRIDS.items():
        scale = compute_scale(x, fmt, granularity, dim=0)
        if granularity is Granularity.PER_CHANNEL:
            flat = scale.flatten()
            zero = torch.zeros(flat.numel(), dtype=torch.int32, device=x.device)
            op = lambda t, s=flat, z=zero, f=fmt: torch.fake_quantize_per_channel_affine(t, s, z, 0, f.qmin, f.qmax)  # noqa: E731
        else:
            flat = scale.reshape(())
            zero = torch.zeros((), dtype=torch.int32, device=x.device)
            op = lambda t, s=flat, z=zero, f=fmt: torch.fake_quantize_per_tensor_affine(t, s, z, f.qmin, f.qmax)  # noqa: E731
        tag = f"{name}/{granularity.value}"
        out += [
            Variant(f"torch fwd {tag}", "forward", name, granularity.value, lambda op=op: op(x)),
            Variant(f"torch fwd+bwd {tag}", "forward_backward", name, granularity.value,
                    lambda op=op: torch.autograd.grad(op(x_grad), x_grad, upstream)[0]),
        ]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_args(parser, repeats=10, warmup=2)
    parser.add_argument("--size", type=int, default=None,
                        help="elements of the tensor (default 16M on cuda, 4M on cpu)")
    parser.add_argument("--channels", type=int, default=1024, help="rows = output channels (default 1024)")
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help=f"default {DEFAULT_FORMATS}")
    parser.add_argument("--granularities", default="per_tensor,per_channel",
                        help="comma-separated scale granularities (default per_tensor,per_channel)")
    parser.add_argument("--inner", type=int, default=None, help="calls per variant per round (default 1 cpu, 10 cuda)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd forward core")
    args = parser.parse_args(argv)
    device = setup_runtime(args)
    environment = environment_info(device, args.threads, resolve_clock(args))  # load before the run
    size = args.size or DEFAULT_SIZE[device.type]
    if args.channels < 1 or size % args.channels:
        raise ValueError(f"--size {size} must be a positive multiple of --channels {args.channels}")
    formats = [parse_format(f.strip()) for f in args.formats.split(",")]
    granularities = [Granularity(g.strip()) for g in args.granularities.split(",")]
    if Granularity.PER_TOKEN in granularities:
        raise ValueError("--granularities takes per_tensor and per_channel (per-token scales are per-channel "
                         "scales on the other dimension)")
    inner = args.inner or (10 if device.type == "cuda" else 1)
    clock = resolve_clock(args)

    x = torch.randn(args.channels, size // args.channels, device=device)
    x.mul_(torch.rand(args.channels, 1, device=device) * 4)  # uneven channels, like real weights
    variants, exact = build_variants(x, formats, granularities, args.compile)
    timings = time_interleaved({v.name: v.fn for v in variants}, repeats=args.repeats, warmup=args.warmup,
                               device=device, clock=clock, inner=inner)
    copy_ms = timings["copy"].median_ms
    rows = []
    for v in variants:
        t = timings[v.name]
        bytes_moved = BYTES_PER_ELEMENT[v.kind] * size
        rows.append({**t.summary(), "kind": v.kind, "format": v.fmt, "granularity": v.granularity,
                     "gb_per_s": bytes_moved / (t.median_ms * 1e-3) / 1e9,
                     "pct_of_copy": 100.0 * copy_ms * BYTES_PER_ELEMENT[v.kind] / BYTES_PER_ELEMENT["copy"]
                     / t.median_ms})
    payload = {"benchmark": "quantizer", "environment": environment,
               "config": {**vars(args), "size": size, "inner": inner}, "compiled_bit_exact": exact,
               "results": rows, "load_average_end": list(os.getloadavg())}
    print(format_table(["variant", "median ms", "GB/s", "% copy"],
                       [[r["name"], r["median_ms"], r["gb_per_s"], r["pct_of_copy"]] for r in rows]))
    if exact:
        print("compiled core bit-identical to eager: " + ", ".join(f"{k}={v}" for k, v in exact.items()))
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
