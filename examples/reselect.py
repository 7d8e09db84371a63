"""Recompute the answer of finished searches with the current --final_selection constrained.

    python examples/reselect.py OUTPUT_ROOT

For each search run under OUTPUT_ROOT (memory cost, weights and activations searched together),
rebuilds the policy's final log-probabilities and the per-decision cost table from results.json
and prints whether trainer.final_selection picks the formats the run chose. A run whose answer
would be the same needs no re-run after a change to the selection (the training does not depend
on it); one whose answer differs does. docs/results.md used this after the selection changed.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from quant.formats import parse_format
from trainer.final_selection import constrained_argmax

BYTES_PER_MIB = 2**20


def reselect(results: dict) -> list[str] | None:
    """The formats the current selection picks for one search run, or None if not recomputable."""
    search, args = results.get("search") or {}, results.get("args") or {}
    if results.get("method") != "search" or search.get("weight_only") or results["cost"]["cost_type"] != "memory":
        return None
    space, decisions = search["search_space"], search["decisions"]
    log_probs = torch.tensor([[math.log(p) if (p := d["probabilities"][f]) > 0 else float("-inf") for f in space]
                              for d in decisions.values()], dtype=torch.float64)
    costs = torch.tensor([[sum(results["layers"][layer]["num_weights"] for layer in d["layers"])
                           * parse_format(f).bits / 8 / BYTES_PER_MIB for f in space]
                          for d in decisions.values()], dtype=torch.float64)
    indices = constrained_argmax(log_probs, costs, results["cost"]["target"], args["target_tolerance"],
                                 one_sided=args["cost_function"] != "tunas_abs")
    return [space[int(i)] for i in indices]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python examples/reselect.py OUTPUT_ROOT (a directory of runs)", file=sys.stderr)
        return 2
    same = different = skipped = 0
    for path in sorted(Path(argv[0]).glob("*/*/results.json")):
        results = json.loads(path.read_text())
        if results.get("status") != "completed" or results.get("method") != "search":
            continue
        picked = reselect(results)
        if picked is None:
            skipped += 1
            continue
        chosen = [d["format"] for d in results["search"]["decisions"].values()]
        changed = sum(a != b for a, b in zip(picked, chosen))
        same, different = same + (changed == 0), different + (changed > 0)
        print(f"{path.parent.name}: {'same' if changed == 0 else f'{changed} decisions differ'}")
    print(f"{same} same, {different} different, {skipped} not recomputable (compute cost or weight-only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
