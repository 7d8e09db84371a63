"""What ReinforceTrainer refuses or warns about before it searches: a model or batch the reward
cannot read, layers of another model, a run with no search step, an unreachable cost target."""
import copy
import re
import warnings

import pytest
import torch.nn.functional as F
from torch.utils.data import Dataset

from cost.model_cost import layer_costs
from tests.trainer.toy_search_problem import ToyDataset, ToyModel, make_trainer

NEEDS = ("the search's reward needs the model's logits and the batch's labels (a classification or regression "
         "model): ")


class TargetToy(ToyModel):
    """The toy model taking its labels as `target`."""

    def forward(self, x, target=None):
        return super().forward(x, target)


class TargetDataset(Dataset):
    def __init__(self, data: ToyDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return {"x": self.data.x[i], "target": self.data.labels[i]}


class TupleToy(ToyModel):
    def forward(self, x, labels=None):
        out = super().forward(x, labels)
        return (out["loss"], out["logits"]) if labels is not None else (out["logits"],)


class ScoresToy(ToyModel):
    def forward(self, x, labels=None):
        out = super().forward(x, labels)
        return {"loss": out["loss"], "scores": out["logits"]} if labels is not None else {"scores": out["logits"]}


@pytest.mark.parametrize("source", ["train", "heldout"])
def test_the_reward_reads_the_labels_under_the_trainers_label_name(tmp_path, source):
    # With label_names=["target"] the search failed: it looked for "labels".
    trainer = make_trainer(str(tmp_path), model=TargetToy(), steps=4, reward_source=source,
                           training_overrides=dict(label_names=["target"], logging_steps=4))
    trainer.train_dataset = TargetDataset(ToyDataset(256, 0))
    trainer.heldout_dataset = TargetDataset(ToyDataset(128, 7))
    assert trainer.label_key == "target"
    trainer.train()
    [log] = [entry for entry in trainer.state.log_history if "search/quality" in entry]
    assert log["search/quality"] < 0  # -loss: the logits were compared with the targets


def test_the_reward_reads_the_labels_under_a_compute_loss_func(tmp_path):
    # With a compute_loss_func (or label smoothing) the Trainer pops "labels" from the inputs
    # before the forward: the search then found no labels.
    trainer = make_trainer(str(tmp_path), steps=2, training_overrides=dict(logging_steps=2))
    losses = []
    trainer.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: losses.append(
        F.cross_entropy(outputs["logits"], labels)) or losses[-1]
    trainer.train()
    [log] = [entry for entry in trainer.state.log_history if "search/quality" in entry]
    mean_loss = sum(float(loss.detach()) for loss in losses) / 2
    assert len(losses) == 2 and log["search/quality"] == pytest.approx(-mean_loss, rel=1e-6)


def test_several_label_names_are_refused(tmp_path):
    trainer = make_trainer(str(tmp_path), steps=2)
    args = copy.deepcopy(trainer.args)
    args.label_names = ["labels", "extra_labels"]
    message = ("the search's reward compares the logits with one label tensor, but the Trainer's label names are "
               "['labels', 'extra_labels'] (TrainingArguments.label_names, or the model's forward arguments with "
               "'label' in their name); set TrainingArguments.label_names to the one key of the labels")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        type(trainer)(model=trainer.model, args=args, train_dataset=trainer.train_dataset,
                      reinforce_config=trainer.reinforce_config, search_space=trainer.search_space,
                      quant_layers=trainer.quant_layers, layer_costs=layer_costs(trainer.quant_layers))


@pytest.mark.parametrize("source", ["train", "heldout"])
@pytest.mark.parametrize("model, problem", [
    (TupleToy, "the model returned a tuple; return a ModelOutput or a dict with 'logits' (e.g. HF models with "
               "return_dict=True)"),
    (ScoresToy, "the model's output has no 'logits' (its keys: ['loss', 'scores']); return the logits under 'logits'"),
])
def test_a_model_output_without_logits_is_a_clear_error(tmp_path, source, model, problem):
    # A tuple gave a bare "tuple indices must be integers", a dict without logits a bare KeyError.
    trainer = make_trainer(str(tmp_path), model=model(), steps=2, reward_source=source)
    with pytest.raises(ValueError, match=f"^{re.escape(NEEDS + problem)}$"):
        trainer.train()


def test_a_batch_without_the_labels_is_a_clear_error(tmp_path):
    trainer = make_trainer(str(tmp_path), steps=2, training_overrides=dict(label_names=["target"]))
    message = NEEDS + ("the batch has no 'target' (its keys: ['x', 'labels']); give the labels under that key, or set "
                       "TrainingArguments.label_names to the key that holds them")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        trainer.train()


def test_quant_layers_of_another_model_are_refused(tmp_path):
    # The copy trained in float while the original's layers took the formats; an answer was reported.
    trainer = make_trainer(str(tmp_path), steps=2)
    message = ("quant layer 'fc_in' is not a submodule of the model this trainer trains, so its formats would never "
               "reach that model (e.g. the layers of the original after copy.deepcopy(model)); pass this model's own "
               "quantized layers (quant.surgery.quantized_layers(model))")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        type(trainer)(model=copy.deepcopy(trainer.model), args=trainer.args, train_dataset=trainer.train_dataset,
                      reinforce_config=trainer.reinforce_config, search_space=trainer.search_space,
                      quant_layers=trainer.quant_layers, layer_costs=layer_costs(trainer.quant_layers))


@pytest.mark.parametrize("delay", [6, 100])
def test_a_delay_of_every_step_is_refused(tmp_path, delay):
    # It trained silently, the policy never learned, and final_decisions() returned its initial guess.
    trainer = make_trainer(str(tmp_path), steps=6, delay_steps=delay)
    message = (f"delay_steps={delay} leaves no search step in this run's 6 steps (TrainingArguments.max_steps, or "
               "from num_train_epochs): the policy would never learn and the answer would be its initial guess; set "
               "ReinforceConfig.delay_steps below 6")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        trainer.train()
    assert trainer.state.global_step == 0
    make_trainer(str(tmp_path), steps=6, delay_steps=5).train()  # one search step: allowed


def _cost_warnings(trainer) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return [str(w.message) for w in caught if "cost_target" in str(w.message)]


def test_a_cost_target_outside_the_reachable_costs_warns(tmp_path):
    trainer = make_trainer(str(tmp_path / "low"), steps=2)
    low, high = trainer.cost_table.min_cost(), trainer.cost_table.max_cost()
    trainer.reinforce_config.cost_target = low / 2
    assert _cost_warnings(trainer) == [
        f"cost_target {low / 2:.6g} MiB is below every cost this search space can reach ([{low:.6g}, {high:.6g}] MiB): "
        "the cost term pushes every decision towards its cheapest option; give a cost_target in that range"]
    # Above every cost, what happens depends on the reward's form.
    for cost_function, effect in (
            ("tunas_abs", "the cost term pushes every decision towards its most expensive option"),
            ("one_sided_tunas_abs", "one_sided_tunas_abs gives every model of this space the same cost term, so the "
                                    "decisions follow quality alone"),
            ("soft_exponential", "the cost term pushes every decision towards its cheapest option")):
        trainer = make_trainer(str(tmp_path / "high"), steps=2)
        trainer.reinforce_config.cost_target = high * 1.01
        trainer.reinforce_config.cost_function = cost_function
        trainer.reinforce_config.cost_beta = -0.07 if cost_function == "soft_exponential" else 5.0
        assert _cost_warnings(trainer) == [
            f"cost_target {high * 1.01:.6g} MiB is above every cost this search space can reach ([{low:.6g}, "
            f"{high:.6g}] MiB): {effect}; give a cost_target in that range"], cost_function
    for target in (low, high, (low + high) / 2, high * (1 + 1e-12)):  # the ends (up to float rounding) are reachable
        trainer = make_trainer(str(tmp_path / "in"), steps=2)
        trainer.reinforce_config.cost_target = target
        assert _cost_warnings(trainer) == [], target
