"""Pareto frontier of metric vs cost (eval/pareto.py) on hand-checked points."""
from __future__ import annotations

import random

import pytest

from eval.pareto import dominates, pareto_indices, pareto_mask


def brute_force_mask(costs, metrics, higher_is_better=True):
    points = list(zip(costs, metrics))
    return [not any(dominates(q, p, higher_is_better) for q in points) for p in points]


def test_hand_checked_frontier():
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, 0.5]
    metrics = [0.5, 0.7, 0.6, 0.7, 0.9, 0.1]
    # (2, 0.6) loses to (2, 0.7) at equal cost; (3, 0.7) loses to (2, 0.7) at equal metric.
    assert pareto_mask(costs, metrics) == [True, True, False, False, True, True]
    assert pareto_indices(costs, metrics) == [5, 0, 1, 4]


def test_duplicates_are_both_on_the_frontier():
    assert pareto_mask([1.0, 1.0, 2.0], [1.0, 1.0, 0.5]) == [True, True, False]
    assert pareto_mask([1.0, 1.0, 2.0], [1.0, 1.0, 2.0]) == [True, True, True]
    # A duplicate of a dominated point stays dominated.
    assert pareto_mask([1.0, 2.0, 2.0], [1.0, 0.5, 0.5]) == [True, False, False]


def test_ties_in_one_coordinate():
    assert pareto_mask([1.0, 1.0], [0.5, 0.6]) == [False, True]
    assert pareto_mask([1.0, 2.0], [0.6, 0.6]) == [True, False]


def test_lower_is_better_metric():
    costs, losses = [1.0, 2.0, 3.0, 0.5], [0.3, 0.2, 0.25, 0.3]
    assert pareto_mask(costs, losses, higher_is_better=False) == [False, True, False, True]
    assert pareto_mask(costs, losses, higher_is_better=True) == [False, False, False, True]


def test_empty_and_single():
    assert pareto_mask([], []) == []
    assert pareto_mask([3.0], [0.1]) == [True]


def test_matches_brute_force_on_random_points_with_many_ties():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 40)
        costs = [float(rng.randint(0, 6)) for _ in range(n)]
        metrics = [float(rng.randint(0, 6)) for _ in range(n)]
        for higher in (True, False):
            assert pareto_mask(costs, metrics, higher) == brute_force_mask(costs, metrics, higher)


def test_dominates():
    assert dominates((1.0, 0.9), (2.0, 0.9))
    assert not dominates((1.0, 0.9), (1.0, 0.9))
    assert not dominates((1.0, 0.8), (2.0, 0.9))
    assert dominates((1.0, 0.1), (1.0, 0.2), higher_is_better=False)


def test_bad_input():
    with pytest.raises(ValueError, match="got 2 costs but 1 metrics"):
        pareto_mask([1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match=r"point 1 is \(cost=2.0, metric=nan\); the frontier needs finite values"):
        pareto_mask([1.0, 2.0], [0.5, float("nan")])
    with pytest.raises(ValueError, match="frontier needs finite values"):
        pareto_mask([float("inf")], [0.5])


def test_interpolate_uniform_line_on_hand_checked_points():
    from eval.pareto import interpolate_uniform_line, uniform_line

    uniform = [(2.0, 0.1), (4.0, 0.9), (8.0, 0.95), (4.0, 0.8), (6.0, 0.5)]  # (4, 0.8) and (6, 0.5) are dominated
    assert uniform_line(uniform) == [(2.0, 0.1), (4.0, 0.9), (8.0, 0.95)]
    assert interpolate_uniform_line(uniform, 3.0) == pytest.approx(0.5)
    assert interpolate_uniform_line(uniform, 2.5) == pytest.approx(0.3)
    assert interpolate_uniform_line(uniform, 6.0) == pytest.approx(0.925)
    assert interpolate_uniform_line(uniform, 4.0) == pytest.approx(0.9)
    assert interpolate_uniform_line(uniform, 1.0) is None and interpolate_uniform_line(uniform, 9.0) is None
    # The costliest baseline dominated: the line ends earlier, and stays level up to its cost.
    dominated_top = [(2.66, 0.09), (5.33, 0.30), (10.65, 0.25)]
    assert uniform_line(dominated_top) == [(2.66, 0.09), (5.33, 0.30)]
    assert interpolate_uniform_line(dominated_top, 8.0) == 0.30 and interpolate_uniform_line(dominated_top, 10.65) == 0.30
    assert interpolate_uniform_line(dominated_top, 10.7) is None
    assert interpolate_uniform_line([], 3.0) is None
    assert interpolate_uniform_line([(3.0, 0.7)], 3.0) == 0.7
    # Lower is better (a loss): the line runs through the lowest losses.
    assert interpolate_uniform_line([(2.0, 2.0), (4.0, 1.0), (4.0, 1.5)], 3.0, higher_is_better=False) == 1.5


@pytest.mark.parametrize("name, higher", [
    ("eval_accuracy", True), ("eval_f1", True), ("eval_matthews_correlation", True), ("eval_pearson", True),
    ("eval_loss", False), ("eval_perplexity", False), ("eval_ppl", False), ("test_error_rate", False),
    ("eval_mse", False), ("eval_MAE", False), ("eval_rmse", False), ("eval_wer", False),
    ("eval_stderr", True),  # a word of the name must match, not a part of one
])
def test_metric_direction_from_its_name(name, higher):
    from eval.pareto import metric_higher_is_better

    assert metric_higher_is_better(name) is higher
