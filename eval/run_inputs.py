"""What a run starts from: a checkpoint to resume, or an assignment found by another run.

`--resume_from_checkpoint` continues a run: it must be a checkpoint of a run with this run's flags
(but for how long it trains), with steps left to train. `--load_config` takes the per-layer
formats of a completed run (its results.json) of the same task and model type; evaluating that
run's model needs its scale settings too. Neither may lie in the directory this run replaces.

Like eval/run_args.py, everything here runs before any data or model is loaded, and raises
ValueError with one line that names the bad value and the way out.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from eval.results_schema import COMPLETED
from trainer.reinforce_config import SEARCH_STATE_NAME

# What a resumed run may change: how long it trains (the search's own settings are checked by the
# trainer against the checkpoint).
RESUME_MAY_CHANGE = frozenset({"max_steps", "num_train_epochs"})


def check_resume_matches(args: argparse.Namespace) -> None:
    """A resumed run has the flags of the run that wrote the checkpoint (its config.json, next to
    the checkpoint), but for how long it trains and what does not change results."""
    if args.resume_from_checkpoint is None:
        return
    if args.mode == "search" and not (Path(args.resume_from_checkpoint) / SEARCH_STATE_NAME).is_file():
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} has no {SEARCH_STATE_NAME}: a "
                         "fixed-format run wrote it, or its save was cut short; resume a search from a checkpoint "
                         "of a search run")
    from eval.run_compare import DERIVED_DEFAULTS_KEY, RUN_TIME_DEFAULTS, changed_args, list_changes

    config = Path(args.resume_from_checkpoint).parent / "config.json"
    try:
        recorded = json.loads(config.read_text())
    except (OSError, ValueError):
        return  # a checkpoint moved away from its run: nothing to compare with
    # The search continues as it was: defaults the run derived from its step count (recorded
    # resolved) stay, rather than being derived again from the new one.
    inherited = []
    for name in RUN_TIME_DEFAULTS:
        if getattr(args, name, None) is None and isinstance(recorded, dict) and recorded.get(name) is not None:
            setattr(args, name, recorded[name])
            inherited.append(name)
    # Values that run derived itself stay derived ones in this run's record (else a later launch
    # leaving them to the run would be refused as another setting).
    derived = recorded.get(DERIVED_DEFAULTS_KEY) if isinstance(recorded, dict) else None
    # A run recorded before the key: what it left to itself is taken as derived, as eval/run_compare.py
    # reads such records.
    setattr(args, DERIVED_DEFAULTS_KEY,
            [name for name in inherited if name in derived] if isinstance(derived, list) else inherited)
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


def check_inputs_outside_run_dir(args: argparse.Namespace) -> None:
    """A run replaces what an earlier run of its name left in its directory (final_model/,
    checkpoints): the weights or results it reads must not lie there (e.g. re-evaluating a run's
    own final_model/ under the same default name), nor its --export_dir."""
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
    # The export is written after training: inside the run directory it would be the directory
    # itself or final_model/ (a failure after hours of training), or be removed or left stale by
    # the next run of this name.
    if args.export_dir is not None:
        path = Path(args.export_dir).expanduser().resolve()
        if path == run_dir or run_dir in path.parents:
            raise ValueError(f"--export_dir {args.export_dir!r} lies in this run's own directory {str(run_dir)!r}, "
                             f"whose contents the run and its reruns replace; export outside it, e.g. --export_dir "
                             f"deploy/{args.exp_name}")


def check_load_config(args: argparse.Namespace) -> None:
    """--load_config names a completed run's results.json, of this run's task and model type."""
    path = args.load_config
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--load_config {path!r} is not a readable results.json ({error}); pass a run's "
                         f"results.json") from None
    if not isinstance(data, dict) or data.get("status") != COMPLETED or not data.get("layers"):
        status = data.get("status") if isinstance(data, dict) else None
        raise ValueError(f"--load_config {path!r} is not a completed run with per-layer formats (status {status!r}); "
                         f"pass the results.json of a completed search or quantized run")
    check_load_config_run(args, data)
    differing = load_config_scale_differences(args, data.get("args") or {})
    if differing and args.eval_only:  # re-evaluating that run's model: other scales give another model
        dropped = [f"--{key}" for key in SCALE_FLAGS if data["args"].get(key) is False and getattr(args, key) is True
                   and any(change.startswith(f"--{key} ") for change in differing)]
        drop = f" and drop {' '.join(dropped)}" if dropped else ""
        raise ValueError(f"--load_config {path!r} was run with other scales ({', '.join(differing)}); to evaluate its "
                         f"model pass the same: {' '.join(_scale_flags(data['args']))}{drop}")


def check_load_config_run(args: argparse.Namespace, data: dict | None = None,
                          given: frozenset[str] | None = None) -> None:
    """The --load_config run (its parsed results.json `data`, else read here) is of this run's
    model and task: its formats name that model's layers and its final_model/ holds that model's
    weights. Run first, before anything that reads --model or --task (the final_model/ check would
    blame --model_name_or_path, a flag the user may never have given). Nothing is said of a file
    that does not read as a run: check_load_config says what it is. `given`: the dests the command
    line named (None: not known; a value at its default then counts as not typed)."""
    if data is None:
        try:
            data = json.loads(Path(args.load_config).read_text())
        except (OSError, ValueError):
            return
    if not isinstance(data, dict) or not all(isinstance(data.get(key), str) for key in ("model_type", "task")):
        return
    differing = [(flag, value, data[key]) for flag, key, value in (("--model", "model_type", args.model_type),
                                                                     ("--task", "task", args.task))
                 if data[key] != value]
    if not differing:
        return
    from eval.eval_parse import create_arg_parser  # the defaults: a flag at its default is dropped, not given

    parser = create_arg_parser()
    defaults = {"--model": parser.get_default("model_type"), "--task": parser.get_default("task")}
    dests = {"--model": "model_type", "--task": "task"}

    def unsaid(flag: str, value: str) -> bool:
        return dests[flag] not in given if given is not None else value == defaults[flag]

    # a flag not given is at its default: say so, as the user may not know the default
    named = " ".join(f"{flag} {value}" + (" (the default)" if unsaid(flag, value) else "")
                     for flag, value, _ in differing)
    drop = [flag for flag, _, loaded in differing if loaded == defaults[flag]]
    give = [f"{flag} {loaded}" for flag, _, loaded in differing if loaded != defaults[flag]]
    verb = "contradicts" if len(differing) == 1 else "contradict"
    ways = [f"drop {' and '.join(drop)}"] if drop else []
    ways += [f"pass {' '.join(give)}"] if give else []
    raise ValueError(f"--load_config {args.load_config!r} is a run of {data['model_type']} on {data['task']}, and "
                     f"{named} {verb} it (the formats it found are for that model and task): {' and '.join(ways)}, "
                     f"or load a run of {args.model_type} on {args.task}")


# How a quantized layer scales (eval.eval_parse's flags); --load_config takes only the formats.
SCALE_FLAGS = ("per_channel", "per_token", "weight_range_percentile", "act_range_percentile")


def load_config_scale_differences(args: argparse.Namespace, loaded_args: dict) -> list[str]:
    """`--flag loaded -> this run` for each scale setting in which this run differs from the run
    its --load_config comes from (settings that run did not record are not compared, nor those of
    a side its formats leave unscaled: this run, taking them, leaves it unscaled too)."""
    from eval.run_compare import unread_scale_settings

    unread = unread_scale_settings(loaded_args)
    return [f"--{key} {loaded_args[key]} -> {getattr(args, key)}" for key in SCALE_FLAGS
            if key in loaded_args and key not in unread and loaded_args[key] != getattr(args, key)]


def _scale_flags(loaded_args: dict) -> list[str]:
    """The command-line flags that give a run `loaded_args`' scale settings (those it reads)."""
    from eval.run_compare import unread_scale_settings

    unread = unread_scale_settings(loaded_args)
    values = [(key, loaded_args[key]) for key in SCALE_FLAGS if key in loaded_args and key not in unread]
    return [f"--{key}" if isinstance(value, bool) else f"--{key} {value:g}" for key, value in values
            if value is not False]


def load_config_note(args: argparse.Namespace) -> str | None:
    """A note for a training run whose --load_config run scaled its layers otherwise (retraining
    an assignment with other scales can be intended; evaluating one is refused above)."""
    if args.load_config is None or args.eval_only:
        return None
    loaded_args = _loaded_run_args(args.load_config)
    differing = load_config_scale_differences(args, loaded_args)
    if not differing:
        return None
    return (f"note: --load_config takes the formats of a run with other scales ({', '.join(differing)}); this run "
            f"trains with its own (for that run's: {' '.join(_scale_flags(loaded_args))})")


def _loaded_run_args(load_config: str) -> dict:
    """The "args" of the --load_config run's results.json (checked readable by check_load_config)."""
    return json.loads(Path(load_config).read_text()).get("args") or {}


def eval_subset_note(args: argparse.Namespace) -> str | None:
    """A note for re-evaluating a run (--eval_only --load_config) on another --max_eval_samples
    subset than the one it was evaluated on: the subset is drawn with --data_seed (a run recorded
    before that flag drew it with its --seed)."""
    if args.load_config is None or not args.eval_only or args.max_eval_samples is None:
        return None
    from eval.run_compare import recorded_data_seed

    loaded_args = _loaded_run_args(args.load_config)
    data_seed, samples = recorded_data_seed(loaded_args), loaded_args.get("max_eval_samples")
    if data_seed is None or (data_seed == args.data_seed and samples == args.max_eval_samples):
        return None
    drawn = f"--data_seed {args.data_seed}"
    if samples is None:
        return (f"note: --max_eval_samples {args.max_eval_samples} draws its examples with {drawn}; the loaded run was "
                f"evaluated on the whole split: drop --max_eval_samples to evaluate the same examples")
    before = "" if "data_seed" in loaded_args else " (recorded before --data_seed: its subset was drawn with its --seed)"
    return (f"note: --max_eval_samples {args.max_eval_samples} draws its examples with {drawn}; the loaded run{before} "
            f"was evaluated on those of --data_seed {data_seed} --max_eval_samples {samples}: pass the same to "
            f"evaluate the same examples")


def resolve_checkpoint(path: str) -> str:
    """A Trainer checkpoint directory, or a run directory whose latest checkpoint-N is taken."""
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"--resume_from_checkpoint {path!r} is not a directory; pass a checkpoint-N directory of a "
                         f"run (or the run directory, for its latest checkpoint)")
    if (directory / "trainer_state.json").is_file():
        return str(directory)
    latest = latest_checkpoint(directory)
    if latest is None:
        raise ValueError(f"--resume_from_checkpoint {path!r} holds no checkpoint (no trainer_state.json, no "
                         f"checkpoint-N/); runs save them with --save_strategy steps --save_steps N")
    return latest


def checkpoint_steps(checkpoint: Path) -> tuple[int | None, int | None]:
    """(global_step, max_steps) of a checkpoint's trainer_state.json; None where unreadable."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return int(state["global_step"]), int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def resumable_checkpoint(run_dir: Path) -> str | None:
    """The run directory's newest checkpoint that a resume can go on from: one before the run's
    last step (a checkpoint of the last step leaves nothing to train, and its resume is
    refused), complete (with the search's state, where any checkpoint has it); None if none."""
    if not run_dir.is_dir():
        return None
    before_last = []
    for step, child in _checkpoints(run_dir):
        done, total = checkpoint_steps(child)
        if done is not None and total is not None and done < total:
            before_last.append((step, child))
    return _newest(before_last)


def latest_checkpoint(run_dir: Path) -> str | None:
    """The run directory's checkpoint-N of the highest step, or None if it has none."""
    return _newest(_checkpoints(run_dir))


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(N, path) of the run directory's checkpoint-N folders that hold a trainer_state.json."""
    return [(int(match.group(1)), child) for child in run_dir.iterdir()
            if child.is_dir() and (match := re.fullmatch(r"checkpoint-(\d+)", child.name))
            and (child / "trainer_state.json").is_file()]


def _newest(checkpoints: list[tuple[int, Path]]) -> str | None:
    """The highest-step checkpoint, preferring complete ones: a search's checkpoints also hold its
    state, and one without it was cut short while saving."""
    if not checkpoints:
        return None
    complete = [(step, child) for step, child in checkpoints if (child / SEARCH_STATE_NAME).is_file()]
    return str(max(complete or checkpoints)[1])
