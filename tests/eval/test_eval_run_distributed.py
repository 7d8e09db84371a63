"""eval_run as two CPU ranks under torch.distributed.run (gloo): the multi-GPU path of
eval_parallel.py --gpus_per_run K, end to end."""
import json

import pytest

from tests.distributed_launch import failure_report, launch_with_one_relaunch
from tests.eval.test_eval_run import FAST, RESNET_TINY


@pytest.mark.slow
def test_search_as_two_ranks_writes_one_consistent_result(tmp_path):
    def target(attempt: int) -> list[str]:
        return ["-m", "eval.eval_run", *RESNET_TINY, "--search_space", "int2,int4,int8", "--cost_target_bits", "4",
                "--delay_steps", "2", *FAST, "--output_root_dir", str(tmp_path / f"attempt{attempt}")]

    result, attempt = launch_with_one_relaunch(target)
    assert result.returncode == 0, failure_report(result)
    assert "Traceback" not in result.stderr
    # Every parameter is used, so DDP is not asked to look for unused ones (HF's default would).
    assert "find_unused_parameters=True was specified" not in result.stderr
    (results_file,) = (tmp_path / f"attempt{attempt}").glob("*/*/results.json")
    results = json.loads(results_file.read_text())
    assert results["status"] == "completed" and results["method"] == "search"
    assert results["search"]["steps"] == 8 and results["search"]["non_finite_steps"] == 0
    decisions = results["search"]["decisions"]
    assert {name: layer["weight_format"] for name, layer in results["layers"].items()} == \
        {name: decision["format"] for name, decision in decisions.items()}
    # Only rank 0 writes the summary; a second writer would print it twice.
    assert result.stdout.count("final policy") == 1
    assert (results_file.parent / "final_model" / "config.json").is_file()
