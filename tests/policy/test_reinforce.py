"""reinforce_loss and reinforce_gradient against a hand-computed REINFORCE gradient; EmaBaseline values and
checkpoints."""
import math

import pytest
import torch

from policy.reinforce import EmaBaseline, reinforce_gradient, reinforce_loss
from policy.simple_policy import PolicySample, ScoreGradients, SimplePolicy


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def _hand_gradient(logits, temperature, indices, advantage, entropy_beta):
    """d/dlogits of -A * sum_d log p_d(i_d) + beta * sum_d H_d, written out per element.

    d log p_i / d l_j = (onehot_i(j) - p_j) / T
    d H / d l_j       = -p_j (log p_j + H) / T
    """
    grad = []
    for row, chosen in zip(logits, indices):
        probs = _softmax([x / temperature for x in row])
        entropy = -sum(p * math.log(p) for p in probs)
        grad_row = []
        for j, p in enumerate(probs):
            d_log_prob = ((1.0 if j == chosen else 0.0) - p) / temperature
            d_entropy = -p * (math.log(p) + entropy) / temperature
            grad_row.append(-advantage * d_log_prob + entropy_beta * d_entropy)
        grad.append(grad_row)
    return grad


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(("advantage", "entropy_beta"), [(0.8, 0.3), (-1.5, -0.2), (0.0, 1.0)])
def test_loss_gradient_matches_hand_computed_reinforce_gradient(temperature, advantage, entropy_beta):
    logits = [[0.3, -0.2], [1.0, 0.5]]
    indices = [1, 0]
    policy = SimplePolicy(2, 2, temperature=temperature)
    with torch.no_grad():
        policy.logits.copy_(torch.tensor(logits))
    chosen = torch.tensor(indices)
    decision_log_probs = policy.log_probabilities().gather(1, chosen.unsqueeze(1)).squeeze(1)
    sample = PolicySample(indices=chosen, decision_log_probs=decision_log_probs, log_prob=decision_log_probs.sum(),
                          entropy=policy.entropy())
    reinforce_loss(sample, advantage, entropy_beta).backward()
    expected = torch.tensor(_hand_gradient(logits, temperature, indices, advantage, entropy_beta))
    torch.testing.assert_close(policy.logits.grad, expected, atol=1e-6, rtol=0)
    # One advantage per decision: row d of the gradient uses advantage_d.
    policy.logits.grad = None
    per_decision = [advantage, 2.0 * advantage - 0.5]
    sample = PolicySample(chosen, policy.log_probabilities().gather(1, chosen.unsqueeze(1)).squeeze(1),
                          policy.log_prob(chosen), policy.entropy())
    reinforce_loss(sample, torch.tensor(per_decision), entropy_beta).backward()
    expected_rows = [_hand_gradient([row], temperature, [i], a, entropy_beta)[0]
                     for row, i, a in zip(logits, indices, per_decision)]
    torch.testing.assert_close(policy.logits.grad, torch.tensor(expected_rows), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(("advantage", "entropy_beta"), [(0.8, 0.3), (-1.5, -0.2), (0.0, 1.0)])
def test_closed_form_gradient_matches_hand_computed_and_autograd(temperature, advantage, entropy_beta):
    logits = [[0.3, -0.2, 0.9], [1.0, 0.5, -2.0], [0.0, 0.0, 0.1]]
    indices = [1, 0, 2]
    policy = SimplePolicy(3, 3, temperature=temperature)
    with torch.no_grad():
        policy.logits.copy_(torch.tensor(logits))
    chosen = torch.tensor(indices)
    gradients = policy.score_gradients(chosen)
    assert gradients.log_prob.dtype == gradients.entropy.dtype == torch.float64
    logits = policy.logits.double().tolist()  # the float32 values the policy holds
    hand = torch.tensor(_hand_gradient(logits, temperature, indices, advantage, entropy_beta), dtype=torch.float64)
    # float64 closed form against float64 arithmetic by hand
    torch.testing.assert_close(reinforce_gradient(gradients, advantage, entropy_beta), hand, atol=1e-12, rtol=0)
    per_decision = torch.tensor([advantage, 2.0 * advantage - 0.5, -advantage], dtype=torch.float64)
    expected_rows = torch.tensor([_hand_gradient([row], temperature, [i], float(a), entropy_beta)[0]
                                  for row, i, a in zip(logits, indices, per_decision)], dtype=torch.float64)
    torch.testing.assert_close(reinforce_gradient(gradients, per_decision, entropy_beta), expected_rows,
                               atol=1e-12, rtol=0)
    # and autograd through reinforce_loss (float32) gives the same gradient up to its rounding
    sample = PolicySample(chosen, policy.log_probabilities().gather(1, chosen.unsqueeze(1)).squeeze(1),
                          policy.log_prob(chosen), policy.entropy())
    reinforce_loss(sample, per_decision, entropy_beta).backward()
    torch.testing.assert_close(policy.logits.grad.double(), reinforce_gradient(gradients, per_decision, entropy_beta),
                               atol=1e-6, rtol=0)


def test_score_gradients_at_uniform_init_in_closed_form():
    policy = SimplePolicy(2, 4, temperature=0.5)
    gradients = policy.score_gradients(torch.tensor([3, 0]))
    # p = 1/4 everywhere: d log p_k / d l_j = (1[j = k] - 1/4) / T; the entropy is at its maximum (gradient 0).
    expected = torch.tensor([[-0.5, -0.5, -0.5, 1.5], [1.5, -0.5, -0.5, -0.5]], dtype=torch.float64)
    assert torch.equal(gradients.log_prob, expected)
    assert torch.equal(gradients.entropy, torch.zeros(2, 4, dtype=torch.float64))


def test_score_gradients_of_disallowed_options_are_zero():
    mask = torch.tensor([[True, False, True], [True, True, True]])
    policy = SimplePolicy(2, 3, mask=mask)
    with torch.no_grad():
        policy.logits.copy_(torch.tensor([[0.4, 5.0, -0.3], [0.1, 0.2, 0.3]]))
    chosen = torch.tensor([2, 1])
    gradients = policy.score_gradients(chosen)
    assert gradients.log_prob[0, 1].item() == 0.0 and gradients.entropy[0, 1].item() == 0.0
    assert torch.isfinite(gradients.entropy).all()
    sample = PolicySample(chosen, policy.log_probabilities().gather(1, chosen.unsqueeze(1)).squeeze(1),
                          policy.log_prob(chosen), policy.entropy())
    reinforce_loss(sample, 0.7, 0.4).backward()
    torch.testing.assert_close(policy.logits.grad.double(), reinforce_gradient(gradients, 0.7, 0.4), atol=1e-6, rtol=0)


def test_score_gradients_check_the_indices():
    policy = SimplePolicy(2, 3, mask=torch.tensor([[True, False, True], [True, True, True]]))
    checked, unchecked = policy.score_gradients(torch.tensor([2, 1])), policy.score_gradients(torch.tensor([2, 1]),
                                                                                               check=False)
    assert torch.equal(checked.log_prob, unchecked.log_prob) and torch.equal(checked.entropy, unchecked.entropy)
    with pytest.raises(ValueError, match=r"indices\[1\]=3 is out of range; valid options are 0..2"):
        policy.score_gradients(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"indices\[0\]=1 is masked out for decision 0"):
        policy.score_gradients(torch.tensor([1, 0]))


def test_reinforce_gradient_rejects_bad_advantages_and_beta():
    gradients = ScoreGradients(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"per-decision advantages have shape \(3,\); expected \(2,\)"):
        reinforce_gradient(gradients, torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match=r"per-decision advantages must be finite"):
        reinforce_gradient(gradients, torch.tensor([0.0, float("nan")]), 0.0)
    with pytest.raises(ValueError, match=r"advantage=inf must be finite"):
        reinforce_gradient(gradients, float("inf"), 0.0)
    with pytest.raises(ValueError, match=r"entropy_beta=nan must be finite"):
        reinforce_gradient(gradients, 0.0, float("nan"))


def test_loss_value_at_uniform_init():
    policy = SimplePolicy(2, 2)
    sample = policy.sample(torch.Generator().manual_seed(0))
    # log_prob = -2 log 2 and entropy = 2 log 2 whatever was drawn.
    loss = reinforce_loss(sample, advantage=0.5, entropy_beta=0.25)
    assert loss.item() == pytest.approx(-0.5 * (-2 * math.log(2)) + 0.25 * 2 * math.log(2), abs=1e-6)


def test_positive_entropy_beta_drives_convergence_and_negative_rewards_exploration():
    def entropy_after_steps(entropy_beta: float) -> tuple[float, float]:
        policy = SimplePolicy(1, 3)
        with torch.no_grad():
            policy.logits.copy_(torch.tensor([[0.2, 0.0, -0.1]]))
        start = policy.entropy().item()
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
        generator = torch.Generator().manual_seed(0)
        for _ in range(20):
            optimizer.zero_grad()
            reinforce_loss(policy.sample(generator), advantage=0.0, entropy_beta=entropy_beta).backward()
            optimizer.step()
        return start, policy.entropy().item()

    start, converged = entropy_after_steps(1.0)
    assert converged < start - 0.1
    start, explored = entropy_after_steps(-1.0)
    assert explored > start
    assert explored == pytest.approx(math.log(3), abs=1e-3)


def test_reinforce_loss_rejects_non_finite_coefficients():
    sample = SimplePolicy(1, 2).sample(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"advantage=nan must be finite"):
        reinforce_loss(sample, float("nan"), 0.0)
    with pytest.raises(ValueError, match=r"entropy_beta=inf must be finite"):
        reinforce_loss(sample, 0.0, float("inf"))
    with pytest.raises(ValueError, match=r"advantage='x' must be a real number"):
        reinforce_loss(sample, "x", 0.0)


def test_ema_baseline_values_at_given_steps():
    baseline = EmaBaseline(decay=0.9)
    assert baseline.value is None
    rewards = [1.0, 2.0, 0.0, 4.0]
    expected_advantages = [0.0, 1.0, -1.1, 3.01]
    expected_values = [1.0, 1.1, 0.99, 1.291]
    for step, reward in enumerate(rewards):
        assert baseline.update(reward) == pytest.approx(expected_advantages[step], abs=1e-12)
        assert baseline.value == pytest.approx(expected_values[step], abs=1e-12)
        assert baseline.num_updates == step + 1


def test_ema_baseline_with_zero_decay_tracks_the_previous_reward():
    baseline = EmaBaseline(decay=0.0)
    assert [baseline.update(r) for r in [3.0, 5.0, 4.0]] == [0.0, 2.0, -1.0]
    assert baseline.value == 4.0


def test_ema_baseline_state_dict_round_trip_resumes_exactly():
    baseline = EmaBaseline(decay=0.8)
    for reward in [0.5, 0.7, 0.2]:
        baseline.update(reward)
    state = baseline.state_dict()
    assert state == {"decay": 0.8, "value": pytest.approx(0.8 * (0.8 * 0.5 + 0.2 * 0.7) + 0.2 * 0.2), "num_updates": 3}
    resumed = EmaBaseline(decay=0.8)
    resumed.load_state_dict(state)
    assert resumed.update(1.0) == baseline.update(1.0)
    assert resumed.value == baseline.value and resumed.num_updates == baseline.num_updates == 4
    fresh = EmaBaseline(decay=0.8)
    fresh.load_state_dict(EmaBaseline(decay=0.8).state_dict())
    assert fresh.update(2.0) == 0.0


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_ema_baseline_rejects_decay_outside_unit_interval(decay):
    with pytest.raises(ValueError, match=rf"decay={decay} must be in \[0, 1\)"):
        EmaBaseline(decay=decay)


def test_ema_baseline_errors():
    baseline = EmaBaseline(decay=0.9)
    with pytest.raises(ValueError, match=r"reward=nan must be finite"):
        baseline.update(float("nan"))
    assert baseline.num_updates == 0
    with pytest.raises(ValueError, match=r"EmaBaseline state has keys \['value'\]; expected"):
        baseline.load_state_dict({"value": 1.0})
    with pytest.raises(ValueError, match=r"checkpoint baseline has decay=0.5 .* EmaBaseline\(decay=0.5\)"):
        baseline.load_state_dict({"decay": 0.5, "value": 1.0, "num_updates": 1})
    with pytest.raises(ValueError, match=r"inconsistent EmaBaseline state: value=None with num_updates=2"):
        baseline.load_state_dict({"decay": 0.9, "value": None, "num_updates": 2})
