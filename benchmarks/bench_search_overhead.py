"""Where a search step's extra host time goes: the search's own parts, timed one by one.

A search step is a fixed-format step plus the search's own work: sample formats from the policy,
set them on the layers, snapshot the normalisation buffers (to undo a non-finite sample), compute
the reward's quality and update the policy (`sample_and_update_policy`: the sample, the plan of
the update made before the reward is read, `plan_policy_update`, and the rest after it,
`update_after_reward`, through which a GPU idles). Also timed: `group_check` and `group_weights`, the
check of which layers to group and the model's forward hooks that quantize every weight in one
batch (quant/weight_group.py), which every quantized step runs. On a GPU these parts run on the
host between kernel launches, so they add to a step that is already host-bound
(benchmarks/RESULTS.md). This times each part in the same process as the whole search step of
the same model and batch, and reports each as a share of it (median part / median step).

    python -m benchmarks.bench_search_overhead                                  # CPU preset
    python -m benchmarks.bench_search_overhead --device cuda --preset gpu --out benchmarks/out/overhead_gpu.json
    python -m benchmarks.bench_search_overhead --preset gpu --parts_only        # the GPU models' parts, on the CPU

`--parts_only` skips the whole step (and its share): the parts are host work whose cost hardly
depends on the batch, so the GPU preset's models (ResNet-18: 21 decisions, BERT-base: 74) can be
measured on a machine without a GPU, where their whole step would take seconds. (There,
grouping is off, so `group_check` and `group_weights` time only the check that finds nothing to
group: `FLIQS_GROUPED_WEIGHTS=always` times the batch computed on the CPU instead.)

Not a goal of its own: it explains the search step's ratio to float (bench_search_step).
"""
from __future__ import annotations

import argparse
import tempfile
from typing import Any, Callable

import torch

from benchmarks.common import add_runtime_args, environment_info, finish, resolve_clock, setup_runtime, time_interleaved
from benchmarks.step_setup import StepVariant, TrainerStep, add_model_args, build_trainer, chosen_cases
from trainer.quality import batch_quality
from eval.cli_flags import OnceArgumentParser

DEFAULT_SEARCH_SPACE = "int4,int8,fp4_e2m1,fp8_e4m3"
WHOLE_STEP = "search_step"


def search_parts(step: TrainerStep, quality_examples: int | None = None) -> dict[str, Callable[[], Any]]:
    """The search's own work in one step, each part callable on its own (the same calls the
    ReinforceTrainer makes; the policy update with a fixed quality, after the delay). The
    quality is computed on the logits of the step's batch, or of its first `quality_examples`."""
    trainer, model, batch = step.trainer, step.model, step.batch
    config = trainer.reinforce_config
    if quality_examples is not None:
        batch = {k: v[:quality_examples] for k, v in batch.items()}
    with torch.no_grad():
        logits = model(**batch)["logits"].detach()
    labels = batch["labels"]

    step_index = trainer.state.global_step

    def sample() -> Any:
        with torch.no_grad():  # as the trainer samples
            return trainer.policy.sample(trainer.sample_generator)

    def sample_and_update() -> None:
        drawn = sample()
        trainer._update_policy(drawn, 0.5, step_index, True, trainer._plan_policy_update(drawn, step_index, True))

    # The update after the reward is read, from a plan made before (on a GPU the device idles
    # through this part; the plan is made while it finishes the backward pass). One plan serves
    # every call: the work is the same whatever the policy has become.
    drawn = sample()
    trainer._update_policy(drawn, 0.5, step_index, True)  # a baseline value, so the plan prices the alternatives
    plan = trainer._plan_policy_update(drawn, step_index, True)

    group = vars(model).get("_fliqs_weight_group")

    def group_weights() -> None:  # the model's forward hooks: every weight quantized in one batch
        group._before_forward(model, ())
        group._after_forward(model, (), None)

    return {
        "sample": sample,
        "set_formats": lambda: trainer.apply_option_indices(sample().indices),
        "snapshot_buffers": lambda: trainer._buffer_snapshot.take(model),
        "quality": lambda: batch_quality(logits, labels, config.reward_metric),
        "sample_and_update_policy": sample_and_update,
        "plan_policy_update": lambda: trainer._plan_policy_update(drawn, step_index, True),
        "update_after_reward": lambda: trainer._update_policy(drawn, 0.5, step_index, True, plan),
        # Not the search's own, but what every quantized step now does once: the check of which
        # layers to group (host work only), and the hooks with the batch itself (on the CPU,
        # where grouping is off by default, only a check that finds nothing to group).
        **({"group_check": group.groupable, "group_weights": group_weights} if group is not None else {}),
    }


def run_case(case, space: tuple[str, ...], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as output_dir:
        built = build_trainer(case, StepVariant("search_train", "search", space, "train"), device=device,
                              output_dir=output_dir, seed=args.seed)
        step = TrainerStep(built)
        clock = resolve_clock(args)
        whole = None
        if not args.parts_only:
            step()  # the delay is 0: the policy is searching from the first step
            whole = time_interleaved({WHOLE_STEP: step}, repeats=args.repeats, warmup=args.warmup, device=device,
                                     clock=clock)[WHOLE_STEP]
        # The parts are short: each is called `inner` times in a row, and they are timed apart from
        # the whole step, right after which any short call would find cold caches.
        parts = time_interleaved(search_parts(step, 1 if args.parts_only else None), repeats=args.repeats,
                                 warmup=args.warmup, device=device, clock=clock, inner=args.inner)
    rows = [] if whole is None else [{**whole.summary(), "share_of_step": 1.0}]
    rows += [{**timing.summary(), "share_of_step": None if whole is None else timing.median_ms / whole.median_ms}
             for timing in parts.values()]
    return {"model": case.name, "model_type": case.model_type, "batch_size": case.batch_size,
            "quantized_layers": built.num_quantized_layers, "decisions": built.trainer.search_space.num_decisions,
            "parts": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_args(parser, repeats=30, warmup=3)
    add_model_args(parser)
    parser.add_argument("--search_space", default=DEFAULT_SEARCH_SPACE,
                        help=f"options of the search (default {DEFAULT_SEARCH_SPACE})")
    parser.add_argument("--inner", type=int, default=20, help="calls of each part per round (default 20)")
    parser.add_argument("--parts_only", action="store_true",
                        help="time the parts only, not the whole step (no share of it): for the GPU preset's "
                             "models on a CPU")
    args = parser.parse_args(argv)
    device = setup_runtime(args)
    environment = environment_info(device, args.threads, resolve_clock(args))
    preset, cases = chosen_cases(args)
    space = tuple(f.strip() for f in args.search_space.split(",") if f.strip())
    results = [run_case(case, space, args, device) for case in cases]
    rows = [[r["model"], p["name"], p["median_ms"], p["iqr_ms"], p["share_of_step"]]
            for r in results for p in r["parts"]]
    return finish("search_overhead", args, environment, results,
                  ["model", "part", "median ms", "iqr ms", "x search step"], rows, preset=preset)


if __name__ == "__main__":
    main()
