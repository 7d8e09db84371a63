"""Gradient accumulation: one format sample, one reward and one policy update per optimizer step."""
import math
import types

import pytest
import torch
from transformers import Trainer

import trainer.reinforce_trainer as reinforce_trainer
from cost.cost import compute_reward
from tests.trainer.toy_search_problem import NaNWithInt2, ToyDataset, ToyModel, make_trainer
from trainer.norm_statistics import BufferSnapshot
from trainer.reinforce_config import RewardSource


def legacy_training_step(self, model, inputs, num_items_in_batch=None):
    """The training step as it was before gradient accumulation was handled (one sample, reward
    and policy update per micro-batch): with one micro-batch per step the new code must match it."""
    config = self.reinforce_config
    step = self.state.global_step
    searching = step >= config.delay_steps
    sample = self.policy.sample(self.sample_generator) if searching else self._warmup_sample(step)
    self.apply_option_indices(sample.indices)
    buffers = self._buffer_snapshot.take(model)
    # The held-out forward before the training one: it sees the normalisation statistics of before.
    heldout_quality = (self._heldout_quality(model, self._prepare_inputs(self._heldout.next()))
                       if config.reward_source is RewardSource.HELDOUT else None)
    loss = Trainer.training_step(self, model, inputs, num_items_in_batch)
    if config.reward_source is RewardSource.TRAIN:
        quality = reinforce_trainer.batch_quality(*self._captured_logits, config.reward_metric)
    else:
        quality = heldout_quality
    self._captured_logits = None
    train_loss, quality_value = self._mean_over_ranks(torch.stack([loss.detach().float(), quality.float()]))
    finite = math.isfinite(train_loss) and math.isfinite(quality_value)
    if not finite:
        model.zero_grad(set_to_none=True)
        BufferSnapshot.restore(buffers)
        self.non_finite_steps += 1
    self._update_policy(sample, quality_value if finite else None, step, searching)
    return loss


@pytest.mark.parametrize("options", [
    dict(),
    dict(reward_source="heldout", advantage="global", max_entropy_beta=0.1),
    dict(model=NaNWithInt2, search_space="int2,int8", target_mib=1.0),  # non-finite steps too
    # A BatchNorm whose running statistics the held-out forward reads (eval mode).
    dict(model=NaNWithInt2, search_space="int2,int8", target_mib=1.0, reward_source="heldout"),
])
def test_one_micro_batch_per_step_is_bit_identical_to_the_per_micro_batch_code(tmp_path, options):
    runs = []
    for legacy in (False, True):
        run_options = dict(options)
        if "model" in options:
            torch.manual_seed(3)
            run_options["model"] = options["model"]()  # a fresh model per run, the same initial weights
        trainer = make_trainer(str(tmp_path / str(legacy)), seed=3, steps=160, delay_steps=60, **run_options)
        if legacy:
            trainer.training_step = types.MethodType(legacy_training_step, trainer)
        trainer.train()
        runs.append(trainer)
    new, old = runs
    assert torch.equal(new.policy.logits, old.policy.logits)
    assert new.baseline.value == old.baseline.value and new.non_finite_steps == old.non_finite_steps
    assert all(torch.equal(a, b) for a, b in zip(new.model.state_dict().values(), old.model.state_dict().values()))
    assert new.state.log_history[:-1] == old.state.log_history[:-1]  # the last entry holds the run times
    if "model" in options:
        assert new.non_finite_steps > 0


def test_accumulation_samples_rewards_and_updates_once_per_optimizer_step(tmp_path, monkeypatch):
    steps = 6
    trainer = make_trainer(str(tmp_path), steps=steps, delay_steps=0,
                           training_overrides=dict(gradient_accumulation_steps=2, per_device_train_batch_size=32,
                                                   logging_steps=1))
    # 5 micro-batches per epoch: cycles of 2, 2 and a short last one of 1, over two epochs.
    trainer.train_dataset = ToyDataset(160, 0)
    micro_batches, qualities, updates, samples = [], [], [], []
    policy_steps = []

    real_compute_loss = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        formats = {name: (layer.weight_format, layer.act_format) for name, layer in trainer.quant_layers.items()}
        micro_batches.append((trainer.state.global_step, formats))
        return real_compute_loss(*args, **kwargs)

    real_quality = reinforce_trainer.batch_quality

    def batch_quality(*args):
        quality = real_quality(*args)
        qualities.append((trainer.state.global_step, float(quality)))
        return quality

    real_sample, real_update = trainer.policy.sample, trainer._update_policy
    real_policy_step = trainer.policy_optimizer.step
    trainer.compute_loss = compute_loss
    monkeypatch.setattr(reinforce_trainer, "batch_quality", batch_quality)
    trainer.policy.sample = lambda generator: samples.append(real_sample(generator)) or samples[-1]
    trainer._update_policy = lambda sample, quality, step, searching, plan=None: (
        updates.append((sample, quality, step)), real_update(sample, quality, step, searching, plan))
    trainer.policy_optimizer.step = lambda *a, **k: policy_steps.append(trainer.state.global_step) or real_policy_step()
    trainer.train()

    assert trainer.state.global_step == steps and trainer.non_finite_steps == 0
    assert len(samples) == steps and policy_steps == list(range(steps))
    assert [step for _, _, step in updates] == list(range(steps))
    assert [sample for sample, _, _ in updates] == samples
    per_step = [[formats for step, formats in micro_batches if step == s] for s in range(steps)]
    assert [len(batches) for batches in per_step] == [2, 2, 1, 2, 2, 1]
    for batches, sample in zip(per_step, samples):  # every micro-batch trains with the step's sample
        expected = dict(trainer.search_space.assignment(sample.indices))
        assert all(formats == expected for formats in batches)
    config = trainer.reinforce_config
    logs = [entry for entry in trainer.state.log_history if "search/quality" in entry]
    assert len(logs) == steps
    for (sample, quality, step), log in zip(updates, logs):
        cycle = [q for s, q in qualities if s == step]
        assert quality == math.fsum(cycle) / len(cycle)  # the cycle's mean quality, micro-batches equal
        cost = trainer.cost_table.cost(sample.indices)
        assert log["search/quality"] == quality
        assert log["search/reward"] == compute_reward(config.cost_function, cost, config.cost_beta,
                                                      config.cost_target, quality).reward


class NaNOnSecondMicroBatch(ToyModel):
    """Finite on the first micro-batch of each step, NaN on the second; a BatchNorm whose running
    statistics both micro-batches change."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(16)
        self.training_forwards = 0

    def forward(self, x, labels=None):
        out = super().forward(self.norm(x), labels)
        if self.training:
            self.training_forwards += 1
            if self.training_forwards % 2 == 0:
                out = {k: v * float("nan") for k, v in out.items()}
        return out


def test_a_non_finite_micro_batch_skips_the_whole_optimizer_step(tmp_path):
    model = NaNOnSecondMicroBatch()
    trainer = make_trainer(str(tmp_path), model=model, steps=10,
                           training_overrides=dict(gradient_accumulation_steps=2, per_device_train_batch_size=32))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert model.training_forwards == 20
    assert trainer.non_finite_steps == 10  # counted per optimizer step, not per micro-batch
    after = trainer.model.state_dict()
    for key in before:  # the finite first micro-batches changed nothing either
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(before[key], after[key]), key


def test_resume_with_accumulation_is_exact(tmp_path):
    overrides = dict(save_strategy="steps", save_steps=10, gradient_accumulation_steps=2,
                     per_device_train_batch_size=32)
    full = make_trainer(str(tmp_path / "full"), seed=5, steps=20, delay_steps=4, training_overrides=overrides)
    full.train()
    resumed = make_trainer(str(tmp_path / "resumed"), seed=5, steps=20, delay_steps=4, training_overrides=overrides)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-10"))
    assert torch.equal(full.policy.logits, resumed.policy.logits)
    assert full.baseline.value == resumed.baseline.value
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))
