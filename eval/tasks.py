"""The task registry: which data, which columns, which metrics, for every `--task`.

A `TaskSpec` says everything data loading and metrics need: where the data lives (hub dataset
and config, a built-in offline generator, or neither: only the user's local files), the splits (the evaluation split is renamed
"validation" when loaded), the columns a local file must have, and the metrics with the key the
HF Trainer reports for the main one (`eval_` + metric name).

piqa is cast as 2-way sequence-pair classification: the first segment is the goal, the second
joins both candidate solutions as "1) {sol1} 2) {sol2}", and the label is the index of the correct
solution, so its accuracy is the usual piqa accuracy (see `eval.data.PREPARERS`).
"""
from __future__ import annotations

from dataclasses import dataclass

MODALITIES = ("text", "vision")
# Metric names the offline metric module computes (eval/metric_modules/fliqs_glue).
METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")
REGRESSION_METRICS = ("pearson", "spearmanr")
# GLUE's F1 is binary (of class 1, as mrpc and qqp report it): a macro-F1 under the same name
# would read as GLUE's, so the offline module's "f1" is for two-class tasks only.
BINARY_METRICS = ("f1",)


@dataclass(frozen=True)
class TaskSpec:
    """One task. `num_labels == 1` means regression (float labels, e.g. stsb)."""

    name: str
    modality: str
    num_labels: int
    label_column: str
    metric_names: tuple[str, ...]
    main_metric: str
    text_columns: tuple[str, ...] = ()
    image_column: str | None = None
    hub_path: str | None = None
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    builtin: bool = False
    gated: bool = False
    # Columns the raw data (hub or local files) must have, when they differ from the model's
    # inputs: piqa's raw goal/sol1/sol2 become the pair (goal, solutions) in `preparer`.
    raw_columns: tuple[str, ...] | None = None
    preparer: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"task {self.name!r}: modality={self.modality!r}; use one of {MODALITIES}")
        if self.num_labels < 1:
            raise ValueError(f"task {self.name!r}: num_labels={self.num_labels} must be >= 1 (1 = regression)")
        if self.modality == "text" and len(self.text_columns) not in (1, 2):
            raise ValueError(f"task {self.name!r}: text tasks need one text column or a pair, "
                             f"got text_columns={self.text_columns}")
        if self.modality == "vision" and (self.image_column is None or self.text_columns):
            raise ValueError(f"task {self.name!r}: vision tasks need image_column and no text_columns")
        unknown = [m for m in self.metric_names if m not in METRIC_NAMES]
        if not self.metric_names or unknown:
            raise ValueError(f"task {self.name!r}: metric_names={self.metric_names} must be a non-empty "
                             f"subset of {METRIC_NAMES}")
        regression_metrics = [m for m in self.metric_names if m in REGRESSION_METRICS]
        if regression_metrics and (self.num_labels != 1 or len(regression_metrics) != len(self.metric_names)):
            raise ValueError(f"task {self.name!r}: {REGRESSION_METRICS} need num_labels=1 and no "
                             f"classification metrics, got num_labels={self.num_labels}, {self.metric_names}")
        if self.num_labels == 1 and not regression_metrics:
            raise ValueError(f"task {self.name!r}: num_labels=1 (regression) needs metrics from {REGRESSION_METRICS}")
        if self.main_metric not in tuple(f"eval_{m}" for m in self.metric_names):
            raise ValueError(f"task {self.name!r}: main_metric={self.main_metric!r} must be 'eval_' + one of "
                             f"{self.metric_names} (the key the HF Trainer reports)")
        binary = [m for m in self.metric_names if m in BINARY_METRICS]
        if binary and self.num_labels > 2:
            raise ValueError(f"task {self.name!r}: metric {binary[0]!r} is GLUE's binary F1 (of class 1) and needs "
                             f"num_labels=2, got num_labels={self.num_labels}; drop {binary[0]!r} from metric_names "
                             f"(accuracy and matthews_correlation take any number of classes)")
        if self.builtin and self.hub_path is not None:
            raise ValueError(f"task {self.name!r}: set at most one of builtin=True or hub_path (neither: a task read "
                             f"only from local files, --train_file/--validation_file or --dataset_path)")
        if self.hub_path is None and (self.hub_config is not None or self.gated):
            raise ValueError(f"task {self.name!r}: hub_config and gated describe a hub dataset; set hub_path too, "
                             f"or drop them for a task read only from local files")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def local_only(self) -> bool:
        """Neither built in nor on the hub: its data comes only from the user's files."""
        return not self.builtin and self.hub_path is None

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns the model's inputs are built from (after `preparer`)."""
        return self.text_columns if self.modality == "text" else (self.image_column,)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns raw data must have: local files, `save_to_disk` folders, hub datasets."""
        inputs = self.raw_columns if self.raw_columns is not None else self.input_columns
        return (*inputs, self.label_column)


def _glue(name: str, text_columns: tuple[str, ...], num_labels: int = 2,
          metric_names: tuple[str, ...] = ("accuracy",), eval_split: str = "validation") -> TaskSpec:
    main = "pearson" if num_labels == 1 else metric_names[0]
    return TaskSpec(name=name, modality="text", num_labels=num_labels, label_column="label",
                    metric_names=metric_names, main_metric=f"eval_{main}", text_columns=text_columns,
                    hub_path="nyu-mll/glue", hub_config=name, eval_split=eval_split,
                    description=f"GLUE {name}")


_TASKS: tuple[TaskSpec, ...] = (
    _glue("cola", ("sentence",), metric_names=("matthews_correlation",)),
    _glue("sst2", ("sentence",)),
    _glue("mrpc", ("sentence1", "sentence2"), metric_names=("accuracy", "f1")),
    _glue("qqp", ("question1", "question2"), metric_names=("accuracy", "f1")),
    _glue("qnli", ("question", "sentence")),
    _glue("rte", ("sentence1", "sentence2")),
    _glue("wnli", ("sentence1", "sentence2")),
    _glue("mnli", ("premise", "hypothesis"), num_labels=3, eval_split="validation_matched"),
    _glue("stsb", ("sentence1", "sentence2"), num_labels=1, metric_names=("pearson", "spearmanr")),
    TaskSpec(name="boolq", modality="text", num_labels=2, label_column="answer",
             metric_names=("accuracy",), main_metric="eval_accuracy",
             text_columns=("question", "passage"), hub_path="google/boolq",
             description="BoolQ yes/no questions about a passage; answer (bool) -> 0/1"),
    TaskSpec(name="piqa", modality="text", num_labels=2, label_column="label",
             metric_names=("accuracy",), main_metric="eval_accuracy",
             text_columns=("goal", "solutions"), raw_columns=("goal", "sol1", "sol2"),
             preparer="piqa_solutions", hub_path="ybisk/piqa",
             description="PIQA as pair classification: (goal, '1) sol1 2) sol2') -> index of the right solution"),
    TaskSpec(name="cifar10", modality="vision", num_labels=10, label_column="label",
             metric_names=("accuracy",), main_metric="eval_accuracy", image_column="img",
             hub_path="uoft-cs/cifar10", eval_split="test", description="CIFAR-10, 32x32 RGB"),
    TaskSpec(name="cifar100", modality="vision", num_labels=100, label_column="fine_label",
             metric_names=("accuracy",), main_metric="eval_accuracy", image_column="img",
             hub_path="uoft-cs/cifar100", eval_split="test", description="CIFAR-100 fine labels, 32x32 RGB"),
    TaskSpec(name="imagenet-1k", modality="vision", num_labels=1000, label_column="label",
             metric_names=("accuracy",), main_metric="eval_accuracy", image_column="image",
             hub_path="ILSVRC/imagenet-1k", gated=True,
             description="ImageNet-1k (gated: accept the terms on the hub and log in)"),
    TaskSpec(name="digits", modality="vision", num_labels=10, label_column="label",
             metric_names=("accuracy",), main_metric="eval_accuracy", image_column="image",
             builtin=True, description="built-in, offline: scikit-learn's 8x8 handwritten digits"),
    TaskSpec(name="synth-sentiment", modality="text", num_labels=2, label_column="label",
             metric_names=("accuracy",), main_metric="eval_accuracy", text_columns=("sentence",),
             builtin=True, description="built-in, offline: compositional synthetic sentiment sentences"),
)

TASKS: dict[str, TaskSpec] = {task.name: task for task in _TASKS}
BUILTIN_TASK_NAMES: tuple[str, ...] = tuple(t.name for t in _TASKS if t.builtin)


def get_task(name: str) -> TaskSpec:
    """The TaskSpec registered as `name`; ValueError listing the valid names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_names(modality: str | None = None) -> list[str]:
    """Registered task names, optionally only those of one modality ("text" or "vision")."""
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality={modality!r}; use one of {MODALITIES} or None")
    return [t.name for t in _TASKS if modality is None or t.modality == modality]
