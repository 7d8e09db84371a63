"""ReinforceTrainer: a HF Trainer whose every step also searches the numeric formats.

Per optimizer step (with gradient accumulation, a cycle of k micro-batches; k = 1 otherwise):
  1. at its first micro-batch, sample an option per decision: uniformly during `delay_steps`,
     from the policy after; set the formats on the quantized layers (attributes only, nothing
     re-allocated). Every micro-batch of the cycle trains with that one sample;
  2. per micro-batch, the normal Trainer step on the shared weights (`super().training_step`)
     and the quality of the sample on that batch (reward_source train, free) or on a held-out
     batch (forward only);
  3. at the last micro-batch (`accelerator.sync_gradients`, set by the Trainer, also on the
     short last cycle of an epoch): quality = the mean over the cycle's micro-batches, each
     weighted equally (as the Trainer weights their losses unless the model normalises by
     num_items_in_batch), averaged over DDP ranks so every rank sees the same reward;
     reward = cost function(cost of the sample, target, quality); the advantage of each
     decision against its baseline (`AdvantageMode`); after the delay, one REINFORCE step on
     the policy with the scheduled entropy term.

Every rank seeds the same sampling generator, so all ranks pick the same formats without any
communication, and the all-reduced reward keeps their policies identical.

A sample whose loss is not finite (e.g. FP4 everywhere) on any micro-batch of its cycle does not
touch the weights: the cycle's gradients are dropped and the normalisation buffers are restored
to the cycle's start. It gets the worst reward seen so far, so the policy learns to avoid it,
and the step is counted in the logs. With fp16's loss scaling the dropped step goes through the
GradScaler as an overflow (it skips the optimizer step); its scale and the learning-rate schedule
then continue as without fp16.

A checkpoint stores the search settings (`ReinforceConfig.search_settings`); resuming with
different ones, or with max_steps not above the checkpoint's step, is an error.
"""
from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import transformers.optimization
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from cost.cost import compute_reward, rewards_for_costs
from cost.model_cost import LayerCost
from policy.reinforce import EmaBaseline, reinforce_loss
from policy.simple_policy import PolicySample, SimplePolicy
from quant.quant_module import QuantModule
from quant.surgery import set_layer_formats
from trainer.entropy_schedule import entropy_beta
from trainer.final_selection import FinalSelection, constrained_argmax, is_one_sided
from trainer.quality import batch_quality
from trainer.reinforce_config import SEARCH_STATE_NAME, AdvantageMode, ReinforceConfig, RewardSource
from trainer.search_space import DecisionCostTable, SearchSpace

logger = logging.getLogger(__name__)


def recalibrate_batchnorm(model: nn.Module, batches: Iterator[dict[str, Any]], prepare=lambda b: b) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as a plain average over
    `batches` (forward passes in train mode, no gradient). Returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    was_training = model.training
    model.train()
    used = 0
    with torch.no_grad():
        for batch in batches:
            model(**prepare(batch))
            used += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)
    return used


LOG_PREFIX = "search/"
# Logged as their sum over the steps since the previous log (a count); every other search log is
# the mean over those steps.
SUMMED_LOGS = frozenset({"non_finite_steps"})
# The Trainer's key of the held-out split's loader (kept by key with dataloader_persistent_workers).
HELDOUT_LOADER_KEY = "fliqs_heldout"


@dataclass(frozen=True)
class DecisionResult:
    layers: tuple[str, ...]
    format: str
    probabilities: dict[str, float]


@dataclass
class _Cycle:
    """The micro-batches of one optimizer step: one sample for all of them."""

    step: int  # the optimizer step (global_step) they belong to
    searching: bool
    sample: PolicySample
    buffers: tuple[list[torch.Tensor], list[torch.Tensor]]  # as before the cycle's first micro-batch
    values: list[torch.Tensor] = field(default_factory=list)  # (loss, quality) per micro-batch, on device


class _TrainBegin(TrainerCallback):
    """At the start of train(), once the Trainer has its state (a resumed one included)."""

    def __init__(self, trainer: ReinforceTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._cycle = None  # a cycle that an earlier train() cut short never reached its step
        self.trainer._buffer_modules = None  # list the modules again: they may have changed between runs
        # A resumed run must have steps left: transformers does not check, and trains one step past
        # a max_steps at or below the checkpoint's step (unless that step ends an epoch).
        if state.global_step > 0 and state.global_step >= state.max_steps:
            raise ValueError(
                f"this run's max_steps ({state.max_steps}, from --max_steps or --num_train_epochs) is not above the "
                f"checkpoint's step {state.global_step}: nothing is left to search; resume with more steps than "
                f"{state.global_step}, or start a new run")


# Schedulers the Trainer steps on evaluation metrics rather than once per optimizer step.
_METRIC_DRIVEN_SCHEDULERS = tuple(cls for cls in (torch.optim.lr_scheduler.ReduceLROnPlateau,
                                                  getattr(transformers.optimization, "GreedyLR", None)) if cls)


class _AfterDroppedSample(TrainerCallback):
    """After the optimizer step of a sample dropped under fp16's loss scaling (which the
    GradScaler took for an overflow): give the scaler back its scale and growth count, and
    advance the learning-rate schedule, which the Trainer does not after a skipped step. The
    sample's formats, not the scale, made that step overflow: without this, a search meeting many
    such samples would shrink the scale until fp16 gradients underflow, and its schedule would
    lag global_step unlike the same search without fp16."""

    def __init__(self, trainer: ReinforceTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        saved = trainer._scaler_state_to_restore
        if saved is None:
            return
        trainer._scaler_state_to_restore = None
        trainer.accelerator.scaler.load_state_dict(saved)
        # A fused optimizer skips inside its own step, unseen by accelerate: then the Trainer steps the schedule.
        if trainer.accelerator.optimizer_step_was_skipped and not isinstance(trainer.lr_scheduler,
                                                                             _METRIC_DRIVEN_SCHEDULERS):
            trainer.lr_scheduler.step()


class ReinforceTrainer(Trainer):
    """Trainer + format search. Extra arguments (keywords):

    reinforce_config: the search settings.
    search_space: decisions and format options (trainer.search_space.SearchSpace).
    quant_layers: name -> quantized layer of the model being trained.
    layer_costs: cost information of those layers (cost.model_cost.layer_costs).
    heldout_dataset: the split carved out of the training set, for reward_source 'heldout'.
    """

    def __init__(self, *args: Any, reinforce_config: ReinforceConfig, search_space: SearchSpace,
                 quant_layers: Mapping[str, QuantModule], layer_costs: Sequence[LayerCost],
                 heldout_dataset: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = reinforce_config
        if config.reward_source is RewardSource.HELDOUT and heldout_dataset is None:
            raise ValueError("reward_source 'heldout' needs a heldout_dataset (carved out of the training set)")
        unknown = [l for ls in search_space.decisions.values() for l in ls if l not in quant_layers]
        if unknown:
            raise ValueError(f"search space names layers that are not quantized: {unknown[:5]}")
        self.reinforce_config = config
        self.search_space = search_space
        self.quant_layers = dict(quant_layers)
        self.cost_table = DecisionCostTable(search_space, layer_costs, config.cost_type)
        self.policy = SimplePolicy(search_space.num_decisions, search_space.num_options, config.policy_temperature)
        # No momentum (beta1 = 0, as in TuNAS): every decision follows the cost signal together, and
        # momentum would carry them all past the target before the signal flips.
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.rl_learning_rate, betas=(0.0, 0.999))
        self.baseline = EmaBaseline(config.baseline_decay)
        self.sample_generator = torch.Generator().manual_seed(config.policy_seed)
        self.heldout_dataset = heldout_dataset
        self._heldout_loader: Iterable | None = None
        self._heldout_batches: Iterator | None = None
        self._heldout_position = 0  # batches read in the current pass over the held-out split
        self.worst_reward: float | None = None
        self.non_finite_steps = 0
        self._pending_logs: dict[str, list[float]] = defaultdict(list)
        self._captured_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        self._buffer_copies: list[torch.Tensor] = []
        self._buffer_modules: tuple[nn.Module, list[nn.Module]] | None = None  # (model, its modules)
        self._cycle: _Cycle | None = None
        self._scaler_state_to_restore: dict[str, Any] | None = None
        self.add_callback(_TrainBegin(self))
        self.add_callback(_AfterDroppedSample(self))

    # --- formats ------------------------------------------------------------------------------
    def apply_option_indices(self, indices: torch.Tensor) -> None:
        set_layer_formats(self.quant_layers, self.search_space.assignment(indices))

    def final_indices(self) -> torch.Tensor:
        config = self.reinforce_config
        if config.final_selection is FinalSelection.ARGMAX:
            return self.policy.argmax()
        with torch.no_grad():
            log_probs = self.policy.log_probabilities()
        return constrained_argmax(log_probs, self.cost_table.table, config.cost_target, config.target_tolerance,
                                  one_sided=is_one_sided(config.cost_function))

    def final_decisions(self) -> dict[str, DecisionResult]:
        """The answer: the most likely option of every decision, with the final probabilities."""
        with torch.no_grad():
            probs = self.policy().cpu()
        names = self.search_space.option_names
        return {
            decision: DecisionResult(layers, names[int(k)], dict(zip(names, map(float, p))))
            for (decision, layers), k, p in zip(self.search_space.decisions.items(), self.final_indices(), probs)
        }

    def apply_final_assignment(self) -> None:
        self.apply_option_indices(self.final_indices())

    def final_cost(self) -> float:
        return self.cost_table.cost(self.final_indices())

    def finalize_search(self, recalibration_batches: int = 0) -> None:
        """Fix the answer on the layers and, optionally, re-estimate the BatchNorm statistics
        for it: during the search they averaged over every sampled format. No weight changes."""
        self.apply_final_assignment()
        if recalibration_batches > 0:
            recalibrate_batchnorm(self.model, self._train_batches(recalibration_batches), self._prepare_inputs)
            if self.accelerator.num_processes > 1:
                for buffer in self.model.buffers():
                    if buffer.is_floating_point():
                        buffer.copy_(self.accelerator.reduce(buffer, reduction="mean"))

    def _train_batches(self, count: int) -> Iterator[dict[str, Any]]:
        loader = self.get_train_dataloader()
        seen = 0
        while seen < count:
            start = seen
            for batch in loader:
                yield batch
                seen += 1
                if seen == count:
                    return
            if seen == start:  # an empty training set: nothing to recalibrate on
                return

    # --- the training step --------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and "labels" in inputs:
            self._captured_logits = (outputs["logits"].detach(), inputs["labels"])
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        config = self.reinforce_config
        cycle = self._cycle
        if cycle is None:  # the first micro-batch of an optimizer step
            step = self.state.global_step
            searching = step >= config.delay_steps
            sample = self.policy.sample(self.sample_generator) if searching else self._warmup_sample(step)
            self.apply_option_indices(sample.indices)
            cycle = self._cycle = _Cycle(step, searching, sample, self._snapshot_buffers(model))

        # The held-out batch is fetched before the micro-batch's own work: its copy to a GPU
        # makes the host wait for the GPU's queue, which after the backward pass holds all of
        # it (and the host would then launch the held-out forward on an idle GPU). At the first
        # micro-batch of a step the queue is about empty (the Trainer's own copy of the
        # training batch has just waited for it).
        heldout = (self._prepare_inputs(self._next_heldout_batch())
                   if config.reward_source is RewardSource.HELDOUT else None)
        loss = super().training_step(model, inputs, num_items_in_batch)

        if heldout is None:
            if self._captured_logits is None:
                raise RuntimeError("the model returned no logits/labels for the reward; the search needs a "
                                   "classification or regression model that returns logits and gets labels")
            quality = batch_quality(*self._captured_logits, config.reward_metric)
        else:
            quality = self._heldout_quality(model, heldout)
        self._captured_logits = None
        cycle.values.append(torch.stack([loss.detach().float(), quality.float()]))
        # The Trainer sets sync_gradients on the last micro-batch of every cycle, the short last
        # one of an epoch included: the optimizer steps right after it.
        if self.accelerator.sync_gradients:
            self._cycle = None
            self._end_cycle(model, cycle)
        return loss

    def _end_cycle(self, model: nn.Module, cycle: _Cycle) -> None:
        # One host sync per optimizer step: the reward must reach Python for the policy anyway.
        values = self._mean_over_ranks(torch.stack(cycle.values))  # [[loss, quality] per micro-batch]
        finite = all(math.isfinite(v) for pair in values for v in pair)
        if not finite:
            self._drop_gradients(model)
            self._restore_buffers(cycle.buffers)
            self.non_finite_steps += 1
        quality = math.fsum(q for _, q in values) / len(values) if finite else None
        self._update_policy(cycle.sample, quality, cycle.step, cycle.searching)

    def _drop_gradients(self, model: nn.Module) -> None:
        """Drop the gradients of every micro-batch of the cycle so that the optimizer step leaves
        the weights and the optimizer state as they are."""
        scaler = self.accelerator.scaler
        if scaler is None or not scaler.is_enabled():
            model.zero_grad(set_to_none=True)  # optimizers skip parameters without gradients
            return
        # A GradScaler asserts when a step has no gradient to check for infs. Make every gradient
        # NaN instead: it then skips the optimizer step as for an overflow (on every DDP rank,
        # since all see the same mean loss), and _AfterDroppedSample undoes the rest of that.
        for param in model.parameters():
            if param.requires_grad:
                if param.grad is None:
                    param.grad = torch.full_like(param, float("nan"))
                else:
                    param.grad.fill_(float("nan"))
        self._scaler_state_to_restore = scaler.state_dict()  # scale and growth count

    def _warmup_sample(self, step: int) -> PolicySample:
        if not self.reinforce_config.precision_warmup:
            return self.policy.sample_uniform(self.sample_generator)
        most_precise = max(range(self.search_space.num_options), key=lambda k: self.search_space.formats[k].bits)
        preferred = torch.full((self.search_space.num_decisions,), most_precise, dtype=torch.long)
        probability = 1.0 - step / self.reinforce_config.delay_steps
        return self.policy.sample_warmup(self.sample_generator, preferred, probability)

    def _update_policy(self, sample: PolicySample, quality: float | None, step: int, searching: bool) -> None:
        config = self.reinforce_config
        cost = self.cost_table.cost(sample.indices)
        logs = self._pending_logs
        logs["cost"].append(cost)
        logs["cost_ratio"].append(cost / config.cost_target)
        logs["non_finite_steps"].append(0.0 if quality is not None else 1.0)
        if quality is not None:
            breakdown = compute_reward(config.cost_function, cost, config.cost_beta, config.cost_target, quality)
            reward = breakdown.reward
            self.worst_reward = reward if self.worst_reward is None else min(self.worst_reward, reward)
            logs["quality"].append(quality)
        else:
            reward = self.worst_reward  # None before any finite step: nothing to learn from yet
        if reward is None:
            return
        advantages = self._advantages(sample, reward, quality, cost)
        logs["reward"].append(reward)
        logs["advantage"].append(float(advantages.mean()))
        # The EMA follows the reward with --advantage global, and the quality with per_decision
        # (whose baselines are the expected rewards at that quality): named for what it holds.
        ema_name = "baseline_ema" if config.advantage is AdvantageMode.GLOBAL else "quality_ema"
        logs[ema_name].append(float(self.baseline.value))
        if not searching:
            return
        beta = entropy_beta(step, schedule=config.entropy_schedule, delay_steps=config.delay_steps,
                            total_steps=self.state.max_steps, max_entropy_beta=config.max_entropy_beta)
        policy_loss = reinforce_loss(sample, advantages, beta)
        self.policy_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.policy_optimizer.step()
        logs["policy_loss"].append(float(policy_loss.detach()))
        logs["entropy"].append(float(sample.entropy.detach()))
        logs["entropy_beta"].append(beta)

    def _advantages(self, sample: PolicySample, reward: float, quality: float | None, cost: float) -> torch.Tensor:
        """(D,) advantage of each decision; updates the EMA baseline."""
        config = self.reinforce_config
        num_decisions = self.search_space.num_decisions
        if config.advantage is AdvantageMode.GLOBAL:
            return torch.full((num_decisions,), self.baseline.update(reward), dtype=torch.float64)
        # Baseline of decision d: the expected reward over d's own options, the other decisions
        # kept as sampled, at the running mean quality. It does not depend on d's own choice, so
        # the estimator stays unbiased.
        mean_quality = self.baseline.value if self.baseline.value is not None else quality
        if quality is not None:
            self.baseline.update(quality)
        if mean_quality is None:  # a non-finite first step: nothing to compare with yet
            return torch.zeros(num_decisions, dtype=torch.float64)
        table = self.cost_table.table  # (D, K)
        own = table.gather(1, sample.indices.view(-1, 1))  # (D, 1)
        alternative_costs = cost - own + table  # (D, K): decision d switched to option k
        alternative_rewards = rewards_for_costs(config.cost_function, alternative_costs, config.cost_beta,
                                                config.cost_target, mean_quality)
        with torch.no_grad():
            probs = self.policy().double().cpu()
        return reward - (probs * alternative_rewards).sum(dim=1)

    def _heldout_quality(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The reward's quality on a held-out batch (on the model's device), in eval mode."""
        was_training = model.training
        model.eval()
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**batch)
        model.train(was_training)
        return batch_quality(outputs["logits"], batch["labels"], self.reinforce_config.reward_metric)

    def _build_heldout_loader(self) -> Iterable:
        """The evaluation loader of the held-out split, under a key of its own: with
        dataloader_persistent_workers the Trainer keeps its loaders by key, and
        get_eval_dataloader's "eval" would make the held-out split and the evaluation set
        share one loader. (`_get_dataloader` is what get_eval_dataloader calls, in every
        transformers >= 5.17.)"""
        return self._get_dataloader(dataset=self.heldout_dataset, description="Held-out reward",
                                    batch_size=self.args.eval_batch_size, sampler_fn=self._get_eval_sampler,
                                    dataloader_key=HELDOUT_LOADER_KEY)

    def _next_heldout_batch(self) -> dict[str, Any]:
        # A pass over a DataLoader draws a seed from the global RNG as it starts (under
        # accelerate, at its first batch): reading the held-out split must not move the
        # training's random numbers (dropout, shuffling), whenever in the step it happens.
        with torch.random.fork_rng(devices=[]):
            return self._read_heldout_batch()

    def _read_heldout_batch(self) -> dict[str, Any]:
        for _ in range(2):
            if self._heldout_batches is None:
                # Built once: a DataLoader (and accelerate's wrapping of it) per pass over a
                # small held-out split cost more than the forward pass it feeds.
                if self._heldout_loader is None:
                    self._heldout_loader = self._build_heldout_loader()
                self._heldout_batches = iter(self._heldout_loader)
                # A resumed search goes on where its checkpoint was in the pass (the loader's
                # order is fixed: no shuffling).
                for _ in range(self._heldout_position):
                    if next(self._heldout_batches, None) is None:
                        self._heldout_batches, self._heldout_position = iter(self._heldout_loader), 0
                        break
            try:
                batch = next(self._heldout_batches)
            except StopIteration:
                self._heldout_batches, self._heldout_position = None, 0  # cycle through the split again
                continue
            self._heldout_position += 1
            return batch
        raise ValueError("the heldout dataset is empty; give --heldout_fraction a larger value")

    def _mean_over_ranks(self, values: torch.Tensor) -> list:
        """Element-wise mean over the DDP ranks, as (nested) Python floats."""
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        return values.tolist()

    def _snapshot_buffers(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(buffers, copies): BatchNorm running statistics change in the forward pass; keep a
        copy to undo a non-finite step. Device-side copies into buffers allocated once, all in
        one multi-tensor copy: no sync, and one launch instead of one per buffer (ResNet-18 has
        40 such buffers, and on a GPU each launch costs CPU time in every step)."""
        buffers = self._float_buffers(model)
        saved = self._buffer_copies
        if len(saved) != len(buffers) or any(a.shape != b.shape or a.device != b.device or a.dtype != b.dtype
                                             for a, b in zip(saved, buffers)):
            saved = self._buffer_copies = [b.detach().clone() for b in buffers]
        elif buffers:
            with torch.no_grad():
                torch._foreach_copy_(saved, buffers)
        return buffers, saved

    def _float_buffers(self, model: nn.Module) -> list[torch.Tensor]:
        """The floating-point buffers of `model`, as `model.buffers()` lists them. Its modules are
        listed once per model and train() (walking them took ~180 us per step for BERT-base,
        which has no such buffer), so modules must not be added or replaced during training;
        their buffer slots are read at every step, so a buffer registered or replaced on one of
        them is still the one copied."""
        if self._buffer_modules is None or self._buffer_modules[0] is not model:
            self._buffer_modules = (model, list(model.modules()))
        seen: set[int] = set()  # a buffer shared by two modules is listed once, as buffers() does
        buffers = []
        for module in self._buffer_modules[1]:
            for buffer in module._buffers.values():
                if buffer is not None and buffer.is_floating_point() and id(buffer) not in seen:
                    seen.add(id(buffer))
                    buffers.append(buffer)
        return buffers

    @staticmethod
    def _restore_buffers(snapshot: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
        buffers, saved = snapshot
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved)

    # --- logging --------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log, or the summary at the end of training (which takes the steps since the
        # last training log): attach the search metrics of the steps since the previous one.
        if ("loss" in logs or "train_loss" in logs) and self._pending_logs:
            for key, values in self._pending_logs.items():
                logs[LOG_PREFIX + key] = sum(values) if key in SUMMED_LOGS else sum(values) / len(values)
            self._pending_logs = defaultdict(list)
            logs.update(self.probability_logs())
        super().log(logs, start_time)

    def probability_logs(self) -> dict[str, float]:
        with torch.no_grad():
            probs = self.policy().cpu()
        names = self.search_space.option_names
        return {f"{LOG_PREFIX}p/{decision}/{names[k]}": float(probs[d, k])
                for d, decision in enumerate(self.search_space.decision_names) for k in range(len(names))}

    # --- evaluation uses the current answer ----------------------------------------------------
    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self.apply_final_assignment()
        return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        self.apply_final_assignment()
        return super().predict(*args, **kwargs)

    # --- checkpoints ----------------------------------------------------------------------------
    def search_state_dict(self) -> dict[str, Any]:
        return {
            "settings": self.reinforce_config.search_settings(),
            "policy": self.policy.state_dict(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "baseline": self.baseline.state_dict(),
            "sample_generator": self.sample_generator.get_state(),
            "worst_reward": self.worst_reward,
            "non_finite_steps": self.non_finite_steps,
            "heldout_position": self._heldout_position,
            "decisions": self.search_space.decision_names,
            "options": self.search_space.option_names,
        }

    def check_search_state(self, state: dict[str, Any]) -> None:
        """Raise unless `state` was written by a search with this run's space and settings."""
        expected = (self.search_space.decision_names, self.search_space.option_names)
        if (state["decisions"], state["options"]) != expected:
            raise ValueError("the checkpoint's search space (decisions/options) differs from this run's; resume "
                             "with the same --search_space, granularity and layer flags")
        saved = state.get("settings")
        if saved is None:  # written before the settings were stored: nothing to compare with
            logger.warning("the checkpoint does not record its search settings (written by an older version); "
                           "they are assumed to equal this run's")
            return
        current = self.reinforce_config.search_settings()
        # Only settings both know: a setting added later cannot be checked against an older checkpoint.
        differing = [f"{name} {saved[name]!r} -> {current[name]!r}" for name in current
                     if name in saved and saved[name] != current[name]]
        if differing:
            raise ValueError(f"the checkpoint's search settings differ from this run's (checkpoint -> this run): "
                             f"{', '.join(differing)}; resume with the checkpoint's settings, or start a new run "
                             "to search with these")

    def load_search_state_dict(self, state: dict[str, Any]) -> None:
        self.check_search_state(state)
        self._restore_search_state(state)

    def _restore_search_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.sample_generator.set_state(state["sample_generator"])
        self.worst_reward = state["worst_reward"]
        self.non_finite_steps = state["non_finite_steps"]
        self._heldout_position = state.get("heldout_position", 0)  # older checkpoints: from the start
        self._heldout_batches = None

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if os.path.isdir(folder):  # written whole or not at all: a kill mid-save leaves no half file
                path = os.path.join(folder, SEARCH_STATE_NAME)
                torch.save(self.search_state_dict(), path + ".tmp")
                os.replace(path + ".tmp", path)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, SEARCH_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{resume_from_checkpoint} has no {SEARCH_STATE_NAME}: it was not written by a "
                                    "search run, so the search cannot resume from it")
        state = torch.load(path, weights_only=False)
        self.check_search_state(state)  # before any weight is loaded
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._restore_search_state(state)
