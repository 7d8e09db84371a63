import math

import pytest
import torch

from trainer.final_selection import constrained_argmax


def log(p):
    return torch.tensor(p, dtype=torch.float64).log()


# Three decisions, options (int2, int4): costs 1 or 2 for decision 0 and 1, 4 or 8 for decision 2.
COSTS = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 8.0]])


def test_argmax_inside_the_band_is_kept():
    probs = log([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])  # argmax (0, 0, 1): cost 10
    assert constrained_argmax(probs, COSTS, target=10.0, tolerance=0.05).tolist() == [0, 0, 1]


def test_undershoot_moves_the_cheapest_decision_per_unit_of_cost():
    probs = log([[0.8, 0.2], [0.6, 0.4], [0.9, 0.1]])  # argmax (0, 0, 0): cost 6, target 7
    # Moving decision 1 costs log(0.6/0.4) = 0.405 for 1 unit; decision 0 costs log 4 = 1.39 for 1 unit;
    # decision 2 would overshoot to 10 (distance 3 > 1): not a move towards the target.
    assert constrained_argmax(probs, COSTS, target=7.0, tolerance=0.05).tolist() == [0, 1, 0]
    # Target 8: first decision 1 (cheapest per unit), then decision 0.
    assert constrained_argmax(probs, COSTS, target=8.0, tolerance=0.05).tolist() == [1, 1, 0]


def test_overshoot_moves_down_and_masked_options_never_win():
    probs = log([[0.1, 0.9], [0.45, 0.55], [0.0, 1.0]])  # decision 2 may only be int4; argmax cost 12
    indices = constrained_argmax(probs, COSTS, target=11.0, tolerance=0.0)
    assert indices.tolist() == [1, 0, 1]  # 0.55 -> 0.45 is the cheaper move in log-probability
    assert math.isinf(probs[2, 0]) and indices[2] == 1


def test_unreachable_targets_stop_at_the_nearest():
    probs = log([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    assert constrained_argmax(probs, COSTS, target=0.1, tolerance=0.05).tolist() == [0, 0, 0]
    assert constrained_argmax(probs, COSTS, target=100.0, tolerance=0.05).tolist() == [1, 1, 1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="tolerance must be in"):
        constrained_argmax(log([[1.0]]), torch.ones(1, 1), 1.0, 1.5)
    with pytest.raises(ValueError, match="differ"):
        constrained_argmax(log([[1.0]]), torch.ones(1, 2), 1.0, 0.1)
