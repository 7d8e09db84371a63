"""From a task name to Trainer-ready datasets: load (built-in, local files, disk, hub), subsample,
carve a held-out split for the search's reward, tokenize text or transform images, collate.

Every loader returns a `DatasetDict` with exactly "train" and "validation" (the task's
evaluation split renamed), with the task's raw columns checked and its preparer applied.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from eval.builtin_tasks import load_builtin_task
from eval.hub import hub_offline_flag_set, hub_reachable, require_hub
from eval.run_args import DEFAULT_DATA_SEED
from eval.data_checks import (LOCAL_FILE_BUILDERS, RowNames, check_columns, check_eval_labels_vary, check_inputs,
                              check_labels, check_metrics_fit_labels, images_from_paths)
from eval.tasks import BUILTIN_TASK_NAMES, TaskSpec, get_task
from eval.vision_utils import ImageTransformConfig, collate_vision, make_batch_transform

SPLITS = ("train", "validation")


def _piqa_solutions(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """piqa as one pair: (goal, "1) sol1 2) sol2"); the label stays the index of the right one."""
    return {"solutions": [f"1) {a} 2) {b}" for a, b in zip(batch["sol1"], batch["sol2"])]}


# Column preparation by TaskSpec.preparer: batch -> new columns (added next to the raw ones).
PREPARERS: dict[str, Callable[[dict[str, list[Any]]], dict[str, list[Any]]]] = {
    "piqa_solutions": _piqa_solutions,
}


def dataset_splits(task: TaskSpec) -> str:
    """The splits a --dataset_path folder of `task` needs, for messages. The task's own evaluation
    split name, and 'validation' as its alternative only where that is another name (most tasks
    evaluate on 'validation' itself)."""
    if task.eval_split == "validation":
        return "'train' and 'validation'"
    return f"'train' and '{task.eval_split}' (or 'validation')"


def local_files_needed(task: TaskSpec) -> str:
    """Why a local-only task (no hub_path, not built in) cannot run without local data, and what to pass."""
    return (f"task {task.name!r} is read only from local files (its TaskSpec has no hub_path): pass --train_file "
            f"and --validation_file (csv/json/jsonl/parquet with columns {list(task.required_columns)}), or "
            f"--dataset_path, a folder written by DatasetDict.save_to_disk with splits {dataset_splits(task)}")


def data_ways_out(task: TaskSpec) -> list[str]:
    """What to do instead of downloading `task` from the hub (used in error messages)."""
    ways = [
        f"pass --train_file and --validation_file (csv/json/jsonl/parquet with columns "
        f"{list(task.required_columns)})",
        f"pass --dataset_path, a folder written by DatasetDict.save_to_disk with splits {dataset_splits(task)}",
        f"use a built-in offline task: --task {' or --task '.join(BUILTIN_TASK_NAMES)}",
    ]
    if not hub_offline_flag_set():
        ways.append("set HF_HUB_OFFLINE=1 to use a copy already in the datasets cache")
    if task.gated:
        ways.append(f"{task.hub_path} is gated: online, accept its terms at "
                    f"https://huggingface.co/datasets/{task.hub_path} and log in (`hf auth login` or HF_TOKEN)")
    return ways


def check_local_sources(task: TaskSpec, train_file: str | os.PathLike[str] | None,
                        validation_file: str | os.PathLike[str] | None,
                        dataset_path: str | os.PathLike[str] | None) -> None:
    """What can be checked of local data without reading it: the files exist with a readable
    extension, a dataset_path is a saved DatasetDict, the task is not a built-in one, and a local-only
    task has local data (checked at parse time: such a run fails before anything else)."""
    if task.local_only and train_file is None and validation_file is None and dataset_path is None:
        raise ValueError(local_files_needed(task))
    if task.builtin and (train_file is not None or validation_file is not None or dataset_path is not None):
        raise ValueError(f"task {task.name!r} is built in and generates its own data; drop "
                         "--train_file/--validation_file/--dataset_path, or pick a task whose columns "
                         "your data has (e.g. --task sst2 for columns sentence, label)")
    for flag, file in (("--train_file", train_file), ("--validation_file", validation_file)):
        if file is None:
            continue
        if Path(file).suffix.lower() not in LOCAL_FILE_BUILDERS:
            raise ValueError(f"{flag} {str(file)!r}: the extension must be one of {sorted(LOCAL_FILE_BUILDERS)}")
        if not Path(file).is_file():
            raise ValueError(f"{flag} {str(file)!r} is not a file")
    if dataset_path is not None:
        path = Path(dataset_path)
        if not path.is_dir():
            raise ValueError(f"--dataset_path {str(path)!r} is not a directory; pass a folder written by "
                             f"DatasetDict.save_to_disk")
        if not (path / "dataset_dict.json").is_file():
            what = "a single Dataset" if (path / "state.json").is_file() else "no saved DatasetDict"
            raise ValueError(f"--dataset_path {str(path)!r} holds {what}; save a DatasetDict with splits "
                             f"{dataset_splits(task)} with save_to_disk")


def _has_no_rows(path: Path, builder: str) -> bool:
    """Whether a local file holds no example (datasets' own errors for these name neither the
    file nor the problem)."""
    try:
        if builder == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows == 0
        lines: list[str] = []  # the first non-blank lines: enough to tell, without reading a large file
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    lines.append(line.strip())
                    if len(lines) == 3:
                        break
    except Exception:  # noqa: BLE001 - unreadable: the caller reports datasets' error
        return False
    if builder == "csv":
        return len(lines) <= 1  # at most a header
    return not lines or "".join(lines) in ("[]", "{}")


def _load_local_file(path: str | os.PathLike[str], flag: str) -> datasets.Dataset:
    path = Path(path)
    builder = LOCAL_FILE_BUILDERS[path.suffix.lower()]  # extension and existence: check_local_sources
    if _has_no_rows(path, builder):
        raise ValueError(f"{flag} {str(path)!r} has no rows; give a {builder} file with at least one example")
    # In a CSV only an empty cell is missing: pandas would also read the texts "NA", "None",
    # "null", "nan" (and a dozen more) as missing, and a sentence can be just that.
    options: dict[str, Any] = {"keep_default_na": False, "na_values": [""]} if builder == "csv" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # noqa: BLE001 - datasets raises DatasetGenerationError without the file's name
        cause = error.__cause__ or error
        raise ValueError(f"cannot read {str(path)!r} as {builder}: {type(cause).__name__}: {cause}") from error
    if len(ds) == 0:
        raise ValueError(f"{flag} {str(path)!r} has no rows; give a {builder} file with at least one example")
    return ds


def _load_local_files(train_file: str | os.PathLike[str],
                      validation_file: str | os.PathLike[str]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"train": _load_local_file(train_file, "--train_file"),
                                 "validation": _load_local_file(validation_file, "--validation_file")})


def _load_from_disk(dataset_path: str | os.PathLike[str], task: TaskSpec) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_from_disk(str(dataset_path))  # a DatasetDict: see check_local_sources
    except IndexError as error:  # datasets writes no data file for a split of no rows, and cannot read it back
        raise ValueError(f"cannot read --dataset_path {str(dataset_path)!r}: a split of it has no data file (saved "
                         f"with no rows?); give every split at least one example") from error
    except Exception as error:  # noqa: BLE001 - e.g. KeyError 'splits': it names neither the folder nor the way out
        raise ValueError(f"cannot read --dataset_path {str(dataset_path)!r} as a saved DatasetDict: "
                         f"{type(error).__name__}: {error}; write it again with DatasetDict.save_to_disk") from error
    eval_split = task.eval_split if task.eval_split in loaded else "validation"
    missing = [s for s in ("train", eval_split) if s not in loaded]
    if missing:
        raise ValueError(f"--dataset_path {str(dataset_path)!r} lacks splits {missing} (it has "
                         f"{list(loaded)}); it needs {dataset_splits(task)}")
    return datasets.DatasetDict({"train": loaded["train"], "validation": loaded[eval_split]})


def _load_from_hub(task: TaskSpec) -> datasets.DatasetDict:
    if task.hub_path is None:  # a local-only task: check_local_sources refuses it first
        raise ValueError(local_files_needed(task))
    config = f" (config {task.hub_config})" if task.hub_config else ""
    what = f"Task {task.name!r}: dataset {task.hub_path}{config}"

    def load() -> datasets.DatasetDict:
        train, validation = datasets.load_dataset(task.hub_path, task.hub_config,
                                                  split=[task.train_split, task.eval_split])
        return datasets.DatasetDict({"train": train, "validation": validation})

    if not hub_reachable():
        if hub_offline_flag_set():
            try:  # offline mode: the datasets library reads its cache without the network
                return load()
            except (OSError, ValueError):
                pass
        require_hub(what + (", not in the local datasets cache," if hub_offline_flag_set() else ""),
                    data_ways_out(task))
    if task.gated:
        from huggingface_hub import get_token
        if get_token() is None:
            raise PermissionError(f"{task.hub_path} is gated: accept its terms at "
                                  f"https://huggingface.co/datasets/{task.hub_path}, then log in with "
                                  "`hf auth login` or set HF_TOKEN")
    return load()


def _validate_max_samples(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name}={value!r} must be a positive integer, or None for the whole split")


def _validate_data_seed(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**32:
        raise ValueError(f"data_seed={value!r} must be an integer in 0 .. 2**32 - 1 (the seed of the "
                         f"max_train_samples/max_eval_samples subsets; default {DEFAULT_DATA_SEED})")


def _subset_indices(num_rows: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    """The sorted rows of a seeded random subset of `max_samples` rows; None for all of them."""
    if max_samples is None or max_samples >= num_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_rows, size=max_samples, replace=False))


def subsample(ds: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    """A seeded random subset of `max_samples` rows, in their original order (all rows if fewer)."""
    _validate_max_samples("max_samples", max_samples)
    indices = _subset_indices(len(ds), max_samples, seed)
    return ds if indices is None else ds.select(indices)


def load_raw_datasets(
    task: TaskSpec | str,
    *,
    train_file: str | os.PathLike[str] | None = None,
    validation_file: str | os.PathLike[str] | None = None,
    dataset_path: str | os.PathLike[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    data_seed: int = DEFAULT_DATA_SEED,
    metric_names: tuple[str, ...] | None = None,
) -> datasets.DatasetDict:
    """The task's raw "train" and "validation" splits from the first source given.

    `data_seed` draws the `max_train_samples`/`max_eval_samples` subsets (the run's --data_seed, not
    its --seed: seed replicas evaluate the same examples).

    `metric_names`: the metrics the run will report (default: the task's), for the checks that
    depend on them (a regression scored by correlation needs evaluation labels that vary; a binary
    metric, two classes).

    Sources: local files (`train_file` and `validation_file`, columns named as the task's),
    `dataset_path` (a `save_to_disk` folder), the built-in generator (built-in tasks), else the
    hub, which fails within seconds offline with a message naming these ways out. A local-only task
    (no hub_path) needs one of the local sources.
    """
    task = get_task(task) if isinstance(task, str) else task
    _validate_max_samples("max_train_samples", max_train_samples)
    _validate_max_samples("max_eval_samples", max_eval_samples)
    _validate_data_seed(data_seed)
    check_metrics_fit_labels(task, task.metric_names if metric_names is None else metric_names)
    local_files = train_file is not None or validation_file is not None
    if local_files and (train_file is None or validation_file is None):
        raise ValueError("pass both --train_file and --validation_file (got only "
                         f"{'--train_file' if train_file is not None else '--validation_file'})")
    if local_files and dataset_path is not None:
        raise ValueError("pass either --train_file/--validation_file or --dataset_path, not both")
    check_local_sources(task, train_file, validation_file, dataset_path)
    # `source` names each split in error messages, `files` the local file each comes from.
    files: dict[str, str | os.PathLike[str] | None] = {split: None for split in SPLITS}
    if local_files:
        raw = _load_local_files(train_file, validation_file)
        source = {"train": f"train file {str(train_file)!r}", "validation": f"validation file {str(validation_file)!r}"}
        files = {"train": train_file, "validation": validation_file}
    elif dataset_path is not None:
        raw = _load_from_disk(dataset_path, task)
        source = {s: f"{s} split of {str(dataset_path)!r}" for s in SPLITS}
    elif task.builtin:
        raw = load_builtin_task(task.name)
        source = {s: f"built-in {task.name} {s}" for s in SPLITS}
    else:
        raw = _load_from_hub(task)
        source = {s: f"{task.hub_path} {s}" for s in SPLITS}
    # The checks read only the rows the run uses (a whole hub split can be large), and name a bad
    # row by its place in the user's file or split, not in the subset.
    full = raw
    subsets = {"train": _subset_indices(len(raw["train"]), max_train_samples, data_seed),
               "validation": _subset_indices(len(raw["validation"]), max_eval_samples, data_seed)}
    rows = {split: RowNames(len(raw[split]), subsets[split], files[split]) for split in SPLITS}
    if local_files and task.modality == "vision":  # every path stat-ed, the used ones' headers read
        full = datasets.DatasetDict({split: images_from_paths(raw[split], task, files[split], source[split],
                                                               RowNames(len(raw[split]), None, files[split]),
                                                               subsets[split]) for split in SPLITS})
    raw = datasets.DatasetDict({split: full[split] if subsets[split] is None else full[split].select(subsets[split])
                                for split in SPLITS})
    for split in SPLITS:
        if len(raw[split]) == 0:  # an empty evaluation would report no metric, an empty training no steps
            raise ValueError(f"the {source[split]} has no rows; give it at least one example")
        check_columns(raw[split], task, source[split])
        check_labels(raw[split], task, source[split], rows[split])
        check_inputs(raw[split], task, source[split], rows[split])
        feature = raw[split].features[task.label_column]
        if not task.is_regression and getattr(feature, "dtype", "").startswith("float"):  # whole numbers: checked
            raw[split] = raw[split].cast_column(task.label_column, datasets.Value("int64"))
    check_eval_labels_vary(raw["validation"], full["validation"], task, source["validation"],
                            task.metric_names if metric_names is None else metric_names)
    if task.preparer is not None:
        if task.preparer not in PREPARERS:
            raise ValueError(f"task {task.name!r} names preparer {task.preparer!r}; known: {sorted(PREPARERS)}")
        raw = raw.map(PREPARERS[task.preparer], batched=True, desc=f"preparing {task.name}")
    return raw


def carve_heldout(train: datasets.Dataset, fraction: float, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split `train` into (train, heldout), heldout a seeded random `fraction` of the rows.

    The search's reward is measured on `heldout`, never on the evaluation split.
    """
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"heldout fraction={fraction} must be in (0, 0.5]")
    num_heldout = int(round(fraction * len(train)))
    if num_heldout < 1 or num_heldout >= len(train):
        raise ValueError(f"heldout fraction={fraction} of {len(train)} training rows leaves an empty split; "
                         "use a larger training set or fraction")
    order = np.random.default_rng(seed).permutation(len(train))
    heldout_idx, train_idx = np.sort(order[:num_heldout]), np.sort(order[num_heldout:])
    return train.select(train_idx), train.select(heldout_idx)


def training_texts(train: datasets.Dataset, task: TaskSpec) -> list[str]:
    """Every text of the task's text columns, to build a word-level vocabulary from."""
    if task.modality != "text":
        raise ValueError(f"task {task.name!r} is a {task.modality} task; it has no texts")
    return [text for column in task.text_columns for text in train[column]]


def label_names(train: datasets.Dataset, task: TaskSpec) -> list[str] | None:
    """Class names for the model config's id2label: the ClassLabel names, else "0".."n-1";
    None for regression."""
    if task.is_regression:
        return None
    feature = train.features.get(task.label_column)
    if isinstance(feature, datasets.ClassLabel) and feature.num_classes == task.num_labels:
        return list(feature.names)
    return [str(i) for i in range(task.num_labels)]


def tokenize_dataset(ds: datasets.Dataset, task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
                     max_seq_length: int) -> datasets.Dataset:
    """Tokenize the task's text column (or pair), truncated to `max_seq_length`, unpadded (the
    collator pads per batch); labels become `labels`, int (classification) or float (regression)."""
    if task.modality != "text":
        raise ValueError(f"task {task.name!r} is a {task.modality} task; use prepare_vision_datasets")
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length={max_seq_length} must be >= 2 (room for [CLS] and [SEP])")
    # The special tokens plus one token of each text: below that the tokenizer cannot truncate and
    # returns the whole, untruncated sequence (with a warning), or only special tokens.
    pair = len(task.text_columns) == 2
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    if max_seq_length < special + len(task.text_columns):
        raise ValueError(f"--max_seq_length {max_seq_length} leaves no room for the text: the tokenizer adds {special} "
                         f"special tokens to {'a pair of texts' if pair else 'a text'} of task {task.name!r}; give at "
                         f"least {special + len(task.text_columns)}")
    check_columns(ds, task, "dataset to tokenize")

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        texts = [batch[column] for column in task.text_columns]
        for column, values in zip(task.text_columns, texts):
            if any(not isinstance(v, str) for v in values):
                raise ValueError(f"text column {column!r} of task {task.name!r} has non-text values "
                                 "(missing or numbers); drop or fill them before tokenizing")
        encoded = dict(tokenizer(*texts, truncation=True, max_length=max_seq_length))
        cast = float if task.is_regression else int
        encoded["labels"] = [cast(label) for label in batch[task.label_column]]
        return encoded

    return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenizing {task.name}")


def prepare_text_datasets(raw: Mapping[str, datasets.Dataset], task: TaskSpec, tokenizer: PreTrainedTokenizerBase,
                          max_seq_length: int) -> datasets.DatasetDict:
    """`tokenize_dataset` on every split (a DatasetDict or any {split: Dataset} mapping)."""
    return datasets.DatasetDict({split: tokenize_dataset(ds, task, tokenizer, max_seq_length)
                                 for split, ds in raw.items()})


def prepare_vision_dataset(ds: datasets.Dataset, task: TaskSpec, config: ImageTransformConfig) -> datasets.Dataset:
    """Columns `pixel_values` (transformed lazily on access) and `labels`; others dropped."""
    if task.modality != "vision":
        raise ValueError(f"task {task.name!r} is a {task.modality} task; use prepare_text_datasets")
    check_columns(ds, task, "dataset to transform")
    ds = ds.select_columns([task.image_column, task.label_column])
    ds = ds.rename_columns({task.image_column: "pixel_values", task.label_column: "labels"})
    return ds.with_transform(make_batch_transform(config))


def prepare_vision_datasets(raw: Mapping[str, datasets.Dataset], task: TaskSpec,
                            config: ImageTransformConfig) -> datasets.DatasetDict:
    """`prepare_vision_dataset` on every split (a DatasetDict or any {split: Dataset} mapping)."""
    return datasets.DatasetDict({split: prepare_vision_dataset(ds, task, config) for split, ds in raw.items()})


def build_data_collator(task: TaskSpec, tokenizer: PreTrainedTokenizerBase | None = None
                        ) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Dynamic padding for text (needs a pad token), stacking for images."""
    if task.modality == "vision":
        return collate_vision
    if tokenizer is None:
        raise ValueError(f"text task {task.name!r} needs the tokenizer to pad batches")
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token; set one first, e.g. "
                         "tokenizer.pad_token = tokenizer.eos_token (GPT-2), and model.config.pad_token_id")
    return DataCollatorWithPadding(tokenizer)
