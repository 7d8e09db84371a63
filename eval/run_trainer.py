"""The trainer of a run: `build_trainer` turns a run's setup (eval/run_setup.py) into a
`BaselineTrainer` (float or fixed formats) or a `ReinforceTrainer` (search), with the run's
TensorBoard logging and the search's derived defaults (delay steps, policy learning rate)."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from trainer.reinforce_config import default_delay_steps, default_rl_learning_rate

if TYPE_CHECKING:
    from eval.run_setup import RunSetup


def _total_steps(args: argparse.Namespace, num_train: int) -> int:
    if args.max_steps > 0:
        return args.max_steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_epoch = math.ceil(num_train / (args.train_batch_size * world * args.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * args.num_train_epochs))


def run_tensorboard_callback(log_dir: Path):
    """transformers' TensorBoardCallback writing every log of the run to `log_dir`. The stock one
    closes its writer when training ends and opens a new one in output_dir/runs/ for the final
    evaluation; this one reopens `log_dir` (a new event file in the same directory)."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    class RunTensorBoardCallback(TensorBoardCallback):
        # A resumed run drops what the earlier attempt logged after its checkpoint (TensorBoard
        # would show two values per step): once, on the first writer after resuming.
        purge_step: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.purge_step = state.global_step + 1 if state.global_step > 0 else None
            return super().on_train_begin(args, state, control, **kwargs)

        def _init_summary_writer(self, *unused: Any, **unused_kwargs: Any) -> None:
            self.tb_writer = SummaryWriter(log_dir=str(log_dir), purge_step=self.purge_step)
            self.purge_step = None

    # The writer opens on the first train-begin or log event: building the trainer writes nothing.
    return RunTensorBoardCallback()


def close_tensorboard(trainer) -> None:
    """Close the run's TensorBoard writer (its events are written out)."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            callback.tb_writer.close()
            callback.tb_writer = None


def build_trainer(args: argparse.Namespace, setup: RunSetup, run_dir: Path, compute_metrics: Callable):
    from transformers import TrainingArguments

    from eval.run_inputs import check_steps_left
    from trainer.reinforce_config import ReinforceConfig
    from trainer.reinforce_trainer import ReinforceTrainer

    if args.resume_from_checkpoint is not None and not args.eval_only:  # --max_steps: checked at parse time
        check_steps_left(args.resume_from_checkpoint, _total_steps(args, len(setup.train_dataset)))
    training_args = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=args.train_batch_size,
        per_device_eval_batch_size=args.eval_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs, max_steps=args.max_steps, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lr_scheduler_type=args.lr_scheduler_type,
        optim=args.optimizer, fp16=args.fp16, bf16=args.bf16,
        logging_steps=args.log_steps, eval_strategy="steps" if args.eval_steps else "no", eval_steps=args.eval_steps,
        save_strategy=args.save_strategy, save_steps=args.save_steps, seed=args.seed,
        # HF's data_seed orders the training batches: a source of training randomness that seed
        # replicas are to vary, so it follows --seed; --data_seed draws only the subsets (above).
        data_seed=args.seed,
        # --save_strategy best: a checkpoint whenever the task's main metric improves (all are
        # higher-is-better); with --metric (keys unknown until it runs) whenever the loss falls
        **({"metric_for_best_model": setup.task.main_metric if args.metric is None else "eval_loss",
            "greater_is_better": args.metric is None} if args.save_strategy == "best" else {}),
        use_cpu=args.device == "cpu", report_to=[], disable_tqdm=not os.isatty(2),
        remove_unused_columns=False, dataloader_num_workers=0,
        # HF's default (True for its models) costs a graph traversal per step and a warning.
        ddp_find_unused_parameters=args.ddp_find_unused_parameters,
        # Passed only when asked for: newer transformers renamed it (activation_checkpointing).
        **({"gradient_checkpointing": True} if args.gradient_checkpointing else {}),
    )
    callbacks = []
    if args.report_to == "tensorboard":
        callbacks.append(run_tensorboard_callback(run_dir / "tensorboard"))
    common = dict(model=setup.model, args=training_args, train_dataset=setup.train_dataset,
                  eval_dataset=setup.eval_dataset, data_collator=setup.data_collator,
                  compute_metrics=compute_metrics, callbacks=callbacks)
    if args.mode != "search":
        from trainer.evaluation_rng import BaselineTrainer

        return mean_loss_trainer(BaselineTrainer(**common))
    total = _total_steps(args, len(setup.train_dataset))
    if args.delay_steps is not None and args.delay_steps >= total:
        raise ValueError(f"--delay_steps {args.delay_steps} leaves no search step in this run's {total} steps: the "
                         f"policy would never learn; use fewer delay steps (default: half of the steps)")
    from eval.run_compare import DERIVED_DEFAULTS_KEY, RUN_TIME_DEFAULTS

    # Which of them this run derives (recorded, so that --skip_completed compares a value the user
    # gave with a plan that leaves it to the run; a derived one matches a planned default).
    # (A resumed run keeps those its checkpoint's run derived: eval/run_inputs.check_resume_matches.)
    derived = sorted({*getattr(args, DERIVED_DEFAULTS_KEY, []),
                      *(name for name in RUN_TIME_DEFAULTS if getattr(args, name) is None)})
    delay = args.delay_steps if args.delay_steps is not None else default_delay_steps(total)
    args.delay_steps = delay  # recorded in config.json and results.json (to resume with more steps)
    rl_learning_rate = args.rl_learning_rate
    if rl_learning_rate is None:
        rl_learning_rate = default_rl_learning_rate(total, delay)
        args.rl_learning_rate = rl_learning_rate  # recorded in results.json
    setattr(args, DERIVED_DEFAULTS_KEY, derived)
    config = ReinforceConfig(
        cost_target=setup.cost_target, cost_type=setup.cost_type, cost_function=args.cost_function,
        cost_beta=args.cost_beta, rl_learning_rate=rl_learning_rate, delay_steps=delay,
        precision_warmup=args.precision_warmup,
        max_entropy_beta=args.max_entropy_beta, entropy_schedule=args.entropy_schedule_type,
        baseline_decay=args.baseline_decay, advantage=args.advantage, final_selection=args.final_selection,
        target_tolerance=args.target_tolerance, reward_metric=args.reward_metric,
        reward_source=args.reward_source, policy_temperature=args.policy_temperature, policy_seed=args.seed)
    from quant.surgery import quantized_layers

    trainer = mean_loss_trainer(ReinforceTrainer(**common, reinforce_config=config, search_space=setup.search_space,
                                                 quant_layers=quantized_layers(setup.model),
                                                 layer_costs=setup.layer_costs, heldout_dataset=setup.heldout_dataset))
    unreachable = trainer.unreachable_target_message()
    if unreachable is not None:  # the Python API warns; a run from the command line stops before training
        given = f"--cost_target {args.cost_target:g}" if args.cost_target is not None else \
            f"--cost_target_bits {args.cost_target_bits:g}"
        raise ValueError(f"{given}: the {unreachable}; give a --cost_target in that range, or --cost_target_bits "
                         f"between the search space's narrowest and widest formats ({', '.join(args.search_formats)})")
    if args.resume_from_checkpoint is not None:  # now, before the run directory changes (train() checks again)
        from trainer.reinforce_config import SEARCH_STATE_NAME
        from trainer.search_state import read_search_state_file

        trainer.check_search_state(read_search_state_file(Path(args.resume_from_checkpoint) / SEARCH_STATE_NAME))
    return trainer


def mean_loss_trainer(trainer):
    """The built-in models' losses are batch means that ignore num_items_in_batch. transformers
    takes a forward with **kwargs as one that normalises by it, and then neither divides the loss
    by the gradient accumulation steps (k micro-batches would sum, k times the gradient and the
    logged loss) nor leaves it alone across devices; this tells it the truth."""
    trainer.model_accepts_loss_kwargs = False
    return trainer
