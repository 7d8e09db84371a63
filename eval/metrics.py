"""Task metrics for the HF Trainer, through `evaluate`, working offline.

By default the metrics come from the local evaluate module `eval/metric_modules/fliqs_glue`
(GLUE's accuracy, F1, Matthews correlation, Pearson and Spearman, computed with the same
scikit-learn / scipy functions as the hub's `glue` metric), so nothing touches the network.
`metric_name` (the CLI's --metric) may instead name a hub metric (e.g. "glue", "accuracy") for
online users, or a local evaluate module folder/script; a hub name not in evaluate's cache fails
fast offline with a message naming the ways out.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
from transformers import EvalPrediction

from eval.hub import hub_offline_flag_set, hub_reachable, require_hub
from eval.tasks import TaskSpec

LOCAL_METRIC_MODULE = Path(__file__).resolve().parent / "metric_modules" / "fliqs_glue"
# Hub metrics whose config name is the GLUE/SuperGLUE task name.
TASK_CONFIG_METRICS = ("glue", "super_glue")


def load_task_metric(task: TaskSpec, metric_name: str | None = None,
                     metric_config: str | None = None) -> evaluate.EvaluationModule:
    """The evaluate module for `task`: the offline GLUE module, a local module path, or a hub metric.

    Kept in memory: parallel runs would otherwise contend for evaluate's on-disk cache files.
    """
    if metric_name is None:
        if metric_config is not None:
            raise ValueError(f"metric_config={metric_config!r} needs metric_name; the built-in metrics of "
                             f"task {task.name!r} are fixed: {task.metric_names}")
        return evaluate.load(str(LOCAL_METRIC_MODULE), "+".join(task.metric_names), keep_in_memory=True)
    if metric_config is None and metric_name in TASK_CONFIG_METRICS:
        if task.hub_path != "nyu-mll/glue" and metric_name == "glue":
            raise ValueError(f"metric 'glue' has no config for task {task.name!r}; pass metric_config, "
                             "or leave metric_name unset for the built-in offline metrics")
        metric_config = task.hub_config or task.name
    if os.path.exists(metric_name):
        return evaluate.load(metric_name, metric_config, keep_in_memory=True)
    if not hub_reachable() and hub_offline_flag_set():
        try:  # offline mode: evaluate falls back to a copy in its modules cache
            return evaluate.load(metric_name, metric_config, keep_in_memory=True)
        except OSError:
            pass
    not_cached = ", not in the local evaluate cache," if hub_offline_flag_set() else ""
    require_hub(f"metric {metric_name!r}{not_cached}", [
        f"leave --metric unset to use the built-in offline metrics ({', '.join(task.metric_names)} for {task.name})",
        "pass a local evaluate module folder or script as --metric",
    ])
    return evaluate.load(metric_name, metric_config, keep_in_memory=True)


def predictions_from_logits(logits: np.ndarray | tuple[np.ndarray, ...], is_regression: bool) -> np.ndarray:
    """Class ids (argmax over the last axis) or regression scores (squeezed to 1-D)."""
    if isinstance(logits, (tuple, list)):
        # Models that also return hidden states/attentions: the logits come first.
        logits = logits[0]
    logits = np.asarray(logits)
    if is_regression:
        if logits.ndim == 2 and logits.shape[1] != 1:
            raise ValueError(f"regression expects one output per example, got logits of shape {logits.shape}; "
                             "build the model with num_labels=1")
        return logits.reshape(-1).astype(np.float64)
    if logits.ndim != 2:
        raise ValueError(f"classification expects logits of shape (examples, classes), got {logits.shape}")
    return logits.argmax(axis=-1)


def build_compute_metrics(task: TaskSpec, metric_name: str | None = None, *,
                          metric_config: str | None = None) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`: logits -> the task's metrics (plain floats).

    The Trainer prefixes the keys with "eval_", which gives `task.main_metric` for the default
    metrics.
    """
    metric = load_task_metric(task, metric_name, metric_config)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        predictions = predictions_from_logits(prediction.predictions, task.is_regression)
        references = np.asarray(prediction.label_ids)
        references = references.reshape(-1).astype(np.float64) if task.is_regression else references.reshape(-1)
        result: dict[str, Any] = metric.compute(predictions=predictions, references=references)
        return {key: float(value) for key, value in result.items()}

    return compute_metrics
