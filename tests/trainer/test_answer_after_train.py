"""train() ends with the search's answer on the quantized layers, not the last step's sample."""
import torch
from transformers import TrainerCallback

from cost.model_cost import current_assignment, layer_costs, model_cost
from quant.formats import parse_format
from tests.trainer.toy_search_problem import formats_of, make_trainer


class _LastSample(TrainerCallback):
    """The layers' formats after each optimizer step: that step's sample."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.assignments = []

    def on_step_end(self, args, state, control, **kwargs):
        self.assignments.append(current_assignment(self.trainer.quant_layers))


def _layer_formats(trainer) -> dict[str, str]:
    return {name: layer.weight_format.name for name, layer in trainer.quant_layers.items()}


def test_train_ends_with_the_answer_on_the_layers(tmp_path):
    trainer = make_trainer(str(tmp_path), steps=20, delay_steps=5)
    steps = _LastSample(trainer)
    trainer.add_callback(steps)
    trainer.train()
    answer = trainer.search_space.assignment(trainer.final_indices())
    # The last step sampled other formats than the answer (what the layers held before the fix).
    assert len(steps.assignments) == 20 and steps.assignments[-1] != answer
    assert current_assignment(trainer.quant_layers) == answer
    assert _layer_formats(trainer) == {"fc_in": "int8", "branch_in": "int2", "branch_out": "int2", "head": "int4"}
    assert _layer_formats(trainer) == {
        name: formats_of(trainer)[decision]
        for decision, result in trainer.final_decisions().items() for name in result.layers}
    # So costing the model right after train() costs the answer (the table sums in float32).
    cost = model_cost(layer_costs(trainer.quant_layers), current_assignment(trainer.quant_layers))
    assert abs(cost.memory_mib - trainer.final_cost()) <= 1e-6 * trainer.final_cost()


def test_an_evaluation_after_train_and_finalize_search_see_the_same_answer(tmp_path):
    """train()'s answer is what evaluate() and finalize_search() put on the layers too."""
    trainer = make_trainer(str(tmp_path), steps=20, delay_steps=5)
    trainer.train()
    after_train = current_assignment(trainer.quant_layers)
    trainer.evaluate()
    assert current_assignment(trainer.quant_layers) == after_train
    assert trainer.finalize_search(0) == 0
    assert current_assignment(trainer.quant_layers) == after_train


def test_a_resumed_train_ends_with_the_uninterrupted_runs_answer(tmp_path):
    full = make_trainer(str(tmp_path / "full"), steps=20, delay_steps=5,
                        training_overrides=dict(save_strategy="steps", save_steps=10))
    full.train()
    resumed = make_trainer(str(tmp_path / "resumed"), steps=20, delay_steps=5)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-10"))
    assert torch.equal(resumed.policy.logits, full.policy.logits)
    assert current_assignment(resumed.quant_layers) == current_assignment(full.quant_layers) \
        == full.search_space.assignment(full.final_indices())
    assert full.quant_layers["fc_in"].weight_format == parse_format("int8")
