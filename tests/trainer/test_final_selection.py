import math
import re

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
    # NaN used to answer index 0 whatever the probabilities, a negative target likewise
    for target in (float("nan"), -5.0, 0.0, float("inf"), "1", True):
        with pytest.raises(ValueError, match=rf"^the cost target must be a positive finite number, got "
                                             rf"{re.escape(repr(target))}$"):
            constrained_argmax(log([[0.01, 0.99]]), torch.tensor([[1.0, 2.0]]), target, 0.05)


def brute_force(log_probs, costs, low, high):
    """Every assignment: the nearest to [low, high], the most likely among those."""
    import itertools

    best = None
    for combo in itertools.product(*(range(costs.shape[1]),) * costs.shape[0]):
        lp = sum(float(log_probs[d, k]) for d, k in enumerate(combo))
        if lp == float("-inf"):
            continue
        cost = sum(float(costs[d, k]) for d, k in enumerate(combo))
        key = (max(low - cost, cost - high, 0.0), -lp)
        if best is None or key < best[0]:
            best = (key, list(combo))
    return best[1]


@pytest.mark.parametrize("seed", range(20))
def test_exact_selection_equals_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(6, 3, generator=generator, dtype=torch.float64).log_softmax(dim=1)
    log_probs[seed % 6, seed % 3] = float("-inf")  # a disallowed option
    costs = torch.randint(1, 20, (6, 3), generator=generator).double()
    target = float(costs.mean(dim=1).sum()) * (0.8 + 0.02 * seed)
    for one_sided in (False, True):
        low = float("-inf") if one_sided else target * 0.95
        got = constrained_argmax(log_probs, costs, target, 0.05, one_sided=one_sided).tolist()
        assert got == brute_force(log_probs, costs, low, target * 1.05)


def test_one_sided_band_keeps_a_cheaper_argmax():
    probs = log([[0.8, 0.2], [0.6, 0.4], [0.9, 0.1]])  # argmax (0, 0, 0): cost 6, under the target 8
    assert constrained_argmax(probs, COSTS, target=8.0, tolerance=0.05).tolist() == [1, 1, 0]
    assert constrained_argmax(probs, COSTS, target=8.0, tolerance=0.05, one_sided=True).tolist() == [0, 0, 0]
    # Over the target, one-sided still comes down: the argmax (0, 0, 1) costs 10 > 8.4; of the
    # assignments at most 8.4, (0, 0, 0) is the most likely (0.144 against 0.096 for (0, 1, 0)).
    probs = log([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    assert constrained_argmax(probs, COSTS, target=8.0, tolerance=0.05, one_sided=True).tolist() == [0, 0, 0]
    assert constrained_argmax(probs, COSTS, target=8.0, tolerance=0.05).tolist() == [1, 1, 0]  # only 8 in 7.6..8.4


def test_large_spaces_use_the_bucketed_programme_which_equals_the_exact_answer():
    # Layer sizes 1 .. 64 at 2/4/8 bits around a 4-bit target: one big layer's move overshoots the
    # band, which a greedy path cannot recover from (it missed the band in 2 of 60 such cases).
    import random

    random.seed(0)
    generator = torch.Generator().manual_seed(0)
    bits = torch.tensor([2.0, 4.0, 8.0], dtype=torch.float64)
    for trial in range(60):
        sizes = torch.tensor([random.choice([1, 2, 4, 8, 16, 64]) for _ in range(12)], dtype=torch.float64)
        costs = sizes[:, None] * bits[None, :] / 8
        log_probs = torch.log_softmax(torch.randn(12, 3, generator=generator, dtype=torch.float64) * 2, dim=1)
        target = float(sizes.sum() * 4 / 8)
        for one_sided in (False, True):
            exact = constrained_argmax(log_probs, costs, target, 0.05, one_sided=one_sided)
            bucketed = constrained_argmax(log_probs, costs, target, 0.05, one_sided=one_sided, exact_limit=0)
            assert bucketed.tolist() == exact.tolist(), (trial, one_sided)


@pytest.mark.parametrize("seed", range(10))
def test_bucketed_programme_on_real_valued_costs(seed):
    generator = torch.Generator().manual_seed(100 + seed)
    log_probs = torch.randn(12, 4, generator=generator, dtype=torch.float64).mul(2).log_softmax(dim=1)
    log_probs[seed, seed % 4] = float("-inf")
    costs = torch.rand(12, 4, generator=generator, dtype=torch.float64).mul(10)
    target = float(costs.mean(dim=1).sum())
    exact = constrained_argmax(log_probs, costs, target, 0.05)
    bucketed = constrained_argmax(log_probs, costs, target, 0.05, exact_limit=0)
    rows = torch.arange(12)
    assert abs(float(costs[rows, bucketed].sum()) / target - 1) <= 0.05
    assert float(log_probs[rows, bucketed].sum()) == pytest.approx(float(log_probs[rows, exact].sum()), abs=1e-9)


def test_bucketed_programme_scales_to_a_bert_base_layer_search():
    # 74 decisions x 8 formats (8^74 assignments, beyond enumeration): lands in the band, and no
    # change of one or two decisions gives a more likely assignment inside it.
    generator = torch.Generator().manual_seed(1)
    log_probs = torch.randn(74, 8, generator=generator, dtype=torch.float64).mul(3).log_softmax(dim=1)
    sizes = torch.randint(1, 2400, (74,), generator=generator).double()
    costs = sizes[:, None] * torch.tensor([2, 3, 4, 4, 6, 8, 8, 16], dtype=torch.float64)[None, :] / 8
    target = float(sizes.sum() * 5 / 8)
    found = constrained_argmax(log_probs, costs, target, 0.05)
    rows = torch.arange(74)
    assert abs(float(costs[rows, found].sum()) / target - 1) <= 0.05
    cost = float(costs[rows, found].sum())
    gain = (log_probs - log_probs[rows, found][:, None]).reshape(-1)  # (74 * 8,) one decision changed
    delta = (costs - costs[rows, found][:, None]).reshape(-1)
    decision = torch.arange(74).repeat_interleave(8)

    def in_band(c):
        return ((c / target - 1).abs() <= 0.05)

    assert not bool((in_band(cost + delta) & (gain > 1e-9)).any())
    pair_gain = gain[:, None] + gain[None, :]
    pairs = in_band(cost + delta[:, None] + delta[None, :]) & (decision[:, None] != decision[None, :])
    assert not bool((pairs & (pair_gain > 1e-9)).any())


def test_bucketed_programme_resolves_the_band_despite_one_costly_option():
    # One option far above the band (1e6) used to set the bucket width: every other option (cost
    # 1) then fell in bucket 0, and the programme kept only the most likely, missing the band.
    decisions = 21
    logits = torch.tensor([[3.0, 0.0]] + [[0.0, 0.5]] * (decisions - 1), dtype=torch.float64)
    costs = torch.tensor([[0.0, 1e6]] + [[0.0, 1.0]] * (decisions - 1), dtype=torch.float64)
    log_probs = logits.log_softmax(dim=1)
    exact = constrained_argmax(log_probs, costs, 10.0, 0.05, exact_limit=1 << 22)
    bucketed = constrained_argmax(log_probs, costs, 10.0, 0.05, exact_limit=0)
    rows = torch.arange(decisions)
    assert float(costs[rows, exact].sum()) == 10.0
    assert float(costs[rows, bucketed].sum()) == 10.0
    assert float(log_probs[rows, bucketed].sum()) == float(log_probs[rows, exact].sum())
    # A band below the cheapest assignment (every cost at least 21 against a target of 10): the
    # cheapest one, not the most likely of everything merged into the first bucket.
    costs = torch.tensor([[10.0, 1e6]] + [[1.0, 2.0]] * (decisions - 1), dtype=torch.float64)
    exact = constrained_argmax(log_probs, costs, 10.0, 0.05, exact_limit=1 << 22)
    bucketed = constrained_argmax(log_probs, costs, 10.0, 0.05, exact_limit=0)
    assert float(costs[rows, exact].sum()) == float(costs[rows, bucketed].sum()) == 30.0
    assert bucketed.tolist() == exact.tolist() == [0] * decisions


@pytest.mark.parametrize("seed", range(12))
def test_bucketed_programme_with_costly_options_equals_brute_force(seed):
    # Options far past the band land in the overflow bucket; targets from unreachable (below the
    # cheapest assignment) to above the dearest without the outliers, tolerance 0 included.
    generator = torch.Generator().manual_seed(200 + seed)
    log_probs = torch.randn(7, 3, generator=generator, dtype=torch.float64).mul(2).log_softmax(dim=1)
    costs = torch.randint(1, 10, (7, 3), generator=generator).double()
    costs[seed % 7, 2] = 1000.0
    costs[(seed + 3) % 7, 1] = 400.0
    target = float(costs.min(dim=1).values.sum()) * (0.7 + 0.15 * seed)
    tolerance = 0.0 if seed % 4 == 0 else 0.05
    for one_sided in (False, True):
        low, high = (float("-inf") if one_sided else target * (1 - tolerance)), target * (1 + tolerance)
        want = brute_force(log_probs, costs, low, high)
        got = constrained_argmax(log_probs, costs, target, tolerance, one_sided=one_sided, exact_limit=0)
        assert got.tolist() == want, (seed, one_sided)


def test_bucketed_programme_judges_a_cost_on_the_band_edge_as_the_enumeration_does():
    # The target is one assignment's exact cost and the tolerance 0: the most likely assignment,
    # [1, 1], sits on the band's edge. A cost summed as extras over the cheapest total landed an
    # ulp above the edge and lost it to [0, 1].
    log_probs = log([[0.3, 0.7], [0.3, 0.7]])
    costs = torch.tensor([[0.7576039219664368, 0.8767703708227748], [0.9233810159462806, 0.8424602231401824]],
                         dtype=torch.float64)
    target = float(costs[0, 1] + costs[1, 1])
    for exact_limit in (0, 1 << 20):
        assert constrained_argmax(log_probs, costs, target, 0.0, one_sided=True,
                                  exact_limit=exact_limit).tolist() == [1, 1]


@pytest.mark.parametrize("seed", range(8))
def test_bucketed_programme_equals_brute_force_with_targets_on_an_assignment(seed):
    # Targets equal to some assignment's exact cost (summed in decision order), tolerance 0:
    # every band edge sits on a real cost.
    generator = torch.Generator().manual_seed(300 + seed)
    log_probs = torch.randn(6, 3, generator=generator, dtype=torch.float64).log_softmax(dim=1)
    costs = torch.rand(6, 3, generator=generator, dtype=torch.float64)
    for pick in torch.randint(0, 3, (5, 6), generator=generator):
        target = 0.0
        for d, k in enumerate(pick.tolist()):
            target += float(costs[d, k])
        for one_sided in (False, True):
            low, high = (float("-inf") if one_sided else target), target
            want = brute_force(log_probs, costs, low, high)
            got = constrained_argmax(log_probs, costs, target, 0.0, one_sided=one_sided, exact_limit=0)
            assert got.tolist() == want, (seed, pick.tolist(), one_sided)


def test_bad_policies_are_named():
    with pytest.raises(ValueError, match=r"decisions \[1\] have no allowed option"):
        constrained_argmax(log([[0.5, 0.5], [0.0, 0.0]]), torch.ones(2, 2), 1.0, 0.1)
    with pytest.raises(ValueError, match="log_probs has NaN"):
        constrained_argmax(torch.tensor([[float("nan"), 0.0]]), torch.ones(1, 2), 1.0, 0.1)
