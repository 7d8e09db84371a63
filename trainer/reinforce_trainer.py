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

The held-out reward's batches come from trainer/heldout_batches.py.

A checkpoint stores the search settings (`ReinforceConfig.search_settings`); resuming with
different ones, or with max_steps not above the checkpoint's step, is an error.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from cost.cost import compute_reward, rewards_for_costs
from cost.model_cost import LayerCost
from policy.reinforce import EmaBaseline, reinforce_gradient, reinforce_loss
from policy.simple_policy import PolicySample, ScoreGradients, SimplePolicy
from quant.quant_module import QuantModule
from quant.surgery import set_layer_formats
from trainer.console_logs import hide_from_console
from trainer.dropped_steps import DroppedSteps
from trainer.entropy_schedule import entropy_beta
from trainer.final_selection import FinalSelection, constrained_argmax, is_one_sided
from trainer.heldout_batches import HeldoutBatches
from trainer.norm_statistics import BufferSnapshot, Snapshot, recalibrate_batchnorm
from trainer.quality import batch_quality
from trainer.reinforce_config import SEARCH_STATE_NAME, AdvantageMode, ReinforceConfig, RewardSource
from trainer.search_space import DecisionCostTable, SearchSpace

logger = logging.getLogger(__name__)


LOG_PREFIX = "search/"
PROBABILITY_LOG_PREFIX = f"{LOG_PREFIX}p/"
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
    buffers: Snapshot  # as before the cycle's first micro-batch
    values: list[torch.Tensor] = field(default_factory=list)  # (loss, quality) per micro-batch, on device


@dataclass(frozen=True)
class _PolicyUpdatePlan:
    """What a step's policy update needs besides its reward, computed before the reward is read."""

    cost: float  # of the sample
    # (D,) expected reward of each decision's options at the running mean quality (the per-decision
    # baselines); None with --advantage global, or before any quality was seen.
    expected_rewards: torch.Tensor | None
    entropy_beta: float | None  # None during the delay (no policy step)
    gradients: ScoreGradients | None  # likewise


class _TrainBegin(TrainerCallback):
    """At the start of train(), once the Trainer has its state (a resumed one included)."""

    def __init__(self, trainer: ReinforceTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._cycle = None  # a cycle that an earlier train() cut short never reached its step
        self.trainer._buffer_snapshot.relist_modules()  # they may have changed between runs
        # A resumed run must have steps left: transformers does not check, and trains one step past
        # a max_steps at or below the checkpoint's step (unless that step ends an epoch).
        if state.global_step > 0 and state.global_step >= state.max_steps:
            raise ValueError(
                f"this run's max_steps ({state.max_steps}, TrainingArguments.max_steps or from num_train_epochs) is "
                f"not above the checkpoint's step {state.global_step}: nothing is left to search; resume with more "
                f"steps than {state.global_step}, or start a new run")
        self.trainer._check_run_length(state.max_steps)
        self.trainer._warn_if_target_unreachable()


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
        # By identity: layers of another model (e.g. the original's, after copy.deepcopy(model))
        # would take every format while this model trains in float, and the answer mean nothing.
        submodules = {id(module) for module in self.model.modules()}
        foreign = [name for name, layer in quant_layers.items() if id(layer) not in submodules]
        if foreign:
            raise ValueError(f"quant layer {foreign[0]!r} is not a submodule of the model this trainer trains, so its "
                             "formats would never reach that model (e.g. the layers of the original after "
                             "copy.deepcopy(model)); pass this model's own quantized layers "
                             "(quant.surgery.quantized_layers(model))")
        # The reward compares the logits with one label tensor: the Trainer's label name ("labels"
        # when it found none, the HF convention).
        label_names = list(self.label_names) if self.label_names else ["labels"]
        if len(label_names) != 1:
            raise ValueError(f"the search's reward compares the logits with one label tensor, but the Trainer's label "
                             f"names are {label_names} (TrainingArguments.label_names, or the model's forward "
                             "arguments with 'label' in their name); set TrainingArguments.label_names to the one key "
                             "of the labels")
        self.label_key = label_names[0]
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
        self._pending_logs: dict[str, list[float]] = defaultdict(list)
        self._captured_logits: tuple[torch.Tensor, torch.Tensor] | None = None
        self._buffer_snapshot = BufferSnapshot()
        self._cycle: _Cycle | None = None
        self.add_callback(_TrainBegin(self))
        self._dropped_steps = DroppedSteps(self)
        self.add_callback(self._dropped_steps)
        hide_from_console(self, PROBABILITY_LOG_PREFIX)  # one number per decision and format: not for a console line

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

    def finalize_search(self, recalibration_batches: int = 0) -> int:
        """Fix the answer on the layers and, optionally, re-estimate the BatchNorm statistics
        for it: during the search they averaged over every sampled format. No weight changes.
        Returns the number of batches the statistics were re-estimated on (0: none changed)."""
        self.apply_final_assignment()
        if recalibration_batches <= 0:
            return 0
        used = recalibrate_batchnorm(self.model, self._train_batches(recalibration_batches), self._prepare_inputs)
        if used and self.accelerator.num_processes > 1:
            for buffer in self.model.buffers():
                if buffer.is_floating_point():
                    buffer.copy_(self.accelerator.reduce(buffer, reduction="mean"))
        return used

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
        # Read first: with label smoothing or a compute_loss_func the Trainer pops "labels".
        labels = inputs.get(self.label_key)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and self.reinforce_config.reward_source is RewardSource.TRAIN:
            self._captured_logits = self._reward_inputs(outputs, labels, inputs)
        return (loss, outputs) if return_outputs else loss

    def _reward_inputs(self, outputs: Any, labels: torch.Tensor | None,
                       inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of a forward for the reward; ValueError saying what is missing."""
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if logits is not None and labels is not None:
            return logits.detach(), labels
        needs = ("the search's reward needs the model's logits and the batch's labels (a classification or "
                 "regression model): ")
        if not isinstance(outputs, Mapping):
            raise ValueError(needs + f"the model returned a {type(outputs).__name__}; return a ModelOutput or a dict "
                             "with 'logits' (e.g. HF models with return_dict=True)")
        if logits is None:
            raise ValueError(needs + f"the model's output has no 'logits' (its keys: {list(outputs.keys())}); return "
                             "the logits under 'logits'")
        raise ValueError(needs + f"the batch has no {self.label_key!r} (its keys: {list(inputs.keys())}); give the "
                         "labels under that key, or set TrainingArguments.label_names to the key that holds them")

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

    def _check_run_length(self, total_steps: int) -> None:
        """Refuse a run whose delay leaves no step for the policy to learn (once, at train begin)."""
        delay = self.reinforce_config.delay_steps
        if delay >= total_steps:
            raise ValueError(
                f"delay_steps={delay} leaves no search step in this run's {total_steps} steps "
                "(TrainingArguments.max_steps, or from num_train_epochs): the policy would never learn and the answer "
                f"would be its initial guess; set ReinforceConfig.delay_steps below {total_steps}")

    def _warn_if_target_unreachable(self) -> None:
        """Warn (at train begin) when no assignment of the space comes near the cost target."""
        message = self.unreachable_target_message()
        if message is not None:
            warnings.warn(f"{message}; give a cost_target in that range", UserWarning)

    def unreachable_target_message(self) -> str | None:
        """What is wrong with a cost target that no assignment of the space reaches, and what the
        reward then does; None for a reachable one."""
        config = self.reinforce_config
        low, high = self.cost_table.min_cost(), self.cost_table.max_cost()
        # A relative margin: a target of 8 average bits is the 8-bit model's cost up to float rounding.
        margin = 1e-9 * high
        if low - margin <= config.cost_target <= high + margin:
            return None
        unit = self.cost_table.cost_type.unit
        # What the reward does on this side of the target: two costs there, at the same quality.
        side, ratios = ("below", (1.5, 2.0)) if config.cost_target < low else ("above", (0.5, 0.9))
        nearer, farther = rewards_for_costs(config.cost_function, torch.tensor(ratios, dtype=torch.float64) *
                                            config.cost_target, config.cost_beta, config.cost_target, 1.0).tolist()
        if nearer == farther:  # e.g. one-sided forms above the target: no model is penalised
            effect = f"{config.cost_function} gives every model of this space the same cost term, so the decisions " \
                "follow quality alone"
        else:
            end = "cheapest" if nearer > farther else "most expensive"
            effect = f"the cost term pushes every decision towards its {end} option"
        return (f"cost_target {config.cost_target:.6g} {unit} is {side} every cost this search space can reach "
                f"([{low:.6g}, {high:.6g}] {unit}): {effect}")

    def _warmup_sample(self, step: int) -> PolicySample:
        if not self.reinforce_config.precision_warmup:
            return self.policy.sample_uniform(self.sample_generator)
        most_precise = max(range(self.search_space.num_options), key=lambda k: self.search_space.formats[k].bits)
        preferred = torch.full((self.search_space.num_decisions,), most_precise, dtype=torch.long)
        probability = 1.0 - step / self.reinforce_config.delay_steps
        return self.policy.sample_warmup(self.sample_generator, preferred, probability)

    def _plan_policy_update(self, sample: PolicySample, step: int, searching: bool) -> _PolicyUpdatePlan:
        """The parts of the policy update that do not depend on the step's reward."""
        config = self.reinforce_config
        cost = self.cost_table.cost(sample.indices)
        expected_rewards = None
        if config.advantage is AdvantageMode.PER_DECISION and self.baseline.value is not None:
            expected_rewards = self._expected_rewards(sample, cost, self.baseline.value)
        if not searching:
            return _PolicyUpdatePlan(cost, expected_rewards, None, None)
        beta = entropy_beta(step, schedule=config.entropy_schedule, delay_steps=config.delay_steps,
                            total_steps=self.state.max_steps, max_entropy_beta=config.max_entropy_beta)
        # Unchecked: the indices were drawn from this policy (sample, sample_uniform, sample_warmup).
        return _PolicyUpdatePlan(cost, expected_rewards, beta, self.policy.score_gradients(sample.indices, check=False))

    def _update_policy(self, sample: PolicySample, quality: float | None, step: int, searching: bool,
                       plan: _PolicyUpdatePlan | None = None) -> None:
        """The step's reward, advantages and REINFORCE step; `plan` as `_plan_policy_update` made it
        for this sample (computed here if not given)."""
        config = self.reinforce_config
        if plan is None:
            plan = self._plan_policy_update(sample, step, searching)
        cost = plan.cost
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
        advantages = self._advantages(sample, plan, reward, quality)
        logs["reward"].append(reward)
        logs["advantage"].append(float(advantages.mean()))
        # The EMA follows the reward with --advantage global, and the quality with per_decision
        # (whose baselines are the expected rewards at that quality): named for what it holds.
        ema_name = "baseline_ema" if config.advantage is AdvantageMode.GLOBAL else "quality_ema"
        logs[ema_name].append(float(self.baseline.value))
        if not searching:
            return
        assert plan.gradients is not None and plan.entropy_beta is not None  # planned as searching
        beta = plan.entropy_beta
        # The loss's gradient from the planned score gradients (no autograd after the reward);
        # the loss itself only for the log.
        logits = self.policy.logits
        logits.grad = reinforce_gradient(plan.gradients, advantages, beta).to(logits.dtype)
        self.policy_optimizer.step()
        with torch.no_grad():
            policy_loss = reinforce_loss(sample, advantages, beta)
        logs["policy_loss"].append(float(policy_loss))
        logs["entropy"].append(float(sample.entropy.detach()))
        logs["entropy_beta"].append(beta)

    def _advantages(self, sample: PolicySample, plan: _PolicyUpdatePlan, reward: float,
                    quality: float | None) -> torch.Tensor:
        """(D,) advantage of each decision; updates the EMA baseline."""
        config = self.reinforce_config
        num_decisions = self.search_space.num_decisions
        if config.advantage is AdvantageMode.GLOBAL:
            return torch.full((num_decisions,), self.baseline.update(reward), dtype=torch.float64)
        # Baseline of decision d: the expected reward over d's own options, the other decisions
        # kept as sampled, at the running mean quality (the first quality itself, before any). It
        # does not depend on d's own choice, so the estimator stays unbiased.
        expected = plan.expected_rewards
        if expected is None and quality is not None:  # no mean quality when planned: the first one
            expected = self._expected_rewards(sample, plan.cost, quality)
        if quality is not None:
            self.baseline.update(quality)
        if expected is None:  # a non-finite first step: nothing to compare with yet
            return torch.zeros(num_decisions, dtype=torch.float64)
        return reward - expected

    def _expected_rewards(self, sample: PolicySample, cost: float, mean_quality: float) -> torch.Tensor:
        """(D,) expected reward of each decision switched over its options (the others as sampled)."""
        config = self.reinforce_config
        table = self.cost_table.table  # (D, K)
        own = table.gather(1, sample.indices.view(-1, 1))  # (D, 1)
        alternative_costs = cost - own + table  # (D, K): decision d switched to option k
        # Unchecked: the table and config were checked when the trainer was built, and costs of
        # table entries (>= 0, finite) stay so; this runs every step.
        alternative_rewards = rewards_for_costs(config.cost_function, alternative_costs, config.cost_beta,
                                                config.cost_target, mean_quality, check=False)
        with torch.no_grad():
            probs = self.policy().double().cpu()
        return (probs * alternative_rewards).sum(dim=1)

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

    def _mean_over_ranks(self, values: torch.Tensor) -> list:
        """Element-wise mean over the DDP ranks, as (nested) Python floats."""
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        return values.tolist()

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
        return {f"{PROBABILITY_LOG_PREFIX}{decision}/{names[k]}": float(probs[d, k])
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
            "heldout_position": self._heldout.position,
            "decisions": self.search_space.decision_names,
            "options": self.search_space.option_names,
        }

    def check_search_state(self, state: dict[str, Any]) -> None:
        """Raise unless `state` was written by a search with this run's space and settings."""
        decisions, options = self.search_space.decision_names, self.search_space.option_names
        if (state["decisions"], state["options"]) != (decisions, options):
            differing = []
            if state["options"] != options:
                differing.append(f"options {state['options']} -> {options}")
            if state["decisions"] != decisions:
                only_saved = [d for d in state["decisions"] if d not in decisions]
                only_current = [d for d in decisions if d not in state["decisions"]]
                differing.append(f"decisions only in the checkpoint {only_saved[:5]}, only in this run "
                                 f"{only_current[:5]}" if only_saved or only_current else "decisions in another order")
            raise ValueError(f"the checkpoint's search space differs from this run's (checkpoint -> this run): "
                             f"{'; '.join(differing)}; resume with the checkpoint's search space (its formats, "
                             "granularity and quantized layers), or start a new run")
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
        self._heldout.restart_at(state.get("heldout_position", 0))  # older checkpoints: from the start

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
