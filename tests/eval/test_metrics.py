"""Metrics: exact values on small arrays, Trainer keys, offline behaviour."""
import math
import time

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

from eval.hub import HubUnreachableError
from eval.metrics import LOCAL_METRIC_MODULE, build_compute_metrics, load_task_metric, predictions_from_logits
from eval.tasks import TASKS, get_task

# Predictions vs references: TP=2 (rows 1, 4), TN=2 (rows 0, 3), FP=1 (row 2), FN=0.
PREDICTIONS = np.array([0, 1, 1, 0, 1])
REFERENCES = np.array([0, 1, 0, 0, 1])
ACCURACY = 4 / 5
F1 = 2 * 2 / (2 * 2 + 1 + 0)  # 2TP / (2TP + FP + FN) = 0.8
MCC = (2 * 2 - 1 * 0) / math.sqrt((2 + 1) * (2 + 0) * (2 + 1) * (2 + 0))  # 4/6
# x = 1..4, y = [1, 3, 2, 10]: centred dx = [-1.5, -.5, .5, 1.5], dy = [-3, -1, -2, 6],
# sum dx*dy = 13, sum dx^2 = 5, sum dy^2 = 50; ranks of y = [1, 3, 2, 4].
SCORES = np.array([1.0, 2.0, 3.0, 4.0])
TARGETS = np.array([1.0, 3.0, 2.0, 10.0])
PEARSON = 13 / math.sqrt(5 * 50)
SPEARMAN = 4 / 5  # Pearson of ranks: sum d*d' = 2.25 - .25 - .25 + 2.25 = 4 over 5


def logits_for(classes, num_classes=2):
    return np.eye(num_classes)[classes] * 3.0 - 1.0


def test_local_module_exact_values():
    metric = evaluate.load(str(LOCAL_METRIC_MODULE), "accuracy+f1+matthews_correlation")
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert result == pytest.approx({"accuracy": ACCURACY, "f1": F1, "matthews_correlation": MCC}, rel=1e-12)
    correlation = evaluate.load(str(LOCAL_METRIC_MODULE), "pearson+spearmanr")
    result = correlation.compute(predictions=SCORES, references=TARGETS)
    assert result == pytest.approx({"pearson": PEARSON, "spearmanr": SPEARMAN}, rel=1e-12)


@pytest.mark.parametrize("config, message", [
    (None, r"fliqs_glue needs a config name"),
    ("accuracy+bleu", r"names unknown metrics \['bleu'\]"),
    ("accuracy+pearson", r"mixes classification .* and regression"),
])
def test_local_module_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        evaluate.load(str(LOCAL_METRIC_MODULE), config)


def test_compute_metrics_for_classification_tasks():
    mrpc = build_compute_metrics(get_task("mrpc"))
    result = mrpc(EvalPrediction(predictions=logits_for(PREDICTIONS), label_ids=REFERENCES))
    assert result == pytest.approx({"accuracy": ACCURACY, "f1": F1}, rel=1e-12)
    assert all(type(v) is float for v in result.values())
    cola = build_compute_metrics(get_task("cola"))
    assert cola(EvalPrediction(predictions=logits_for(PREDICTIONS), label_ids=REFERENCES)) == pytest.approx(
        {"matthews_correlation": MCC}, rel=1e-12)


def test_compute_metrics_for_multiclass_with_extra_outputs():
    # Models returning (logits, hidden_states): the logits come first.
    mnli = build_compute_metrics(get_task("mnli"))
    logits = logits_for(np.array([2, 0, 1, 1]), num_classes=3)
    result = mnli(EvalPrediction(predictions=(logits, np.zeros((4, 7))), label_ids=np.array([2, 0, 0, 1])))
    assert result == {"accuracy": 0.75}


def test_compute_metrics_for_regression_squeezes():
    stsb = build_compute_metrics(get_task("stsb"))
    result = stsb(EvalPrediction(predictions=SCORES.reshape(-1, 1), label_ids=TARGETS))
    assert result == pytest.approx({"pearson": PEARSON, "spearmanr": SPEARMAN}, rel=1e-12)


@pytest.mark.parametrize("name", list(TASKS))
def test_main_metric_is_reported_for_every_task(name):
    task = get_task(name)
    compute = build_compute_metrics(task)
    if task.is_regression:
        prediction = EvalPrediction(predictions=SCORES.reshape(-1, 1), label_ids=TARGETS)
    else:
        labels = np.arange(6) % task.num_labels
        prediction = EvalPrediction(predictions=logits_for(labels, task.num_labels), label_ids=labels)
    result = {f"eval_{k}": v for k, v in compute(prediction).items()}
    assert task.main_metric in result
    if not task.is_regression:
        assert result["eval_accuracy" if "accuracy" in task.metric_names else task.main_metric] == 1.0


def test_predictions_from_logits_errors():
    with pytest.raises(ValueError, match=r"regression expects one output per example, got logits of shape \(3, 2\)"):
        predictions_from_logits(np.zeros((3, 2)), is_regression=True)
    with pytest.raises(ValueError, match=r"classification expects logits of shape \(examples, classes\), got \(3,\)"):
        predictions_from_logits(np.zeros(3), is_regression=False)
    assert predictions_from_logits(np.array([[0.1, 0.9], [2.0, 1.0]]), is_regression=False).tolist() == [1, 0]


def test_hub_metric_fails_fast_offline():
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError,
                       match=r"metric 'glue', not in the local evaluate cache, needs the Hugging Face hub.*"
                             r"leave --metric unset"):
        build_compute_metrics(get_task("mrpc"), "glue")
    assert time.perf_counter() - start < 10


def test_metric_name_may_be_a_local_module_path():
    compute = build_compute_metrics(get_task("sst2"), str(LOCAL_METRIC_MODULE), metric_config="f1")
    assert compute(EvalPrediction(predictions=logits_for(PREDICTIONS), label_ids=REFERENCES)) == pytest.approx(
        {"f1": F1}, rel=1e-12)


def test_metric_argument_errors():
    with pytest.raises(ValueError, match=r"metric_config='f1' needs metric_name"):
        load_task_metric(get_task("sst2"), metric_config="f1")
    with pytest.raises(ValueError, match=r"metric 'glue' has no config for task 'boolq'"):
        load_task_metric(get_task("boolq"), "glue")
