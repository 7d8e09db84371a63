"""The final answer of a search: the most likely assignment, held to the cost target.

The policy's decisions are independent, so its most likely assignment is the per-decision argmax.
Near the end of a search, though, several decisions can still be split (say 80/20 between INT2
and INT4): the sampled models then average the target while the argmax, which takes the
majority side everywhere, misses it (on the text task by 17 %). `constrained_argmax` returns the
most likely assignment whose cost is inside the band, or, when none is, the one nearest to it.

The band follows the cost function: target * (1 +- tolerance) for tunas_abs, which penalises
both sides of the target; at most target * (1 + tolerance) for the others (one-sided tunas_abs
and hard_exponential do not penalise a cheaper model, soft_exponential rewards it).

Exact where the assignments can be enumerated (up to `exact_limit`, 2^20: a block or single
decision search, or a layer search with few layers and options). Beyond that (BERT-base per
layer has 8^74 assignments) a heuristic: from the argmax, while outside the band, the move (one
decision to another option) that gives up the least log-probability per unit of distance to the
band recovered; then, inside the band, single moves and pairs of moves that raise the
log-probability and stay inside, until none does. Not guaranteed optimal there.
"""
from __future__ import annotations

from enum import Enum

import torch


class FinalSelection(str, Enum):
    ARGMAX = "argmax"  # every decision's most likely format
    CONSTRAINED = "constrained"  # the most likely assignment within the cost band


EXACT_LIMIT = 1 << 20
_GAIN_EPS = 1e-12  # a log-probability gain below this is rounding, not an improvement


def cost_band(target: float, tolerance: float, one_sided: bool) -> tuple[float, float]:
    """[low, high] of the allowed cost; low is -inf when only exceeding the target is penalised."""
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    return (float("-inf") if one_sided else target * (1 - tolerance)), target * (1 + tolerance)


def _distance(cost: torch.Tensor | float, low: float, high: float) -> torch.Tensor:
    """How far a cost lies outside [low, high] (0 inside), in float64."""
    cost = torch.as_tensor(cost, dtype=torch.float64)
    return (low - cost).clamp(min=0) + (cost - high).clamp(min=0)


def constrained_argmax(log_probs: torch.Tensor, cost_table: torch.Tensor, target: float, tolerance: float, *,
                       one_sided: bool = False, exact_limit: int = EXACT_LIMIT) -> torch.Tensor:
    """(D,) option indices. log_probs (D, K), -inf for disallowed options; cost_table (D, K)."""
    if log_probs.shape != cost_table.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and cost_table {tuple(cost_table.shape)} differ")
    low, high = cost_band(target, tolerance, one_sided)
    log_probs = log_probs.detach().double().cpu()
    table = cost_table.detach().double().cpu()
    allowed = torch.isfinite(log_probs)
    assignments = 1
    for count in allowed.sum(dim=1).tolist():
        assignments *= count
    if assignments <= exact_limit:
        return _exact(log_probs, table, allowed, low, high)
    indices = _into_band(log_probs, table, allowed, low, high)
    return _improve_inside(indices, log_probs, table, allowed, low, high)


def _exact(log_probs: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, low: float, high: float
           ) -> torch.Tensor:
    """Enumerate every assignment: the nearest to the band, the most likely among those."""
    options = [torch.nonzero(row).flatten() for row in allowed]
    total_lp = torch.zeros(1, dtype=torch.float64)
    total_cost = torch.zeros(1, dtype=torch.float64)
    for d, opts in enumerate(options):  # flat index: decision 0 varies slowest
        total_lp = (total_lp[:, None] + log_probs[d, opts][None, :]).reshape(-1)
        total_cost = (total_cost[:, None] + table[d, opts][None, :]).reshape(-1)
    distance = _distance(total_cost, low, high)
    nearest = distance == distance.min()
    flat = int(total_lp.masked_fill(~nearest, float("-inf")).argmax())
    indices = torch.empty(len(options), dtype=torch.long)
    for d in reversed(range(len(options))):
        flat, k = divmod(flat, len(options[d]))
        indices[d] = options[d][k]
    return indices


def _into_band(log_probs: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, low: float, high: float
               ) -> torch.Tensor:
    """From the argmax, the cheapest moves (log-probability per unit of distance recovered) until
    the cost is inside the band or no single move gets closer."""
    indices = log_probs.argmax(dim=1)
    rows = torch.arange(len(indices))
    for _ in range(table.numel()):  # every move strictly shrinks the distance: this ends
        cost = float(table[rows, indices].sum())
        distance = float(_distance(cost, low, high))
        if distance == 0:
            break
        delta = table - table[rows, indices].unsqueeze(1)  # (D, K): cost change of moving d to option k
        distance_after = _distance(cost + delta, low, high)
        movable = allowed & (distance_after < distance)
        movable[rows, indices] = False  # staying put is no move
        if not bool(movable.any()):
            break
        price = (log_probs.gather(1, indices.unsqueeze(1)) - log_probs) / (distance - distance_after)
        decision, option = divmod(int(price.masked_fill(~movable, float("inf")).argmin()), table.shape[1])
        indices[decision] = option
    return indices


def _improve_inside(indices: torch.Tensor, log_probs: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor,
                    low: float, high: float) -> torch.Tensor:
    """Inside the band, the best single move or pair of moves (two decisions) that raises the
    log-probability and keeps the cost inside, until none does."""
    num_decisions, num_options = table.shape
    rows = torch.arange(num_decisions)
    decision_of = rows.repeat_interleave(num_options)  # (M,) for the M = D * K moves
    different = decision_of[:, None] != decision_of[None, :]  # (M, M): a pair moves two decisions
    for _ in range(num_decisions * num_options):
        cost = float(table[rows, indices].sum())
        if float(_distance(cost, low, high)) > 0:
            break  # the band is out of reach: nothing to keep inside
        gain = (log_probs - log_probs.gather(1, indices.unsqueeze(1))).reshape(-1)  # (M,)
        delta = (table - table[rows, indices].unsqueeze(1)).reshape(-1)
        ok = allowed.reshape(-1) & (gain > -float("inf"))
        single = gain.masked_fill(~(ok & (_distance(cost + delta, low, high) == 0)), float("-inf"))
        pair_gain = gain[:, None] + gain[None, :]
        pair_ok = ok[:, None] & ok[None, :] & different & (_distance(cost + delta[:, None] + delta[None, :], low,
                                                                               high) == 0)
        pair = pair_gain.masked_fill(~pair_ok, float("-inf"))
        best_single, best_pair = float(single.max()), float(pair.max())
        if max(best_single, best_pair) <= _GAIN_EPS:
            break
        if best_single >= best_pair:
            moves = [int(single.argmax())]
        else:
            first, second = divmod(int(pair.argmax()), len(gain))
            moves = [first, second]
        for move in moves:
            decision, option = divmod(move, num_options)
            indices[decision] = option
    return indices
