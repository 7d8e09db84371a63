"""The quality half of the reward, from one batch's logits: pure functions, no logging."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.reinforce_config import RewardMetric


def batch_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss of the batch as the HF classification heads define it: MSE for a single
    output (regression), cross-entropy otherwise. Computed in float32 whatever the logits' dtype."""
    logits = logits.detach().float()
    if logits.size(-1) == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))


def batch_quality(logits: torch.Tensor, labels: torch.Tensor, metric: RewardMetric) -> torch.Tensor:
    """Scalar quality tensor on the logits' device (higher is better); no host sync."""
    if metric is RewardMetric.ACCURACY:
        if logits.size(-1) == 1:
            raise ValueError("reward_metric 'accuracy' needs a classification task; this one is a regression "
                             "(one output): use --reward_metric loss")
        return (logits.detach().argmax(dim=-1) == labels).float().mean()
    loss = batch_loss(logits, labels)
    return torch.exp(-loss) if metric is RewardMetric.LIKELIHOOD else -loss
