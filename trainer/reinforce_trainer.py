"""ReinforceTrainer: a HF Trainer whose every step also searches the numeric formats.

Per optimizer step (with gradient accumulation, a cycle of k micro-batches; k = 1 otherwise):
  1. at its first micro-batch, sample an option per decision: uniformly during `delay_steps`,
     from the policy after; set the formats on the quantized layers (attributes only, nothing
     re-allocated). Every micro-batch of the cycle trains with that one sample;
  2. per micro-batch, the normal Trainer step on the shared weights (`super().training_step`)
     and the quality of the sample on that batch (reward_source train, free) or on a held-out
     batch (a forward in eval mode, before the training one);
  3. at the last micro-batch (`accelerator.sync_gradients`, set by the Trainer, also on the
     short last cycle of an epoch): quality = the mean over the cycle's micro-batches, each
     weighted equally (as the Trainer weights their losses unless the model normalises by
     num_items_in_batch), averaged over DDP ranks so every rank sees the same reward;
     reward = cost function(cost of the sample, target, quality); the advantage of each
     decision against its baseline (`AdvantageMode`); after the delay, one REINFORCE step on
     the policy with the scheduled entropy term. What of this needs no reward (the cost, the
     baselines' expectations, the loss's gradient pieces in closed form) is computed before the
     reward is read, while a GPU still runs the backward pass.

Every rank seeds the same sampling generator, so all ranks pick the same formats without any
communication, and the all-reduced reward keeps their policies identical.

A sample whose loss is not finite (e.g. FP4 everywhere) on any micro-batch of its cycle does not
touch the weights: the cycle's gradients are dropped (trainer/dropped_steps.py) and the
normalisation buffers are restored to the cycle's start (trainer/norm_statistics.py). It gets the
worst reward seen so far, so the policy learns to avoid it, and the step is counted in the logs.
With fp16's loss scaling the dropped step goes through the GradScaler as an overflow (it skips
the optimizer step); its scale and the learning-rate schedule then continue as without fp16.

The pieces live in modules of their own: the policy update (trainer/policy_update.py), the
answer and its BatchNorm statistics (trainer/search_answer.py), the held-out reward's batches
(trainer/heldout_batches.py), the search state in checkpoints and the checks before resuming
(trainer/search_state.py), the checks before a search (trainer/run_checks.py), the search's logs
(trainer/search_logs.py). This class holds the Trainer's hooks that tie them together.

train() ends with the answer on the layers (finalize_search(n) also re-estimates BatchNorm
statistics for it). Evaluation (and prediction) measures the current answer: the most likely formats within the
cost band (trainer/final_selection.py). Called between the micro-batches of one optimizer step,
it puts the step's sample back on the layers afterwards.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from cost.model_cost import LayerCost
from policy.reinforce import EmaBaseline
from policy.simple_policy import PolicySample, SimplePolicy
from quant.quant_module import QuantModule
from trainer.console_logs import hide_from_console
from trainer.dropped_steps import DroppedSteps
from trainer.evaluation_rng import RngPreservingEvaluation
from trainer.heldout_batches import HeldoutBatches
from trainer.norm_statistics import BufferSnapshot, Snapshot
from trainer.policy_update import PolicyUpdates
from trainer.quality import batch_quality, reward_inputs
from trainer.reinforce_config import SEARCH_STATE_NAME, ReinforceConfig, RewardSource
from trainer.run_checks import (check_run_length, check_search_inputs, check_steps_left, reward_label_key,
                                unreachable_target_message)
from trainer.search_answer import DecisionResult, SearchAnswer
from trainer.search_logs import (LOG_PREFIX, PROBABILITY_LOG_PREFIX, SUMMED_LOGS, SearchMetrics, is_training_log,
                                 probability_logs)
from trainer.search_space import DecisionCostTable, SearchSpace
from trainer.search_state import check_search_state, load_search_state, save_search_state

# Names other modules import from here (and once defined here): this module stays their address.
__all__ = ["ReinforceTrainer", "DecisionResult", "SEARCH_STATE_NAME", "LOG_PREFIX", "PROBABILITY_LOG_PREFIX",
           "SUMMED_LOGS", "HELDOUT_LOADER_KEY"]

logger = logging.getLogger(__name__)

# The Trainer's key of the held-out split's loader (kept by key with dataloader_persistent_workers).
HELDOUT_LOADER_KEY = "fliqs_heldout"


@dataclass
class _Cycle:
    """The micro-batches of one optimizer step: one sample for all of them."""

    step: int  # the optimizer step (global_step) they belong to
    searching: bool
    sample: PolicySample
    buffers: Snapshot  # as before the cycle's first micro-batch
    values: list[torch.Tensor] = field(default_factory=list)  # (loss, quality) per micro-batch, on device


class _TrainBegin(TrainerCallback):
    """At the start of train(), once the Trainer has its state (a resumed one included)."""

    def __init__(self, trainer: ReinforceTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._cycle = None  # a cycle that an earlier train() cut short never reached its step
        self.trainer._buffer_snapshot.relist_modules()  # they may have changed between runs
        check_steps_left(state.global_step, state.max_steps)
        self.trainer._check_run_length(state.max_steps)
        self.trainer._warn_if_target_unreachable()


class ReinforceTrainer(SearchAnswer, PolicyUpdates, RngPreservingEvaluation, Trainer):
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
        check_search_inputs(self.model, config, search_space, quant_layers, heldout_dataset)
        self.label_key = reward_label_key(self.label_names)
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
        self._heldout = HeldoutBatches(lambda: self._build_heldout_loader())  # looked up when first read
        self.worst_reward: float | None = None
        self.non_finite_steps = 0
        self._search_metrics = SearchMetrics()
        self._captured_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        self._buffer_snapshot = BufferSnapshot()
        self._cycle: _Cycle | None = None
        # (checkpoint, its search state) once checked before the weights, to restore without reading it again
        self._checked_search_state: tuple[str, dict[str, Any]] | None = None
        self.add_callback(_TrainBegin(self))
        self._dropped_steps = DroppedSteps(self)
        self.add_callback(self._dropped_steps)
        hide_from_console(self, PROBABILITY_LOG_PREFIX)  # one number per decision and format: not for a console line

    def train(self, *args: Any, **kwargs: Any):
        """Trainer.train (same arguments and result), ending with the search's answer on the
        quantized layers (`apply_final_assignment`: the formats of `final_decisions()`), not the
        last step's random sample, so the model can be costed or exported right after.

        The BatchNorm statistics still average over every format sampled during the search: for a
        model with BatchNorm, call `finalize_search(recalibration_batches)` next, which also
        re-estimates them for the answer. In order: train(), finalize_search(n) (BatchNorm
        models), then cost / export / evaluate.
        """
        output = super().train(*args, **kwargs)
        # After train returns, not in a callback: its checkpoints, the evaluations it ran (which
        # put the answer on the layers themselves) and a resumed run are left exactly as they were.
        self.apply_final_assignment()
        return output

    # --- the training step --------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        # Read first: with label smoothing or a compute_loss_func the Trainer pops "labels".
        labels = inputs.get(self.label_key)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.reinforce_config.reward_source is RewardSource.TRAIN:
            self._captured_logits = self._reward_inputs(outputs, labels, inputs)
        return (loss, outputs) if return_outputs else loss

    def _reward_inputs(self, outputs: Any, labels: torch.Tensor | None,
                       inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of a forward for the reward; ValueError saying what is missing."""
        return reward_inputs(outputs, labels, inputs, self.label_key)

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        config = self.reinforce_config
        cycle = self._cycle
        if cycle is None:  # the first micro-batch of an optimizer step
            step = self.state.global_step
            searching = step >= config.delay_steps
            with torch.no_grad():  # the policy's gradients come in closed form (SimplePolicy.score_gradients)
                sample = self.policy.sample(self.sample_generator) if searching else self._warmup_sample(step)
            self.apply_option_indices(sample.indices)
            cycle = self._cycle = _Cycle(step, searching, sample, self._buffer_snapshot.take(model))

        # The held-out reward's forward comes before the micro-batch's own work. Its batch's copy
        # to a GPU makes the host wait for the GPU's queue, which after the backward pass holds
        # all of it (and the host would then launch the held-out forward on an idle GPU); at the
        # first micro-batch of a step the queue is about empty (the Trainer's own copy of the
        # training batch has just waited for it). And the batch is freed before the training
        # forward and backward, the step's memory peak (HeldoutBatches lets go of it too).
        # Both forwards see the weights of this step; the held-out one, in eval mode, the
        # normalisation statistics from before this micro-batch's training forward.
        quality = (self._heldout_quality(model, self._prepare_inputs(self._heldout.next()))
                   if config.reward_source is RewardSource.HELDOUT else None)
        loss = super().training_step(model, inputs, num_items_in_batch)

        if quality is None:  # reward_source train: from the training forward's logits
            if self._captured_logits is None:  # only when a subclass's compute_loss bypasses ours
                raise RuntimeError("no logits/labels were captured for the reward: a compute_loss that overrides "
                                   "ReinforceTrainer's must call it (super().compute_loss)")
            quality = batch_quality(*self._captured_logits, config.reward_metric)
        self._captured_logits = None
        cycle.values.append(torch.stack([loss.detach().float(), quality.float()]))
        # The Trainer sets sync_gradients on the last micro-batch of every cycle, the short last
        # one of an epoch included: the optimizer steps right after it.
        if self.accelerator.sync_gradients:
            self._cycle = None
            self._end_cycle(model, cycle)
        return loss

    def _end_cycle(self, model: nn.Module, cycle: _Cycle) -> None:
        # The policy update's work that does not need the reward comes first: on a GPU the host
        # does it while the device finishes the backward pass, which the read of the reward
        # below waits for; after that read the device idles until the optimizer step is launched.
        plan = self._plan_policy_update(cycle.sample, cycle.step, cycle.searching)
        # One host sync per optimizer step: the reward must reach Python for the policy anyway.
        values = self._mean_over_ranks(torch.stack(cycle.values))  # [[loss, quality] per micro-batch]
        finite = all(math.isfinite(v) for pair in values for v in pair)
        if not finite:
            self._dropped_steps.drop_gradients(model)
            BufferSnapshot.restore(cycle.buffers)
            self.non_finite_steps += 1
        quality = math.fsum(q for _, q in values) / len(values) if finite else None
        self._update_policy(cycle.sample, quality, cycle.step, cycle.searching, plan)

    def _mean_over_ranks(self, values: torch.Tensor) -> list:
        """Element-wise mean over the DDP ranks, as (nested) Python floats."""
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        return values.tolist()

    def _warmup_sample(self, step: int) -> PolicySample:
        if not self.reinforce_config.precision_warmup:
            return self.policy.sample_uniform(self.sample_generator)
        most_precise = max(range(self.search_space.num_options), key=lambda k: self.search_space.formats[k].bits)
        preferred = torch.full((self.search_space.num_decisions,), most_precise, dtype=torch.long)
        probability = 1.0 - step / self.reinforce_config.delay_steps
        return self.policy.sample_warmup(self.sample_generator, preferred, probability)

    # --- checks at train begin --------------------------------------------------------------------
    def _check_run_length(self, total_steps: int) -> None:
        """Refuse a run whose delay leaves no step for the policy to learn (once, at train begin)."""
        check_run_length(self.reinforce_config.delay_steps, total_steps)

    def _warn_if_target_unreachable(self) -> None:
        """Warn (at train begin) when no assignment of the space comes near the cost target."""
        message = self.unreachable_target_message()
        if message is not None:
            warnings.warn(f"{message}; give a cost_target in that range", UserWarning)

    def unreachable_target_message(self) -> str | None:
        """What is wrong with a cost target that no assignment of the space reaches, and what the
        reward then does; None for a reachable one."""
        return unreachable_target_message(self.cost_table, self.reinforce_config)

    # --- the held-out reward ----------------------------------------------------------------------
    def _heldout_quality(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The reward's quality on a held-out batch (on the model's device), in eval mode."""
        was_training = model.training
        model.eval()
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**batch)
        model.train(was_training)
        logits, labels = self._reward_inputs(outputs, batch.get(self.label_key), batch)
        return batch_quality(logits, labels, self.reinforce_config.reward_metric)

    def _build_heldout_loader(self) -> Iterable:
        """The evaluation loader of the held-out split, under a key of its own: with
        dataloader_persistent_workers the Trainer keeps its loaders by key, and
        get_eval_dataloader's "eval" would make the held-out split and the evaluation set
        share one loader. (`_get_dataloader` is what get_eval_dataloader calls, in every
        transformers >= 5.17.)"""
        return self._get_dataloader(dataset=self.heldout_dataset, description="Held-out reward",
                                    batch_size=self.args.eval_batch_size, sampler_fn=self._get_eval_sampler,
                                    dataloader_key=HELDOUT_LOADER_KEY)

    # --- logging --------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log, or the summary at the end of training: attach the search metrics of the
        # steps since the previous one.
        if is_training_log(logs) and self._search_metrics:
            logs.update(self._search_metrics.drain())
            logs.update(self.probability_logs())
        super().log(logs, start_time)

    def probability_logs(self) -> dict[str, float]:
        return probability_logs(self.policy, self.search_space)

    # --- evaluation uses the current answer ----------------------------------------------------
    @contextmanager
    def _answer_on_layers(self) -> Iterator[None]:
        """The answer on the layers; inside an accumulation cycle (a callback evaluating between
        its micro-batches), the cycle's sample back on them after: its later micro-batches must
        train with it. Otherwise the answer stays, as evaluate() after the search promises."""
        self.apply_final_assignment()
        try:
            yield
        finally:
            if self._cycle is not None:
                self.apply_option_indices(self._cycle.sample.indices)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with self._answer_on_layers():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any):
        with self._answer_on_layers():
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
            "heldout_position": self._heldout.position,
            "decisions": self.search_space.decision_names,
            "options": self.search_space.option_names,
        }

    def check_search_state(self, state: dict[str, Any]) -> None:
        """Raise unless `state` was written by a search with this run's space and settings."""
        warning = check_search_state(state, self.search_space, self.reinforce_config)
        if warning is not None:
            logger.warning(warning)

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
        self._heldout.restart_at(state.get("heldout_position", 0))  # older checkpoints: from the start

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if os.path.isdir(folder):
                save_search_state(folder, self.search_state_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        state = load_search_state(resume_from_checkpoint)
        self.check_search_state(state)  # before any weight is loaded
        self._checked_search_state = (resume_from_checkpoint, state)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # The search state is restored here, the one resume hook every backend reaches: under
        # DeepSpeed the Trainer loads the weights itself and never calls _load_from_checkpoint
        # (the check is then made here, after the weights are loaded).
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        checked, self._checked_search_state = self._checked_search_state, None
        if checked is not None and checked[0] == checkpoint:
            state = checked[1]
        else:
            state = load_search_state(checkpoint)
            self.check_search_state(state)
        self._restore_search_state(state)
