"""The command line of one run (`create_arg_parser`, `parse_run_args`) and, as a module, the
results report: `python -m eval.eval_parse OUTPUT_ROOT ...` (see eval/report.py).

Every flag of the original README is here with its meaning. `parse_run_args` validates the
whole command before any data or model is loaded and resolves the defaults that depend on
other flags (mode, learning rate, cost target, reward metric); each problem is one error line
and exit code 2, a flag given twice among them (eval/cli_flags.py).
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn, Sequence

from cost.cost import REWARD_FORMS
from eval.cli_flags import OnceArgumentParser, program_name, split_argv
from eval.model_configs import MODEL_REGISTRY
from eval.run_args import DEFAULT_DATA_SEED, resolve_run_args
from eval.run_flag_notes import (SCALE_FLAG_SIDES, SEARCH_ONLY_FLAGS, data_seed_note, ignored_flags_note,
                                  single_option_note, unscaled_side_scale_note)
from eval.run_inputs import eval_subset_note, load_config_note
from eval.tasks import TASKS


RUN_PROG, RUN_SCRIPT = "eval_run", "fliqs-run"


class OneLineErrorParser(OnceArgumentParser):
    """argparse with errors as one line (no usage dump) and exit code 2; a flag given twice is one
    of them (eval/cli_flags.py)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def finite_float(text: str) -> float:
    """argparse type: a float that is neither NaN nor infinite (float() accepts 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def data_seed_value(text: str) -> int:
    """argparse type of --data_seed: an integer (int's own error names neither the range nor the way
    out); the range is checked with --seed's (eval/run_args.py)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a whole number in 0 .. 2**32 - 1 (e.g. "
                                         f"--data_seed 0), or leave --data_seed out for the default "
                                         f"{DEFAULT_DATA_SEED}") from None


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except a None default (resolved from other flags: the help says
    how) and help that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def _on_off(group: argparse._ArgumentGroup, name: str, help_text: str, default: bool = True) -> None:
    group.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default, help=help_text)


def run_prog() -> str:
    """The run's name in its messages: `fliqs-run` when started as that console script, else
    `eval_run` (also for `python -m eval.eval_run`: the launcher reads `eval_run: ` lines)."""
    return program_name(RUN_PROG, RUN_SCRIPT)


def create_arg_parser(prog: str | None = None) -> argparse.ArgumentParser:
    prog = run_prog() if prog is None else prog
    # No abbreviated flags: a saved command would change meaning when a new flag shares the prefix.
    p = OneLineErrorParser(prog=prog, description="One FLIQS run: a format search, or a uniform-precision or "
                           "float baseline, on one task and model.", formatter_class=_DefaultsFormatter,
                           allow_abbrev=False)

    g = p.add_argument_group("Task and model")
    builtin = [name for name, task in TASKS.items() if task.builtin]
    hub = [name for name, task in TASKS.items() if task.hub_path is not None]
    local = [name for name, task in TASKS.items() if task.local_only]  # tasks registered with local files only
    g.add_argument("--task", default="digits", help=f"built-in task ({', '.join(builtin)}: offline) or a hub task "
                   f"({', '.join(hub)})" + (f" or a task of local files only ({', '.join(local)})" if local else ""))
    g.add_argument("--model_type", "--model", dest="model_type", default="resnet18", help=", ".join(MODEL_REGISTRY))
    weights = g.add_mutually_exclusive_group()  # both given: argparse would keep the last one silently
    weights.add_argument("--from_scratch", action="store_true", default=None,
                         help="random init of the built-in architecture (no network). Default: from scratch for "
                         "the built-in tasks, pretrained hub weights otherwise")
    weights.add_argument("--pretrained", dest="from_scratch", action="store_false",
                   help="force pretrained weights (see --from_scratch for the default)")
    g.add_argument("--model_name_or_path", default=None, help="a local checkpoint directory (or hub id) to load")
    g.add_argument("--config_overrides", default=None, help="change the architecture, e.g. "
                   "'num_hidden_layers=2,hidden_size=64'")
    g.add_argument("--train_file", default=None, help="local training data (csv/json/jsonl/parquet)")
    g.add_argument("--validation_file", default=None, help="local evaluation data (csv/json/jsonl/parquet)")
    g.add_argument("--dataset_path", default=None, help="a DatasetDict saved with save_to_disk")
    g.add_argument("--max_train_samples", type=int, default=None, help="a random subset of the training set, drawn "
                   "with --data_seed")
    g.add_argument("--max_eval_samples", type=int, default=None, help="a random subset of the evaluation set, drawn "
                   "with --data_seed")
    g.add_argument("--data_seed", type=data_seed_value, default=DEFAULT_DATA_SEED,
                   help=f"seed of the --max_train_samples/--max_eval_samples subsets (0 .. 2**32 - 1; default "
                   f"{DEFAULT_DATA_SEED} whatever the --seed, so that seed replicas train and evaluate on the same "
                   f"examples); the weights, training order, --reward_source heldout split and policy follow --seed")
    g.add_argument("--max_seq_length", type=int, default=128, help="text: tokens per example")
    g.add_argument("--image_size", type=int, default=None, help="vision: input size (default 32 for digits, "
                   "the model's own size otherwise)")
    g.add_argument("--metric", default=None, help="an evaluate metric name to use instead of the task's own")

    g = p.add_argument_group("Training parameters")
    g.add_argument("--num_train_epochs", type=finite_float, default=3.0, help="epochs (unless --max_steps)")
    g.add_argument("--learning_rate", type=finite_float, default=None,
                   help="default 5e-5 for pretrained weights, 1e-3 from scratch")
    g.add_argument("--train_batch_size", type=int, default=32, help="training batch per device")
    g.add_argument("--eval_batch_size", type=int, default=32, help="evaluation batch per device")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro-batches per optimizer step (one format sample per step)")
    g.add_argument("--optimizer", default="adamw_torch", help="a TrainingArguments optim name (adamw_torch, sgd, ...)")
    g.add_argument("--weight_decay", type=finite_float, default=0.0, help="AdamW weight decay (>= 0)")
    g.add_argument("--warmup_steps", type=int, default=0, help="learning-rate warm-up steps (>= 0)")
    g.add_argument("--lr_scheduler_type", default="linear",
                   help="a transformers scheduler name (linear, cosine, constant, ...)")
    g.add_argument("--fp16", action="store_true", help="fp16 autocast (mixed precision), CUDA only")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (mixed precision)")
    g.add_argument("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: epochs)")

    g = p.add_argument_group("Reinforcement learning parameters")
    g.add_argument("--delay_steps", type=int, default=None,
                   help="warm-up steps with uniformly sampled formats before the policy learns (default: 50%% "
                   "of the training steps)")
    g.add_argument("--rl_learning_rate", type=finite_float, default=None,
                   help="Adam learning rate of the policy (default: 10 / the number of search steps after the "
                   "delay, at most 0.1, so a short and a long search move the logits by the same total amount)")
    g.add_argument("--precision_warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="during --delay_steps, use the most precise format (most bits; of equal bits, the first listed) with a probability falling from 1 to 0 "
                   "(else uniform), so the shared weights learn the task before coping with every format")
    g.add_argument("--cost_beta", type=finite_float, default=None,
                   help="strength of the cost term: > 0 for tunas_abs/one_sided_tunas_abs (default 5.0), < 0 "
                   "for the exponential forms (default -0.07, as in MnasNet)")
    g.add_argument("--max_entropy_beta", type=finite_float, default=0.1,
                   help="final strength of the entropy penalty (> 0 makes every decision converge)")
    g.add_argument("--entropy_schedule_type", default="linear", help="linear, cosine, constant or heaviside")
    g.add_argument("--cost_target", type=finite_float, default=None, help="target cost in MiB (memory) or GBOPs (compute)")
    g.add_argument("--cost_target_bits", type=finite_float, default=None,
                   help="target as the cost of every searched layer at this many bits (default: the mean of the "
                   "smallest and largest format of the search space)")
    g.add_argument("--reward_metric", default=None, help="loss (default for the abs forms), likelihood = "
                   "exp(-loss) (default for the exponential forms) or accuracy")
    g.add_argument("--reward_source", default="train", help="train (the batch just trained on, free) or heldout "
                   "(a batch of a split carved out of the training set)")
    g.add_argument("--heldout_fraction", type=finite_float, default=0.1, help="share of the training set kept for "
                   "--reward_source heldout")
    g.add_argument("--advantage", default="per_decision", help="per_decision (exact per-decision cost baseline) "
                   "or global (plain EMA reward baseline, as TuNAS)")
    g.add_argument("--baseline_decay", type=finite_float, default=0.9, help="EMA decay of the reward baseline")
    g.add_argument("--policy_temperature", type=finite_float, default=1.0,
                   help="softmax temperature of the policy's logits (> 0; higher samples more evenly)")
    g.add_argument("--final_selection", default="constrained",
                   help="the answer: 'constrained' = the most likely assignment within --target_tolerance of the "
                   "target (the per-decision argmax when that is inside), or 'argmax' = every decision's most likely "
                   "format")
    g.add_argument("--target_tolerance", type=finite_float, default=0.05, help="relative cost band of --final_selection "
                   "constrained")
    g.add_argument("--bn_recalibration_batches", type=int, default=20,
                   help="after the search, re-estimate BatchNorm statistics for the found formats on this many "
                   "training batches (no weight changes; 0 = off)")

    g = p.add_argument_group("Quantization parameters")
    g.add_argument("--search", action=argparse.BooleanOptionalAction, default=None,
                   help="search the formats (default: on, unless --weight_bits/--activation_bits/--bits is given)")
    g.add_argument("--bits", default=None, help="shorthand for --weight_bits X --activation_bits X (0 = none)")
    g.add_argument("--search_space", default="4,8", help="comma-separated formats, e.g. '4,8' (INT bits) or "
                   "'int2,int4,fp4_e2m1,fp8_e4m3,int8'")
    g.add_argument("--single_decision", action="store_true", help="one format for the whole model")
    g.add_argument("--block_search", action="store_true", help="one format per block partition")
    g.add_argument("--weight_only_search", action="store_true",
                   help="search weight formats only; activations stay at --activation_bits (default none)")
    g.add_argument("--cost_function", default="tunas_abs", help=", ".join(REWARD_FORMS))
    g.add_argument("--cost_type", default="memory", help="memory (MiB of weights) or compute (GBOPs)")
    g.add_argument("--weight_bits", default=None, help="fixed weight format: INT bits or a token such as fp8_e4m3 "
                   "(0 = none)")
    g.add_argument("--activation_bits", default=None, help="fixed activation format (0 = none)")
    g.add_argument("--per_channel", action="store_true", help="one weight scale per output channel")
    g.add_argument("--per_token", action="store_true", help="one activation scale per token")
    g.add_argument("--act_range_percentile", type=finite_float, default=100.0,
                   help="clip activations at this percentile of |x| (100 = abs-max, < 0 = MSE-optimal)")
    g.add_argument("--weight_range_percentile", type=finite_float, default=100.0,
                   help="clip weights at this percentile of |w| (100 = abs-max, < 0 = MSE-optimal)")
    g.add_argument("--load_config", default=None, help="a results.json whose per-layer formats to apply (fixed)")
    g.add_argument("--eval_only", action="store_true", help="evaluate without training")
    g.add_argument("--export_dir", default=None, help="also write a real low-bit checkpoint here")

    g = p.add_argument_group("Layers to quantize parameters (transformers; vision models quantize every conv)")
    _on_off(g, "quantize_self_attention", "quantize the query/key/value projections (GPT-2: c_attn)")
    _on_off(g, "quantize_self_output", "quantize the attention output projection")
    _on_off(g, "quantize_output", "quantize the feed-forward output layer")
    _on_off(g, "quantize_intermediate", "quantize the feed-forward intermediate layer")
    _on_off(g, "quantize_pooler", "quantize the pooler")
    _on_off(g, "quantize_classifier", "quantize the classifier head (vision models too)")

    g = p.add_argument_group("Miscellaneous parameters")
    g.add_argument("--cuda_visible_devices", default=None, help="set CUDA_VISIBLE_DEVICES before CUDA starts")
    g.add_argument("--eval_steps", type=int, default=None, help="evaluate every N steps (default: at the end)")
    g.add_argument("--log_steps", type=int, default=20, help="log every N steps")
    g.add_argument("--exp_name", default=None, help="run name (default: built from the main flags)")
    g.add_argument("--output_root_dir", default="output", help="runs go to OUTPUT_ROOT_DIR/TASK/EXP_NAME")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help="replace a completed run of this directory that was run with other flags (default names "
                   "leave most flags out, so two commands can share one); without it such a run is refused and "
                   "left as it is. A completed run of the same flags is replaced anyway")
    g.add_argument("--save_strategy", default=None, help="no, steps, epoch or best (checkpoints; best: whenever the "
                   "task's main metric improves at an evaluation; final_model/ is still the last step's). Default: "
                   "steps when --save_steps is given, else no")
    g.add_argument("--save_steps", type=int, default=None, help="with --save_strategy steps (default 500)")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint-N directory of this run to resume, "
                   "or the run directory (its latest checkpoint)")
    g.add_argument("--seed", type=int, default=42, help="seed of weights, data order and policy (0 .. 2**32 - 1)")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute activations in backward to save memory (the transformer models; not ResNet, "
                   "EfficientNet or MobileNetV2)")
    g.add_argument("--recompute_inputs", default=None, type=str.lower, choices=["off", "mixed", "all"],
                   help="which quantized inputs the backward recomputes from the layer's input instead of keeping: "
                   "mixed (default; where layers reading one input run at different formats, so a search keeps no "
                   "more activations than a fixed-format model), all (every one: about the memory of float training "
                   "where the input is kept anyway, e.g. a conv after a ReLU; one quantizer call per layer more), "
                   "off. Values and gradients are the same in every mode. Default: FLIQS_RECOMPUTE_INPUTS, else mixed")
    g.add_argument("--ddp_find_unused_parameters", action="store_true",
                   help="multi-GPU runs: let DDP look for parameters the loss does not use, at the cost of a graph "
                   "traversal per step (every built-in model uses all of its parameters; turn this on for a model "
                   "that does not, which DDP reports as 'Expected to have finished reduction')")
    g.add_argument("--report_to", default="tensorboard", help="tensorboard or none")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p


def parse_run_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse and validate a run's flags; exits with code 2 and one error line on bad input.
    `prog` (default `run_prog()`) starts those lines and the notes."""
    prog = run_prog() if prog is None else prog
    parser = create_arg_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    given = frozenset(segment.dest for segment in split_argv(parser, argv) if segment.dest)  # typed, default or not
    no_search_given = args.search is False  # before resolving, which fills the default in
    try:
        resolve_run_args(args, given)
    except ValueError as error:
        parser.error(str(error))
    defaults = {name: parser.get_default(name) for name in (*SEARCH_ONLY_FLAGS, *SCALE_FLAG_SIDES)}
    for note in (ignored_flags_note(args, defaults, no_search_given=no_search_given, given=given),
                 unscaled_side_scale_note(args, defaults, given), single_option_note(args),
                 data_seed_note(args, given), load_config_note(args), eval_subset_note(args)):
        if note is not None:
            sys.stderr.write(f"{prog}: {note}\n")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from eval.report import main as report_main

    return report_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
