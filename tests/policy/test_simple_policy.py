"""SimplePolicy: closed-form probabilities, entropy and log-probs; sampling statistics,
determinism and masking."""
import math

import pytest
import torch

from policy.simple_policy import PolicySample, SimplePolicy


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _set_logits(policy: SimplePolicy, logits: list[list[float]]) -> None:
    with torch.no_grad():
        policy.logits.copy_(torch.tensor(logits))


def test_init_is_uniform_with_closed_form_entropy_and_log_prob():
    policy = SimplePolicy(num_decisions=3, num_options=4)
    probs = policy()
    assert torch.equal(probs, torch.full((3, 4), 0.25))
    assert policy.entropy().item() == pytest.approx(3 * math.log(4), abs=1e-6)
    assert policy.log_prob(torch.tensor([0, 3, 1])).item() == pytest.approx(-3 * math.log(4), abs=1e-6)
    assert torch.equal(policy.argmax(), torch.tensor([0, 0, 0]))


def test_masked_init_is_uniform_over_allowed_options():
    mask = torch.tensor([[True, True, True, True], [True, False, True, False], [False, False, False, True]])
    policy = SimplePolicy(3, 4, mask=mask)
    probs = policy()
    expected = torch.tensor([[0.25] * 4, [0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert torch.equal(probs, expected)
    assert policy.entropy().item() == pytest.approx(math.log(4) + math.log(2) + math.log(1), abs=1e-6)
    assert policy.log_prob(torch.tensor([1, 2, 3])).item() == pytest.approx(-math.log(4) - math.log(2), abs=1e-6)


def test_probabilities_entropy_log_prob_with_temperature_match_hand_computation():
    policy = SimplePolicy(2, 3, temperature=0.5)
    logits = [[0.0, math.log(2) / 2, math.log(3) / 2], [0.1, 0.1, 0.1]]
    _set_logits(policy, logits)
    # logits / 0.5 = [0, log 2, log 3] -> softmax = [1, 2, 3] / 6
    expected_row0 = [1 / 6, 2 / 6, 3 / 6]
    probs = policy()
    assert probs[0].tolist() == pytest.approx(expected_row0, abs=1e-7)
    assert probs[1].tolist() == pytest.approx([1 / 3] * 3, abs=1e-7)
    assert probs.sum(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-7)
    entropy_row0 = -sum(p * math.log(p) for p in expected_row0)
    assert policy.entropy_per_decision().tolist() == pytest.approx([entropy_row0, math.log(3)], abs=1e-6)
    assert policy.entropy().item() == pytest.approx(entropy_row0 + math.log(3), abs=1e-6)
    assert policy.log_prob(torch.tensor([2, 0])).item() == pytest.approx(math.log(0.5) - math.log(3), abs=1e-6)
    assert torch.equal(policy.argmax(), torch.tensor([2, 0]))


def test_masked_option_has_zero_probability_and_loses_argmax_even_with_the_largest_logit():
    mask = torch.tensor([[False, True, True]])
    policy = SimplePolicy(1, 3, mask=mask)
    _set_logits(policy, [[100.0, 0.0, 1.0]])
    assert policy()[0, 0].item() == 0.0
    assert policy.argmax().tolist() == [2]


def test_sample_returns_policy_sample_with_matching_log_prob_and_entropy():
    policy = SimplePolicy(3, 4)
    _set_logits(policy, [[0.5, -0.5, 0.0, 1.0], [0.0] * 4, [2.0, 0.0, 0.0, 0.0]])
    sample = policy.sample(_generator(0))
    assert isinstance(sample, PolicySample)
    assert sample.indices.dtype == torch.long and sample.indices.device.type == "cpu"
    assert sample.indices.shape == (3,)
    assert sample.log_prob.item() == pytest.approx(policy.log_prob(sample.indices).item(), abs=1e-7)
    assert sample.entropy.item() == pytest.approx(policy.entropy().item(), abs=1e-7)
    assert sample.log_prob.requires_grad and sample.entropy.requires_grad


def test_sampling_is_deterministic_given_the_generator_seed():
    policy = SimplePolicy(5, 3)
    _set_logits(policy, [[0.3, -0.1, 0.2]] * 5)
    gen_a, gen_b = _generator(1234), _generator(1234)
    draws_a = [policy.sample(gen_a).indices.tolist() for _ in range(20)]
    draws_b = [policy.sample(gen_b).indices.tolist() for _ in range(20)]
    assert draws_a == draws_b
    gen_c = _generator(4321)
    draws_c = [policy.sample(gen_c).indices.tolist() for _ in range(20)]
    assert draws_c != draws_a


def test_generator_advances_by_the_same_amount_whatever_the_probabilities():
    # DDP ranks stay in lockstep: the noise drawn per sample has a fixed shape (D, K).
    uniform, peaked = SimplePolicy(2, 3), SimplePolicy(2, 3)
    _set_logits(peaked, [[10.0, 0.0, 0.0], [0.0, 0.0, -10.0]])
    gen_a, gen_b = _generator(7), _generator(7)
    uniform.sample(gen_a)
    peaked.sample(gen_b)
    peaked.sample_uniform(gen_b)
    uniform.sample(gen_a)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def _chi_square(counts: torch.Tensor, probs: list[float]) -> float:
    """Pearson's statistic over the options with probability > 0."""
    expected = torch.tensor(probs, dtype=torch.float64) * counts.sum()
    allowed = expected > 0
    return float((((counts - expected) ** 2)[allowed] / expected[allowed]).sum())


# Each distribution is repeated over REPEATS decisions (independent draws), so a few samples
# give thousands of draws per distribution.
REPEATS, NUM_SAMPLES = 500, 8


def _counts(policy: SimplePolicy, num_distinct: int, uniform: bool, seed: int) -> torch.Tensor:
    """(num_distinct, K) counts of each option over REPEATS x NUM_SAMPLES draws."""
    counts = torch.zeros(num_distinct, policy.num_options, dtype=torch.float64)
    generator = _generator(seed)
    draw = policy.sample_uniform if uniform else policy.sample
    with torch.no_grad():
        for _ in range(NUM_SAMPLES):
            onehot = torch.nn.functional.one_hot(draw(generator).indices, policy.num_options)
            counts += onehot.double().view(REPEATS, num_distinct, -1).sum(dim=0)
    return counts


def test_empirical_frequencies_match_probabilities():
    rows = [[math.log(0.5), math.log(0.3), math.log(0.2)], [0.0, 0.0, 0.0], [2.0, 0.0, -1.0]]
    policy = SimplePolicy(3 * REPEATS, 3)
    _set_logits(policy, rows * REPEATS)
    counts = _counts(policy, num_distinct=3, uniform=False, seed=2024)
    probs = policy()[:3].tolist()
    assert probs[0] == pytest.approx([0.5, 0.3, 0.2], abs=1e-6)
    for decision in range(3):
        # 2 degrees of freedom: P(chi2 > 13.8) = 0.001.
        assert _chi_square(counts[decision], probs[decision]) < 13.8
    assert (counts[0] / counts[0].sum()).tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.03)


def test_masked_options_are_never_sampled_and_frequencies_follow_the_allowed_ones():
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]] * REPEATS)
    policy = SimplePolicy(2 * REPEATS, 4, mask=mask)
    _set_logits(policy, [[0.0, 50.0, math.log(3), 50.0], [50.0, 50.0, 50.0, 0.0]] * REPEATS)
    counts = _counts(policy, num_distinct=2, uniform=False, seed=5)
    assert counts[0, 1] == 0 and counts[0, 3] == 0 and counts[1, :3].sum() == 0
    assert counts[1, 3] == REPEATS * NUM_SAMPLES
    # 1 degree of freedom: P(chi2 > 10.8) = 0.001.
    assert _chi_square(counts[0], [0.25, 0.0, 0.75, 0.0]) < 10.8


def test_sample_uniform_is_uniform_over_allowed_options_but_scored_by_the_policy():
    mask = torch.tensor([[True, True, True], [True, False, True]] * REPEATS)
    policy = SimplePolicy(2 * REPEATS, 3, mask=mask)
    _set_logits(policy, [[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]] * REPEATS)
    counts = _counts(policy, num_distinct=2, uniform=True, seed=11)
    assert counts[1, 1] == 0
    assert _chi_square(counts[0], [1 / 3] * 3) < 13.8
    assert _chi_square(counts[1], [0.5, 0.0, 0.5]) < 10.8
    sample = policy.sample_uniform(_generator(3))
    assert sample.log_prob.item() == pytest.approx(policy.log_prob(sample.indices).item(), abs=1e-7)
    assert sample.entropy.item() == pytest.approx(policy.entropy().item(), abs=1e-7)


def test_masked_entropy_and_log_prob_gradients_are_finite_and_zero_on_masked_options():
    mask = torch.tensor([[True, False, True], [False, True, False]])
    policy = SimplePolicy(2, 3, mask=mask)
    _set_logits(policy, [[0.2, 0.0, -0.4], [0.0, 0.0, 0.0]])
    (policy.entropy() + policy.log_prob(torch.tensor([0, 1]))).backward()
    grad = policy.logits.grad
    assert torch.isfinite(grad).all()
    assert grad[0, 1].item() == 0.0 and grad[1].tolist() == [0.0, 0.0, 0.0]
    assert grad[0, 0].item() != 0.0


def test_repr_names_the_shape_temperature_and_masked_count():
    policy = SimplePolicy(2, 3, temperature=0.5, mask=torch.tensor([[True, False, True], [True] * 3]))
    assert repr(policy) == (
        "SimplePolicy(num_decisions=2, num_options=3, temperature=0.5, masked_options=1)"
    )


def test_state_dict_round_trip_keeps_logits_and_mask():
    mask = torch.tensor([[True, False], [True, True]])
    policy = SimplePolicy(2, 2, mask=mask)
    _set_logits(policy, [[0.1, 0.2], [0.3, 0.4]])
    restored = SimplePolicy(2, 2)
    restored.load_state_dict(policy.state_dict())
    assert torch.equal(restored.mask, mask)
    assert torch.equal(restored(), policy())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_decisions": 0, "num_options": 3}, r"num_decisions=0 must be an int >= 1"),
        ({"num_decisions": 2, "num_options": 0}, r"num_options=0 must be an int >= 1"),
        ({"num_decisions": 2.0, "num_options": 3}, r"num_decisions=2.0 must be an int >= 1"),
        ({"num_decisions": 2, "num_options": 3, "temperature": 0.0}, r"temperature=0.0 must be a finite number > 0"),
        ({"num_decisions": 2, "num_options": 3, "temperature": -1.0}, r"temperature=-1.0 must be a finite number > 0"),
        ({"num_decisions": 2, "num_options": 3, "temperature": float("nan")}, r"temperature=nan must be a finite"),
        ({"num_decisions": 2, "num_options": 3, "temperature": "1.0"}, r"temperature='1.0' must be a finite"),
        ({"num_decisions": 2, "num_options": 3, "mask": torch.ones(2, 3)}, r"mask must be a bool torch.Tensor .* got dtype torch.float32"),
        ({"num_decisions": 2, "num_options": 3, "mask": [[True] * 3] * 2}, r"mask must be a bool torch.Tensor .* got list"),
        ({"num_decisions": 2, "num_options": 3, "mask": torch.ones(3, 2, dtype=torch.bool)}, r"mask has shape \(3, 2\) but .* \(2, 3\)"),
        (
            {"num_decisions": 3, "num_options": 2, "mask": torch.tensor([[True, True], [False, False], [False, False]])},
            r"mask allows no option for decision\(s\) \[1, 2\]",
        ),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimplePolicy(**kwargs)


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        (torch.tensor([0, 1], dtype=torch.int32), r"indices must be a LongTensor .* got dtype torch.int32"),
        ([0, 1], r"indices must be a LongTensor .* got list"),
        (torch.tensor([0, 1, 0]), r"indices has shape \(3,\); expected \(2,\)"),
        (torch.tensor([0, 3]), r"indices\[1\]=3 is out of range; valid options are 0..2"),
        (torch.tensor([-1, 0]), r"indices\[0\]=-1 is out of range"),
        (torch.tensor([1, 0]), r"indices\[0\]=1 is masked out for decision 0 .* choose one of \[0, 2\]"),
    ],
)
def test_log_prob_errors(indices, match):
    policy = SimplePolicy(2, 3, mask=torch.tensor([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match=match):
        policy.log_prob(indices)


def test_sample_rejects_a_non_generator():
    policy = SimplePolicy(2, 3)
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator, got int"):
        policy.sample(0)
    with pytest.raises(ValueError, match=r"generator must be a torch.Generator, got NoneType"):
        policy.sample_uniform(None)


def test_sample_warmup_mixes_the_preferred_option_with_uniform_draws():
    policy = SimplePolicy(4, 3)
    preferred = torch.tensor([2, 0, 1, 2])
    always = policy.sample_warmup(torch.Generator().manual_seed(0), preferred, 1.0)
    assert torch.equal(always.indices, preferred)
    # With probability 0 it is exactly the uniform draw (the Gumbel-max argmax ignores a constant).
    never = policy.sample_warmup(torch.Generator().manual_seed(5), preferred, 0.0)
    assert torch.equal(never.indices, policy.sample_uniform(torch.Generator().manual_seed(5)).indices)
    generator = torch.Generator().manual_seed(1)
    hits = sum(int((policy.sample_warmup(generator, preferred, 0.4).indices == preferred).sum()) for _ in range(2000))
    assert abs(hits / 8000 - (0.4 + 0.6 / 3)) < 0.02
    with pytest.raises(ValueError, match=r"preferred_probability=1.5 must be in \[0, 1\]"):
        policy.sample_warmup(generator, preferred, 1.5)
    masked = SimplePolicy(1, 3, mask=torch.tensor([[True, False, True]]))
    draws = {int(masked.sample_warmup(generator, torch.tensor([0]), 0.5).indices) for _ in range(200)}
    assert draws == {0, 2}
