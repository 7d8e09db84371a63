import io

import pytest

from eval.launch_devices import CPU, GPU, Slot
from eval.launch_plan import Experiment
from eval.launch_queue import DONE, FAILED, QUEUED, RUNNING, SKIPPED, Job
from eval.launch_status import StatusBoard, format_seconds, summary_table
from eval.results import RunRecord


class Proc:
    pid = 4242


def job(index, name, state, started=None, ended=None, record=None, reason=None, slot=None):
    j = Job(Experiment(index, (), (), name, "digits", "out", None), GPU, state=state, started_at=started,
            ended_at=ended, record=record, reason=reason, slot=slot)
    if state == RUNNING:
        j.process = Proc()
    return j


def completed(name, accuracy, memory_mib, cost_type="memory", gbops=0.5):
    results = {"status": "completed", "main_metric": "eval_accuracy", "metrics": {"eval_accuracy": accuracy},
               "cost": {"memory_mib": memory_mib, "gbops": gbops, "cost_type": cost_type}}
    return RunRecord(None, name, "completed", None, results)


def test_format_seconds():
    assert [format_seconds(s) for s in (None, 3.14159, 59.94, 75, 3725)] == ["-", "3.1s", "59.9s", "1m15s",
                                                                             "1h02m05s"]


def test_plain_lines_one_per_state_change():
    out = io.StringIO()
    board = StatusBoard(out, total=12, tty=False, clock=lambda: 110.0)
    board.event(job(3, "a", QUEUED))
    board.event(job(3, "a", RUNNING, started=100.0, slot=Slot(GPU, ("0", "1"), 0)))
    board.event(job(3, "a", DONE, 100.0, 112.5, completed("a", 0.953, 1.2345)))
    board.event(job(4, "b", FAILED, 100.0, 104.0, reason="exit code 1: ValueError: x"))
    board.event(job(5, "c", SKIPPED, record=completed("c", 0.5, 1.0)))
    board.tick([])  # no footer off a terminal
    assert out.getvalue().splitlines() == [
        "[ 3/12] queued      a",
        "[ 3/12] running     a  (gpus 0,1, pid 4242)",
        "[ 3/12] done        a  12.5s  eval_accuracy=0.953  1.234 MiB",
        "[ 4/12] failed      b  4.0s  exit code 1: ValueError: x  (log: out/digits/b/stdout.log)",
        "[ 5/12] skipped     c  already completed (out/digits/c/results.json)",
    ]
    assert "\x1b" not in out.getvalue()


def test_terminal_footer_is_redrawn_in_place():
    now = [10.0]
    out = io.StringIO()
    board = StatusBoard(out, total=2, tty=True, clock=lambda: now[0])
    jobs = [job(1, "a", RUNNING, started=4.0, slot=Slot(CPU, (), 0)), job(2, "b", QUEUED)]
    board.event(jobs[0], jobs)
    assert out.getvalue() == ("[1/2] running     a  (cpu worker 0, pid 4242)\n"
                              "  a  6.0s  (cpu worker 0)\n  1 queued, 1 running, 0 done, 0 failed\n")
    board.tick(jobs)  # less than a second later: nothing
    now[0] = 11.5
    board.tick(jobs)
    assert out.getvalue().endswith("\x1b[2F\x1b[J  a  7.5s  (cpu worker 0)\n  1 queued, 1 running, 0 done, 0 failed\n")
    board.close()
    assert out.getvalue().endswith("\x1b[2F\x1b[J")


def test_summary_table():
    jobs = [job(1, "search_s1", DONE, 0.0, 61.0, completed("search_s1", 0.9531, 1.5)),
            job(2, "compute_s1", DONE, 0.0, 5.0, completed("compute_s1", 0.5, 1.0, "compute", 0.25)),
            job(3, "broken", FAILED, 1.0, 3.0, reason="exit code 1: ValueError: x")]
    assert summary_table(jobs, now=100.0) == (
        "run         status  main metric           cost        wall\n"
        "----------  ------  --------------------  ----------  -----\n"
        "search_s1   done    eval_accuracy=0.9531  1.5 MiB     1m01s\n"
        "compute_s1  done    eval_accuracy=0.5     0.25 GBOPs  5.0s\n"
        "broken      failed  -                     -           2.0s\n"
        "\n"
        "3 run(s): 2 done, 1 failed\n"
        "failed: broken: exit code 1: ValueError: x (log: out/digits/broken/stdout.log)\n")


@pytest.mark.parametrize("error, tty, message", [
    # `... | head`: the reader has what it wanted, nothing to say
    (BrokenPipeError(32, "Broken pipe"), True, ""),
    (OSError(28, "No space left on device"), False,
     "eval_parallel: the status board cannot be written (No space left on device); the runs go on, each with its "
     "output in RUN_DIR/stdout.log\n"),
])
def test_an_unwritable_stdout_silences_the_board_instead_of_raising(error, tty, message, capsys):
    class Unwritable(io.StringIO):
        def write(self, text):
            raise error

    board = StatusBoard(Unwritable(), total=1, tty=tty)
    queued = job(1, "a", QUEUED)
    board.event(queued, [queued])
    board.write("summary\n")
    board.close()
    assert board.closed and capsys.readouterr().err == message
