"""Where a training step makes the host wait for the GPU.

On a GPU a training step is bound by the host (benchmarks/RESULTS.md): while the host waits
for the GPU it queues no kernels, so a hidden wait lengthens every step. The search reads its
reward on the host once per optimizer step (`ReinforceTrainer._mean_over_ranks`); nothing else
in the project's code may wait: not the quantized layers (abs-max or MSE-clipped scales), the
grouped weights, the policy or the reward.

What the check sees: every wait that the project's Python code causes, in the forward pass, in
the search's own work, and in the backward of its autograd Functions (those run on autograd's
thread with their own Python stack). A wait inside one of torch's own C++ backward kernels is
reported by autograd after the backward, from its caller (here accelerate), so it is listed
among the others and does not fail the test.
"""
from __future__ import annotations

import inspect
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
import torch

from tests.trainer.toy_search_problem import ToyDataset, make_trainer
from trainer.reinforce_trainer import ReinforceTrainer

REPO = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("quant", "trainer", "policy", "cost")
TORCH_DIR = Path(torch.__file__).resolve().parent


class SyncSite(NamedTuple):
    """The caller of a synchronizing operation: the innermost frame outside torch itself."""

    file: str  # relative to the repository for the project's files, else the absolute path
    line: int
    function: str

    @property
    def in_project(self) -> bool:
        return self.file.split("/")[0] in PROJECT_PACKAGES


def caller_of(stack: list[traceback.FrameSummary]) -> SyncSite | None:
    for frame in reversed(stack):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(TORCH_DIR) or frame.filename.endswith(("warnings.py", __file__)):
            continue
        name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        return SyncSite(name, frame.lineno or 0, frame.name)
    return None


def sync_sites(fn: Callable[[], Any]) -> list[SyncSite]:
    """Run `fn` with CUDA's sync debug mode on: the caller of every synchronizing operation."""
    sites: list[SyncSite] = []

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing" in str(message):
            site = caller_of(traceback.extract_stack())
            if site is not None:
                sites.append(site)

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # restored by catch_warnings
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            torch.cuda.synchronize()  # any wait left in flight is the step's
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def reward_read_site() -> SyncSite:
    """The one allowed wait: the line of `_mean_over_ranks` that reads the rewards."""
    lines, first = inspect.getsourcelines(ReinforceTrainer._mean_over_ranks)
    offset = next(i for i, text in enumerate(lines) if ".tolist()" in text)
    return SyncSite("trainer/reinforce_trainer.py", first + offset, "_mean_over_ranks")


def toy_step(trainer, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """The ReinforceTrainer's training step (sampling, forward, backward, reward, policy update)."""

    def step() -> None:
        trainer.training_step(trainer.model, batch)
        trainer.model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    return step


def plain_step(trainer, batch: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """The HF Trainer's own training step on the trainer's model: no sampling, reward or policy."""
    from transformers import Trainer

    def step() -> None:
        Trainer.training_step(trainer, trainer.model, batch)
        trainer.model.zero_grad(set_to_none=True)

    return step


def test_the_reward_read_is_found_in_its_function() -> None:
    site = reward_read_site()
    source = Path(REPO, site.file).read_text().splitlines()[site.line - 1]
    assert ".tolist()" in source and site.in_project
    assert not SyncSite("/usr/lib/python3/site-packages/transformers/trainer.py", 1, "f").in_project
    # The caller is the innermost frame outside torch.
    stack = [traceback.FrameSummary(str(REPO / "trainer" / "reinforce_trainer.py"), 7, "training_step"),
             traceback.FrameSummary(str(REPO / "quant" / "quant_utils.py"), 3, "quantize"),
             traceback.FrameSummary(str(TORCH_DIR / "_tensor.py"), 5, "__float__")]
    assert caller_of(stack) == SyncSite("quant/quant_utils.py", 3, "quantize")
    assert caller_of(stack[2:]) is None


@pytest.mark.gpu
@pytest.mark.parametrize(("search", "clipping"), [(True, False), (False, False), (True, True)])
def test_a_step_waits_for_the_gpu_only_to_read_the_reward(tmp_path, search: bool, clipping: bool) -> None:
    """The toy search on CUDA (quantized layers, grouped weights, the fused kernels; with
    `clipping`, MSE-optimal ranges for weights and activations instead): after a first step
    (one-time kernel checks and compilation), a search step waits once, where it reads its
    reward; a fixed-format step of the same model never does."""
    from quant.quant_module import QuantConfig

    config = QuantConfig(weight_range_percentile=-1.0, act_range_percentile=-1.0) if clipping else None
    trainer = make_trainer(str(tmp_path), steps=1000, delay_steps=0, training_overrides={"use_cpu": False},
                           quant_config=config)
    device = trainer.args.device
    assert device.type == "cuda"
    trainer.state.max_steps = 1000  # what train() sets: the entropy schedule reads it
    trainer.current_gradient_accumulation_steps = 1  # training_step divides the loss by it
    data = ToyDataset(64, 5)
    batch = {"x": data.x.to(device), "labels": data.labels.to(device)}
    if search:
        step = toy_step(trainer, batch)
    else:  # the same quantized model under the plain Trainer's step, at the formats of a first sample
        trainer.apply_option_indices(trainer.policy.sample(trainer.sample_generator).indices)
        step = plain_step(trainer, batch)
    step()
    sites = sync_sites(lambda: [step() for _ in range(2)])
    ours = [site for site in sites if site.in_project]
    assert ours == ([reward_read_site()] * 2 if search else []), (
        "synchronizing operations in the project's code (file, line, function): "
        f"{ours}; others (not the project's): {[s for s in sites if not s.in_project]}")
