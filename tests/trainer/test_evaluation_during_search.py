"""Evaluation during a search: it measures the current answer, and leaves the training's sample alone."""
from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from quant.formats import NumberFormat
from tests.trainer.toy_search_problem import DropoutToy, make_trainer


class EvaluateAfterEachMicroBatch(TrainerCallback):
    """Calls `method` ('evaluate' or 'predict') of the trainer between the micro-batches of an
    optimizer step (on_substep_end: gradient accumulation's cycle is still open)."""

    def __init__(self, trainer, method: str) -> None:
        self.trainer, self.method = trainer, method
        self.calls = 0

    def on_substep_end(self, args, state, control, **kwargs) -> None:
        self.calls += 1
        if self.method == "evaluate":
            self.trainer.evaluate()
        else:
            self.trainer.predict(self.trainer.eval_dataset)


@pytest.mark.parametrize("method", ["evaluate", "predict"])
def test_evaluating_inside_an_accumulation_cycle_keeps_the_cycles_sample(tmp_path, method):
    # evaluate()/predict() put the answer on the layers; called between two micro-batches of one
    # optimizer step, the step's later micro-batches used to train with the answer instead of the
    # step's sample (and its reward judged that sample on batches it had not trained with).
    steps = 4
    trainer = make_trainer(str(tmp_path), seed=1, steps=steps, delay_steps=0,
                           training_overrides=dict(gradient_accumulation_steps=2, per_device_train_batch_size=32))
    callback = EvaluateAfterEachMicroBatch(trainer, method)
    trainer.add_callback(callback)
    trained: list[tuple[int, dict[str, tuple[NumberFormat, NumberFormat]]]] = []
    samples = []
    real_compute_loss, real_sample = trainer.compute_loss, trainer.policy.sample

    def compute_loss(model, inputs, *args, **kwargs):
        if model.training:
            trained.append((trainer.state.global_step, {name: (layer.weight_format, layer.act_format)
                                                        for name, layer in trainer.quant_layers.items()}))
        return real_compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.policy.sample = lambda generator: samples.append(real_sample(generator)) or samples[-1]
    trainer.train()

    assert callback.calls == steps and len(samples) == steps
    space = trainer.search_space
    expected = [(step, space.assignment(sample.indices)) for step, sample in enumerate(samples) for _ in range(2)]
    assert trained == expected
    # The answer the evaluations used differs from some sample: else the test would prove nothing.
    answer = space.assignment(trainer.final_indices())
    assert any(formats != answer for _, formats in trained)


def test_evaluating_after_the_search_leaves_the_answer_on_the_layers(tmp_path):
    trainer = make_trainer(str(tmp_path), seed=1, steps=4, delay_steps=0)
    trainer.train()
    trainer.evaluate()
    answer = trainer.search_space.assignment(trainer.final_indices())
    assert {name: (layer.weight_format, layer.act_format) for name, layer in trainer.quant_layers.items()} == answer


def test_evaluating_during_the_search_leaves_its_result_alone(tmp_path):
    # The evaluation's DataLoader draws a seed from the global CPU RNG; without fork_rng the
    # dropout masks after it differed, so --eval_steps changed the searched model.
    results = []
    for eval_steps in (None, 2):
        overrides = dict(eval_strategy="steps", eval_steps=eval_steps) if eval_steps else {}
        torch.manual_seed(0)  # the model's initial weights
        trainer = make_trainer(str(tmp_path / str(eval_steps)), seed=3, steps=8, delay_steps=2, model=DropoutToy(),
                               training_overrides=overrides)
        trainer.train()
        evaluations = [log for log in trainer.state.log_history if "eval_loss" in log]
        assert len(evaluations) == (4 if eval_steps else 0)
        results.append((trainer.policy.state_dict(), trainer.model.state_dict()))
    (policy, weights), (policy_eval, weights_eval) = results
    for name in policy:
        torch.testing.assert_close(policy_eval[name], policy[name], atol=0, rtol=0)
    for name in weights:
        torch.testing.assert_close(weights_eval[name], weights[name], atol=0, rtol=0)


def test_evaluating_during_a_baseline_leaves_its_result_alone(tmp_path):
    """The same for a fixed-format run's Trainer (trainer/evaluation_rng.py BaselineTrainer): the
    report compares runs with and without --eval_steps as one setting."""
    from transformers import Trainer, TrainingArguments

    from quant.quant_module import QuantConfig
    from quant.surgery import QuantSpec, quantize_model
    from tests.trainer.toy_search_problem import LAYERS, ToyDataset
    from trainer.evaluation_rng import BaselineTrainer

    def train(trainer_class, eval_steps):
        torch.manual_seed(0)
        model, _ = quantize_model(DropoutToy(), QuantSpec(LAYERS, QuantConfig("int8", "int8")))
        overrides = dict(eval_strategy="steps", eval_steps=eval_steps) if eval_steps else {}
        args = TrainingArguments(output_dir=str(tmp_path / f"{trainer_class.__name__}{eval_steps}"), max_steps=6,
                                 per_device_train_batch_size=64, learning_rate=3e-3, report_to=[], save_strategy="no",
                                 use_cpu=True, seed=0, disable_tqdm=True, **overrides)
        trainer = trainer_class(model=model, args=args, train_dataset=ToyDataset(1024, 0),
                                eval_dataset=ToyDataset(256, 99))
        trainer.train()
        return model.state_dict()

    quiet = train(BaselineTrainer, None)
    evaluated = train(BaselineTrainer, 2)
    for name in quiet:
        torch.testing.assert_close(evaluated[name], quiet[name], atol=0, rtol=0)
    plain = train(Trainer, 2)  # HF's own Trainer: its evaluations move the dropout masks
    assert any(not torch.equal(plain[name], quiet[name]) for name in quiet)
