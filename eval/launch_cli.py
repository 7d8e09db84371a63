"""`python eval_parallel.py [run flags] [launcher flags]`: many runs over GPUs or CPU workers.

Launcher flags are parsed here; everything else is run flags (`python -m eval.eval_run --help`),
shared by every experiment. With no --sweep/--experiments the run flags describe one experiment.
Each flag is given once (but --sweep): a launcher or run flag given twice is refused, as by
every CLI of the project (eval/cli_flags.py); a swept run flag may also stand in the run flags.
Every experiment is validated before anything starts. Each run is its own process with
CUDA_VISIBLE_DEVICES set to the GPU(s) it holds, output in `{run dir}/stdout.log`.

Runs already completed in their directory are never run again silently: the launch is refused
unless --skip_completed (keep them; refused too when a completed run's recorded arguments differ
from the planned ones in anything that changes results) or --overwrite (run them again). Runs
that another process is running now (their directory's lock, eval/run_lock.py) are never started
twice: the launch is refused, unless --skip_completed, which leaves them to that process; a run
another process takes after the launch was planned (another launch started a moment before this
one included) is left to it too. With --skip_completed a run stopped after saving a checkpoint
goes on from its newest one before its last step (if its config.json has the planned flags; else
the launch is refused).

Exit codes: 0 every run completed, was kept (--skip_completed) or is left to the process running
it, or --dry_run; 1 some run failed, 2 a bad launch request (one error line; also a --dry_run
plan that cannot be written), 130 stopped by SIGINT/SIGTERM/SIGHUP (every run stopped first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence, TextIO

from eval.cli_flags import program_name, split_argv
from eval.eval_parse import OneLineErrorParser, create_arg_parser
from eval.launch_command import RUN_ENTRY, format_command, free_port, launcher_env, run_command
from eval.launch_devices import CPU, GPU, Resources, choose_resources, detect_gpus, predict_slots
from eval.launch_flags import OVERWRITE_REASON, LaunchError, refuse_repeated_run_flags
from eval.launch_plan import Experiment, load_experiments_file, parse_sweep, plan_experiments
from eval.launch_queue import (DONE, ELSEWHERE, INTERRUPTED, NOT_STARTED, QUEUED, SKIPPED, Job, StopSignals,
                               SubprocessStarter, TERMINATE_GRACE_S, run_queue)
from eval.launch_status import StatusBoard, summary_table
from eval.results import load_run
from eval.results_schema import COMPLETED
from eval.run_compare import changed_args, changed_flags, list_changes
from eval.run_inputs import RESUME_MAY_CHANGE, resumable_checkpoint
from eval.run_lock import run_lock_holder

PROG, SCRIPT = "eval_parallel", "fliqs-launch"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _HelpAction(argparse.Action):
    """--help shows the launcher flags, then the run flags every experiment shares."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        parser.print_help()
        print("\nRun flags (shared by every experiment; a --sweep or --experiments entry overrides them):\n")
        print(create_arg_parser("eval_run").format_help())
        parser.exit()


def launcher_prog() -> str:
    """The launcher's name in its messages: `fliqs-launch` when started as that console script,
    else `eval_parallel` (`python eval_parallel.py`)."""
    return program_name(PROG, SCRIPT)


def create_launcher_parser(prog: str = PROG) -> argparse.ArgumentParser:
    # --sweep is the one flag meant to repeat (action="append"); any other given twice is refused.
    p = OneLineErrorParser(
        prog=prog, add_help=False, allow_abbrev=False,  # no abbreviations: they would swallow run flags
        usage=f"{'python eval_parallel.py' if prog == PROG else prog} [run flags] [launcher flags]",
        description="Launch FLIQS runs in parallel over GPUs (or CPU workers). Flags not listed here are run "
        "flags, passed to every run.",
        epilog="Runs are named by their exp_name (or the run's default name) plus the key=value pairs of every "
        "--sweep key and, for an --experiments entry without its own exp_name, of the flags it sets, so a run's name "
        "never depends on the other runs of the launch; two runs that would share a directory are an error. Each run's "
        "output goes to OUTPUT_ROOT_DIR/TASK/EXP_NAME/stdout.log. Exit codes: 0 all runs completed, were kept "
        "(--skip_completed) or are left to another process running them, 1 some run failed, 2 bad launch "
        "request, 130 interrupted (SIGINT/SIGTERM/SIGHUP; every run is stopped first).")
    p.add_argument("-h", "--help", action=_HelpAction, help="show this help and the run flags, then exit")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="run every value of run flag KEY (repeatable: cartesian product); true/false for on/off "
                   "flags; separate values with ';' when they contain commas, quoted for the shell: "
                   "--sweep 'search_space=4,8;2,4,8'")
    p.add_argument("--experiments", metavar="FILE", help="a JSON or YAML list of objects of run-flag overrides, each "
                   "optionally with its own exp_name (combined with --sweep as a cartesian product)")
    p.add_argument("--num_gpus", type=int, help="use the first N visible GPUs (default: all)")
    p.add_argument("--gpus", metavar="0,3,5", help="use these GPUs (indices of the visible GPUs)")
    p.add_argument("--gpus_per_run", type=int, help="GPUs per run (default 1); K > 1 runs one rank per GPU with "
                   "torch.distributed.run")
    p.add_argument("--workers", type=int, help="parallel CPU runs when there is no GPU or with --device cpu "
                   "(default 1); each gets OMP_NUM_THREADS = cores // workers (at least 1, at most the launcher's own "
                   "OMP_NUM_THREADS if set)")
    p.add_argument("--skip_completed", action="store_true", help="start only the runs whose results.json is "
                   "missing or not completed (resume an interrupted sweep: a run stopped after saving a checkpoint "
                   "goes on from it); refused when a completed or checkpointed run was run with other flags than "
                   "planned. Runs another process is running now are left to it")
    p.add_argument("--overwrite", action="store_true", help="run again the runs that already completed (their "
                   "results are replaced); without it or --skip_completed, completed runs refuse the launch")
    p.add_argument("--dry_run", action="store_true", help="print the planned commands with their "
                   "CUDA_VISIBLE_DEVICES and exit without running anything")
    return p


def _gpu_request(options: argparse.Namespace, experiments: Sequence[Experiment]) -> tuple[str | None, str]:
    """--gpus, or a --cuda_visible_devices given among the run flags (it means the same here)."""
    legacy = experiments[0].cuda_visible_devices
    if legacy is None:
        return options.gpus, "--gpus"
    if options.gpus is not None:
        raise LaunchError("--gpus and --cuda_visible_devices both pick GPUs; give --gpus only")
    return legacy, "--cuda_visible_devices"


def prepare(argv: Sequence[str] | None, available_gpus: Sequence[str] | None = None, prog: str = PROG
            ) -> tuple[argparse.Namespace, list[Experiment], Resources]:
    """Parse and validate the whole launch (raises LaunchError, or SystemExit(2) for bad launcher flags)."""
    options, run_argv = create_launcher_parser(prog).parse_known_args(argv)
    run_parser = create_arg_parser("eval_run")
    refuse_repeated_run_flags(run_parser, run_argv)  # before a --sweep replaces a repeat
    if any(segment.dest == "overwrite_output_dir" for segment in split_argv(run_parser, run_argv)):
        raise LaunchError(f"--overwrite_output_dir is not a launch flag: {OVERWRITE_REASON}; give --overwrite")
    sweeps = [parse_sweep(text) for text in options.sweep]
    entries = load_experiments_file(options.experiments) if options.experiments is not None else None
    experiments = plan_experiments(run_argv, sweeps, entries)
    gpus, gpus_flag = _gpu_request(options, experiments)
    visible = list(detect_gpus() if available_gpus is None else available_gpus)
    resources = choose_resources([e.device for e in experiments], visible, num_gpus=options.num_gpus, gpus=gpus,
                                 gpus_flag=gpus_flag, gpus_per_run=options.gpus_per_run, workers=options.workers)
    return options, experiments, resources


def plan_notes(experiments: Sequence[Experiment]) -> list[str]:
    """Each distinct `note:` of the runs once, with the experiments it concerns when not all."""
    concerns: dict[str, list[int]] = {}
    for experiment in experiments:
        for note in experiment.notes:
            concerns.setdefault(note, []).append(experiment.index)
    lines = []
    for note, indices in concerns.items():
        if len(indices) < len(experiments):
            note = note.replace("note: ", f"note: experiment{'s' if len(indices) > 1 else ''} "
                                f"{', '.join(map(str, indices))}: ", 1)
        lines.append(note)
    return lines


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def make_jobs(experiments: Sequence[Experiment], resources: Resources, skip_completed: bool = False,
              overwrite: bool = False) -> list[Job]:
    """One job per experiment. Runs another process is running now are ELSEWHERE (`skip_completed`)
    or refuse the launch. Runs already completed are SKIPPED (`skip_completed`, when their recorded
    args match the plan), run again (`overwrite`), or else refuse the launch (LaunchError)."""
    if skip_completed and overwrite:
        raise LaunchError("--skip_completed keeps completed runs and --overwrite runs them again; give one of them")
    jobs = [Job(e, kind) for e, kind in zip(experiments, resources.kinds)]
    # Before the completed ones: a run rewriting a completed run's directory is not that run.
    busy = [(job, holder) for job in jobs if (holder := run_lock_holder(job.experiment.run_dir)) is not None]
    if busy and not skip_completed:
        job, holder = busy[0]
        one = len(busy) == 1
        count, it = ("1 planned run is", "it") if one else (f"{len(busy)} planned runs are", "them")
        where = f"{'' if one else 'first: '}{job.experiment.run_dir}, {holder}"
        again = f" before --overwrite runs {it} again" if overwrite else ""
        raise LaunchError(f"{count} being run by another process now ({where}); wait for {it} to finish{again}, or "
                          f"pass --skip_completed to leave {it} to that process and start the others")
    for job, holder in busy:
        job.state, job.reason = ELSEWHERE, holder
    completed = [(job, record) for job in jobs
                 if job.state == QUEUED and (record := load_run(job.experiment.run_dir)).status == COMPLETED]
    if completed and overwrite:
        for job, _ in completed:
            job.overwrites = True
    elif completed and not skip_completed:
        first = completed[0][0].experiment.run_dir
        raise LaunchError(f"{_plural(len(completed), 'run')} already completed (first: {first}); pass "
                          "--skip_completed to keep them or --overwrite to run them again")
    elif completed:
        changed = [(job, diffs) for job, record in completed
                   if (diffs := changed_flags(job.experiment.args, record))]
        if changed:
            job, diffs = changed[0]
            listed = list_changes(diffs)
            others = f" ({_plural(len(changed) - 1, 'other completed run')} too)" if len(changed) > 1 else ""
            raise LaunchError(f"--skip_completed would keep {job.experiment.run_dir}, completed with other flags: "
                              f"{listed}{others}; give the experiment a new exp_name to keep both, delete the run "
                              "directory to run it again, or pass --overwrite instead of --skip_completed")
        for job, record in completed:
            job.state, job.record = SKIPPED, record
    if skip_completed:
        _resume_interrupted(jobs)
    return jobs


def _resume_interrupted(jobs: Sequence[Job]) -> None:
    """--skip_completed: a run that was stopped after saving a checkpoint goes on from it (it
    started again from step 0 before, rewriting its checkpoints), if it was written with the
    planned flags; else the launch is refused, as for a completed run with other flags."""
    resumed = [(job, checkpoint) for job in jobs if job.state == QUEUED
               and job.experiment.args.get("resume_from_checkpoint") is None  # one the plan gives is kept
               and (checkpoint := resumable_checkpoint(job.experiment.run_dir)) is not None]
    for job, checkpoint in resumed:
        try:
            recorded = json.loads((job.experiment.run_dir / "config.json").read_text())
        except (OSError, ValueError):
            continue  # no record of its flags: start it again, as before
        diffs = changed_args(job.experiment.args, recorded, ignore=RESUME_MAY_CHANGE)
        if diffs:
            raise LaunchError(f"--skip_completed would resume {job.experiment.run_dir} from "
                              f"{os.path.basename(checkpoint)}, written with other flags: {list_changes(diffs)}; give "
                              "the experiment a new exp_name, delete the run directory to start it again, or pass "
                              "--overwrite instead of --skip_completed")
        job.resume_from = checkpoint


def describe_resources(jobs: Sequence[Job], resources: Resources) -> str:
    """'4 run(s), 4 to start on 2 CPU worker(s), OMP_NUM_THREADS=1 each' (the launch's first line)."""
    pool = resources.pool
    parts = []
    if any(job.kind == GPU for job in jobs):
        parts.append(f"GPUs {','.join(pool.gpus)}, {pool.gpus_per_run} per run")
    if any(job.kind == CPU for job in jobs):
        parts.append(f"{pool.cpu_workers} CPU worker(s), OMP_NUM_THREADS={resources.omp_threads} each")
    queued = sum(job.state == QUEUED for job in jobs)
    skipped = sum(job.state == SKIPPED for job in jobs)
    elsewhere = sum(job.state == ELSEWHERE for job in jobs)
    overwritten = sum(job.overwrites for job in jobs)
    resumed = sum(job.resume_from is not None for job in jobs)
    return f"{len(jobs)} run(s), {queued} to start" + (f" ({resumed} from their checkpoints)" if resumed else "") + \
        (f", {skipped} already completed" if skipped else "") + \
        (f", {elsewhere} running elsewhere" if elsewhere else "") + \
        (f" ({overwritten} completed, to overwrite)" if overwritten else "") + f" on {'; '.join(parts)}"


def dry_run(jobs: Sequence[Job], resources: Resources, out: TextIO, run_entry: Sequence[str] = RUN_ENTRY) -> None:
    """Print the command of every run to start, with the devices it would get if all runs took equally long."""
    queued = [job for job in jobs if job.state == QUEUED]
    slots = predict_slots([job.kind for job in queued], resources.pool)
    out.write(f"# {describe_resources(jobs, resources)}\n")
    out.write("# devices assume runs of equal length (at run time each run takes the next free slot); master "
              "ports are picked when a run starts\n")
    for job in jobs:
        if job.state == SKIPPED:
            out.write(f"# skip (completed): {job.experiment.run_dir}\n")
        elif job.state == ELSEWHERE:
            out.write(f"# skip (running elsewhere, {job.reason}): {job.experiment.run_dir}\n")
        elif job.overwrites:
            out.write(f"# overwrite (completed): {job.experiment.run_dir}\n")
        elif job.resume_from is not None:
            out.write(f"# resume (interrupted): {job.experiment.run_dir} from {os.path.basename(job.resume_from)}\n")
    ports: set[int] = set()
    for job, slot in zip(queued, slots):
        k = len(slot.devices) or 1
        port = free_port(ports) if k > 1 else None
        if port is not None:
            ports.add(port)
        command = run_command(job.argv, k, port, run_entry=run_entry)
        out.write(format_command(command, launcher_env(slot, resources.omp_threads)) + "\n")
    out.flush()


def relaunch_advice(jobs: Sequence[Job], skip_completed: bool, overwrite: bool) -> str | None:
    """After an interrupted launch: the one command that goes on from what its runs left, and
    what it will do with each stopped run (None when every run ended anyway)."""
    left = [(job, load_run(job.experiment.run_dir).status == COMPLETED) for job in jobs
            if job.state in (INTERRUPTED, NOT_STARTED)]
    if overwrite:
        # Runs stopped before they replaced an earlier completed run still hold it: --skip_completed would keep it.
        earlier = [job for job, completed in left if completed and job.overwrites]
        if earlier:
            return (f"to go on, run the same command again (it runs every run again; --skip_completed in place of "
                    f"--overwrite would keep the earlier results of {_plural(len(earlier), 'run')} this launch did "
                    "not replace)")
    stopped = [job for job, completed in left if not completed]  # one that completed as it was stopped is kept
    if not stopped:
        return None
    # As _resume_interrupted will: any stopped run with a checkpoint goes on from it (one not started
    # by this launch may hold an earlier launch's), unless the plan names its own checkpoint.
    resumed = [checkpoint for job in stopped if job.experiment.args.get("resume_from_checkpoint") is None
               and (checkpoint := resumable_checkpoint(job.experiment.run_dir)) is not None]
    parts = []
    if len(resumed) == 1:
        parts.append(f"1 run goes on from its {os.path.basename(resumed[0])}")
    elif resumed:
        parts.append(f"{len(resumed)} runs go on from their checkpoints")
    fresh = len(stopped) - len(resumed)
    if fresh:
        parts.append(f"{_plural(fresh, 'run')} start{'s' if fresh == 1 else ''} from the beginning")
    how = ("again" if skip_completed else
           "with --skip_completed in place of --overwrite" if overwrite else "with --skip_completed")
    return f"to go on, run the same command {how} ({'; '.join(parts)})"


def launch(jobs: Sequence[Job], resources: Resources, out: TextIO = sys.stdout, run_entry: Sequence[str] = RUN_ENTRY,
           grace_s: float = TERMINATE_GRACE_S, tty: bool | None = None, prog: str = PROG,
           skip_completed: bool = False, overwrite: bool = False) -> int:
    """Run the queued jobs with live status, print the summary (and after an interruption how to
    go on: `skip_completed`/`overwrite` are the launch's own flags); returns the exit code."""
    board = StatusBoard(out, len(jobs), tty=tty)
    board.write(f"{prog}: {describe_resources(jobs, resources)}; output of each run in RUN_DIR/stdout.log\n")
    for job in jobs:
        board.event(job)
    starter = SubprocessStarter(resources.omp_threads, run_entry)
    announced = False

    def on_change(job: Job) -> None:
        board.event(job, jobs)

    with StopSignals() as signals:

        def stop_count() -> int:
            nonlocal announced
            if signals.count and not announced:
                announced = True
                board.close()
                board.write(f"{prog}: stopping every run (SIGTERM, then SIGKILL after {grace_s:g} s; "
                            "Ctrl-C again to kill now)\n")
            return signals.count

        interrupted = run_queue(jobs, resources.pool, starter, on_change=on_change, on_tick=board.tick,
                                stop_count=stop_count, grace_s=grace_s)
    board.close()
    if len(jobs) == 1 and jobs[0].state == DONE:  # one run (the Quickstart): its own summary first
        summary = jobs[0].experiment.run_dir / "output.txt"
        if summary.is_file():
            board.write("\n" + summary.read_text())
    board.write("\n" + summary_table(jobs, time.monotonic()))
    advice = relaunch_advice(jobs, skip_completed, overwrite) if interrupted else None
    if advice is not None:
        board.write(f"{prog}: {advice}\n")
    if board.closed:
        silence_stdout(out)
    if interrupted:
        return EXIT_INTERRUPTED
    # A run left to the process running it is not this launch's failure (its own launch reports it).
    return EXIT_OK if all(job.state in (DONE, SKIPPED, ELSEWHERE) for job in jobs) else EXIT_FAILED


def main(argv: Sequence[str] | None = None, *, available_gpus: Sequence[str] | None = None,
         run_entry: Sequence[str] = RUN_ENTRY, out: TextIO | None = None, grace_s: float = TERMINATE_GRACE_S) -> int:
    """The launcher CLI. `available_gpus` replaces GPU detection (CUDA_VISIBLE_DEVICES values) and
    `run_entry` the `-m eval.eval_run` of each command (e.g. a script path): for tests and wrappers."""
    out = out or sys.stdout
    prog = launcher_prog()
    try:
        options, experiments, resources = prepare(argv, available_gpus, prog)
        jobs = make_jobs(experiments, resources, options.skip_completed, options.overwrite)
        for line in plan_notes(experiments):
            sys.stderr.write(f"{prog}: {line}\n")
        if options.dry_run:
            dry_run(jobs, resources, out, run_entry)
            return EXIT_OK
    except LaunchError as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return EXIT_USAGE
    except SystemExit as exit_:  # the launcher parser already wrote its one error line (or --help)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted before any run started\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `--dry_run | head`: the reader has what it wanted
        silence_stdout(out)
        return EXIT_OK
    except OSError as error:  # `--dry_run > /dev/full`: the plan could not be written
        silence_stdout(out)
        sys.stderr.write(f"{prog}: error: cannot write the plan to {'stdout' if out is sys.stdout else 'its output'} "
                         f"({error.strerror or error}); redirect it to a writable file\n")
        return EXIT_USAGE
    return launch(jobs, resources, out, run_entry, grace_s, prog=prog, skip_completed=options.skip_completed,
                  overwrite=options.overwrite)


def silence_stdout(out: TextIO) -> None:
    """After a failed write to the real stdout, point fd 1 at /dev/null: the interpreter's final
    flush of what is still buffered then fails silently instead of printing a second error."""
    if out is not sys.stdout:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind it
        pass
