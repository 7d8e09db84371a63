"""A sample whose loss is not finite never touches the weights, with or without fp16's loss
scaling, and gets the worst reward (trainer/dropped_steps.py, through the trainer)."""
import math

import pytest
import torch

from tests.trainer.toy_search_problem import NaNWithInt2, formats_of, make_trainer


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
