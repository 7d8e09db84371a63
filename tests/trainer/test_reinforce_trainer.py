import json
import math
import os

import pytest
import torch

from quant.formats import parse_format
from tests.trainer.toy_search_problem import (INSENSITIVE, DropoutToy, NaNWithInt2, ToyModel, formats_of,
                                            make_trainer)
from trainer.entropy_schedule import entropy_beta
from trainer.reinforce_trainer import SEARCH_STATE_NAME

INT2, INT8 = parse_format("int2"), parse_format("int8")


@pytest.mark.parametrize("seed, source, advantage", [(0, "train", "per_decision"), (1, "train", "per_decision"),
                                                     (2, "train", "per_decision"), (0, "heldout", "per_decision"),
                                                     (0, "train", "global")])
def test_search_finds_the_known_answer(tmp_path, seed, source, advantage):
    trainer = make_trainer(str(tmp_path), seed=seed, reward_source=source, advantage=advantage)
    trainer.train()
    chosen = formats_of(trainer)
    assert chosen["branch_in"] == chosen["branch_out"] == "int2", chosen  # insensitive and large: lowest
    assert chosen["fc_in"] == "int8", chosen  # its input needs 8 bits
    assert chosen["head"] != "int2", chosen
    ratio = trainer.final_cost() / trainer.reinforce_config.cost_target
    assert abs(ratio - 1) <= 0.10, ratio


def test_extreme_targets_pick_the_cheapest_and_the_dearest(tmp_path):
    low = make_trainer(str(tmp_path / "low"), steps=300)
    # Far below any configuration: every byte saved outweighs any loss difference.
    low.reinforce_config.cost_target = low.cost_table.min_cost() / 1000
    with pytest.warns(UserWarning, match="is below every cost this search space can reach"):
        low.train()
    assert low.final_cost() == low.cost_table.min_cost(), formats_of(low)
    # Above any configuration with a strong cost term: every byte closer to the target pays.
    high = make_trainer(str(tmp_path / "high"), steps=300, cost_beta=50.0)
    high.reinforce_config.cost_target = high.cost_table.max_cost() * 2
    with pytest.warns(UserWarning, match="is above every cost this search space can reach"):
        high.train()
    assert set(formats_of(high).values()) == {"int8"}
    assert high.final_cost() == high.cost_table.max_cost()


def test_same_seed_same_result(tmp_path):
    runs = []
    for i in range(2):
        trainer = make_trainer(str(tmp_path / str(i)), seed=3, steps=200)
        trainer.train()
        runs.append((trainer.policy.logits.detach().clone(), [p.detach().clone() for p in trainer.model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize(("source", "dropout"), [("train", False), ("heldout", False), ("heldout", True)])
def test_resume_from_a_mid_search_checkpoint_is_exact(tmp_path, source, dropout):
    # heldout: 150 steps are 2 passes and 22 batches into the 64-batch held-out split; a resumed
    # search used to start that split from its first batch again. With dropout, a held-out pass
    # that started at another step than in the uninterrupted run used to move the global RNG.
    overrides = dict(save_strategy="steps", save_steps=150)
    model = DropoutToy if dropout else ToyModel
    torch.manual_seed(4)
    full = make_trainer(str(tmp_path / "full"), seed=4, steps=300, training_overrides=overrides, reward_source=source,
                        model=model())
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-150"
    assert (checkpoint / SEARCH_STATE_NAME).is_file() and not list(checkpoint.glob("*.tmp"))
    torch.manual_seed(4)
    resumed = make_trainer(str(tmp_path / "resumed"), seed=4, steps=300, training_overrides=overrides,
                           reward_source=source, model=model())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert torch.equal(full.policy.logits, resumed.policy.logits)
    assert full.baseline.value == resumed.baseline.value
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))


def test_resume_under_a_backend_that_loads_the_weights_itself_restores_the_search(tmp_path):
    """DeepSpeed's resume loads the weights without Trainer._load_from_checkpoint (transformers
    calls deepspeed_load_checkpoint instead): the search state, restored there, was left at its
    start, so the resumed search silently began again. Simulated by bypassing the override."""
    from transformers import Trainer

    overrides = dict(save_strategy="steps", save_steps=20)
    full = make_trainer(str(tmp_path / "full"), seed=5, steps=40, training_overrides=overrides)
    full.train()
    checkpoint = str(tmp_path / "full" / "checkpoint-20")
    resumed = make_trainer(str(tmp_path / "resumed"), seed=5, steps=40, training_overrides=overrides)
    resumed._load_from_checkpoint = lambda path, model=None: Trainer._load_from_checkpoint(resumed, path, model)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert torch.equal(full.policy.logits, resumed.policy.logits)
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))
    # the settings are still checked on that path
    other = make_trainer(str(tmp_path / "other"), seed=5, steps=40, training_overrides=overrides, policy_seed=9)
    other._load_from_checkpoint = lambda path, model=None: Trainer._load_from_checkpoint(other, path, model)
    with pytest.raises(ValueError, match=r"search settings differ from this run's \(checkpoint -> this run\): "
                                         r"policy_seed 5 -> 9; "):
        other.train(resume_from_checkpoint=checkpoint)


def test_resume_from_a_checkpoint_without_search_state_fails_clearly(tmp_path):
    trainer = make_trainer(str(tmp_path / "a"), steps=20, training_overrides=dict(save_strategy="steps", save_steps=10))
    trainer.train()
    os.remove(tmp_path / "a" / "checkpoint-10" / SEARCH_STATE_NAME)
    again = make_trainer(str(tmp_path / "b"), steps=20)
    with pytest.raises(FileNotFoundError, match=f"has no {SEARCH_STATE_NAME}: it was not written by a search run"):
        again.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-10"))


def test_the_global_advantage_logs_its_reward_baseline(tmp_path):
    trainer = make_trainer(str(tmp_path), steps=20, delay_steps=5, advantage="global",
                           training_overrides=dict(logging_steps=20))
    trainer.train()
    [log] = [entry for entry in trainer.state.log_history if "search/reward" in entry]
    assert "search/quality_ema" not in log and math.isfinite(log["search/baseline_ema"])


def test_search_metrics_reach_trainer_log_and_state(tmp_path):
    trainer = make_trainer(str(tmp_path), steps=200, max_entropy_beta=0.1, entropy_schedule="linear")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "search/reward" in entry]
    assert [entry["step"] for entry in logs] == [50, 100, 150, 200]
    for key in ("policy_loss", "entropy", "entropy_beta", "reward", "quality_ema", "advantage", "cost", "cost_ratio",
                "non_finite_steps"):
        assert f"search/{key}" in logs[-1], key
    assert "search/baseline_ema" not in logs[-1]  # per_decision's EMA follows the quality, not the reward
    assert logs[-1]["search/non_finite_steps"] == 0.0
    assert "search/policy_loss" not in logs[0]  # the first 50 steps are all warm-up
    # The logged entropy beta is the mean of the schedule over the logging window.
    expected = sum(entropy_beta(s, schedule="linear", delay_steps=100, total_steps=200, max_entropy_beta=0.1)
                   for s in range(150, 200)) / 50
    assert logs[-1]["search/entropy_beta"] == pytest.approx(expected, rel=1e-12)
    probs = {k: v for k, v in logs[-1].items() if k.startswith("search/p/fc_in/")}
    assert set(probs) == {"search/p/fc_in/int2", "search/p/fc_in/int4", "search/p/fc_in/int8"}
    assert sum(probs.values()) == pytest.approx(1.0)
    # trainer_state.json of a checkpoint carries them too
    trainer.state.save_to_json(str(tmp_path / "state.json"))
    assert "search/cost_ratio" in json.loads((tmp_path / "state.json").read_text())["log_history"][-2]


def test_the_steps_after_the_last_training_log_reach_the_final_summary(tmp_path):
    trainer = make_trainer(str(tmp_path), steps=230)
    trainer.train()
    final = trainer.state.log_history[-1]
    assert "train_loss" in final and final["step"] == 230
    last_logged = [entry for entry in trainer.state.log_history[:-1] if "search/reward" in entry][-1]
    assert last_logged["step"] == 200
    assert "search/reward" in final and "search/entropy" in final and "search/p/fc_in/int8" in final


def test_weight_only_search_keeps_activations_fixed(tmp_path):
    from trainer.search_space import SearchSpace

    trainer = make_trainer(str(tmp_path), steps=5)
    space = trainer.search_space
    weight_only = SearchSpace(space.formats, space.decisions, weight_only=True, fixed_act_format=INT8)
    assignment = weight_only.assignment([0, 0, 0, 0])
    assert set(assignment.values()) == {(INT2, INT8)}


def test_block_granularity_shares_one_choice_per_block(tmp_path):
    trainer = make_trainer(str(tmp_path), granularity="block", steps=300)
    trainer.train()
    decisions = trainer.final_decisions()
    assert {name: d.layers for name, d in decisions.items()} == {"main": ("fc_in", "head"), "branch": INSENSITIVE}
    assert decisions["branch"].format == "int2" and decisions["main"].format == "int8"
    layers = trainer.quant_layers
    trainer.evaluate()  # evaluation applies the final answer to the layers
    assert layers["branch_in"].weight_format == INT2 and layers["head"].act_format == INT8


def test_reinforce_trainer_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="reward_source 'heldout' needs a heldout_dataset"):
        trainer = make_trainer(str(tmp_path), steps=5)
        type(trainer)(model=trainer.model, args=trainer.args, train_dataset=trainer.train_dataset,
                      reinforce_config=trainer.reinforce_config.__class__(cost_target=1.0, reward_source="heldout"),
                      search_space=trainer.search_space, quant_layers=trainer.quant_layers,
                      layer_costs=[])


def test_finalize_search_recalibrates_for_the_answer(tmp_path):
    trainer = make_trainer(str(tmp_path), model=NaNWithInt2(), search_space="int4,int8", steps=20)
    trainer.train()
    assert trainer.finalize_search(recalibration_batches=0) == 0  # nothing re-estimated
    assert trainer.finalize_search(recalibration_batches=3) == 3
    assert trainer.model.norm.num_batches_tracked.item() == 3
    assert trainer.quant_layers["fc_in"].weight_format.name == trainer.final_decisions()["fc_in"].format
    plain = make_trainer(str(tmp_path / "plain"), steps=2)  # no BatchNorm: nothing to re-estimate
    plain.train()
    assert plain.finalize_search(recalibration_batches=3) == 0


@pytest.mark.parametrize("advantage", ["per_decision", "global"])
def test_policy_step_gets_the_gradient_of_the_reinforce_loss(tmp_path, monkeypatch, advantage):
    """The trainer combines closed-form score gradients planned before the reward is read; every
    policy step must get what autograd through reinforce_loss gives for its sample, advantages and beta."""
    import trainer.policy_update as policy_update
    from policy.reinforce import reinforce_loss
    from policy.simple_policy import PolicySample, SimplePolicy

    trainer = make_trainer(str(tmp_path), steps=40, delay_steps=10, max_entropy_beta=0.5, advantage=advantage,
                           policy_temperature=0.8)
    current, recorded = {}, []
    real_update, real_gradient = trainer._update_policy, policy_update.reinforce_gradient

    def update(sample, quality, step, searching, plan=None):
        current["indices"] = sample.indices
        real_update(sample, quality, step, searching, plan)

    def recording_gradient(gradients, advantages, beta):
        grad = real_gradient(gradients, advantages, beta)
        recorded.append((trainer.policy.logits.detach().clone(), current["indices"].clone(), advantages.clone(), beta,
                         grad.clone()))
        return grad

    trainer._update_policy = update
    monkeypatch.setattr(policy_update, "reinforce_gradient", recording_gradient)
    trainer.train()

    assert len(recorded) == 30  # one per step after the delay
    assert any(beta > 0 for *_, beta, _ in recorded) and any(bool(a.abs().sum() > 0) for _, _, a, _, _ in recorded)
    space = trainer.search_space
    for logits, indices, advantages, beta, grad in recorded:
        policy = SimplePolicy(space.num_decisions, space.num_options, temperature=0.8)
        with torch.no_grad():
            policy.logits.copy_(logits)
        sample = PolicySample(indices, policy.log_probabilities().gather(1, indices.unsqueeze(1)).squeeze(1),
                              policy.log_prob(indices), policy.entropy())
        reinforce_loss(sample, advantages, beta).backward()
        torch.testing.assert_close(grad, policy.logits.grad.double(), atol=1e-6, rtol=1e-5)
