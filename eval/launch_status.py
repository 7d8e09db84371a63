"""What the launcher prints: a status line per run as it changes (queued, running, done, failed,
with elapsed time), a live footer of the running runs when stdout is a terminal, and the final
summary table (run, status, main metric, cost, wall time).

On a terminal the footer is redrawn in place about once a second; anywhere else (a pipe, a log
file, CI) only plain lines are printed, one per state change.
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, Sequence, TextIO

from eval.launch_queue import DONE, ELSEWHERE, FAILED, INTERRUPTED, NOT_STARTED, QUEUED, RUNNING, SKIPPED, Job
from eval.results_schema import COMPLETED

COST_UNITS = {"memory": ("memory_mib", "MiB"), "compute": ("gbops", "GBOPs")}
# How the summary counts a state, where its name alone would not say it.
SUMMARY_WORDS = {ELSEWHERE: "running elsewhere"}
FOOTER_REFRESH_S = 1.0


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def metric_text(job: Job) -> str:
    """`eval_accuracy=0.9531` from the run's results.json ('-' when it has none)."""
    record = job.record
    if record is None or record.status != COMPLETED:
        return "-"
    value = record.metrics.get(record.main_metric)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{record.main_metric}={value:.4g}"
    return f"{record.main_metric}=-"


def cost_text(job: Job) -> str:
    """The cost the run optimised (or reports): `1.234 MiB` or `0.456 GBOPs`."""
    record = job.record
    if record is None or record.status != COMPLETED:
        return "-"
    key, unit = COST_UNITS.get(record.cost.get("cost_type"), COST_UNITS["memory"])
    value = record.cost.get(key)
    return f"{value:.4g} {unit}" if isinstance(value, (int, float)) else "-"


class StatusBoard:
    """Prints state changes as lines; on a terminal also a footer of the running runs."""

    def __init__(self, stream: TextIO, total: int, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self._width = len(str(total))
        self._footer_lines = 0
        self._last_draw = float("-inf")
        self._closed = False

    def write(self, text: str) -> None:
        """Write and flush; a closed or full stdout (`... | head`, a full disk) silences the board
        instead of stopping the runs (each run's output is in its stdout.log)."""
        if self._closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            self._closed = True
        except OSError as error:
            self._closed = True
            sys.stderr.write(f"eval_parallel: the status board cannot be written ({error.strerror or error}); the runs "
                             "go on, each with its output in RUN_DIR/stdout.log\n")

    @property
    def closed(self) -> bool:
        """Whether a write failed (and the board went silent)."""
        return self._closed

    def _prefix(self, job: Job) -> str:
        return f"[{job.experiment.index:>{self._width}}/{self.total}] {job.state:<11} {job.name}"

    def line(self, job: Job) -> str:
        """The status line of `job` in its current state."""
        text = self._prefix(job)
        if job.state == RUNNING:
            where = job.slot.describe() if job.slot is not None else ""
            pid = f", pid {job.process.pid}" if job.process is not None else ""
            return f"{text}  ({where}{pid})"
        elapsed = format_seconds(job.elapsed(self.clock()))
        if job.state == DONE:
            return f"{text}  {elapsed}  {metric_text(job)}  {cost_text(job)}"
        if job.state in (FAILED, INTERRUPTED):
            return f"{text}  {elapsed}  {job.reason}  (log: {job.log_path})"
        if job.state == SKIPPED:
            return f"{text}  already completed ({job.experiment.run_dir / 'results.json'})"
        if job.state == ELSEWHERE:
            return f"{text}  not started: another process is running it ({job.reason})"
        return text

    def _erase_footer(self) -> None:
        if self._footer_lines:
            # Cursor up to the footer's first line, then clear to the end of the screen.
            self.write(f"\x1b[{self._footer_lines}F\x1b[J")
            self._footer_lines = 0

    def _draw_footer(self, jobs: Sequence[Job]) -> None:
        now = self.clock()
        running = [job for job in jobs if job.state == RUNNING]
        counts = {state: sum(job.state == state for job in jobs) for state in (QUEUED, RUNNING, DONE, FAILED)}
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        lines = [f"  {job.name}  {format_seconds(job.elapsed(now))}  ({job.slot.describe()})" for job in running]
        lines.append("  " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        self.write("".join(text[:width] + "\n" for text in lines))
        self._footer_lines = len(lines)
        self._last_draw = now

    def event(self, job: Job, jobs: Sequence[Job] = ()) -> None:
        """Print `job`'s new state (and redraw the footer below it on a terminal)."""
        if self.tty:
            self._erase_footer()
        self.write(self.line(job) + "\n")
        if self.tty and jobs:
            self._draw_footer(jobs)

    def tick(self, jobs: Sequence[Job]) -> None:
        """Refresh the elapsed times of the footer (terminal only, at most once a second)."""
        if not self.tty or self.clock() - self._last_draw < FOOTER_REFRESH_S:
            return
        self._erase_footer()
        self._draw_footer(jobs)

    def close(self) -> None:
        """Remove the footer (before the summary or a message)."""
        if self.tty:
            self._erase_footer()


def summary_table(jobs: Sequence[Job], now: float) -> str:
    """The final table: one row per run, then the reasons of the runs that did not complete."""
    header = ("run", "status", "main metric", "cost", "wall")
    rows = [(job.name, job.state, metric_text(job), cost_text(job), format_seconds(job.elapsed(now)))
            for job in jobs]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(row) for row in rows)]
    counts = {SUMMARY_WORDS.get(state, state): sum(job.state == state for job in jobs)
              for state in (DONE, FAILED, SKIPPED, ELSEWHERE, INTERRUPTED, NOT_STARTED)}
    lines.append("")
    lines.append(f"{len(jobs)} run(s): " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    problems = [job for job in jobs if job.state in (FAILED, INTERRUPTED)]
    for job in problems:
        lines.append(f"{job.state}: {job.name}: {job.reason} (log: {job.log_path})")
    for job in jobs:
        if job.state == ELSEWHERE:
            lines.append(f"running elsewhere: {job.name}: {job.reason}; not started by this launch, its results "
                         f"will be in {job.experiment.run_dir / 'results.json'}")
    return "\n".join(lines) + "\n"
