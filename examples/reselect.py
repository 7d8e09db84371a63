"""Recompute the answer of finished searches with the current --final_selection constrained.

    python examples/reselect.py OUTPUT_ROOT     (or one task's folder, OUTPUT_ROOT/TASK)

For each search run under OUTPUT_ROOT, rebuilds the policy's final log-probabilities and the
search's cost table (trainer.search_space, from the layers' sizes in results.json) and prints
whether trainer.final_selection picks the formats the run chose. A run whose answer would be the
same needs no re-run after a change to the selection (the training does not depend on it); one
whose answer differs does. docs/results.md used this after the selection changed.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from cost.model_cost import LayerCost, parse_cost_type
from eval.results_schema import COMPLETED, RESULTS_NAME
from quant.formats import parse_format
from trainer.final_selection import constrained_argmax, is_one_sided
from trainer.search_space import DecisionCostTable, SearchSpace


def reselect(results: dict) -> list[str]:
    """The formats (one per decision) the current selection picks for a completed search run."""
    search, args = results["search"], results["args"]
    decisions = search["decisions"]
    space = SearchSpace(tuple(parse_format(f) for f in search["search_space"]),
                        {name: tuple(d["layers"]) for name, d in decisions.items()},
                        weight_only=search["weight_only"], fixed_act_format=parse_format(args["act_format"]))
    costs = [LayerCost(name, layer["num_weights"], layer["macs_per_sample"])
             for name, layer in results["layers"].items()]
    table = DecisionCostTable(space, costs, parse_cost_type(results["cost"]["cost_type"])).table
    log_probs = torch.tensor([[math.log(p) if (p := d["probabilities"][f]) > 0 else float("-inf")
                               for f in space.option_names] for d in decisions.values()], dtype=torch.float64)
    indices = constrained_argmax(log_probs, table, results["cost"]["target"], args["target_tolerance"],
                                 one_sided=is_one_sided(args["cost_function"]))
    return [space.option_names[int(i)] for i in indices]


def main(argv: list[str]) -> int:
    usage = "usage: python examples/reselect.py OUTPUT_ROOT (a directory of runs: OUTPUT_ROOT/TASK/RUN/results.json)"
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(usage, file=sys.stderr)
        return 2
    root = Path(argv[0])
    paths = sorted(root.glob(f"*/*/{RESULTS_NAME}")) or sorted(root.glob(f"*/{RESULTS_NAME}"))  # a root or a task
    same = different = 0
    for path in paths:
        results = json.loads(path.read_text())
        if results.get("status") != COMPLETED or results.get("method") != "search":
            continue
        chosen = [d["format"] for d in results["search"]["decisions"].values()]
        changed = sum(a != b for a, b in zip(reselect(results), chosen))
        same, different = same + (changed == 0), different + (changed > 0)
        print(f"{path.parent.name}: {'same' if changed == 0 else f'{changed} decisions differ'}")
    if same + different == 0:
        print(f"no completed search run under {root}; {usage.removeprefix('usage: ')}", file=sys.stderr)
        return 1
    print(f"{same} same, {different} different")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
