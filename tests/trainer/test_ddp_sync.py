import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_search_script.py")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["train", "heldout"])
def test_ddp_ranks_stay_in_sync(tmp_path, source):
    """Two gloo processes train on different shards; they must sample the same formats at every
    step and end with bit-identical policies (the reward is all-reduced)."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               SCRIPT, str(tmp_path), source]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert len(ranks[0]["history"]) == 60  # one sample per step
    assert ranks[0]["history"] == ranks[1]["history"]
    assert ranks[0]["logits"] == ranks[1]["logits"] and ranks[0]["baseline"] == ranks[1]["baseline"]
    assert ranks[0]["logits"] != [[0.0] * 3] * 4  # the policy did learn
