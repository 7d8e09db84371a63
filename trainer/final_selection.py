"""The final answer of a search: the most likely assignment, held to the cost target.

The policy's decisions are independent, so its most likely assignment is the per-decision argmax.
Near the end of a search, though, several decisions can still be split (say 80/20 between INT2
and INT4): the sampled models then average the target while the argmax, which takes the
majority side everywhere, misses it (on the text task by 17 %). `constrained_argmax` starts
from the argmax and, while its cost is outside target * (1 +- tolerance), makes the move (one
decision to another option) that gives up the least log-probability per unit of distance to the
target recovered, among the moves that bring the cost closer. With the argmax inside the band it
returns the argmax unchanged.
"""
from __future__ import annotations

from enum import Enum

import torch


class FinalSelection(str, Enum):
    ARGMAX = "argmax"  # every decision's most likely format
    CONSTRAINED = "constrained"  # the most likely assignment within the cost band (greedy)


def constrained_argmax(log_probs: torch.Tensor, cost_table: torch.Tensor, target: float,
                       tolerance: float) -> torch.Tensor:
    """(D,) option indices. log_probs (D, K), -inf for disallowed options; cost_table (D, K)."""
    if log_probs.shape != cost_table.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and cost_table {tuple(cost_table.shape)} differ")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    log_probs = log_probs.detach().double().cpu()
    table = cost_table.double().cpu()
    indices = log_probs.argmax(dim=1)
    rows = torch.arange(len(indices))
    low, high = target * (1 - tolerance), target * (1 + tolerance)
    allowed = torch.isfinite(log_probs)
    for _ in range(table.numel()):  # every move strictly shrinks |cost - target|: this ends
        cost = float(table[rows, indices].sum())
        if low <= cost <= high:
            break
        delta = table - table[rows, indices].unsqueeze(1)  # (D, K): cost change of moving d to option k
        distance_after = (cost + delta - target).abs()
        movable = allowed & (distance_after < abs(cost - target))
        if not bool(movable.any()):
            break  # no single move gets closer to the target
        # Log-probability given up per unit of cost distance recovered; the cheapest move wins.
        recovered = abs(cost - target) - distance_after
        price = (log_probs.gather(1, indices.unsqueeze(1)) - log_probs) / recovered
        price = price.masked_fill(~movable, float("inf"))
        decision, option = divmod(int(price.argmin()), table.shape[1])
        indices[decision] = option
    return indices
