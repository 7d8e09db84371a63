"""The quality half of the reward, from one batch's logits: pure functions, no logging.

The search's models are classifiers and regressors with one prediction per example (the
toolkit's sequence and image classification heads): logits (batch, classes) with integer
labels (batch,), or logits (batch, 1) with labels (batch,) or (batch, 1) for a regression.
Other shapes are refused: token-level outputs (a language model's (batch, tokens, vocabulary),
a token classifier's) would need the model's own label shift and masking, and a loss computed
here without them differs from the model's. Classification labels equal to IGNORE_INDEX (-100,
as in cross_entropy and the HF heads) count in neither the loss nor the accuracy; a regression's
label is a value, -100 included.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from trainer.reinforce_config import RewardMetric

IGNORE_INDEX = -100  # cross_entropy's default ignore_index, the HF heads' padding label


def reward_inputs(outputs: Any, labels: torch.Tensor | None, inputs: Mapping[str, Any],
                  label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a forward for the reward: the output's "logits" (detached) and the
    batch's labels under `label_key`; ValueError saying what is missing and how to give it."""
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
    raise ValueError(needs + f"the batch has no {label_key!r} (its keys: {list(inputs.keys())}); give the "
                     "labels under that key, or set TrainingArguments.label_names to the key that holds them")


def _is_regression(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether (logits, labels) are one prediction per example; ValueError for any other shapes.
    Reads shapes and dtypes only (no device sync)."""
    if logits.dim() == 2 and logits.size(-1) == 1 and labels.shape in ((logits.size(0),), (logits.size(0), 1)):
        return True
    if logits.dim() == 2 and logits.size(-1) >= 2 and labels.shape == (logits.size(0),):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype is torch.bool:
            raise ValueError(f"the search's reward needs integer class ids as labels for logits of shape "
                             f"{tuple(logits.shape)}, got labels of dtype {labels.dtype}; give the labels as class ids "
                             "(int64)")
        return False
    raise ValueError(
        f"the search's reward takes one prediction per example: logits (batch, classes) with labels (batch,), or "
        f"(batch, 1) with labels (batch,) for a regression; got logits {tuple(logits.shape)} and labels "
        f"{tuple(labels.shape)}. Token-level outputs (a language model, a token classifier) are not supported: "
        "use a sequence or image classification (or regression) head")


def batch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss of the batch as the HF classification heads define it: MSE for a single
    output (regression), cross-entropy otherwise (labels of IGNORE_INDEX left out). Computed in
    float32 whatever the logits' dtype."""
    regression = _is_regression(logits, labels)
    logits = logits.detach().float()
    if regression:
        return F.mse_loss(logits.view(-1), labels.view(-1).float())
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def batch_quality(logits: torch.Tensor, labels: torch.Tensor, metric: RewardMetric) -> torch.Tensor:
    """Scalar quality tensor on the logits' device (higher is better); no host sync. A batch
    whose labels are all IGNORE_INDEX has no quality (NaN, as the model's own loss): the search
    drops such a step as non-finite."""
    if metric is RewardMetric.ACCURACY:
        if _is_regression(logits, labels):
            raise ValueError("reward_metric 'accuracy' needs a classification task; this one is a regression "
                             "(one output): use reward_metric 'likelihood' (exp(-MSE), with any cost_function) or 'loss' "
                             "(-MSE, with the tunas_abs forms)")
        counted = labels != IGNORE_INDEX
        correct = (logits.detach().argmax(dim=-1) == labels) & counted
        return correct.sum() / counted.sum()  # float division: NaN when every label is ignored
    loss = batch_loss(logits, labels)
    return torch.exp(-loss) if metric is RewardMetric.LIKELIHOOD else -loss
