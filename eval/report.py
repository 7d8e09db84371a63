"""The report CLI: tables and Pareto plots over the runs under an output root.

`python -m eval.eval_parse OUTPUT_ROOT [--format md|csv|json] [--plot FILE.png] [--metric NAME]
[--cost memory|compute] [--group_by KEY ...] [--lower_is_better|--higher_is_better] [--layers RUN]`

Every run directory found is either a table row (alone or aggregated with its seed replicas as
mean and sample std) or listed in the "invalid" section with the reason: failed, incomplete,
missing or non-finite metric/cost, grouped with runs that differ in more than the seed, or two
runs of one setting with the same seed. Output formats: md (sections with pipe tables), csv
(`# ` note lines, then one table: the runs; the invalid runs go to stderr, one line each, so
that stdout stays one table), json (one object; non-finite numbers are null). Exit code 0
whenever the report was produced (invalid runs included), 2 for bad CLI input or an output that
cannot be written, with one error line.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eval.cli_flags import OnceArgumentParser, program_name, split_argv
from eval.pareto import plot_pareto
from eval.report_render import (FORMATS, invalid_lines, layer_document, plot_decision_heatmap, render,
                                report_document, resolve_run)
from eval.report_table import ReportInputError, build_report
from eval.results import RUN_MARKERS, load_runs
from eval.results_schema import COST_TYPES
from eval.run_compare import PSEUDO_KEYS

PROG, SCRIPT = "python -m eval.eval_parse", "fliqs-report"
MODULES = ("eval.eval_parse", "eval.report")  # the report runs as `python -m` either


_ROOT_REQUIRED = "the following arguments are required: OUTPUT_ROOT"


class _Parser(OnceArgumentParser):
    _argv: Sequence[str] = ()

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        self._argv = list(sys.argv[1:] if args is None else args)  # for error(): what the user typed
        return super().parse_known_args(self._argv, namespace)

    def error(self, message: str):  # one clear line and exit code 2, via main, instead of usage + SystemExit
        if message == _ROOT_REQUIRED:
            message = _root_taken_by_group_by(self, self._argv) or message
        raise ReportInputError(message)


def _root_taken_by_group_by(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """`--group_by method output`: --group_by takes every value up to the next flag, OUTPUT_ROOT
    included. Where its last value is an existing directory, the line saying so; else None."""
    segments = [s.tokens for s in split_argv(parser, argv) if s.dest == "group_by" and "=" not in s.tokens[0]]
    if not segments or len(segments[-1]) < 2 or not Path(segments[-1][-1]).is_dir():
        return None
    root, keys = segments[-1][-1], " ".join(segments[-1][1:-1]) or "KEY"
    return (f"OUTPUT_ROOT is missing: --group_by took {root!r} as a key (it takes every value up to the next flag); "
            f"put OUTPUT_ROOT before --group_by ({parser.prog} {shlex.quote(root)} --group_by {keys}), or end the "
            "keys with -- (--group_by " + keys + " -- " + shlex.quote(root) + ")")


def report_prog() -> str:
    """The report's name in its messages, as the user typed it: `fliqs-report`, `python -m
    eval.eval_parse` or `python -m eval.report`."""
    return program_name(PROG, SCRIPT, MODULES)


def create_report_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Tables and Pareto plots over FLIQS run outputs.")
    parser.add_argument("output_root", metavar="OUTPUT_ROOT", help="the --output_root_dir the runs wrote to")
    parser.add_argument("--format", choices=FORMATS, default="md",
                        help="output format (default md); csv prints one table, the invalid runs go to stderr")
    parser.add_argument("--plot", metavar="FILE.png", help="write a Pareto plot (or, with --layers, a heat map)")
    parser.add_argument("--metric", help="metric to compare (default: each run's main_metric)")
    parser.add_argument("--cost", choices=COST_TYPES, help="cost axis (default: the runs' cost_type, else memory)")
    parser.add_argument("--group_by", nargs="+", metavar="KEY",
                        help=f"aggregate seed replicas per KEY value: argument names or {', '.join(PSEUDO_KEYS)}; "
                             "fixed-format runs are always kept apart by their formats (default: every argument "
                             "except the seed and those that do not change results: names, output paths, logging, "
                             "device)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--lower_is_better", dest="higher_is_better", action="store_const", const=False,
                           help="the metric is lower-is-better (default: told from its name; loss, perplexity, "
                                "error, mse and mae are lower-is-better)")
    direction.add_argument("--higher_is_better", dest="higher_is_better", action="store_const", const=True,
                           help="the metric is higher-is-better, whatever its name")
    parser.add_argument("--layers", metavar="RUN", help="per-layer table of one run (run directory or exp_name)")
    return parser


def check_output_file(path: Path, flag: str) -> None:
    """`path` can be written (checked before any work): not a directory, and its nearest existing
    ancestor is a directory in which a file can be created. Permission bits alone say nothing for
    root, read-only mounts or /proc, so a probe file is created and removed."""
    if path.is_dir():
        raise ReportInputError(f"{flag} {str(path)!r} is a directory; name a .png file in it")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReportInputError(f"{flag} {str(path)!r} cannot be written: {str(ancestor)!r} is a file, not a "
                               "directory; choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".fliqs-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ReportInputError(f"{flag} {str(path)!r} cannot be written: no file can be created in {str(ancestor)!r} "
                               f"({error.strerror or error}); choose a writable location") from None


def _write_plot(path: Path, draw: Any, *args: Any) -> None:
    """Create the plot's directory and draw into it (atomically); an OS error is one error line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(*args)
    except OSError as error:
        raise ReportInputError(f"--plot {str(path)!r} could not be written ({error.strerror or error}); choose "
                               "another path") from None


@dataclass
class Output:
    """What the CLI prints: `text` on stdout, `messages` on stderr (one line each)."""

    text: str
    messages: list[str] = field(default_factory=list)


def run_report(args: argparse.Namespace) -> Output:
    """Everything `main` does, minus printing; raises ReportInputError for bad input."""
    root = Path(args.output_root)
    if not root.is_dir():
        raise ReportInputError(f"OUTPUT_ROOT {str(root)!r} is not a directory; pass the --output_root_dir of the runs")
    plot_path = Path(args.plot) if args.plot is not None else None  # '' too: an error, not no plot
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise ReportInputError(f"--plot {args.plot!r} must name a .png file")
        check_output_file(plot_path, "--plot")
    runs = load_runs(root)
    if args.layers is not None:
        given = [flag for flag, value in (("--metric", args.metric), ("--cost", args.cost),
                                          ("--group_by", args.group_by),
                                          ("--lower_is_better", args.higher_is_better is False),
                                          ("--higher_is_better", args.higher_is_better is True))
                 if value]
        if given:
            raise ReportInputError(f"--layers shows one run's layers; {', '.join(given)} do not apply, drop them")
        run = resolve_run(runs, root, args.layers)
        document = layer_document(run)
        if plot_path is not None:
            if run.method != "search" or not (run.search or {}).get("decisions"):
                raise ReportInputError(f"--plot with --layers draws decision probabilities, but {run.label} is a "
                                       f"{run.method} run without decisions; pass a search run")
            _write_plot(plot_path, plot_decision_heatmap, run, plot_path)
            document.notes.append(f"heat map written to {plot_path}")
        return Output(render(document, args.format))
    if not runs:
        raise ReportInputError(f"no run directories under {str(root)!r} (a run directory holds one of "
                               f"{', '.join(RUN_MARKERS)}); check OUTPUT_ROOT")
    report = build_report(runs, str(root), args.metric, args.cost, args.group_by, args.higher_is_better)
    if plot_path is not None:
        _write_plot(plot_path, plot_pareto, report.rows, plot_path, report.cost_column, report.cost_label,
                    report.directions)
        report.notes.append(f"plot written to {plot_path}")
    if args.format == "csv":  # stdout stays one table: the invalid runs go to stderr
        report.notes.append(f"{len(report.invalid)} invalid runs: on stderr, one line each")
        return Output(render(report_document(report), args.format), invalid_lines(report))
    return Output(render(report_document(report), args.format))


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's final flush of what could not be written
    fails silently instead of printing a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (tests capture it): nothing will flush there
        pass


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: prints the report and returns 0, or prints one error line and returns 2."""
    prog = report_prog()
    try:
        output = run_report(create_report_parser(prog).parse_args(argv))
    except ReportInputError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    for message in output.messages:
        print(f"{prog}: {message}", file=sys.stderr)
    try:
        sys.stdout.write(output.text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        _silence_stdout()
    except OSError as error:
        _silence_stdout()
        print(f"{prog}: error: cannot write the report to stdout ({error.strerror or error}); redirect it to a "
              "writable file", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
