"""Validate a run's flags and resolve the defaults that depend on other flags.

Everything here runs before any data or model is loaded, so a bad command fails in
milliseconds. Each check raises ValueError with one line that names the bad value and the way
out; `eval.eval_parse.parse_run_args` turns it into `error: ...` and exit code 2. The checks of
what a run starts from (a checkpoint to resume, a --load_config run) are in eval/run_inputs.py,
the value checks of the search flags in eval/search_flag_checks.py, and the notes about flags a
resolved run ignores in eval/run_flag_notes.py.

Resolved fields added to the namespace (all JSON-serialisable, saved in config.json):
    mode             "search" | "uniform" | "loaded" (formats from --load_config) | "float"
    weight_format, act_format   canonical format names of a fixed-format run (or the fixed
                     activation format of a weight-only search)
    search_formats   canonical names of the search space (search runs)
    granularity      "layer" | "block" | "single"
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from cost.cost import REWARD_FORMS
from cost.model_cost import parse_cost_type
from eval.model_configs import get_model_spec, supports_gradient_checkpointing
from eval.run_inputs import (check_inputs_outside_run_dir, check_load_config, check_load_config_run,
                             check_resume_matches, resolve_checkpoint)
from eval.search_flag_checks import check_choice, check_search_flag_values, refuse_eval_only_search
from eval.tasks import get_task
from quant.formats import NO_QUANT, parse_format, parse_format_list
from trainer.reinforce_config import RewardMetric, default_cost_beta, default_reward_metric

DEFAULT_LR_PRETRAINED = 5e-5
DEFAULT_LR_SCRATCH = 1e-3
# The search's derived defaults (cost_beta, reward_metric, delay, policy learning rate) are the
# trainer's rules (trainer/reinforce_config.py), shared with the Python API.
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
# --data_seed: the seed of the --max_train_samples/--max_eval_samples subsets. Fixed, so that seed
# replicas evaluate the same examples; 42, the --seed default, so that a run at the default seed
# draws the subsets runs drew before the flag (with their --seed).
DEFAULT_DATA_SEED = 42
DEFAULT_SAVE_STEPS = 500


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be > 0, got {value}")


def _fixed_format(text: str | None, flag: str) -> str | None:
    if text is None:
        return None
    try:
        return parse_format(text).name
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def check_can_write_under(path: str, flag: str) -> None:
    """`path` is a directory, or can be created, and files can be written under it: its nearest
    existing ancestor is a directory in which a probe directory can be created (and is removed
    again). Permission bits alone say nothing for root or on read-only mounts."""
    target = Path(path)
    ancestor = target
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        what = "is a file" if ancestor == target else f"cannot be a directory: {str(ancestor)!r} is a file"
        raise ValueError(f"{flag} {path!r} {what}; choose another path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fliqs-write-check-", dir=ancestor))
    except OSError as error:
        raise ValueError(f"{flag} {path!r}: cannot create directories in {str(ancestor)!r} "
                         f"({error.strerror or error}); choose a writable location") from None


def resolve_run_args(args: argparse.Namespace, given: frozenset[str] | None = None) -> argparse.Namespace:
    """Validate `args` in place and fill in the resolved fields; returns `args`. `given`: the dests
    the command line named, where known (errors then call only the others "the default")."""
    if args.load_config is not None:
        check_load_config_run(args, given=given)  # before anything blames --model/--task/--model_name_or_path for it
    task = get_task(args.task)
    spec = get_model_spec(args.model_type)
    if task.modality != spec.modality:
        raise ValueError(f"--model_type {args.model_type} is a {spec.modality} model but --task {args.task} is a "
                         f"{task.modality} task; pick a {task.modality} model")
    # Without --model_name_or_path, --from_scratch or --pretrained, a found assignment goes with the
    # weights it was found on: the run's final_model/.
    weights_unsaid = args.from_scratch is None and args.model_name_or_path is None
    if weights_unsaid and args.load_config is not None:
        final_model = Path(args.load_config).parent / "final_model"
        if final_model.is_dir():
            args.model_name_or_path = str(final_model)
    if args.from_scratch is None:
        args.from_scratch = task.builtin and args.model_name_or_path is None
    if args.learning_rate is None:
        args.learning_rate = DEFAULT_LR_SCRATCH if args.from_scratch else DEFAULT_LR_PRETRAINED
    if args.gradient_checkpointing and not supports_gradient_checkpointing(spec):
        raise ValueError(f"--gradient_checkpointing: {args.model_type} does not support it (transformers has no "
                         f"activation checkpointing for {spec.family}); drop the flag")

    _check_data_flags(args, task)
    _check_training_names(args)
    _check_checkpoint_flags(args)
    _positive(args, "learning_rate", "train_batch_size", "eval_batch_size", "gradient_accumulation_steps",
              "num_train_epochs", "max_seq_length", "image_size", "log_steps", "eval_steps", "save_steps",
              "rl_learning_rate", "policy_temperature")
    for name in ("warmup_steps", "weight_decay"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in 0 .. 2**32 - 1 (what torch and numpy accept), got {args.seed}")
    if not 0 <= args.data_seed < 2**32:
        raise ValueError(f"--data_seed must be in 0 .. 2**32 - 1 (what numpy accepts), got {args.data_seed}; give a "
                         f"non-negative integer such as 0, or leave --data_seed out for the default "
                         f"{DEFAULT_DATA_SEED}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max_steps must be > 0, or -1 to train for --num_train_epochs; got {args.max_steps}")
    if args.fp16 and args.bf16:
        raise ValueError("--fp16 and --bf16 are mutually exclusive; pick one autocast dtype")
    check_choice(args.report_to, ("tensorboard", "none"), "--report_to")
    if args.device is not None:
        check_choice(args.device, ("cpu", "cuda"), "--device")
    if args.cuda_visible_devices is not None and not re.fullmatch(r"\d+(,\d+)*|", args.cuda_visible_devices):
        raise ValueError(f"--cuda_visible_devices {args.cuda_visible_devices!r} must be a comma-separated list "
                         "of GPU indices such as 0,1")
    check_can_write_under(args.output_root_dir, "--output_root_dir")
    if args.export_dir is not None:
        if Path(args.export_dir).exists():
            raise ValueError(f"--export_dir {args.export_dir!r} already exists; give a new directory (the export is "
                             "written atomically and never overwrites)")
        # Checked now, not after hours of training when the export is written.
        check_can_write_under(args.export_dir, "--export_dir")
    if args.image_size is not None and task.modality != "vision":
        raise ValueError(f"--image_size applies to vision tasks; {args.task} is a text task")
    if args.exp_name is not None and (not args.exp_name or "/" in args.exp_name or args.exp_name in (".", "..")):
        raise ValueError(f"--exp_name {args.exp_name!r} must be a non-empty name without '/'")
    from eval.model_checks import check_model_flags

    check_model_flags(args, spec)  # the local checkpoint, the overrides, the text length

    for name in ("weight_range_percentile", "act_range_percentile"):
        value = getattr(args, name)
        if value == 0 or value > 100:
            raise ValueError(f"--{name} must be in (0, 100] (100 = abs-max) or negative (MSE-optimal), got {value}")

    # Every run records its cost in results.json (fixed-format runs too), so this is checked for all.
    parse_cost_type(args.cost_type)
    _resolve_mode(args)
    if args.export_dir is not None and args.mode == "float":
        raise ValueError("--export_dir writes the low-bit checkpoint of a quantized run, and this run is float "
                         "(--bits 0): drop --export_dir (the run's final_model/ holds its float weights)")
    _check_layer_selection(args, spec.modality)
    check_search_flag_values(args)
    if args.mode == "search":
        _resolve_search(args, task)
    if args.load_config is not None:
        check_load_config(args)
        if weights_unsaid and args.model_name_or_path is None:  # else the task's default weights would stand in
            raise ValueError(f"--load_config {args.load_config!r}: that run has no final_model/ beside its "
                             "results.json (the weights its formats go with); pass --model_name_or_path DIR with "
                             "those weights, --pretrained for the hub checkpoint, or --from_scratch to train the "
                             "assignment from random weights")
    if args.eval_only and args.model_name_or_path is None and (args.load_config is None or args.from_scratch):
        raise ValueError("--eval_only needs trained weights: give --load_config RUN/results.json (that run's "
                         "final_model/) or --model_name_or_path DIR; otherwise it would evaluate a random model")
    if args.exp_name is None:
        args.exp_name = default_exp_name(args)
    if len(args.exp_name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"--exp_name is {len(args.exp_name.encode())} bytes long ({args.exp_name[:40]!r}...); a "
                         f"directory name can have at most {MAX_NAME_BYTES}: give a shorter --exp_name")
    check_inputs_outside_run_dir(args)
    given_delay = args.delay_steps
    check_resume_matches(args)  # a resumed search takes the delay its run resolved
    _check_delay_leaves_search_steps(args, inherited=given_delay is None and args.delay_steps is not None)
    return args


def _check_delay_leaves_search_steps(args: argparse.Namespace, inherited: bool) -> None:
    if args.mode != "search" or args.delay_steps is None or not 0 < args.max_steps <= args.delay_steps:
        return
    if inherited:  # a resumed run keeps its delay: only more steps help
        raise ValueError(f"the run being resumed searches after {args.delay_steps} delay steps (recorded in its "
                         f"config.json), so --max_steps {args.max_steps} leaves no search step; resume with "
                         f"--max_steps above {args.delay_steps}")
    raise ValueError(f"--delay_steps {args.delay_steps} leaves no search step in --max_steps {args.max_steps}: the "
                     f"policy would never learn; use fewer delay steps (default: half of the steps)")


MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems


def _check_training_names(args: argparse.Namespace) -> None:
    """--optimizer and --lr_scheduler_type against the names transformers knows."""
    from transformers import SchedulerType
    from transformers.training_args import OptimizerNames

    check_choice(args.optimizer, [o.value for o in OptimizerNames], "--optimizer")
    check_choice(args.lr_scheduler_type, [t.value for t in SchedulerType], "--lr_scheduler_type")


def _check_checkpoint_flags(args: argparse.Namespace) -> None:
    if args.save_strategy is None:  # --save_steps alone means: save every that many steps
        args.save_strategy = "steps" if args.save_steps is not None else "no"
    check_choice(args.save_strategy, SAVE_STRATEGIES, "--save_strategy")
    if args.save_steps is not None and args.save_strategy != "steps":
        raise ValueError(f"--save_steps applies to --save_strategy steps, not {args.save_strategy!r}; drop one of them")
    if args.save_steps is None:
        args.save_steps = DEFAULT_SAVE_STEPS
    if args.save_strategy == "best" and not args.eval_steps:
        raise ValueError("--save_strategy best saves a checkpoint whenever the evaluation improves; give --eval_steps N")
    if args.resume_from_checkpoint is not None:
        if args.eval_only:
            raise ValueError("--resume_from_checkpoint continues training; with --eval_only pass the weights as "
                             "--model_name_or_path CHECKPOINT_DIR instead")
        args.resume_from_checkpoint = resolve_checkpoint(args.resume_from_checkpoint)


def check_device_flags(args: argparse.Namespace) -> None:
    """Checks that depend on the machine the run starts on (so not on a launcher's plan):
    --device cuda and --fp16 need a CUDA device."""
    import torch

    has_cuda = args.cuda_visible_devices != "" and torch.cuda.is_available()
    if args.device == "cuda" and not has_cuda:
        raise ValueError("--device cuda: no CUDA device is visible on this machine; drop --device (the default uses "
                         "a GPU when there is one) or pass --device cpu")
    if args.fp16 and (not has_cuda or args.device == "cpu"):
        raise ValueError("--fp16 autocast needs a CUDA device and this run is on the CPU; use --bf16 for mixed "
                         "precision on the CPU")


def _check_data_flags(args: argparse.Namespace, task) -> None:
    if (args.train_file is None) != (args.validation_file is None):
        raise ValueError("--train_file and --validation_file go together: give both local files")
    if args.dataset_path is not None and args.train_file is not None:
        raise ValueError("--dataset_path and --train_file/--validation_file are mutually exclusive; give one source")
    _positive(args, "max_train_samples", "max_eval_samples")
    from eval.data import check_local_sources

    check_local_sources(task, args.train_file, args.validation_file, args.dataset_path)
    if args.metric is not None and not args.metric.strip():
        raise ValueError("--metric must name an evaluate metric")
    if args.metric == "glue" and task.hub_path != "nyu-mll/glue":  # its configs are the GLUE tasks
        raise ValueError(f"--metric glue has no configuration for task {task.name!r} (only for GLUE tasks); leave "
                         f"--metric unset for the task's built-in offline metrics ({', '.join(task.metric_names)})")


def _resolve_mode(args: argparse.Namespace) -> None:
    if args.bits is not None and (args.weight_bits is not None or args.activation_bits is not None):
        raise ValueError("--bits sets both --weight_bits and --activation_bits; give either --bits or those two")
    weight = _fixed_format(args.bits if args.bits is not None else args.weight_bits,
                           "--bits" if args.bits is not None else "--weight_bits")
    act = _fixed_format(args.bits if args.bits is not None else args.activation_bits,
                        "--bits" if args.bits is not None else "--activation_bits")
    fixed_given = weight is not None or act is not None
    # the flags that ask for a search, as typed (before the default fills --search in)
    search_asked = ["--search"] * bool(args.search) + [f"--{name}" for name in
                                                     ("weight_only_search", "single_decision", "block_search")
                                                     if getattr(args, name)]
    if args.load_config is not None:
        if args.search:
            raise ValueError("--load_config applies a found assignment as fixed formats; it cannot be combined "
                             "with --search")
        if fixed_given:
            raise ValueError("--load_config sets every layer's formats; drop --weight_bits/--activation_bits/--bits")
        args.search = False
    if args.search is None:
        # Searching is what this toolkit is for: it is the default unless fixed formats are given
        # (the search granularity flags ask for a search, with --activation_bits for weight-only).
        args.search = not fixed_given or args.weight_only_search or args.single_decision or args.block_search
    if args.search and fixed_given and not args.weight_only_search:
        raise ValueError("--search picks the formats itself; drop --weight_bits/--activation_bits/--bits, or use "
                         "--weight_only_search with --activation_bits to fix the activations")
    if args.eval_only and args.search:
        refuse_eval_only_search(args, search_asked)
    if args.search:
        args.mode = "search"
        if weight is not None:
            if args.bits is not None:  # --bits fixes the weights too
                raise ValueError(f"--weight_only_search searches the weight formats, and --bits {args.bits} would fix "
                                 f"them too; give the activations' format alone: --activation_bits {args.bits}")
            raise ValueError("--weight_only_search searches the weight formats; drop --weight_bits")
        args.weight_format, args.act_format = None, act or NO_QUANT.name
    else:
        args.weight_format, args.act_format = weight or NO_QUANT.name, act or NO_QUANT.name
        uses_quant = args.weight_format != NO_QUANT.name or args.act_format != NO_QUANT.name
        args.mode = "loaded" if args.load_config is not None else "uniform" if uses_quant else "float"
        if args.single_decision or args.block_search or args.weight_only_search:
            raise ValueError("--single_decision/--block_search/--weight_only_search are search options and this run "
                             "does not search (--no-search or --load_config); drop them")


def _check_layer_selection(args: argparse.Namespace, modality: str) -> None:
    flags = ("quantize_self_attention", "quantize_self_output", "quantize_output", "quantize_intermediate",
             "quantize_pooler", "quantize_classifier")
    if modality == "text" and args.mode != "float" and not any(getattr(args, f) for f in flags):
        raise ValueError("no quantizable layer is selected: every --quantize_* flag is off; turn at least one on "
                         "(e.g. --quantize_intermediate)")


def _resolve_search(args: argparse.Namespace, task) -> None:
    try:
        formats = parse_format_list(args.search_space, "search space")
    except ValueError as error:
        raise ValueError(f"--search_space: {error}") from None
    if any(not f.quantizes for f in formats) and len(formats) == 1:
        raise ValueError("--search_space with only 'none' has nothing to search; list formats such as 4,8")
    args.search_formats = [f.name for f in formats]
    if args.single_decision and args.block_search:
        raise ValueError("--single_decision and --block_search are mutually exclusive; pick one granularity")
    args.granularity = "single" if args.single_decision else "block" if args.block_search else "layer"

    exponential = REWARD_FORMS[args.cost_function].exponential
    if args.cost_beta is None:
        args.cost_beta = default_cost_beta(args.cost_function)
    elif exponential and args.cost_beta > 0:
        raise ValueError(f"--cost_beta {args.cost_beta} with {args.cost_function} would reward larger models (the "
                         f"reward is quality * ratio**beta); use a negative value such as -{args.cost_beta}")
    elif not exponential and args.cost_beta < 0:
        raise ValueError(f"--cost_beta {args.cost_beta} with {args.cost_function} would reward missing the target; "
                         f"use a positive value such as {-args.cost_beta}")
    if args.reward_metric is None:
        args.reward_metric = default_reward_metric(args.cost_function).value
    check_choice(args.reward_metric, [m.value for m in RewardMetric], "--reward_metric")
    if exponential and args.reward_metric == RewardMetric.LOSS.value:
        raise ValueError(f"{args.cost_function} needs a non-negative quality: use --reward_metric likelihood or "
                         "accuracy instead of loss")
    if task.is_regression and args.reward_metric == RewardMetric.ACCURACY.value:
        raise ValueError(f"--reward_metric accuracy needs a classification task; {task.name} is a regression")
    bits = [f.bits for f in formats]
    if args.cost_target_bits is not None and not min(bits) <= args.cost_target_bits <= max(bits):
        # Memory and BOPs alike: every assignment averages between the narrowest and the widest
        # format's bits (BOPs: per MAC, weights times activations), so no other target is reachable.
        raise ValueError(f"--cost_target_bits {args.cost_target_bits:g} is outside what the search space "
                         f"{','.join(f.name for f in formats)} can reach: every assignment averages between "
                         f"{min(bits)} and {max(bits)} bits; give a target in that range or widen the search space")
    if args.cost_target is None and args.cost_target_bits is None:
        args.cost_target_bits = (min(bits) + max(bits)) / 2


def default_exp_name(args: argparse.Namespace) -> str:
    """A readable, deterministic name from the flags that tell runs apart."""
    parts = [args.model_type, args.mode]
    if args.mode == "search":
        parts += ["-".join(args.search_formats), args.granularity]
        if args.weight_only_search:
            parts.append(f"w-only-a{args.act_format}")
        target = f"t{args.cost_target:g}" if args.cost_target is not None else f"t{args.cost_target_bits:g}b"
        parts += [args.cost_type, target]
    elif args.mode == "uniform":
        parts += [f"w{args.weight_format}-a{args.act_format}"]
    parts.append(f"s{args.seed}")
    return "_".join(parts)
