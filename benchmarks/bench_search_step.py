"""Cost of one training step: float vs fixed-format quantized vs search, side by side.

For each model of the preset, every variant gets its own Trainer on an identical copy of the
model and the same batch; their steps are interleaved round by round (benchmarks/common.py)
and reported as the median time and the median per-round ratio to the float step.

    python -m benchmarks.bench_search_step                          # CPU preset, 1 thread
    python -m benchmarks.bench_search_step --device cuda --preset gpu --out benchmarks/out/step_gpu.json

Goals (benchmarks/README.md): CPU search step <= 1.5x float, fixed-format step <= 1.4x float;
GPU search step <= 1.25x float.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from typing import Any

from benchmarks.common import (
    add_runtime_args,
    environment_info,
    finish,
    median_ratio,
    resolve_clock,
    setup_runtime,
    time_interleaved,
)
from benchmarks.step_setup import StepVariant, TrainerStep, add_model_args, build_trainer, chosen_cases
from quant import weight_group
from eval.cli_flags import OnceArgumentParser

DEFAULT_SEARCH_SPACE = "int4,int8,fp4_e2m1,fp8_e4m3"
DEFAULT_FIXED_FORMATS = "int8,fp8_e4m3"
REFERENCE = "float"


PER_LAYER_SUFFIX = "_per_layer"


def step_variants(fixed_formats: list[str], search_space: list[str], reward_sources: list[str],
                  per_layer_weights: bool = False) -> list[StepVariant]:
    """float, fixed_<format> per format, search_<source> per reward source; with
    `per_layer_weights`, each quantized variant again as <name>_per_layer."""
    quantized = [StepVariant(f"fixed_{f}", "fixed", (f,)) for f in fixed_formats]
    quantized += [StepVariant(f"search_{source}", "search", tuple(search_space), source) for source in reward_sources]
    twins = [replace(v, name=v.name + PER_LAYER_SUFFIX, per_layer_weights=True) for v in quantized]
    return [StepVariant(REFERENCE, "float"), *quantized, *(twins if per_layer_weights else [])]


def run_case(case, variants: list[StepVariant], args: argparse.Namespace, device) -> dict[str, Any]:
    steps: dict[str, TrainerStep] = {}
    layers = 0
    with tempfile.TemporaryDirectory() as output_dir:
        for variant in variants:
            built = build_trainer(case, variant, device=device, output_dir=output_dir, seed=args.seed,
                                  per_channel=args.per_channel, per_token=args.per_token)
            steps[variant.name] = TrainerStep(built)
            layers = max(layers, built.num_quantized_layers)
        timings = time_interleaved(steps, repeats=args.repeats, warmup=args.warmup, device=device,
                                   clock=resolve_clock(args), inner=args.inner, settle=args.settle)
    weight_device = next(steps[REFERENCE].model.parameters()).device
    rows = []
    for variant in variants:
        timing = timings[variant.name]
        group = vars(steps[variant.name].model).get("_fliqs_weight_group")
        twin = variant.name + PER_LAYER_SUFFIX
        rows.append({**timing.summary(), "kind": variant.kind.value, "formats": list(variant.formats),
                     "reward_source": variant.reward_source if variant.kind.value == "search" else None,
                     "per_layer_weights": variant.per_layer_weights,
                     # what the comparison rests on: the layers a step groups (0: per layer)
                     "grouped_layers": len(group.groupable()) if group is not None else 0,
                     "ratio_to_float": median_ratio(timings, variant.name, REFERENCE),
                     "ratio_to_per_layer": median_ratio(timings, variant.name, twin) if twin in timings else None})
    return {"model": case.name, "model_type": case.model_type, "batch_size": case.batch_size,
            "image_size": case.image_size, "seq_length": case.seq_length, "quantized_layers": layers,
            # whether the grouped weights ran on the multi-tensor kernels (None: never checked, as on
            # the CPU); asked for the weights' own device (cuda:0, where --device says cuda)
            "grouped_kernels_verified": weight_group.kernels_verified(weight_device),
            "variants": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_args(parser, repeats=20, warmup=3)
    add_model_args(parser)
    parser.add_argument("--inner", type=int, default=1, help="timed steps per variant per round (default 1)")
    parser.add_argument("--settle", type=int, default=0,
                        help="untimed steps per variant per round before its timed ones (default 0), so that "
                             "each timed step follows one of the same model, as in training")
    parser.add_argument("--fixed_formats", default=DEFAULT_FIXED_FORMATS,
                        help=f"fixed-format variants, weights and activations (default {DEFAULT_FIXED_FORMATS})")
    parser.add_argument("--search_space", default=DEFAULT_SEARCH_SPACE,
                        help=f"options of the search variants (default {DEFAULT_SEARCH_SPACE})")
    parser.add_argument("--reward_sources", default="train,heldout", help="search variants (default train,heldout)")
    parser.add_argument("--per_channel", action="store_true", help="per-output-channel weight scales")
    parser.add_argument("--per_token", action="store_true", help="per-token activation scales")
    parser.add_argument("--per_layer_weights", action="store_true",
                        help="also time every quantized variant with each layer quantizing its own weight "
                             "(as <name>_per_layer; the grouped weights of quant/weight_group.py taken off)")
    args = parser.parse_args(argv)
    device = setup_runtime(args)
    environment = environment_info(device, args.threads, resolve_clock(args))  # load before the run
    preset, cases = chosen_cases(args)
    sources = [s.strip() for s in args.reward_sources.split(",") if s.strip()]
    bad = [s for s in sources if s not in ("train", "heldout")]
    if bad:
        raise ValueError(f"--reward_sources {bad} unknown; valid: train, heldout")
    variants = step_variants([f.strip() for f in args.fixed_formats.split(",") if f.strip()],
                             [f.strip() for f in args.search_space.split(",")], sources, args.per_layer_weights)

    results = [run_case(case, variants, args, device) for case in cases]
    rows = [[r["model"], v["name"], v["median_ms"], v["iqr_ms"], v["ratio_to_float"]]
            for r in results for v in r["variants"]]
    return finish("search_step", args, environment, results, ["model", "variant", "median ms", "iqr ms", "x float"],
                  rows, preset=preset)


if __name__ == "__main__":
    main()
