"""Runs of what a user adds: a task only in local files, a model size with no hub checkpoint, and
the note on local images resized to a default size (eval/run_setup.py through eval_run.main)."""
from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from eval.eval_run import main
from eval.model_configs import MODEL_REGISTRY, ModelSpec, resnet_config
from eval.run_setup import _image_size_note
from eval.tasks import TASKS, TaskSpec

FAST = ["--max_steps", "2", "--train_batch_size", "4", "--eval_batch_size", "4", "--device", "cpu", "--log_steps", "1",
        "--report_to", "none", "--bits", "8"]
TINY_RESNET = ["--model_type", "resnet18", "--config_overrides", "depths=[1,1,1,1],hidden_sizes=[8,8,8,8],embedding_size=8"]
REVIEWS = TaskSpec(name="my-reviews", modality="text", num_labels=3, label_column="label",
                   metric_names=("accuracy",), main_metric="eval_accuracy", text_columns=("text",))
PICTURES = TaskSpec(name="my-pictures", modality="vision", num_labels=2, label_column="label",
                    metric_names=("accuracy",), main_metric="eval_accuracy", image_column="image")
RESNET_NO_HUB = ModelSpec("resnet-nohub", "resnet", "vision", None,
                          partial(resnet_config, [1, 1, 1, 1], [8, 8, 8, 8], "basic"))


def results_of(root: Path) -> dict:
    (path,) = root.glob("*/*/results.json")
    return json.loads(path.read_text())


def write_images(folder: Path, size: int, rows: int = 8) -> Path:
    """A csv of `rows` image paths (size x size PNGs) and labels 0/1."""
    folder.mkdir(parents=True)
    lines = ["image,label"]
    for i in range(rows):
        Image.fromarray(np.full((size, size, 3), 30 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{i % 2}")
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    return folder / "data.csv"


def test_a_local_only_task_runs_from_its_files_and_without_them_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(TASKS, REVIEWS.name, REVIEWS)
    text = ["--task", "my-reviews", "--model_type", "bert-tiny", "--from_scratch", "--config_overrides",
            "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64"]
    with pytest.raises(SystemExit) as exit_:  # at parse time, as a bad flag
        main([*text, *FAST, "--output_root_dir", str(tmp_path / "none")])
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        "eval_run: error: task 'my-reviews' is read only from local files (its TaskSpec has no hub_path): pass "
        "--train_file and --validation_file (csv/json/jsonl/parquet with columns ['text', 'label']), or "
        "--dataset_path, a folder written by DatasetDict.save_to_disk with splits 'train' and 'validation' (see --help)")
    assert not (tmp_path / "none").exists()
    rows = ["text,label"] + [f"{['bad awful', 'so so', 'good fine'][i % 3]} {i},{i % 3}" for i in range(24)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    code = main([*text, "--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "train.csv"),
                 *FAST, "--output_root_dir", str(tmp_path / "out")])
    assert code == 0 and results_of(tmp_path / "out")["status"] == "completed"


def test_a_model_without_a_hub_checkpoint_trains_from_scratch_and_refuses_pretrained(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(MODEL_REGISTRY, RESNET_NO_HUB.name, RESNET_NO_HUB)
    digits = ["--task", "digits", "--model_type", "resnet-nohub", "--max_train_samples", "16", "--max_eval_samples", "8"]
    code = main([*digits, "--pretrained", *FAST, "--output_root_dir", str(tmp_path / "pre")])
    assert code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        "eval_run: error: model type 'resnet-nohub' has no hub checkpoint (its ModelSpec has hub_id=None): it is "
        "built from scratch only; pass --from_scratch, or --model_name_or_path DIR with a checkpoint of it")
    code = main([*digits, *FAST, "--output_root_dir", str(tmp_path / "out")])  # a built-in task: from scratch
    assert code == 0 and results_of(tmp_path / "out")["status"] == "completed"


NOTE = ("eval_run: note: the task's images are 12x12 (the first training image's header) and are resized to "
        "224x224, the default size of a task not in NATIVE_IMAGE_SIZE: the run computes, and records the GBOPs of, "
        "224x224 images; pass --image_size 12 to train at the files' size")


def test_local_images_resized_to_the_default_size_are_noted(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(TASKS, PICTURES.name, PICTURES)
    data = write_images(tmp_path / "pictures", 12)
    argv = ["--task", "my-pictures", *TINY_RESNET, "--from_scratch", "--train_file", str(data), "--validation_file",
            str(data), *FAST]
    code = main([*argv, "--output_root_dir", str(tmp_path / "default")])
    assert code == 0 and NOTE in capsys.readouterr().err.splitlines()
    assert results_of(tmp_path / "default")["args"]["image_size"] is None
    code = main([*argv, "--image_size", "12", "--output_root_dir", str(tmp_path / "given")])
    assert code == 0 and "note: the task's images" not in capsys.readouterr().err


def args_of(**flags) -> argparse.Namespace:
    return argparse.Namespace(**{"image_size": None, "train_file": "t.csv", "dataset_path": None, **flags})


def test_the_note_only_for_local_images_of_another_size_than_a_default_not_the_tasks(tmp_path):
    def images(size: int) -> datasets.Dataset:
        Image.fromarray(np.zeros((size, size + 1, 3), dtype=np.uint8)).save(tmp_path / f"{size}.png")
        return datasets.Dataset.from_dict({"image": [str(tmp_path / f"{size}.png")], "label": [0]}).cast_column(
            "image", datasets.Image())

    small = images(12)
    assert _image_size_note(args_of(), PICTURES, small, 224) == (
        "note: the task's images are 13x12 (the first training image's header) and are resized to 224x224, the "
        "default size of a task not in NATIVE_IMAGE_SIZE: the run computes, and records the GBOPs of, 224x224 "
        "images; pass --image_size 13 to train at the files' size")
    assert _image_size_note(args_of(train_file=None, dataset_path="saved"), PICTURES, small, 224) is not None
    # No note: the size given, the sizes agree, the task's own size, or data not the user's own.
    square = datasets.Dataset.from_dict({"image": [Image.new("RGB", (224, 224))], "label": [0]},
                                        features=datasets.Features({"image": datasets.Image(),
                                                                    "label": datasets.Value("int64")}))
    assert _image_size_note(args_of(image_size=224), PICTURES, small, 224) is None
    assert _image_size_note(args_of(), PICTURES, square, 224) is None
    cifar = TaskSpec(**{**PICTURES.__dict__, "name": "cifar10"})
    assert _image_size_note(args_of(), cifar, small, 32) is None
    assert _image_size_note(args_of(train_file=None), PICTURES, small, 224) is None
