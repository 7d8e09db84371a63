"""Training-step setups shared by the step and memory benchmarks.

One `ModelCase` (model type, size, batch) and one `StepVariant` (float, fixed-format quantized,
or search) give a real HF `Trainer` / `ReinforceTrainer` built the way `eval/run_trainer.py`
builds them, and `TrainerStep` runs one optimisation step through the Trainer's own
`training_step` (forward, loss, backward; for the search also sampling, format setting, reward
and policy update) followed by what the Trainer's loop does after it (the NaN/inf check of the
loss, gradient clipping, optimizer and scheduler step, zero_grad). Every variant starts from
identical weights and trains on the same synthetic batch, so differences are the variant's own cost.
"""
from __future__ import annotations

import argparse

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

# The models are built from scratch on synthetic data: nothing is fetched.
NUM_LABELS = 10
COST_TARGET_BITS = 6.0  # memory target of the search: 6 bits per weight on average
HELDOUT_BATCHES = 4  # the held-out split cycles through this many batches


@dataclass(frozen=True)
class ModelCase:
    """A model and the batch it trains on. Vision cases set image_size, text cases seq_length."""

    name: str
    model_type: str  # a key of eval.model_configs.MODEL_REGISTRY
    batch_size: int
    config_overrides: Mapping[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    seq_length: int | None = None
    vocab_size: int | None = None  # text from scratch: None keeps the checkpoint's vocabulary

    def __post_init__(self) -> None:
        if (self.image_size is None) == (self.seq_length is None):
            raise ValueError(f"model case {self.name!r} needs exactly one of image_size (vision) or seq_length (text)")
        if self.batch_size < 1:
            raise ValueError(f"model case {self.name!r}: batch_size must be >= 1, got {self.batch_size}")

    @property
    def is_vision(self) -> bool:
        return self.image_size is not None


# cpu: sizes whose float step takes roughly 10-100 ms on one CPU thread. gpu: the anchors of
# the project's design notes (HF ResNet-18 at batch 128, 224x224; BERT-base at batch 32, seq 128).
PRESETS: dict[str, tuple[ModelCase, ...]] = {
    "cpu": (
        ModelCase("resnet-small", "resnet18", batch_size=8, image_size=64,
                  config_overrides={"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256]}),
        ModelCase("bert-small", "bert-mini", batch_size=8, seq_length=32, vocab_size=2000),
    ),
    "gpu": (
        ModelCase("resnet18", "resnet18", batch_size=128, image_size=224),
        ModelCase("bert-base", "bert", batch_size=32, seq_length=128),
    ),
    # The gpu preset's layers (ResNet-18's 21 quantized layers, BERT-base's 74) at widths where
    # the arithmetic takes next to nothing: a step's time is then the host's work per layer and
    # per step (Python, dispatch, autograd), which is what sets a GPU step's pace (RESULTS.md).
    "host": (
        ModelCase("resnet18-host", "resnet18", batch_size=2, image_size=32,
                  config_overrides={"embedding_size": 8, "hidden_sizes": [8, 8, 8, 8]}),
        ModelCase("bert-base-host", "bert", batch_size=2, seq_length=8, vocab_size=512,
                  config_overrides={"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}),
    ),
}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--preset and --models, for the benchmarks that run the preset's models."""
    parser.add_argument("--preset", default=None, choices=list(PRESETS),
                        help="model sizes (default: cpu on --device cpu, gpu on --device cuda)")
    parser.add_argument("--models", default=None, help="comma-separated subset of the preset's models")


def chosen_cases(args: argparse.Namespace) -> tuple[str, list[ModelCase]]:
    """(preset name, its models selected by --models) from add_model_args' flags."""
    preset = args.preset or ("gpu" if args.device == "cuda" else "cpu")
    return preset, preset_cases(preset, args.models.split(",") if args.models else None)


def preset_cases(preset: str, only: list[str] | None = None) -> list[ModelCase]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    cases = list(PRESETS[preset])
    if only:
        names = [c.name for c in cases]
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown} for preset {preset!r}; valid: {', '.join(names)}")
        cases = [c for c in cases if c.name in only]
    return cases


class VariantKind(str, enum.Enum):
    FLOAT = "float"  # plain Trainer, no quantized layer
    FIXED = "fixed"  # plain Trainer, every selected layer at one format (weights and activations)
    SEARCH = "search"  # ReinforceTrainer over a search space


@dataclass(frozen=True)
class StepVariant:
    name: str
    kind: VariantKind
    formats: tuple[str, ...] = ()  # FIXED: one format; SEARCH: the options
    reward_source: str = "train"  # SEARCH only: train or heldout
    # Quantize each layer's weight in its own forward (quant/weight_group.py taken off): the
    # code before grouped weights, for side-by-side comparisons.
    per_layer_weights: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", VariantKind(self.kind))
        expected = {VariantKind.FLOAT: (0, 0), VariantKind.FIXED: (1, 1), VariantKind.SEARCH: (1, 64)}[self.kind]
        if not expected[0] <= len(self.formats) <= expected[1]:
            raise ValueError(f"variant {self.name!r} of kind {self.kind.value} needs {expected[0]}..{expected[1]} "
                             f"formats, got {list(self.formats)}")
        if self.per_layer_weights and self.kind is VariantKind.FLOAT:
            raise ValueError(f"variant {self.name!r}: per_layer_weights needs quantized layers, not kind float")


def build_float_model(case: ModelCase, seed: int) -> nn.Module:
    from eval.models import build_model

    kwargs: dict[str, Any] = {"image_size": case.image_size} if case.is_vision else {}
    if case.vocab_size is not None:
        kwargs.update(vocab_size=case.vocab_size, pad_token_id=0)
    torch.manual_seed(seed)  # identical initial weights for every variant
    return build_model(case.model_type, num_labels=NUM_LABELS, from_scratch=True,
                       config_overrides=dict(case.config_overrides) or None, **kwargs)


def make_batch(case: ModelCase, vocab_size: int, seed: int, batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """A synthetic batch on the CPU (the Trainer moves it to the device)."""
    gen = torch.Generator().manual_seed(seed)
    size = batch_size or case.batch_size
    labels = torch.randint(NUM_LABELS, (size,), generator=gen)
    if case.is_vision:
        return {"pixel_values": torch.randn(size, 3, case.image_size, case.image_size, generator=gen), "labels": labels}
    input_ids = torch.randint(1, vocab_size, (size, case.seq_length), generator=gen)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


class BatchDataset(Dataset):
    """The examples of a few batches, one dict per example (default collator stacks them)."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.examples = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["labels"]))]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.examples[index]


@dataclass
class BuiltStep:
    trainer: Any
    model: nn.Module
    batch: dict[str, torch.Tensor]
    num_quantized_layers: int


def build_trainer(case: ModelCase, variant: StepVariant, *, device: torch.device, output_dir: str, seed: int = 0,
                  per_channel: bool = False, per_token: bool = False) -> BuiltStep:
    """The Trainer (or ReinforceTrainer) of `variant` on a fresh copy of `case`'s model."""
    import transformers
    from transformers import Trainer, TrainingArguments

    from cost.model_cost import CostType, average_bits_cost, layer_costs
    from eval.eval_partitions import LayerSelection, select_layers
    from quant.formats import parse_format, parse_format_list
    from quant.quant_module import QuantConfig
    from quant import weight_group
    from quant.surgery import QuantSpec, quantize_model, record_geometry
    from trainer.reinforce_config import ReinforceConfig
    from trainer.reinforce_trainer import ReinforceTrainer
    from trainer.search_space import SearchSpace

    transformers.logging.set_verbosity_error()
    model = build_float_model(case, seed)
    vocab_size = getattr(model.config, "vocab_size", 0)
    batch = make_batch(case, vocab_size, seed)
    layers: dict = {}
    if variant.kind is not VariantKind.FLOAT:
        names = select_layers(model, LayerSelection())
        start = parse_format(variant.formats[0])
        config = QuantConfig(weight_format=start, act_format=start, per_channel=per_channel, per_token=per_token)
        model, layers = quantize_model(model, QuantSpec(tuple(names), config))
        if variant.per_layer_weights:
            weight_group.uninstall(model)
        record_geometry(model, {k: v[:1] for k, v in batch.items() if k != "labels"}, layers)
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=case.batch_size,
        per_device_eval_batch_size=case.batch_size, learning_rate=1e-4, max_steps=10**6, report_to=[],
        save_strategy="no", disable_tqdm=True, use_cpu=device.type == "cpu", seed=seed,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    if variant.kind is not VariantKind.SEARCH:
        trainer = Trainer(model=model, args=args)
    else:
        costs = layer_costs(layers)
        space = SearchSpace.build(list(layers), parse_format_list(list(variant.formats)), "layer")
        heldout = None
        if variant.reward_source == "heldout":
            heldout = BatchDataset([make_batch(case, vocab_size, seed + 1 + i) for i in range(HELDOUT_BATCHES)])
        reinforce = ReinforceConfig(cost_target=average_bits_cost(costs, CostType.MEMORY, COST_TARGET_BITS),
                                    delay_steps=0, reward_source=variant.reward_source, policy_seed=seed)
        trainer = ReinforceTrainer(model=model, args=args, reinforce_config=reinforce, search_space=space,
                                   quant_layers=layers, layer_costs=costs, heldout_dataset=heldout)
    on_device = {k: v.to(trainer.args.device) for k, v in batch.items()}  # outside the timed step
    return BuiltStep(trainer, trainer.model, on_device, len(layers))


class TrainerStep:
    """One optimisation step as the Trainer's loop runs it, callable repeatedly."""

    def __init__(self, built: BuiltStep, total_steps: int = 10**6) -> None:
        self.trainer = built.trainer
        self.model = built.model
        self.batch = built.batch
        self.trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
        self.trainer.state.max_steps = total_steps
        # training_step divides the loss by this; the train loop sets it for each accumulation
        # window (1 without gradient accumulation).
        self.trainer.current_gradient_accumulation_steps = 1
        self.max_grad_norm = self.trainer.args.max_grad_norm
        self.last_loss_finite: bool | None = None

    def __call__(self) -> torch.Tensor:
        trainer, model = self.trainer, self.model
        loss = trainer.training_step(model, self.batch)
        # The loop's logging_nan_inf_filter (on by default) reads the loss on the host every
        # step: on a GPU a sync that every variant pays alike (the search reads its reward at
        # the same point). Without it the float step would overlap work that training cannot.
        if trainer.args.logging_nan_inf_filter:
            self.last_loss_finite = not bool(torch.isnan(loss) or torch.isinf(loss))
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1
        return loss
