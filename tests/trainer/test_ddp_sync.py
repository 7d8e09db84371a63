import json
import os

import pytest

from tests.distributed_launch import failure_report, killed_by_native_abort, launch_with_one_relaunch

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_search_script.py")


@pytest.mark.parametrize("stderr, expected", [
    ("rank : 0\n  exitcode  : -15 (pid: 1)\n rank : 1\n  exitcode  : -6 (pid: 2)", True),
    ("rank : 1\n  exitcode  : 1 (pid: 2)\n", False),  # a Python exception: never relaunched
    ("rank : 0\n  exitcode  : -15 (pid: 1)\n  exitcode  : 1 (pid: 2)", False),
    ("no launcher report at all", False),
])
def test_killed_by_native_abort(stderr, expected):
    assert killed_by_native_abort(stderr) is expected


@pytest.mark.slow
@pytest.mark.parametrize("source, accumulation", [("train", 1), ("heldout", 1), ("train", 2)])
def test_ddp_ranks_stay_in_sync(tmp_path, source, accumulation):
    """Two gloo processes train on different shards; they must sample the same formats at every
    optimizer step and end with bit-identical policies (the reward is all-reduced)."""
    result, attempt = launch_with_one_relaunch(
        lambda attempt: [SCRIPT, str(tmp_path / f"attempt{attempt}"), source, str(accumulation)])
    assert result.returncode == 0, failure_report(result)
    out_dir = tmp_path / f"attempt{attempt}"
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert len(ranks[0]["history"]) == 60  # one sample per optimizer step, whatever the accumulation
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["answer"] == ranks[1]["answer"]  # train() ended with the same answer on both ranks
    assert ranks[0]["logits"] == ranks[1]["logits"] and ranks[0]["baseline"] == ranks[1]["baseline"]
    assert ranks[0]["logits"] != [[0.0] * 3] * 4  # the policy did learn
