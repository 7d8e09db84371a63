"""The reward's quality: ignored labels, and the shapes it measures (one prediction per example)."""
import re

import pytest
import torch
import torch.nn.functional as F

from trainer.quality import batch_quality
from trainer.reinforce_config import RewardMetric

LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])


def test_labels_of_the_ignore_index_count_in_neither_accuracy_nor_loss():
    labels = torch.tensor([0, -100, -100])  # the two ignored examples would be misses
    assert batch_quality(LOGITS, labels, RewardMetric.ACCURACY).item() == 1.0  # was 1/3
    assert batch_quality(LOGITS, torch.tensor([0, 0, -100]), RewardMetric.ACCURACY).item() == 0.5
    loss = F.cross_entropy(LOGITS[:1], labels[:1])
    assert batch_quality(LOGITS, labels, RewardMetric.LOSS).item() == -loss.item()
    assert batch_quality(LOGITS, labels, RewardMetric.LIKELIHOOD).item() == torch.exp(-loss).item()
    # Nothing to measure: no quality (NaN, as the model's own loss), a step the search drops.
    assert batch_quality(LOGITS, torch.full((3,), -100), RewardMetric.ACCURACY).isnan()


@pytest.mark.parametrize("metric", list(RewardMetric))
@pytest.mark.parametrize("logits_shape, labels_shape", [((2, 5, 11), (2, 5)), ((2, 11), (2, 5)), ((2, 3), (3,)),
                                                        ((4,), (4,)), ((2, 1), (2, 2))])
def test_token_level_and_mismatched_shapes_are_refused(metric, logits_shape, labels_shape):
    # (B, T, V) logits used to be scored without a causal LM's label shift (another loss than the model's).
    message = (f"the search's reward takes one prediction per example: logits (batch, classes) with labels (batch,), "
               f"or (batch, 1) with labels (batch,) for a regression; got logits {logits_shape} and labels "
               f"{labels_shape}. Token-level outputs (a language model, a token classifier) are not supported: use a "
               "sequence or image classification (or regression) head")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        batch_quality(torch.zeros(logits_shape), torch.zeros(labels_shape, dtype=torch.long), metric)


def test_classification_needs_class_ids_and_regression_takes_either_label_shape():
    with pytest.raises(ValueError, match=re.escape("the search's reward needs integer class ids as labels for logits "
                                                   "of shape (3, 2), got labels of dtype torch.float32; give the "
                                                   "labels as class ids (int64)")):
        batch_quality(LOGITS, torch.tensor([0.0, 1.0, 0.0]), RewardMetric.LOSS)
    regression = torch.tensor([[1.0], [3.0]])
    # Labels (batch, 1) used to broadcast against the (batch,) predictions: a (batch, batch) MSE.
    assert batch_quality(regression, torch.tensor([[2.0], [4.0]]), RewardMetric.LOSS).item() == -1.0
    assert batch_quality(regression, torch.tensor([2.0, 4.0]), RewardMetric.LOSS).item() == -1.0
    with pytest.raises(ValueError, match=r"^reward_metric 'accuracy' needs a classification task; this one is a "
                                         r"regression \(one output\): use reward_metric 'likelihood' \(exp\(-MSE\), "
                                         r"with any cost_function\) or 'loss' \(-MSE, with the tunas_abs forms\)$"):
        batch_quality(regression, torch.tensor([2.0, 2.0]), RewardMetric.ACCURACY)
