"""Validate a run's flags and resolve the defaults that depend on other flags.

Everything here runs before any data or model is loaded, so a bad command fails in
milliseconds. Each check raises ValueError with one line that names the bad value and the way
out; `eval.eval_parse.parse_run_args` turns it into `error: ...` and exit code 2.

Resolved fields added to the namespace (all JSON-serialisable, saved in config.json):
    mode             "search" | "uniform" | "loaded" (formats from --load_config) | "float"
    weight_format, act_format   canonical format names of a fixed-format run (or the fixed
                     activation format of a weight-only search)
    search_formats   canonical names of the search space (search runs)
    granularity      "layer" | "block" | "single"
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

from cost.cost import REWARD_FUNCTIONS
from cost.model_cost import parse_cost_type
from eval.model_configs import get_model_spec, supports_gradient_checkpointing
from eval.tasks import get_task
from quant.formats import NO_QUANT, parse_format, parse_format_list
from trainer.entropy_schedule import parse_entropy_schedule
from trainer.final_selection import FinalSelection
from trainer.reinforce_config import (EXPONENTIAL_COST_FUNCTIONS, SEARCH_STATE_NAME, AdvantageMode, RewardMetric,
                                      RewardSource)

DEFAULT_LR_PRETRAINED = 5e-5
DEFAULT_LR_SCRATCH = 1e-3
DEFAULT_DELAY_FRACTION = 0.5
# tunas_abs / one_sided: a 10 % miss of the target costs 0.5 in loss units, more than the loss
# difference between most formats, so searches land near the target (measured on digits).
DEFAULT_COST_BETA = 5.0
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
DEFAULT_SAVE_STEPS = 500


def _choice(value: str, valid: list[str] | tuple[str, ...], flag: str) -> str:
    if value not in valid:
        raise ValueError(f"{flag} {value!r} is not one of {list(valid)}")
    return value


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


def resolve_run_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate `args` in place and fill in the resolved fields; returns `args`."""
    task = get_task(args.task)
    spec = get_model_spec(args.model_type)
    if task.modality != spec.modality:
        raise ValueError(f"--model_type {args.model_type} is a {spec.modality} model but --task {args.task} is a "
                         f"{task.modality} task; pick a {task.modality} model")
    if args.from_scratch is None and args.model_name_or_path is None and args.load_config is not None:
        # A found assignment goes with the weights it was found on: the run's final_model/.
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
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max_steps must be > 0, or -1 to train for --num_train_epochs; got {args.max_steps}")
    if args.fp16 and args.bf16:
        raise ValueError("--fp16 and --bf16 are mutually exclusive; pick one autocast dtype")
    _choice(args.report_to, ("tensorboard", "none"), "--report_to")
    if args.device is not None:
        _choice(args.device, ("cpu", "cuda"), "--device")
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
    if args.config_overrides:
        from eval.models import parse_config_overrides

        try:  # keys and value types against the built-in config of the same architecture
            parse_config_overrides(args.config_overrides, spec.builtin_config())
        except ValueError as error:
            raise ValueError(f"--config_overrides: {error}") from None

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
    if args.mode == "search":
        _resolve_search(args, task)
    if args.load_config is not None:
        check_load_config(args)
    if args.eval_only and args.load_config is None and args.model_name_or_path is None:
        raise ValueError("--eval_only needs trained weights: give --load_config RUN/results.json (that run's "
                         "final_model/) or --model_name_or_path DIR; otherwise it would evaluate a random model")
    if args.mode == "search" and args.delay_steps is not None and 0 < args.max_steps <= args.delay_steps:
        raise ValueError(f"--delay_steps {args.delay_steps} leaves no search step in --max_steps {args.max_steps}: the "
                         f"policy would never learn; use fewer delay steps (default: half of the steps)")
    if args.exp_name is None:
        args.exp_name = default_exp_name(args)
    if len(args.exp_name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"--exp_name is {len(args.exp_name.encode())} bytes long ({args.exp_name[:40]!r}...); a "
                         f"directory name can have at most {MAX_NAME_BYTES}: give a shorter --exp_name")
    _check_inputs_outside_run_dir(args)
    _check_resume_matches(args)
    return args


# What a resumed run may change: how long it trains (the search's own settings are checked by the
# trainer against the checkpoint).
RESUME_MAY_CHANGE = frozenset({"max_steps", "num_train_epochs"})


def _check_resume_matches(args: argparse.Namespace) -> None:
    """A resumed run has the flags of the run that wrote the checkpoint (its config.json, next to
    the checkpoint), but for how long it trains and what does not change results."""
    if args.resume_from_checkpoint is None:
        return
    if args.mode == "search" and not (Path(args.resume_from_checkpoint) / SEARCH_STATE_NAME).is_file():
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} has no {SEARCH_STATE_NAME}: a "
                         "fixed-format run wrote it, or its save was cut short; resume a search from a checkpoint "
                         "of a search run")
    from eval.results import RUN_TIME_DEFAULTS, changed_args, list_changes

    config = Path(args.resume_from_checkpoint).parent / "config.json"
    try:
        recorded = json.loads(config.read_text())
    except (OSError, ValueError):
        return  # a checkpoint moved away from its run: nothing to compare with
    # The search continues as it was: defaults the run derived from its step count (recorded
    # resolved) stay, rather than being derived again from the new one.
    for name in RUN_TIME_DEFAULTS:
        if getattr(args, name, None) is None and isinstance(recorded, dict) and recorded.get(name) is not None:
            setattr(args, name, recorded[name])
    planned = json.loads(json.dumps(vars(args), default=str))  # as config.json holds them
    diffs = changed_args(planned, recorded, ignore=RESUME_MAY_CHANGE)
    if diffs:
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} was written by a run with other "
                         f"flags ({list_changes(diffs)}); resume with that run's flags (only --max_steps/--num_train_epochs may "
                         f"change), or start a new run")
    if args.max_steps > 0 and not args.eval_only:  # else the steps of an epoch are known once the data is
        check_steps_left(args.resume_from_checkpoint, args.max_steps)


def check_steps_left(checkpoint: str, total_steps: int) -> None:
    """A resumed run must train past the checkpoint's step (transformers does not check, and
    trains one step past a max_steps at or below it)."""
    try:
        done = int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # unreadable: the Trainer's own loading reports it
    if done >= total_steps:
        raise ValueError(f"this run's {total_steps} steps (from --max_steps or --num_train_epochs) are not more than "
                         f"the step of checkpoint {checkpoint!r}, {done}: nothing is left to train; resume with more "
                         f"steps than {done}, or start a new run")


def _check_inputs_outside_run_dir(args: argparse.Namespace) -> None:
    """A run replaces what an earlier run of its name left in its directory (final_model/,
    checkpoints): the weights or results it reads must not lie there (e.g. re-evaluating a run's
    own final_model/ under the same default name)."""
    run_dir = (Path(args.output_root_dir) / args.task / args.exp_name).resolve()
    # --load_config first: it may have set model_name_or_path to the final_model/ next to it
    inputs = [("--load_config", args.load_config), ("--model_name_or_path", args.model_name_or_path)]
    for flag, value in inputs:
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if path == run_dir or run_dir in path.parents:
            raise ValueError(f"{flag} {value!r} lies in this run's own directory {str(run_dir)!r}, which the run "
                             f"replaces; give the run another --exp_name")


MAX_NAME_BYTES = 255  # NAME_MAX of Linux file systems


def check_load_config(args: argparse.Namespace) -> None:
    """--load_config names a completed run's results.json, of this run's task and model type."""
    path = args.load_config
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--load_config {path!r} is not a readable results.json ({error}); pass a run's "
                         f"results.json") from None
    if not isinstance(data, dict) or data.get("status") != "completed" or not data.get("layers"):
        status = data.get("status") if isinstance(data, dict) else None
        raise ValueError(f"--load_config {path!r} is not a completed run with per-layer formats (status {status!r}); "
                         f"pass the results.json of a completed search or quantized run")
    for flag, key, value in (("--task", "task", args.task), ("--model_type", "model_type", args.model_type)):
        if data.get(key) != value:
            raise ValueError(f"--load_config {path!r} is a {key} {data.get(key)!r} run, but {flag} is {value!r}; pass "
                             f"{flag} {data.get(key)}")
    differing = load_config_scale_differences(args, data.get("args") or {})
    if differing and args.eval_only:  # re-evaluating that run's model: other scales give another model
        raise ValueError(f"--load_config {path!r} was run with other scales ({', '.join(differing)}); to evaluate its "
                         f"model pass the same: {' '.join(_scale_flags(data['args']))}")


# How a quantized layer scales (eval.eval_parse's flags); --load_config takes only the formats.
SCALE_FLAGS = ("per_channel", "per_token", "weight_range_percentile", "act_range_percentile")


def load_config_scale_differences(args: argparse.Namespace, loaded_args: dict) -> list[str]:
    """`--flag loaded -> this run` for each scale setting in which this run differs from the run
    its --load_config comes from (settings that run did not record are not compared)."""
    return [f"--{key} {loaded_args[key]} -> {getattr(args, key)}" for key in SCALE_FLAGS
            if key in loaded_args and loaded_args[key] != getattr(args, key)]


def _scale_flags(loaded_args: dict) -> list[str]:
    """The command-line flags that give a run `loaded_args`' scale settings."""
    values = [(key, loaded_args[key]) for key in SCALE_FLAGS if key in loaded_args]
    return [f"--{key}" if isinstance(value, bool) else f"--{key} {value:g}" for key, value in values
            if value is not False]


def load_config_note(args: argparse.Namespace) -> str | None:
    """A note for a training run whose --load_config run scaled its layers otherwise (retraining
    an assignment with other scales can be intended; evaluating one is refused above)."""
    if args.load_config is None or args.eval_only:
        return None
    loaded_args = (json.loads(Path(args.load_config).read_text()).get("args") or {})
    differing = load_config_scale_differences(args, loaded_args)
    if not differing:
        return None
    return (f"note: --load_config takes the formats of a run with other scales ({', '.join(differing)}); this run "
            f"trains with its own (for that run's: {' '.join(_scale_flags(loaded_args))})")


def _check_training_names(args: argparse.Namespace) -> None:
    """--optimizer and --lr_scheduler_type against the names transformers knows."""
    from transformers import SchedulerType
    from transformers.training_args import OptimizerNames

    _choice(args.optimizer, [o.value for o in OptimizerNames], "--optimizer")
    _choice(args.lr_scheduler_type, [t.value for t in SchedulerType], "--lr_scheduler_type")


def _check_checkpoint_flags(args: argparse.Namespace) -> None:
    if args.save_strategy is None:  # --save_steps alone means: save every that many steps
        args.save_strategy = "steps" if args.save_steps is not None else "no"
    _choice(args.save_strategy, SAVE_STRATEGIES, "--save_strategy")
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


def resolve_checkpoint(path: str) -> str:
    """A Trainer checkpoint directory, or a run directory whose latest checkpoint-N is taken."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"--resume_from_checkpoint {path!r} is not a directory; pass a checkpoint-N directory of a "
                         f"run (or the run directory, for its latest checkpoint)")
    if (directory / "trainer_state.json").is_file():
        return str(directory)
    steps = [(int(match.group(1)), child) for child in directory.iterdir()
             if child.is_dir() and (match := re.fullmatch(r"checkpoint-(\d+)", child.name))
             and (child / "trainer_state.json").is_file()]
    if not steps:
        raise ValueError(f"--resume_from_checkpoint {path!r} holds no checkpoint (no trainer_state.json, no "
                         f"checkpoint-N/); runs save them with --save_strategy steps --save_steps N")
    # A search's checkpoints also hold its state; one without it was cut short while saving.
    complete = [(step, child) for step, child in steps if (child / SEARCH_STATE_NAME).is_file()]
    return str(max(complete or steps)[1])


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
        raise ValueError("--eval_only evaluates a fixed model; combine it with --load_config or fixed formats, "
                         "not with a search")
    if args.search:
        args.mode = "search"
        if weight is not None:
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

    _choice(args.cost_function, list(REWARD_FUNCTIONS), "--cost_function")
    try:  # case-insensitive: recorded (and passed on) by its canonical name
        args.entropy_schedule_type = parse_entropy_schedule(args.entropy_schedule_type).value
    except ValueError as error:
        raise ValueError(f"--entropy_schedule_type: {error}") from None
    _choice(args.reward_source, [s.value for s in RewardSource], "--reward_source")
    _choice(args.advantage, [a.value for a in AdvantageMode], "--advantage")
    _choice(args.final_selection, [f.value for f in FinalSelection], "--final_selection")
    if not 0 <= args.target_tolerance < 1:
        raise ValueError(f"--target_tolerance must be in [0, 1), got {args.target_tolerance}")
    exponential = args.cost_function in EXPONENTIAL_COST_FUNCTIONS
    if args.cost_beta is None:
        args.cost_beta = -0.07 if exponential else DEFAULT_COST_BETA
    elif exponential and args.cost_beta > 0:
        raise ValueError(f"--cost_beta {args.cost_beta} with {args.cost_function} would reward larger models (the "
                         f"reward is quality * ratio**beta); use a negative value such as -{args.cost_beta}")
    elif not exponential and args.cost_beta < 0:
        raise ValueError(f"--cost_beta {args.cost_beta} with {args.cost_function} would reward missing the target; "
                         f"use a positive value such as {-args.cost_beta}")
    if args.reward_metric is None:
        args.reward_metric = RewardMetric.LIKELIHOOD.value if exponential else RewardMetric.LOSS.value
    _choice(args.reward_metric, [m.value for m in RewardMetric], "--reward_metric")
    if exponential and args.reward_metric == RewardMetric.LOSS.value:
        raise ValueError(f"{args.cost_function} needs a non-negative quality: use --reward_metric likelihood or "
                         "accuracy instead of loss")
    if task.is_regression and args.reward_metric == RewardMetric.ACCURACY.value:
        raise ValueError(f"--reward_metric accuracy needs a classification task; {task.name} is a regression")
    if args.reward_source == RewardSource.HELDOUT.value and not 0 < args.heldout_fraction <= 0.5:
        raise ValueError(f"--heldout_fraction must be in (0, 0.5], got {args.heldout_fraction}")
    if not 0 <= args.baseline_decay < 1:
        raise ValueError(f"--baseline_decay must be in [0, 1), got {args.baseline_decay}")
    if args.bn_recalibration_batches < 0:
        raise ValueError(f"--bn_recalibration_batches must be >= 0 (0 = off), got {args.bn_recalibration_batches}")
    if args.delay_steps is not None and args.delay_steps < 0:
        raise ValueError(f"--delay_steps must be >= 0, got {args.delay_steps}")
    if args.cost_target is not None and args.cost_target_bits is not None:
        raise ValueError("--cost_target and --cost_target_bits are mutually exclusive; give one target")
    if args.cost_target is not None and not args.cost_target > 0:
        raise ValueError(f"--cost_target must be > 0 (MiB for memory, GBOPs for compute), got {args.cost_target}")
    if args.cost_target_bits is not None and not 0 < args.cost_target_bits <= 32:
        raise ValueError(f"--cost_target_bits must be in (0, 32], got {args.cost_target_bits}")
    if args.cost_target is None and args.cost_target_bits is None:
        bits = [f.bits for f in formats]
        args.cost_target_bits = (min(bits) + max(bits)) / 2


# Flags that only a search reads. A fixed-format or float run ignores them: an experiments file
# gives every run the same base flags, so this is a note, not an error. (--single_decision,
# --block_search and --weight_only_search without a search are errors: they name a search.)
SEARCH_ONLY_FLAGS = (
    "search_space", "cost_function", "cost_target", "cost_target_bits", "cost_beta", "delay_steps",
    "rl_learning_rate", "precision_warmup", "max_entropy_beta", "entropy_schedule_type", "reward_metric",
    "reward_source", "heldout_fraction", "advantage", "baseline_decay", "policy_temperature", "final_selection",
    "target_tolerance", "bn_recalibration_batches",
)


def ignored_search_flags(args: argparse.Namespace, defaults: dict[str, object]) -> list[str]:
    """The search-only flags set away from their defaults in a run that does not search."""
    if args.mode == "search":
        return []
    ignored = []
    for name in SEARCH_ONLY_FLAGS:
        value = getattr(args, name)
        if value != defaults[name]:
            ignored.append(f"--no-{name}" if value is False and defaults[name] is True else f"--{name}")
    return ignored


def ignored_flags_note(args: argparse.Namespace, defaults: dict[str, object]) -> str | None:
    """One line telling a fixed-format or float run which of its flags it ignores, or None."""
    ignored = ignored_search_flags(args, defaults)
    if not ignored:
        return None
    if args.load_config is not None:
        fixed, way_out = f"formats from --load_config {args.load_config}", "drop --load_config"
    else:
        fixed = "float" if args.mode == "float" else f"weights {args.weight_format}, activations {args.act_format}"
        way_out = "drop --bits/--weight_bits/--activation_bits"
    verb = "applies" if len(ignored) == 1 else "apply"
    return (f"note: {' '.join(ignored)} only {verb} to a search; this run has fixed formats ({fixed}) and ignores "
            f"them (to search instead, {way_out})")


def single_option_note(args: argparse.Namespace) -> str | None:
    """A note for a search whose space has one format: every decision has nothing to choose."""
    if args.mode != "search" or len(args.search_formats) != 1:
        return None
    only = args.search_formats[0]
    fixed = f"--weight_bits {only}" if args.weight_only_search else f"--bits {only}"
    return (f"note: --search_space {args.search_space} has one format ({only}): every decision takes it, so this "
            f"search is a fixed-format run with extra steps; list several formats (e.g. 4,8) to search, or run "
            f"{fixed} instead")


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
