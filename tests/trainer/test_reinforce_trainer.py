import json
import math
import os

import pytest
import torch

from quant.formats import parse_format
from tests.trainer.toy_search_problem import INSENSITIVE, ToyDataset, ToyModel, make_trainer
from trainer.entropy_schedule import entropy_beta
from trainer.reinforce_trainer import SEARCH_STATE_NAME

INT2, INT8 = parse_format("int2"), parse_format("int8")


def formats_of(trainer) -> dict[str, str]:
    return {name: result.format for name, result in trainer.final_decisions().items()}


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
    low.train()
    assert low.final_cost() == low.cost_table.min_cost(), formats_of(low)
    # Above any configuration with a strong cost term: every byte closer to the target pays.
    high = make_trainer(str(tmp_path / "high"), steps=300, cost_beta=50.0)
    high.reinforce_config.cost_target = high.cost_table.max_cost() * 2
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


class DropoutToy(ToyModel):
    """The toy model with dropout on its input: its training forward draws from the global RNG."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return super().forward(torch.nn.functional.dropout(x, 0.2, self.training), labels)


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


def test_resume_from_a_checkpoint_without_search_state_fails_clearly(tmp_path):
    trainer = make_trainer(str(tmp_path / "a"), steps=20, training_overrides=dict(save_strategy="steps", save_steps=10))
    trainer.train()
    os.remove(tmp_path / "a" / "checkpoint-10" / SEARCH_STATE_NAME)
    again = make_trainer(str(tmp_path / "b"), steps=20)
    with pytest.raises(FileNotFoundError, match=f"has no {SEARCH_STATE_NAME}: it was not written by a search run"):
        again.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-10"))


class NaNWithInt2(ToyModel):
    """Blows up (NaN loss) whenever its input layer runs at INT2, and has a BatchNorm whose
    running statistics a bad step must not corrupt."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(16)

    def forward(self, x, labels=None):
        out = super().forward(self.norm(x), labels)
        if self.fc_in.weight_format == INT2:
            out = {k: v * float("nan") for k, v in out.items()}
        return out


def test_non_finite_samples_never_touch_the_weights(tmp_path):
    trainer = make_trainer(str(tmp_path), model=NaNWithInt2(), search_space="int2", steps=30,
                           training_overrides=dict(logging_steps=10))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert trainer.non_finite_steps == 30
    # Logged per window: the steps dropped since the previous log (every step here).
    logged = [entry["search/non_finite_steps"] for entry in trainer.state.log_history
              if "search/non_finite_steps" in entry]
    assert logged == [10.0, 10.0, 10.0]
    for key in before:
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(before[key], after[key]), key


def _with_grad_scaler(trainer, *, autocast: bool, growth_interval: int = 10**6):
    """The trainer with a GradScaler (a CPU one: the same code as on a GPU), as accelerate sets it
    up for --fp16 on a GPU. With `autocast`, the whole fp16 path: fp16 autocast and gradient
    clipping on unscaled gradients; without, only the loss scaling (fp32 numbers)."""
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=growth_interval)
    trainer.accelerator.native_amp = autocast
    return trainer


def test_under_fp16_loss_scaling_non_finite_samples_skip_the_step_and_keep_the_scale(tmp_path):
    # Dropping the gradients (set to None) made GradScaler assert "No inf checks were recorded".
    trainer = _with_grad_scaler(make_trainer(str(tmp_path / "all"), model=NaNWithInt2(), search_space="int2", steps=5,
                                             training_overrides={"fp16": True}), autocast=True)
    assert trainer.accelerator.mixed_precision == "fp16"
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    trainer.train()
    assert trainer.non_finite_steps == 5
    assert trainer.accelerator.scaler.get_scale() == 1024.0
    for key, value in before.items():
        assert torch.equal(value, trainer.model.state_dict()[key]), key


@pytest.mark.parametrize("optimizer", ["adamw_torch", "adamw_torch_fused"])
def test_under_fp16_loss_scaling_a_search_trains_as_without_it(tmp_path, optimizer):
    # Finite and non-finite samples mixed: the same weights, bit for bit, and the same learning
    # rates as without the scaler (a power-of-two scale is exact; no clipping, which would see the
    # scaled gradients here). The scaler skipped the dropped steps, which stopped the linear
    # schedule there (adamw_torch: accelerate saw the skip) unless the trainer advances it.
    settings = {"max_grad_norm": 0.0, "optim": optimizer, "lr_scheduler_type": "linear"}
    torch.manual_seed(0)  # the same initial weights for both
    plain = make_trainer(str(tmp_path / "plain"), model=NaNWithInt2(), search_space="int2,int8", steps=40,
                         training_overrides=settings)
    torch.manual_seed(0)
    scaled = _with_grad_scaler(make_trainer(str(tmp_path / "scaled"), model=NaNWithInt2(), search_space="int2,int8",
                                            steps=40, training_overrides=settings), autocast=False, growth_interval=5)
    plain.train()
    scaled.train()
    assert 0 < scaled.non_finite_steps < 40 and scaled.non_finite_steps == plain.non_finite_steps
    assert scaled.lr_scheduler.get_last_lr() == plain.lr_scheduler.get_last_lr() == [0.0, 0.0]  # two param groups
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(scaled.model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    # Never lowered, and grown once per 5 finite steps in a row, as if the dropped ones were not there.
    assert scaled.accelerator.scaler.get_scale() == 1024.0 * 2 ** ((40 - scaled.non_finite_steps) // 5)


@pytest.mark.gpu
def test_fp16_search_on_a_gpu_drops_non_finite_samples(tmp_path):
    # The real --fp16 path (accelerate's CUDA GradScaler and autocast) that the test above mirrors on the CPU.
    gpu_fp16 = {"use_cpu": False, "fp16": True}
    trainer = make_trainer(str(tmp_path / "all"), model=NaNWithInt2(), search_space="int2", steps=5,
                           training_overrides=gpu_fp16)
    assert trainer.accelerator.scaler is not None
    scale = trainer.accelerator.scaler.get_scale()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    trainer.train()
    assert trainer.non_finite_steps == 5 and trainer.accelerator.scaler.get_scale() == scale
    for key, value in before.items():
        assert torch.equal(value, trainer.model.state_dict()[key]), key
    mixed = make_trainer(str(tmp_path / "mixed"), model=NaNWithInt2(), search_space="int2,int8", steps=40,
                         training_overrides=gpu_fp16)
    mixed.train()
    assert 0 < mixed.non_finite_steps < 40
    assert all(math.isfinite(float(p.detach().float().sum())) for p in mixed.model.parameters())


def test_non_finite_samples_get_the_worst_reward_and_are_avoided(tmp_path):
    trainer = make_trainer(str(tmp_path), model=NaNWithInt2(), search_space="int2,int8", steps=300,
                           target_mib=1.0)
    trainer.train()
    assert trainer.non_finite_steps > 0
    assert formats_of(trainer)["fc_in"] == "int8"
    assert all(math.isfinite(float(p.detach().sum())) for p in trainer.model.parameters())
    logged = [entry for entry in trainer.state.log_history if "search/non_finite_steps" in entry]
    assert logged and logged[-1]["search/non_finite_steps"] > 0


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


def test_recalibrate_batchnorm_averages_the_batch_statistics():
    from trainer.reinforce_trainer import recalibrate_batchnorm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(3, momentum=0.3)

        def forward(self, x):
            return self.norm(x)

    net = Net().eval()
    net.norm.running_mean.fill_(5.0)
    batches = [{"x": torch.randn(8, 3, generator=torch.Generator().manual_seed(i))} for i in range(4)]
    assert recalibrate_batchnorm(net, iter(batches)) == 4
    expected_mean = torch.stack([b["x"].mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b["x"].var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(net.norm.running_mean, expected_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(net.norm.running_var, expected_var, rtol=1e-6, atol=1e-7)
    assert net.norm.momentum == 0.3 and not net.training  # restored
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), iter(batches)) == 0


def test_finalize_search_recalibrates_for_the_answer(tmp_path):
    trainer = make_trainer(str(tmp_path), model=NaNWithInt2(), search_space="int4,int8", steps=20)
    trainer.train()
    trainer.finalize_search(recalibration_batches=3)
    assert trainer.model.norm.num_batches_tracked.item() == 3
    assert trainer.quant_layers["fc_in"].weight_format.name == trainer.final_decisions()["fc_in"].format


def test_heldout_batches_cycle_through_one_dataloader(tmp_path, monkeypatch):
    trainer = make_trainer(str(tmp_path), steps=7, reward_source="heldout",
                           training_overrides=dict(per_device_eval_batch_size=8))
    trainer.heldout_dataset = ToyDataset(16, 7)  # two batches per pass
    built = []
    real = trainer._get_dataloader
    monkeypatch.setattr(trainer, "_get_dataloader", lambda **k: built.append(k) or real(**k))
    seen = [trainer._next_heldout_batch()["x"] for _ in range(5)]
    assert len(built) == 1  # passes 2 and 3 reuse the loader of pass 1
    # Under a key of its own: with persistent workers the Trainer keeps loaders by key, and the
    # evaluation set's is "eval".
    assert built[0]["dataset"] is trainer.heldout_dataset and built[0]["dataloader_key"] == "fliqs_heldout"
    first, second = ToyDataset(16, 7).x[:8], ToyDataset(16, 7).x[8:]
    for got, want in zip(seen, [first, second, first, second, first]):
        assert torch.equal(got, want)


def test_reading_the_heldout_split_leaves_the_global_rng_as_it_was(tmp_path):
    """A pass over the held-out split draws a seed from the global RNG as it starts; the search
    reads the split under a fork of it, so training's random numbers do not depend on when."""
    trainer = make_trainer(str(tmp_path), steps=7, reward_source="heldout",
                           training_overrides=dict(per_device_eval_batch_size=8))
    trainer.heldout_dataset = ToyDataset(16, 7)  # two batches per pass: passes start at reads 1, 3, 5
    torch.manual_seed(11)
    state = torch.get_rng_state()
    for _ in range(5):
        trainer._next_heldout_batch()
    assert torch.equal(torch.get_rng_state(), state)
    with torch.random.fork_rng(devices=[]):  # unforked, a pass does draw (what the fork is for)
        trainer._read_heldout_batch()  # read 6: the end of pass 3
        assert torch.equal(torch.get_rng_state(), state)
        trainer._read_heldout_batch()  # read 7: pass 4 starts
        assert not torch.equal(torch.get_rng_state(), state)


def test_a_search_with_dropout_draws_the_same_random_numbers_whatever_feeds_the_heldout_reward(tmp_path):
    """With dropout in the model, every training forward sees the global RNG as it would if the
    held-out batches came from a plain list: reading the split through a DataLoader (whose
    passes draw seeds) leaves the training's random numbers alone."""
    runs = []
    for from_list in (False, True):
        torch.manual_seed(3)
        trainer = make_trainer(str(tmp_path / str(from_list)), seed=3, steps=10, delay_steps=2, model=DropoutToy(),
                               reward_source="heldout", training_overrides=dict(per_device_eval_batch_size=8))
        trainer.heldout_dataset = ToyDataset(24, 7)  # three batches per pass: passes start at steps 1, 4, 7, 10
        if from_list:
            data = ToyDataset(24, 7)
            batches = [{"x": data.x[i:i + 8], "labels": data.labels[i:i + 8]} for i in (0, 8, 16)]
            reads = iter(range(100))
            trainer._next_heldout_batch = lambda: batches[next(reads) % 3]
        states = []

        def record(module, args, states=states) -> None:
            if module.training:
                states.append(torch.get_rng_state())

        trainer.model.register_forward_pre_hook(record)
        trainer.train()
        runs.append((states, trainer.policy.logits.detach().clone()))
    (states, logits), (list_states, list_logits) = runs
    assert len(states) == 10 and all(torch.equal(a, b) for a, b in zip(states, list_states))
    assert torch.equal(logits, list_logits)


def test_the_heldout_batch_is_read_before_the_training_forward(tmp_path, monkeypatch):
    """On a GPU the held-out batch's copy waits for the queue: read at the start of the step it
    waits for little, after the backward pass for all of it."""
    trainer = make_trainer(str(tmp_path), steps=2, reward_source="heldout")
    events = []
    real = trainer._next_heldout_batch
    monkeypatch.setattr(trainer, "_next_heldout_batch", lambda: events.append("heldout batch") or real())
    trainer.model.register_forward_pre_hook(lambda module, args: events.append(
        "training forward" if module.training else "heldout forward"))
    trainer.train()
    assert events == ["heldout batch", "training forward", "heldout forward"] * 2


def test_buffer_snapshot_lists_the_float_buffers_as_model_buffers_does(tmp_path):
    """The snapshot lists the modules once but reads their buffer slots at every step: a buffer
    registered or replaced after the first snapshot, or shared by two modules, is listed as
    `model.buffers()` lists it, and restoring writes the values back into those tensors."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3))
    trainer = make_trainer(str(tmp_path), steps=1)

    def expected():
        return [b for b in model.buffers() if b.is_floating_point()]

    def same(listed):
        return len(listed) == len(expected()) and all(a is b for a, b in zip(listed, expected()))

    assert same(trainer._float_buffers(model)) and len(expected()) == 4  # num_batches_tracked is int64
    model[0].register_buffer("later", torch.zeros(2))
    model[1].running_mean = torch.ones(3)  # replaced by another tensor
    model[2].register_buffer("shared", model[1].running_var)
    assert same(trainer._float_buffers(model)) and len(expected()) == 5
    buffers, copies = trainer._snapshot_buffers(model)
    with torch.no_grad():
        for buffer in buffers:
            buffer.add_(1.5)
    trainer._restore_buffers((buffers, copies))
    assert torch.equal(model[1].running_mean, torch.ones(3)) and torch.equal(model[0].later, torch.zeros(2))
    assert torch.equal(model[2].shared, torch.ones(3))  # BatchNorm's running_var starts at ones
    other = torch.nn.Sequential(torch.nn.BatchNorm1d(2))  # another model: listed afresh
    assert [tuple(b.shape) for b in trainer._float_buffers(other)] == [(2,), (2,)]
    # Modules are listed once per train(): one added in between is found when training starts.
    assert same(trainer._float_buffers(model))
    model.append(torch.nn.BatchNorm1d(4))
    begin = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "_TrainBegin")
    begin.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert same(trainer._float_buffers(model)) and len(expected()) == 7
