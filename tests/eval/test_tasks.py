"""Task registry: the tasks, their columns/splits/metrics, and the errors."""
import dataclasses

import pytest

from eval.tasks import BUILTIN_TASK_NAMES, TASKS, TaskSpec, get_task, task_names

ALL_TASKS = ["cola", "sst2", "mrpc", "qqp", "qnli", "rte", "wnli", "mnli", "stsb", "boolq", "piqa",
             "cifar10", "cifar100", "imagenet-1k", "digits", "synth-sentiment"]


def test_registry_holds_every_task_in_order():
    assert list(TASKS) == ALL_TASKS
    assert BUILTIN_TASK_NAMES == ("digits", "synth-sentiment")
    assert task_names("vision") == ["cifar10", "cifar100", "imagenet-1k", "digits"]
    assert task_names("text") == ALL_TASKS[:11] + ["synth-sentiment"]


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown task 'sst-2'; valid tasks: cola, sst2, mrpc, .*synth-sentiment"):
        get_task("sst-2")
    with pytest.raises(ValueError, match=r"modality='audio'; use one of \('text', 'vision'\)"):
        task_names("audio")


@pytest.mark.parametrize("name, columns, num_labels, eval_split, main_metric", [
    ("cola", ("sentence",), 2, "validation", "eval_matthews_correlation"),
    ("mrpc", ("sentence1", "sentence2"), 2, "validation", "eval_accuracy"),
    ("qqp", ("question1", "question2"), 2, "validation", "eval_accuracy"),
    ("qnli", ("question", "sentence"), 2, "validation", "eval_accuracy"),
    ("mnli", ("premise", "hypothesis"), 3, "validation_matched", "eval_accuracy"),
    ("stsb", ("sentence1", "sentence2"), 1, "validation", "eval_pearson"),
    ("boolq", ("question", "passage"), 2, "validation", "eval_accuracy"),
    ("piqa", ("goal", "solutions"), 2, "validation", "eval_accuracy"),
    ("synth-sentiment", ("sentence",), 2, "validation", "eval_accuracy"),
])
def test_text_tasks(name, columns, num_labels, eval_split, main_metric):
    task = get_task(name)
    assert (task.modality, task.text_columns, task.num_labels) == ("text", columns, num_labels)
    assert (task.eval_split, task.main_metric) == (eval_split, main_metric)
    assert task.is_regression == (name == "stsb")


def test_glue_hub_locations_and_metrics():
    for name in ("cola", "sst2", "mrpc", "qqp", "qnli", "rte", "wnli", "mnli", "stsb"):
        task = get_task(name)
        assert (task.hub_path, task.hub_config, task.train_split) == ("nyu-mll/glue", name, "train")
    assert get_task("mrpc").metric_names == ("accuracy", "f1")
    assert get_task("stsb").metric_names == ("pearson", "spearmanr")
    assert get_task("boolq").label_column == "answer" and get_task("boolq").hub_path == "google/boolq"


def test_piqa_needs_its_raw_columns():
    piqa = get_task("piqa")
    assert piqa.required_columns == ("goal", "sol1", "sol2", "label")
    assert piqa.preparer == "piqa_solutions" and piqa.hub_path == "ybisk/piqa"


@pytest.mark.parametrize("name, image, label, num_labels, hub, eval_split", [
    ("cifar10", "img", "label", 10, "uoft-cs/cifar10", "test"),
    ("cifar100", "img", "fine_label", 100, "uoft-cs/cifar100", "test"),
    ("imagenet-1k", "image", "label", 1000, "ILSVRC/imagenet-1k", "validation"),
    ("digits", "image", "label", 10, None, "validation"),
])
def test_vision_tasks(name, image, label, num_labels, hub, eval_split):
    task = get_task(name)
    assert (task.modality, task.image_column, task.label_column) == ("vision", image, label)
    assert (task.num_labels, task.hub_path, task.eval_split) == (num_labels, hub, eval_split)
    assert task.main_metric == "eval_accuracy" and task.required_columns == (image, label)
    assert task.gated == (name == "imagenet-1k")
    assert task.builtin == (name == "digits")


def test_taskspec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("sst2").num_labels = 3


BASE = dict(name="t", modality="text", num_labels=2, label_column="label", metric_names=("accuracy",),
            main_metric="eval_accuracy", text_columns=("sentence",), hub_path="x/y")


@pytest.mark.parametrize("changes, message", [
    ({"modality": "audio"}, r"modality='audio'; use one of"),
    ({"num_labels": 0}, r"num_labels=0 must be >= 1"),
    ({"text_columns": ()}, r"text tasks need one text column or a pair"),
    ({"text_columns": ("a", "b", "c")}, r"text tasks need one text column or a pair"),
    ({"modality": "vision", "text_columns": ()}, r"vision tasks need image_column"),
    ({"metric_names": ("bleu",)}, r"metric_names=\('bleu',\) must be a non-empty subset"),
    ({"metric_names": ("pearson",), "main_metric": "eval_pearson"}, r"need num_labels=1"),
    ({"num_labels": 1}, r"num_labels=1 \(regression\) needs metrics from"),
    ({"main_metric": "accuracy"}, r"main_metric='accuracy' must be 'eval_' \+ one of"),
    ({"builtin": True}, r"set at most one of builtin=True or hub_path"),
    ({"hub_path": None, "gated": True}, r"hub_config and gated describe a hub dataset"),
    ({"hub_path": None, "hub_config": "c"}, r"hub_config and gated describe a hub dataset"),
])
def test_taskspec_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec(**{**BASE, **changes})


def test_f1_is_refused_on_a_task_of_more_than_two_classes():
    # GLUE's f1 is binary: it would fail at the final evaluation, after the whole training.
    with pytest.raises(ValueError) as error:
        TaskSpec(name="x", modality="text", num_labels=3, label_column="l", metric_names=("accuracy", "f1"),
                 main_metric="eval_accuracy", text_columns=("t",), hub_path="me/x")
    assert str(error.value) == (
        "task 'x': metric 'f1' is GLUE's binary F1 (of class 1) and needs num_labels=2, got num_labels=3; drop 'f1' "
        "from metric_names (accuracy and matthews_correlation take any number of classes)")
    two = TaskSpec(name="x", modality="text", num_labels=2, label_column="l", metric_names=("accuracy", "f1"),
                   main_metric="eval_accuracy", text_columns=("t",), hub_path="me/x")
    assert two.metric_names == ("accuracy", "f1")


def test_a_task_with_neither_builtin_nor_hub_path_is_local_only():
    task = TaskSpec(**{**BASE, "hub_path": None})
    assert task.local_only and not task.builtin
    assert not get_task("sst2").local_only and not get_task("digits").local_only
    assert [t.name for t in TASKS.values() if t.local_only] == []
