"""output.txt, the run's human-readable summary."""
from __future__ import annotations

from eval.run_outputs import summary_text


def results_with_cost(memory_mib: float, target: float) -> dict:
    return {"exp_name": "tiny", "task": "digits", "model_type": "resnet18", "method": "search",
            "status": "completed", "main_metric": "eval_accuracy", "metrics": {"eval_accuracy": 0.91234},
            "cost": {"memory_mib": memory_mib, "float_memory_mib": 12.5, "gbops": 0.0, "float_gbops": 1.5,
                     "target": target, "cost_type": "memory", "ratio": memory_mib / target},
            "wall_time_s": 3.04}


def test_summary_lines_with_amounts_of_every_size():
    # Amounts below 1 keep 4 significant digits: a tiny target printed as 0.0000 MiB said nothing.
    assert summary_text(results_with_cost(0.000012345, 0.00001)).splitlines() == [
        "run        tiny  (digits, resnet18, search)",
        "status     completed",
        "metric     eval_accuracy = 0.9123",
        "memory     1.234e-05 MiB (float 12.5000 MiB)",
        "compute    0.0000 GBOPs (float 1.5000 GBOPs)",
        "target     1.000e-05 MiB (memory); achieved ratio 1.234",
        "wall time  3.0 s",
    ]
    assert "target     0.3750 MiB (memory); achieved ratio 0.800" in summary_text(results_with_cost(0.3, 0.375))
