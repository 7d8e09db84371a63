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
layer has 8^74 assignments) a dynamic programme over the decisions with the cost split into 2^16
buckets up to twice the extra cost the band allows (a multiple-choice knapsack): exact but for
assignments whose costs fall in one bucket, of which it keeps the most likely (the band is judged
on exact costs).
"""
from __future__ import annotations

import math
import numbers
from enum import Enum

import torch

from cost.cost import get_reward_form


class FinalSelection(str, Enum):
    ARGMAX = "argmax"  # every decision's most likely format
    CONSTRAINED = "constrained"  # the most likely assignment within the cost band


EXACT_LIMIT = 1 << 20
DP_BUCKETS = 1 << 16


def is_one_sided(cost_function: str) -> bool:
    """Whether a cost function's band is only an upper bound: whether its form leaves a model
    cheaper than the target unpenalised (`RewardForm.penalises_below_target`; of the built-in
    ones only tunas_abs penalises it: one_sided_tunas_abs and hard_exponential do not,
    soft_exponential rewards it)."""
    return not get_reward_form(cost_function).penalises_below_target


def cost_band(target: float, tolerance: float, one_sided: bool) -> tuple[float, float]:
    """[low, high] of the allowed cost; low is -inf when only exceeding the target is penalised."""
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target < math.inf:
        raise ValueError(f"the cost target must be a positive finite number, got {target!r}")
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
    if bool(torch.isnan(log_probs).any()) or not bool(torch.isfinite(table).all()):
        raise ValueError("log_probs has NaN or cost_table a non-finite cost; the policy or the cost model diverged")
    allowed = torch.isfinite(log_probs)
    empty = [d for d in range(allowed.shape[0]) if not bool(allowed[d].any())]
    if empty:
        raise ValueError(f"decisions {empty} have no allowed option (every log-probability is -inf)")
    if math.prod(allowed.sum(dim=1).tolist()) <= exact_limit:  # the number of assignments
        return _exact(log_probs, table, allowed, low, high)
    return _bucketed(log_probs, table, allowed, low, high)


def _exact(log_probs: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, low: float, high: float
           ) -> torch.Tensor:
    """Enumerate every assignment: the nearest to the band, the most likely among those."""
    options = [torch.nonzero(row).flatten() for row in allowed]
    total_lp = torch.zeros(1, dtype=torch.float64)
    total_cost = torch.zeros(1, dtype=torch.float64)
    for d, opts in enumerate(options):  # flat index: decision 0 varies slowest
        total_lp = (total_lp[:, None] + log_probs[d, opts][None, :]).reshape(-1)
        total_cost = (total_cost[:, None] + table[d, opts][None, :]).reshape(-1)
    flat = _pick(total_lp, total_cost, low, high)
    indices = torch.empty(len(options), dtype=torch.long)
    for d in reversed(range(len(options))):
        flat, k = divmod(flat, len(options[d]))
        indices[d] = options[d][k]
    return indices


def _pick(total_lp: torch.Tensor, total_cost: torch.Tensor, low: float, high: float) -> int:
    """Index of the nearest total cost to the band, the most likely among those."""
    distance = _distance(total_cost, low, high).masked_fill(~torch.isfinite(total_lp), float("inf"))
    nearest = distance == distance.min()
    return int(total_lp.masked_fill(~nearest, float("-inf")).argmax())


def _bucketed(log_probs: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, low: float, high: float,
              buckets: int = DP_BUCKETS) -> torch.Tensor:
    """Dynamic programme over the decisions (a multiple-choice knapsack): for every cost bucket,
    the most likely partial assignment landing there, its exact cost and the option each decision
    took. The buckets split the extra cost over the cheapest assignment up to twice what the band
    allows (so one costly option elsewhere does not coarsen them); partial assignments beyond
    that share one overflow bucket, which keeps the most likely. Exact but for assignments merged
    in one bucket (their costs differ by less than about D buckets' width); the band is judged
    on exact costs."""
    num_decisions, num_options = table.shape
    big = torch.finfo(torch.float64).max
    base = table.masked_fill(~allowed, big).min(dim=1).values  # (D,) cheapest allowed option
    extra = (table - base[:, None]).masked_fill(~allowed, 0.0)  # (D, K) >= 0 over the cheapest
    span = float(extra.max(dim=1).values.sum())
    reach = high - float(base.sum())  # the most extra cost an assignment in the band can have
    if reach <= 0:
        # Nothing is cheaper than the band's top, or nothing is inside: the answer is the cheapest
        # assignment (every decision at a cheapest option), the most likely of those.
        cheapest = allowed & (extra == 0)
        return log_probs.masked_fill(~cheapest, float("-inf")).argmax(dim=1)
    limit = min(span, 2 * reach)
    width = limit / (buckets - 1) if limit > 0 else 1.0
    overflow = buckets  # index of the bucket past `limit`
    shifts = (extra / width).round().clamp(max=overflow).long()  # (D, K) bucket offset of each option
    size = overflow + 1
    best_lp = torch.full((size,), float("-inf"), dtype=torch.float64)
    best_lp[0] = 0.0
    # Cost of the kept partial assignment, summed from the table in decision order as `_exact`
    # sums it (a sum of extras plus the cheapest total can land an ulp off, across a band edge).
    exact = torch.zeros(size, dtype=torch.float64)
    choice = torch.zeros((num_decisions, size), dtype=torch.int16)
    overflow_parent = [0] * num_decisions  # bucket before decision d of the kept overflow entry
    for d in range(num_decisions):
        new_lp = torch.full_like(best_lp, float("-inf"))
        new_exact = torch.zeros_like(exact)
        for k in torch.nonzero(allowed[d]).flatten().tolist():
            shift = int(shifts[d, k])
            candidate = torch.full_like(best_lp, float("-inf"))
            moved = torch.zeros_like(exact)
            candidate[shift:overflow] = best_lp[: overflow - shift] + log_probs[d, k]
            moved[shift:overflow] = exact[: overflow - shift] + table[d, k]
            # Every bucket from overflow - shift on lands in the overflow bucket: keep the most likely.
            first = max(overflow - shift, 0)
            parent = first + int(best_lp[first:].argmax())
            candidate[overflow] = best_lp[parent] + log_probs[d, k]
            moved[overflow] = exact[parent] + table[d, k]
            better = candidate > new_lp
            new_lp = torch.where(better, candidate, new_lp)
            new_exact = torch.where(better, moved, new_exact)
            choice[d][better] = k
            if bool(better[overflow]):
                overflow_parent[d] = parent
        best_lp, exact = new_lp, new_exact
    bucket = _pick(best_lp, exact, low, high)
    indices = torch.empty(num_decisions, dtype=torch.long)
    for d in reversed(range(num_decisions)):
        indices[d] = int(choice[d, bucket])
        bucket = overflow_parent[d] if bucket == overflow else bucket - int(shifts[d, indices[d]])
    return indices
