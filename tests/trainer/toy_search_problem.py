"""A search problem with a known answer, shared by the trainer tests.

x has 4 signal dims (N(0,1)) and 12 loud distractor dims (N(0, 8^2)); the label is a fixed
linear teacher of the signal dims. `fc_in` reads x directly: with a per-tensor activation scale
set by the loud dims, INT2/INT4 inputs round the signal away, INT8 keeps it (sensitive).
`branch_in`/`branch_out` are large but feed the output through a 0.05-scaled residual
(insensitive). They hold 96% of the weights, so a memory target of "branch at INT2, the rest at
INT8" is reachable only by lowering the branch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from quant.formats import parse_format

SIGNAL_DIMS, LOUD_DIMS, NUM_CLASSES, HIDDEN, BRANCH = 4, 12, 4, 16, 256
SENSITIVE = ("fc_in",)
INSENSITIVE = ("branch_in", "branch_out")


class ToyDataset(Dataset):
    def __init__(self, size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        teacher = torch.randn(NUM_CLASSES, SIGNAL_DIMS, generator=torch.Generator().manual_seed(1234))
        signal = torch.randn(size, SIGNAL_DIMS, generator=gen)
        loud = 8 * torch.randn(size, LOUD_DIMS, generator=gen)
        self.x = torch.cat([signal, loud], dim=1)
        self.labels = (signal @ teacher.T).argmax(dim=1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.labels[i]}


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(SIGNAL_DIMS + LOUD_DIMS, HIDDEN)
        self.branch_in = nn.Linear(HIDDEN, BRANCH)
        self.branch_out = nn.Linear(BRANCH, HIDDEN)
        self.head = nn.Linear(HIDDEN, NUM_CLASSES)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = torch.relu(self.fc_in(x))  # (B, HIDDEN)
        h = h + 0.05 * self.branch_out(torch.relu(self.branch_in(h)))
        logits = self.head(h)  # (B, NUM_CLASSES)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


LAYERS = ("fc_in", "branch_in", "branch_out", "head")


class DropoutToy(ToyModel):
    """The toy model with dropout on its input: its training forward draws from the global RNG."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return super().forward(torch.nn.functional.dropout(x, 0.2, self.training), labels)


class NaNWithInt2(ToyModel):
    """Blows up (NaN loss) whenever its input layer runs at INT2, and has a BatchNorm whose
    running statistics a bad step must not corrupt."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(16)

    def forward(self, x, labels=None):
        out = super().forward(self.norm(x), labels)
        if self.fc_in.weight_format == parse_format("int2"):
            out = {k: v * float("nan") for k, v in out.items()}
        return out


def known_answer_target_mib(costs) -> float:
    """Memory of the intended answer: branch at INT2, everything else at INT8."""
    from quant.formats import parse_format

    return sum(c.memory_mib(parse_format("int2" if c.name in INSENSITIVE else "int8")) for c in costs)


DELAY_STEPS = 100  # warm-up steps before the policy learns (make_trainer's default, at most half the steps)


def make_trainer(output_dir: str, *, seed: int = 0, search_space: str = "int2,int4,int8", steps: int = 400,
                 target_mib: float | None = None, model: nn.Module | None = None, granularity: str = "layer",
                 training_overrides: dict | None = None, quant_config=None, **reinforce_overrides):
    """A ReinforceTrainer on the toy problem; cost target defaults to the known answer's memory.
    `quant_config` (a QuantConfig) sets the layers' scales and clipping (default: QuantConfig())."""
    import transformers
    from transformers import TrainingArguments

    from cost.model_cost import layer_costs
    from quant.formats import parse_format_list
    from quant.surgery import QuantSpec, quantize_model, record_geometry
    from trainer.reinforce_config import ReinforceConfig
    from trainer.reinforce_trainer import ReinforceTrainer
    from trainer.search_space import SearchSpace

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    spec = QuantSpec(LAYERS) if quant_config is None else QuantSpec(LAYERS, quant_config)
    model, layers = quantize_model(model or ToyModel(), spec)
    record_geometry(model, {"x": torch.zeros(1, SIGNAL_DIMS + LOUD_DIMS)})
    costs = layer_costs(layers)
    space = SearchSpace.build(list(layers), parse_format_list(search_space), granularity,
                              partitions={"main": ["fc_in", "head"], "branch": list(INSENSITIVE)})
    # A delay of every step is refused (the policy would never learn): short runs search their second half.
    # cost_beta 1.0: ReinforceConfig's default before it followed the CLI's (5.0); the tests'
    # expected answers were measured with it.
    reinforce = dict(cost_target=target_mib or known_answer_target_mib(costs),
                     delay_steps=min(DELAY_STEPS, steps // 2), policy_seed=seed, cost_beta=1.0)
    reinforce.update(reinforce_overrides)
    training = dict(output_dir=output_dir, per_device_train_batch_size=64, max_steps=steps, learning_rate=3e-3,
                    logging_steps=50, report_to=[], save_strategy="no", use_cpu=True, seed=seed, disable_tqdm=True,
                    lr_scheduler_type="constant")
    training.update(training_overrides or {})
    return ReinforceTrainer(model=model, args=TrainingArguments(**training), train_dataset=ToyDataset(4096, seed),
                            eval_dataset=ToyDataset(1024, 99), reinforce_config=ReinforceConfig(**reinforce),
                            search_space=space, quant_layers=layers, layer_costs=costs,
                            heldout_dataset=ToyDataset(512, 7))


def formats_of(trainer) -> dict[str, str]:
    return {name: result.format for name, result in trainer.final_decisions().items()}
