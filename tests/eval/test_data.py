"""Data loading (local files, save_to_disk, built-in, hub offline), subsets, held-out split,
tokenization, vision preparation and collators."""
import time

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from eval.data import (
    build_data_collator, carve_heldout, check_local_sources, data_ways_out, dataset_splits, label_names,
    load_raw_datasets, prepare_text_datasets, prepare_vision_datasets, subsample, tokenize_dataset, training_texts)
from eval.hub import HubUnreachableError
from eval.tasks import TASKS, TaskSpec, get_task
from eval.text_tokenizer import build_word_level_tokenizer
from eval.vision_utils import ImageTransformConfig

SST2_TRAIN = pd.DataFrame({"sentence": ["a good movie", "a bad movie", "great fun", "dull"],
                           "label": [1, 0, 1, 0], "idx": [0, 1, 2, 3]})
SST2_VAL = pd.DataFrame({"sentence": ["good fun", "bad"], "label": [1, 0]})


def write(frame: pd.DataFrame, path) -> str:
    suffix = str(path).rsplit(".", 1)[1]
    if suffix == "csv":
        frame.to_csv(path, index=False)
    elif suffix == "json":
        frame.to_json(path, orient="records")
    elif suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl", "parquet"])
def test_local_files(tmp_path, suffix):
    raw = load_raw_datasets("sst2", train_file=write(SST2_TRAIN, tmp_path / f"train.{suffix}"),
                            validation_file=write(SST2_VAL, tmp_path / f"val.{suffix}"))
    assert list(raw) == ["train", "validation"]
    assert list(raw["train"]["sentence"]) == list(SST2_TRAIN["sentence"])
    assert list(raw["train"]["label"]) == [1, 0, 1, 0]
    assert list(raw["validation"]["sentence"]) == ["good fun", "bad"]


def test_local_file_errors(tmp_path):
    train = write(SST2_TRAIN, tmp_path / "train.csv")
    no_label = write(SST2_VAL.drop(columns="label"), tmp_path / "val.csv")
    with pytest.raises(ValueError, match=r"validation file .*val.csv' lacks columns \['label'\] needed by task 'sst2' "
                                         r"\(it has \['sentence'\]\); rename its columns to \['sentence', 'label'\]"):
        load_raw_datasets("sst2", train_file=train, validation_file=no_label)
    with pytest.raises(ValueError, match=r"lacks columns \['sentence1', 'sentence2'\] needed by task 'mrpc'"):
        load_raw_datasets("mrpc", train_file=train, validation_file=train)
    with pytest.raises(ValueError, match=r"extension must be one of \['.csv', '.json', '.jsonl', '.parquet'\]"):
        load_raw_datasets("sst2", train_file=train, validation_file=str(tmp_path / "val.tsv"))
    with pytest.raises(ValueError, match=r"--validation_file '.*missing.csv' is not a file"):
        load_raw_datasets("sst2", train_file=train, validation_file=str(tmp_path / "missing.csv"))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"cannot read '.*junk.parquet' as parquet: "):
        load_raw_datasets("sst2", train_file=train, validation_file=str(junk))
    with pytest.raises(ValueError, match=r"--dataset_path '.*train.csv' is not a directory; pass a folder written by "
                                         r"DatasetDict.save_to_disk"):
        load_raw_datasets("sst2", dataset_path=train)
    with pytest.raises(ValueError, match=r"--dataset_path '.*' holds no saved DatasetDict; save a DatasetDict"):
        load_raw_datasets("sst2", dataset_path=str(tmp_path))
    with pytest.raises(ValueError, match=r"pass both --train_file and --validation_file \(got only --train_file\)"):
        load_raw_datasets("sst2", train_file=train)
    with pytest.raises(ValueError, match=r"either --train_file/--validation_file or --dataset_path, not both"):
        load_raw_datasets("sst2", train_file=train, validation_file=train, dataset_path=str(tmp_path))
    with pytest.raises(ValueError, match=r"task 'digits' is built in and generates its own data"):
        load_raw_datasets("digits", train_file=train, validation_file=train)


def test_label_errors(tmp_path):
    train = write(SST2_TRAIN, tmp_path / "train.csv")
    out_of_range = write(SST2_VAL.assign(label=[-1, 2]), tmp_path / "range.csv")
    with pytest.raises(ValueError, match=r"labels in 'label' must be class ids 0..1 for task 'sst2' \(2 classes\), "
                                         r"found \[-1, 2\], first in row 0 \(counting from 0; line 2 of the file\); "
                                         r"drop those rows \(-1 marks the unlabelled rows of GLUE "
                                         r"test splits\) or pick a task with that many classes$"):
        load_raw_datasets("sst2", train_file=train, validation_file=out_of_range)
    words = write(SST2_VAL.assign(label=["pos", "neg"]), tmp_path / "words.csv")
    with pytest.raises(ValueError, match=r"found \['neg', 'pos'\], first in row 0 \(counting from 0; line 2 of the "
                                         r"file\); map them to integers first"):
        load_raw_datasets("sst2", train_file=train, validation_file=words)
    missing = write(SST2_VAL.assign(label=[1, None]), tmp_path / "missing.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets("sst2", train_file=train, validation_file=missing)
    assert str(error.value) == (f"validation file '{missing}': label column 'label' has a missing value in row 1 "
                                "(counting from 0; line 3 of the file); drop or fill those rows")
    gaps = write(SST2_TRAIN.assign(label=[None, 1, None, None]), tmp_path / "gaps.csv")
    with pytest.raises(ValueError, match=r"has a missing value in row 0 \(counting from 0; line 2 of the file\) and 2 "
                                         r"more rows; drop or fill those rows$"):
        load_raw_datasets("sst2", train_file=gaps, validation_file=train)
    # A blank cell anywhere makes a CSV label column float: whole numbers are class ids, as int64.
    floats = tmp_path / "floats.csv"
    floats.write_text("sentence,label\ngood fun,1.0\nbad,0.0\n")
    raw = load_raw_datasets("sst2", train_file=train, validation_file=floats)
    assert list(raw["validation"]["label"]) == [1, 0] and raw["validation"].features["label"].dtype == "int64"
    halves = write(SST2_VAL.assign(label=[0.5, 1.0]), tmp_path / "halves.csv")
    with pytest.raises(ValueError, match=r"found \[0.5\], first in row 0 \(counting from 0; line 2 of the file\); "
                                         r"map them to integers first"):
        load_raw_datasets("sst2", train_file=train, validation_file=halves)
    stsb = pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [1.5, float("inf")]})
    non_finite = write(stsb, tmp_path / "stsb.csv")
    with pytest.raises(ValueError, match=r"label column 'label' has a non-finite value \(inf\) in row 1 \(counting "
                                         r"from 0; line 3 of the file\); drop or fix those rows$"):
        load_raw_datasets("stsb", train_file=non_finite, validation_file=non_finite)


@pytest.mark.parametrize("name, content, flag", [
    ("header.csv", "sentence,label\n", "--validation_file"),
    ("blank.csv", "", "--validation_file"),
    ("empty.jsonl", "", "--validation_file"),
    ("empty.json", "[]", "--validation_file"),
    ("spread.json", "[\n\n]\n", "--validation_file"),
])
def test_a_file_without_rows_is_named(tmp_path, name, content, flag):
    # datasets' own errors named neither the file nor the problem ("Instruction "train" corresponds
    # to no data!" for an empty validation file, or a bare StopIteration).
    train = write(SST2_TRAIN, tmp_path / "train.csv")
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=rf"^{flag} '.*{name}' has no rows; give a \w+ file with at least one example$"):
        load_raw_datasets("sst2", train_file=train, validation_file=str(tmp_path / name))
    empty_parquet = write(SST2_VAL.iloc[:0], tmp_path / "none.parquet")
    with pytest.raises(ValueError, match=r"^--train_file '.*none.parquet' has no rows; give a parquet file"):
        load_raw_datasets("sst2", train_file=empty_parquet, validation_file=train)


@pytest.mark.parametrize("sentences, what", [
    (["good", None], "a missing value in row 1 (counting from 0; line 3 of the file)"),
    ([12, 13], "a number (12) in row 0 (counting from 0; line 2 of the file)")])
def test_text_columns_must_hold_text(tmp_path, sentences, what):
    # Numbers and gaps used to surface from the vocabulary builder, without file or column.
    train = write(SST2_TRAIN, tmp_path / "train.csv")
    bad = write(SST2_VAL.assign(sentence=sentences), tmp_path / "bad.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets("sst2", train_file=bad, validation_file=train)
    assert str(error.value) == (f"train file '{bad}': text column 'sentence' has {what}; every row needs text: drop "
                                "or fill those rows")


def test_every_label_error_names_the_first_bad_row(tmp_path):
    """As the other checks do: a regression label that is text or NaN, a class id out of range or
    not whole, named by its row and line (a csv column with one text cell is read as text whole:
    the bad cell is the one that is no number, not the first row)."""
    train = write(SST2_TRAIN, tmp_path / "train.csv")

    def error_of(task: str, text: str, name: str, train_file: str = train) -> str:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError) as error:
            load_raw_datasets(task, train_file=train_file, validation_file=str(tmp_path / name))
        return str(error.value).split(": ", 1)[1]

    pairs = "sentence1,sentence2,label\na b,c d,1.5\ne f,g h,{}\ni j,k l,{}\n"
    stsb_train = str(tmp_path / "stsb.csv")
    (tmp_path / "stsb.csv").write_text(pairs.format(2.5, 0.5))
    assert error_of("stsb", pairs.format("abc", 2), "abc.csv", stsb_train) == (
        "task 'stsb' is a regression; labels in 'label' must be numbers, found 'abc' in row 1 (counting from 0; "
        "line 3 of the file); drop or fix those rows")
    assert error_of("stsb", pairs.format("NaN", "inf"), "nan.csv", stsb_train) == (
        "label column 'label' has a non-finite value ('NaN', not a number) in row 1 (counting from 0; line 3 of the "
        "file) and 1 more row; drop or fix those rows")
    (tmp_path / "text.json").write_text('{"sentence1": "a", "sentence2": "b", "label": "1.5"}\n')
    with pytest.raises(ValueError) as error:  # JSON's quoted numbers: text, every row
        load_raw_datasets("stsb", train_file=str(tmp_path / "text.json"), validation_file=stsb_train)
    assert str(error.value).endswith("labels in 'label' must be numbers, found '1.5' in row 0 (counting from 0; "
                                     "line 1 of the file); write them as numbers, without quotes")
    (tmp_path / "list.jsonl").write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": [1]}\n')
    assert error_of("sst2", (tmp_path / "list.jsonl").read_text(), "list.jsonl") == (  # unhashable: a TypeError before
        "labels in 'label' must be class ids 0..1 for task 'sst2', found [[1]], first in row 1 (counting from 0; "
        "line 2 of the file); map them to integers first")
    assert error_of("sst2", "sentence,label\ngood,1\nbad,0\nfun,3.5\n", "half.csv") == (
        "labels in 'label' must be class ids 0..1 for task 'sst2', found [3.5], first in row 2 (counting from 0; "
        "line 4 of the file); map them to integers first")
    assert error_of("sst2", "sentence,label\ngood,1\nbad,abc\n", "word.csv") == (
        "labels in 'label' must be class ids 0..1 for task 'sst2', found ['abc'], first in row 1 (counting from 0; "
        "line 3 of the file); map them to integers first")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(images / "0.png")
    assert error_of("cifar10", "img,label\nimages/0.png,3\nimages/0.png,10\nimages/0.png,12\n", "ten.csv",
                    str(tmp_path / "ten.csv")) == (
        "labels in 'label' must be class ids 0..9 for task 'cifar10' (10 classes), found [10, 12], first in row 1 "
        "(counting from 0; line 3 of the file); drop those rows (-1 marks the unlabelled rows of GLUE test splits) "
        "or pick a task with that many classes")


def test_image_paths_in_a_csv_are_read_relative_to_it(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    pixels = [np.full((4, 5, 3), 40 * i, dtype=np.uint8) for i in range(3)]
    for i, array in enumerate(pixels):
        Image.fromarray(array).save(images / f"{i}.png")
    frame = pd.DataFrame({"img": ["images/0.png", "images/1.png", str(images / "2.png")], "label": [0, 1, 2]})
    train = write(frame, tmp_path / "train.csv")
    raw = load_raw_datasets("cifar10", train_file=train, validation_file=train)
    assert isinstance(raw["train"].features["img"], datasets.Image)
    for i, row in enumerate(raw["validation"]):
        assert np.array_equal(np.asarray(row["img"]), pixels[i]) and row["label"] == i
    missing = write(frame.assign(img=["images/0.png", "images/9.png", "images/8.png"]), tmp_path / "missing.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets("cifar10", train_file=train, validation_file=missing)
    assert str(error.value) == (
        f"validation file '{missing}': image column 'img': 2 rows name no readable image: row 1 (counting from 0; "
        f"line 3 of the file): 'images/9.png' (read as {images / '9.png'}) does not exist; row 2 (counting from 0; "
        f"line 4 of the file): 'images/8.png' (read as {images / '8.png'}) does not exist; relative paths are read "
        f"from the file's folder ({tmp_path}): fix those paths or drop those rows")
    (tmp_path / "notes.txt").write_text("not an image")
    not_image = write(frame.assign(img=["notes.txt"] * 3), tmp_path / "text.csv")
    with pytest.raises(ValueError, match=r"image column 'img': 3 rows name no readable image: row 0 \(counting from "
                                         r"0; line 2 of the file\): 'notes.txt' \(read as .*notes.txt\) is not an "
                                         r"image PIL can read; "):
        load_raw_datasets("cifar10", train_file=not_image, validation_file=train)
    gap = write(frame.assign(img=["images/0.png", None, "images/1.png"]), tmp_path / "gap.csv")
    with pytest.raises(ValueError, match=r"gap.csv': image column 'img' has no file path in row 1 \(counting from 0; "
                                         r"line 3 of the file\); every row needs an image: drop or fill those rows$"):
        load_raw_datasets("cifar10", train_file=gap, validation_file=train)
    numbers = write(frame.assign(img=[1, 2, 3]), tmp_path / "numbers.csv")
    with pytest.raises(ValueError, match=r"image column 'img' holds int values \(1\), not images; give image file "
                                         r"paths"):
        load_raw_datasets("cifar10", train_file=numbers, validation_file=train)


def test_every_image_path_is_checked_before_the_run(tmp_path):
    """Only the first row's file was read before the run: a later bad one stopped it after training
    (UnidentifiedImageError in the evaluation)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((4, 4, 3), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    (images / "notes.png").write_text("not an image")
    (images / "empty.png").write_bytes(b"")
    (images / "folder.png").mkdir()
    train = write(pd.DataFrame({"img": [f"images/{i}.png" for i in range(4)], "label": [0, 1, 2, 3]}),
                  tmp_path / "train.csv")
    # Rows 0, 3, 5, 7 are those --max_eval_samples 4 draws (seed 42); the others are left out.
    assert np.sort(np.random.default_rng(42).choice(9, size=4, replace=False)).tolist() == [0, 3, 5, 7]
    column = ["images/0.png", "images/notes.png", "images/empty.png", "images/1.png", str(images / "folder.png"),
              "images/2.png", "images/gone.png", "images/3.png", "images/notes.png"]
    bad = write(pd.DataFrame({"img": column, "label": [0] * 9}), tmp_path / "dev.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets("cifar10", train_file=train, validation_file=bad)
    assert str(error.value) == (
        f"validation file '{bad}': image column 'img': 5 rows name no readable image: row 1 (counting from 0; line 3 "
        f"of the file): 'images/notes.png' (read as {images / 'notes.png'}) is not an image PIL can read; row 2 "
        f"(counting from 0; line 4 of the file): 'images/empty.png' (read as {images / 'empty.png'}) is empty "
        f"(0 bytes); row 4 (counting from 0; line 6 of the file): '{images / 'folder.png'}' is a directory; and 2 "
        f"more; relative paths are read from the file's folder ({tmp_path}): fix those paths or drop those rows")
    # Rows a subset leaves out are stat-ed (cheap), not opened: notes.png in rows 1 and 8 passes.
    with pytest.raises(ValueError) as error:
        load_raw_datasets("cifar10", train_file=train, validation_file=bad, max_eval_samples=4)
    assert str(error.value) == (
        f"validation file '{bad}': image column 'img': 3 rows name no readable image: row 2 (counting from 0; line 4 "
        f"of the file): 'images/empty.png' (read as {images / 'empty.png'}) is empty (0 bytes); row 4 (counting from "
        f"0; line 6 of the file): '{images / 'folder.png'}' is a directory; row 6 (counting from 0; line 8 of the "
        f"file): 'images/gone.png' (read as {images / 'gone.png'}) does not exist; relative paths are read from the "
        f"file's folder ({tmp_path}): fix those paths or drop those rows")
    only_unused_not_images = [v if i in (0, 1, 3, 5, 7, 8) else "images/0.png" for i, v in enumerate(column)]
    unused = write(pd.DataFrame({"img": only_unused_not_images, "label": [0] * 9}), tmp_path / "unused.csv")
    subset = load_raw_datasets("cifar10", train_file=train, validation_file=unused, max_eval_samples=4)
    assert [int(np.asarray(image)[0, 0, 0]) for image in subset["validation"]["img"]] == [0, 40, 80, 120]


def test_rows_in_errors_are_rows_of_the_file_not_of_a_subset(tmp_path):
    """The checks run on a --max_*_samples subset: a row number counted the subset's rows."""
    train = write(SST2_TRAIN, tmp_path / "train.csv")
    sentences = [f"sentence {i}" for i in range(30)]
    drawn = np.sort(np.random.default_rng(42).choice(30, size=5, replace=False))  # the subset's file rows
    sentences[drawn[2]] = None  # row 2 of the subset
    frame = pd.DataFrame({"sentence": sentences, "label": [i % 2 for i in range(30)]})
    for name, where in (("dev.csv", f"line {drawn[2] + 2} of the file"), ("dev.jsonl", f"line {drawn[2] + 1} of the "
                                                                                       "file")):
        path = write(frame, tmp_path / name)
        with pytest.raises(ValueError) as error:
            load_raw_datasets("sst2", train_file=train, validation_file=path, max_eval_samples=5)
        assert str(error.value) == (f"validation file '{path}': text column 'sentence' has a missing value in row "
                                    f"{drawn[2]} (counting from 0; {where}); every row needs text: drop or fill those "
                                    "rows")
    for name in ("dev.json", "dev.parquet"):  # no lines to name
        path = write(frame, tmp_path / name)
        with pytest.raises(ValueError, match=rf"has a missing value in row {drawn[2]} \(counting from 0\); every row"):
            load_raw_datasets("sst2", train_file=train, validation_file=path, max_eval_samples=5)
    # Lines of a csv: blank lines (skipped by the reader) and a quoted text over two lines move them.
    shifted = tmp_path / "shifted.csv"
    shifted.write_text('\nsentence,label\n"two\nlines",1\n\n   \nok,0\n,1\n')
    with pytest.raises(ValueError, match=r"has a missing value in row 2 \(counting from 0; line 8 of the file\); "):
        load_raw_datasets("sst2", train_file=shifted, validation_file=train)
    # A saved split: the row of that split.
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(SST2_TRAIN),
                          "validation": datasets.Dataset.from_pandas(frame)}).save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match=rf"^validation split of '.*saved': text column 'sentence' has a missing value "
                                         rf"in row {drawn[2]} \(counting from 0\); every row"):
        load_raw_datasets("sst2", dataset_path=tmp_path / "saved", max_eval_samples=5)


def test_row_names_without_a_sure_line(tmp_path):
    from eval.data_checks import RowNames

    assert RowNames(4, np.array([1, 3])).name(1) == "row 3 (counting from 0)"  # a subset of a hub or saved split
    path = tmp_path / "data.csv"
    path.write_text("sentence,label\na,1\nb,0\n")
    assert RowNames(2, None, path).name(1) == "row 1 (counting from 0; line 3 of the file)"
    # Lines that do not match the rows read (a csv dialect of its own): no line.
    assert RowNames(3, None, path).name(1) == "row 1 (counting from 0, after the header)"


def stsb_frame(labels: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"sentence1": [f"a {i}" for i in range(len(labels))],
                         "sentence2": [f"b {i}" for i in range(len(labels))], "label": labels})


def test_constant_regression_eval_labels_are_refused_before_training(tmp_path):
    """Pearson/Spearman of a constant label is undefined: the run trained, then failed on NaN metrics."""
    train = write(stsb_frame([0.5, 1.5, 2.5, 3.5]), tmp_path / "train.csv")
    constant = write(stsb_frame([3.0] * 5), tmp_path / "constant.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets("stsb", train_file=train, validation_file=constant)
    assert str(error.value) == (f"validation file '{constant}': all 5 of its rows have label 3.0 in 'label'; task "
                                "'stsb' is scored by pearson and spearmanr correlation, undefined when the evaluation "
                                "labels do not vary (the run would train, then fail on NaN metrics); give it more "
                                "rows, with other labels")
    one = write(stsb_frame([2.0]), tmp_path / "one.csv")
    with pytest.raises(ValueError, match=r"^validation file '.*one.csv': its only row has label 2.0 in 'label'; task "):
        load_raw_datasets("stsb", train_file=train, validation_file=one)
    # A subset that drew only one label, from a split with others.
    labels = [1.0] * 20
    for row in set(range(20)) - set(np.random.default_rng(42).choice(20, size=4, replace=False).tolist()):
        labels[row] = 1.0 + row
    varied = write(stsb_frame(labels), tmp_path / "varied.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets("stsb", train_file=train, validation_file=varied, max_eval_samples=4)
    assert str(error.value) == (f"validation file '{varied}': the 4 rows --max_eval_samples drew from its 20 all "
                                "have label 1.0 in 'label'; task 'stsb' is scored by pearson and spearmanr "
                                "correlation, undefined when the evaluation labels do not vary (the run would train, "
                                "then fail on NaN metrics); pass a larger --max_eval_samples (the whole split has "
                                "other labels too), or give it more rows with other labels")
    assert load_raw_datasets("stsb", train_file=train, validation_file=varied)["validation"].num_rows == 20
    with pytest.raises(ValueError, match=r"the 4 rows --max_eval_samples drew from its 5 all have label 3.0 in "
                                         r"'label'; .*; give it rows with other labels$"):
        load_raw_datasets("stsb", train_file=train, validation_file=constant, max_eval_samples=4)
    with pytest.raises(ValueError, match=r"the row --max_eval_samples drew from its 5 has label 3.0 in 'label'; "):
        load_raw_datasets("stsb", train_file=train, validation_file=constant, max_eval_samples=1)  # not "1 rows"
    # A constant training label trains: left alone.
    raw = load_raw_datasets("stsb", train_file=constant, validation_file=train)
    assert list(raw["train"]["label"]) == [3.0] * 5
    # Another metric (--metric mse) is defined on constant labels: the check follows the metrics.
    raw = load_raw_datasets("stsb", train_file=train, validation_file=constant, metric_names=("mse",))
    assert list(raw["validation"]["label"]) == [3.0] * 5
    for metric, named in (("spearmanr", "spearmanr"), ("pearsonr", "pearsonr"),
                          ("glue", "glue's pearson and spearmanr")):  # evaluate's names too
        with pytest.raises(ValueError, match=rf"task 'stsb' is scored by {named} correlation, undefined"):
            load_raw_datasets("stsb", train_file=train, validation_file=constant, metric_names=(metric,))


def test_save_to_disk_renames_the_eval_split(tmp_path):
    frame = pd.DataFrame({"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [2, 0]})
    splits = {"train": datasets.Dataset.from_pandas(frame),
              "validation_matched": datasets.Dataset.from_pandas(frame.iloc[:1])}
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "mnli")
    raw = load_raw_datasets("mnli", dataset_path=tmp_path / "mnli")
    assert list(raw) == ["train", "validation"]
    assert list(raw["validation"]["premise"]) == ["p1"] and list(raw["train"]["label"]) == [2, 0]
    datasets.DatasetDict({"train": splits["train"], "validation": splits["train"]}).save_to_disk(tmp_path / "plain")
    assert load_raw_datasets("mnli", dataset_path=tmp_path / "plain")["validation"].num_rows == 2


@pytest.mark.parametrize("task_name", sorted(name for name, task in TASKS.items() if not task.builtin))
def test_dataset_path_messages_name_each_split_once(tmp_path, task_name):
    """The splits a --dataset_path folder needs: 'validation' is offered as the alternative only
    where the task evaluates on another split (it read "'validation' (or 'validation')")."""
    task = get_task(task_name)
    needs = ("'train' and 'validation'" if task.eval_split == "validation"
             else f"'train' and '{task.eval_split}' (or 'validation')")
    (tmp_path / "d d").mkdir()
    with pytest.raises(ValueError) as error:
        check_local_sources(task, None, None, tmp_path / "d d")
    assert str(error.value) == (f"--dataset_path '{tmp_path / 'd d'}' holds no saved DatasetDict; save a DatasetDict "
                                f"with splits {needs} with save_to_disk")
    assert ("pass --dataset_path, a folder written by DatasetDict.save_to_disk with splits " + needs
            in data_ways_out(task))


def test_dataset_path_split_names():
    assert dataset_splits(get_task("sst2")) == "'train' and 'validation'"
    assert dataset_splits(get_task("mnli")) == "'train' and 'validation_matched' (or 'validation')"
    assert dataset_splits(get_task("cifar10")) == "'train' and 'test' (or 'validation')"


def test_save_to_disk_errors(tmp_path):
    single = datasets.Dataset.from_pandas(SST2_VAL)
    single.save_to_disk(tmp_path / "single")
    with pytest.raises(ValueError, match=r"holds a single Dataset; save a DatasetDict"):
        load_raw_datasets("sst2", dataset_path=tmp_path / "single")
    datasets.DatasetDict({"train": single}).save_to_disk(tmp_path / "only_train")
    with pytest.raises(ValueError, match=r"lacks splits \['validation'\] \(it has \['train'\]\); it needs 'train' "
                                         r"and 'validation'$"):
        load_raw_datasets("sst2", dataset_path=tmp_path / "only_train")
    with pytest.raises(ValueError, match=r"lacks splits \['validation'\] \(it has \['train'\]\); it needs 'train' "
                                         r"and 'validation_matched' \(or 'validation'\)$"):
        load_raw_datasets("mnli", dataset_path=tmp_path / "only_train")
    with pytest.raises(ValueError, match=r"--dataset_path .*nowhere' is not a directory"):
        load_raw_datasets("sst2", dataset_path=tmp_path / "nowhere")
    datasets.DatasetDict({"train": single, "validation": single.select([])}).save_to_disk(tmp_path / "empty_val")
    with pytest.raises(ValueError, match=r"^cannot read --dataset_path '.*empty_val': a split of it has no data file "
                                         r"\(saved with no rows\?\); give every split at least one example$"):
        load_raw_datasets("sst2", dataset_path=tmp_path / "empty_val")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset_dict.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^cannot read --dataset_path '.*broken' as a saved DatasetDict: KeyError: "
                                         r"'splits'; write it again with DatasetDict.save_to_disk$"):
        load_raw_datasets("sst2", dataset_path=tmp_path / "broken")


def test_csv_texts_that_pandas_reads_as_missing_are_text(tmp_path):
    train = write(SST2_TRAIN, tmp_path / "train.csv")
    texts = tmp_path / "texts.csv"
    texts.write_text("sentence,label\nNA,1\nNone,0\nnull,1\n")
    assert list(load_raw_datasets("sst2", train_file=train, validation_file=texts)["validation"]["sentence"]) == [
        "NA", "None", "null"]
    blank = tmp_path / "blank.csv"
    blank.write_text('sentence,label\n"",1\nok,0\n')  # an empty cell is still missing
    with pytest.raises(ValueError, match=r"text column 'sentence' has a missing value in row 0"):
        load_raw_datasets("sst2", train_file=train, validation_file=blank)


def test_an_empty_split_from_any_source_is_an_error(monkeypatch):
    """An empty evaluation split gave a run with no metric, reported as completed."""
    import eval.data

    real = eval.data.load_builtin_task

    def empty_validation(name):
        raw = real(name)
        return datasets.DatasetDict({"train": raw["train"], "validation": raw["validation"].select([])})

    monkeypatch.setattr(eval.data, "load_builtin_task", empty_validation)
    with pytest.raises(ValueError, match=r"^the built-in synth-sentiment validation has no rows; give it at least one "
                                         r"example$"):
        load_raw_datasets("synth-sentiment")


def test_max_samples_are_random_subsets_drawn_with_the_data_seed():
    full = load_raw_datasets("synth-sentiment")
    a = load_raw_datasets("synth-sentiment", max_train_samples=50, max_eval_samples=20, data_seed=3)
    b = load_raw_datasets("synth-sentiment", max_train_samples=50, max_eval_samples=20, data_seed=3)
    c = load_raw_datasets("synth-sentiment", max_train_samples=50, max_eval_samples=20, data_seed=4)
    assert (a["train"].num_rows, a["validation"].num_rows) == (50, 20)
    assert list(a["train"]["sentence"]) == list(b["train"]["sentence"])
    assert list(a["train"]["sentence"]) != list(c["train"]["sentence"])
    expected = np.sort(np.random.default_rng(3).choice(4000, size=50, replace=False))
    assert list(a["train"]["sentence"]) == [full["train"][int(i)]["sentence"] for i in expected]
    expected = np.sort(np.random.default_rng(4).choice(1000, size=20, replace=False))
    assert list(c["validation"]["sentence"]) == [full["validation"][int(i)]["sentence"] for i in expected]
    # The default, 42, draws what a run at the default --seed 42 drew before --data_seed.
    default = load_raw_datasets("synth-sentiment", max_eval_samples=20)
    expected = np.sort(np.random.default_rng(42).choice(1000, size=20, replace=False))
    assert list(default["validation"]["sentence"]) == [full["validation"][int(i)]["sentence"] for i in expected]
    assert list(a["train"]["sentence"]) != list(full["train"]["sentence"][:50])  # not the first rows
    assert subsample(full["validation"], 5000, seed=0).num_rows == 1000


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_max_samples_validation(value):
    with pytest.raises(ValueError, match=rf"max_train_samples={value!r} must be a positive integer"):
        load_raw_datasets("synth-sentiment", max_train_samples=value)


@pytest.mark.parametrize("value", [-1, 2**32, 1.5, True, "3"])
def test_data_seed_validation(value):
    with pytest.raises(ValueError) as error:
        load_raw_datasets("synth-sentiment", max_eval_samples=5, data_seed=value)
    assert str(error.value) == (f"data_seed={value!r} must be an integer in 0 .. 2**32 - 1 (the seed of the "
                                f"max_train_samples/max_eval_samples subsets; default 42)")


def _jpeg(path, size: int = 24) -> bytes:
    """A real JPEG as PIL writes it (smooth gradient plus noise, quality 90); its bytes."""
    x = np.linspace(0, 255, size * size * 3).reshape(size, size, 3)
    noise = np.random.default_rng(0).normal(0, 20, x.shape)
    Image.fromarray((x + noise).clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path.read_bytes()


def test_a_truncated_jpeg_is_refused_before_the_run(tmp_path):
    """PIL's header check passes a JPEG cut anywhere in its compressed data; the batch that decoded
    it stopped the run mid-training."""
    from eval.data_checks import jpeg_end_problem

    images = tmp_path / "images"
    images.mkdir()
    whole = _jpeg(images / "whole.jpg")
    assert whole[:3] == b"\xff\xd8\xff" and whole[-2:] == b"\xff\xd9"  # PIL ends the file with EOI
    scan = whole.rfind(b"\xff\xda")  # the start-of-scan header; the compressed data follows
    # Cut after the scan header (PIL reads up to it: an earlier cut fails its own check), in the
    # middle, just before the EOI, and between its two bytes.
    cuts = [scan + 20, (scan + len(whole)) // 2, len(whole) - 2, len(whole) - 1]
    for cut in cuts:
        (images / f"cut{cut}.jpg").write_bytes(whole[:cut])
        assert jpeg_end_problem(images / f"cut{cut}.jpg") == (
            f"is a truncated JPEG ({cut} bytes, its image data ends without the end-of-image marker FF D9: an "
            f"interrupted download or copy?); copy or export it again"), cut
    # Every cut past the scan header is refused, not only those.
    for cut in range(scan + 4, len(whole) - 1):
        (images / "any.jpg").write_bytes(whole[:cut])
        assert jpeg_end_problem(images / "any.jpg") is not None, cut
    # Data after the EOI: zero padding, a maker's trailer, a phone's motion-photo video (random
    # bytes, FF DA and FF D9 among them), a second image (MPF).
    trailers = {"padded": b"\x00" * 512, "maker": b"SEFH" + bytes(range(256)) * 8,
                "video": np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes(),
                "second": whole}
    for name, trailer in trailers.items():
        (images / f"{name}.jpg").write_bytes(whole + trailer)
        assert jpeg_end_problem(images / f"{name}.jpg") is None, name
    (images / "cut_second.jpg").write_bytes(whole + whole[:len(whole) // 2])  # the second image cut: the first is whole
    assert jpeg_end_problem(images / "cut_second.jpg") is None
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(png)
    assert jpeg_end_problem(png) is None  # not a JPEG: PIL's check reads a PNG's every chunk

    names = ["whole.jpg", "padded.jpg", f"cut{cuts[1]}.jpg", "video.jpg", f"cut{cuts[2]}.jpg"]
    frame = pd.DataFrame({"img": [f"images/{name}" for name in names], "label": [0, 1, 2, 3, 4]})
    train = write(frame.iloc[[0, 1, 3]], tmp_path / "train.csv")
    dev = write(frame, tmp_path / "dev.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets("cifar10", train_file=train, validation_file=dev)
    assert str(error.value) == (
        f"validation file '{dev}': image column 'img': 2 rows name no readable image: row 2 (counting from 0; line 4 "
        f"of the file): 'images/cut{cuts[1]}.jpg' (read as {images / f'cut{cuts[1]}.jpg'}) is a truncated JPEG "
        f"({cuts[1]} bytes, its image data ends without the end-of-image marker FF D9: an interrupted download or "
        f"copy?); copy or export it again; row 4 (counting from 0; line 6 of the file): 'images/cut{cuts[2]}.jpg' "
        f"(read as {images / f'cut{cuts[2]}.jpg'}) is a truncated JPEG ({cuts[2]} bytes, its image data ends without "
        f"the end-of-image marker FF D9: an interrupted download or copy?); copy or export it again; relative paths "
        f"are read from the file's folder ({tmp_path}): fix those paths or drop those rows")
    # Only the rows the run uses are read: rows 0, 1, 3 of 5 are those --max_eval_samples 3 draws
    # with --data_seed 21; the cut files in rows 2 and 4 are left out, and the others decode whole.
    assert np.sort(np.random.default_rng(21).choice(5, size=3, replace=False)).tolist() == [0, 1, 3]
    raw = load_raw_datasets("cifar10", train_file=train, validation_file=dev, max_eval_samples=3, data_seed=21)
    decoded = np.asarray(Image.open(images / "whole.jpg")).tolist()
    assert [np.asarray(image).tolist() for image in raw["validation"]["img"]] == [decoded] * 3


def test_carve_heldout_sizes_disjoint_and_seeded():
    train = datasets.Dataset.from_dict({"x": list(range(100))})
    rest, heldout = carve_heldout(train, 0.1, seed=5)
    assert (rest.num_rows, heldout.num_rows) == (90, 10)
    assert set(rest["x"]).isdisjoint(heldout["x"]) and set(rest["x"]) | set(heldout["x"]) == set(range(100))
    assert list(rest["x"]) == sorted(rest["x"])  # original order kept
    order = np.random.default_rng(5).permutation(100)
    assert list(heldout["x"]) == sorted(order[:10].tolist())
    assert list(carve_heldout(train, 0.1, seed=5)[1]["x"]) == list(heldout["x"])
    assert list(carve_heldout(train, 0.1, seed=6)[1]["x"]) != list(heldout["x"])
    assert carve_heldout(train, 0.5, seed=0)[1].num_rows == 50


def test_carve_heldout_errors():
    train = datasets.Dataset.from_dict({"x": list(range(10))})
    for fraction in (0.0, 0.6, -0.1):
        with pytest.raises(ValueError, match=rf"heldout fraction={fraction} must be in \(0, 0.5\]"):
            carve_heldout(train, fraction, seed=0)
    with pytest.raises(ValueError, match=r"fraction=0.01 of 10 training rows leaves an empty split"):
        carve_heldout(train, 0.01, seed=0)


def test_hub_fails_fast_offline_naming_the_ways_out():
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError) as error:
        load_raw_datasets("sst2")
    assert time.perf_counter() - start < 10
    message = str(error.value)
    assert "Task 'sst2': dataset nyu-mll/glue (config sst2), not in the local datasets cache," in message
    for way_out in ("--train_file and --validation_file", "columns ['sentence', 'label']", "--dataset_path",
                    "--task digits or --task synth-sentiment"):
        assert way_out in message


def test_gated_imagenet_message_says_to_log_in():
    with pytest.raises(HubUnreachableError, match=r"ILSVRC/imagenet-1k is gated: .*accept its terms .*hf auth login"):
        load_raw_datasets("imagenet-1k")


def test_piqa_preparer_and_pair_tokenization(tmp_path):
    frame = pd.DataFrame({"goal": ["open a jar"], "sol1": ["twist the lid"], "sol2": ["eat the lid"], "label": [0]})
    path = write(frame, tmp_path / "piqa.jsonl")
    raw = load_raw_datasets("piqa", train_file=path, validation_file=path)
    assert raw["train"][0]["solutions"] == "1) twist the lid 2) eat the lid"
    task = get_task("piqa")
    tokenizer = build_word_level_tokenizer(training_texts(raw["train"], task))
    encoded = tokenize_dataset(raw["train"], task, tokenizer, max_seq_length=64)[0]
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens == ["[CLS]", "open", "a", "jar", "[SEP]", "1", ")", "twist", "the", "lid", "2", ")", "eat",
                      "the", "lid", "[SEP]"]
    assert encoded["token_type_ids"] == [0] * 5 + [1] * 11 and encoded["labels"] == 0


def test_tokenize_pairs_regression_and_truncation():
    stsb = get_task("stsb")
    ds = datasets.Dataset.from_dict({"sentence1": ["a b c", "d"], "sentence2": ["e", "f g"], "label": [3.5, 1]})
    tokenizer = build_word_level_tokenizer(["a b c d e f g"])
    encoded = tokenize_dataset(ds, stsb, tokenizer, max_seq_length=5)
    assert encoded.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    assert encoded["labels"][:] == [3.5, 1.0] and isinstance(encoded[1]["labels"], float)
    # Longest-first truncation trims the longer sentence of the pair.
    assert tokenizer.convert_ids_to_tokens(encoded[0]["input_ids"]) == ["[CLS]", "a", "[SEP]", "e", "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(encoded[1]["input_ids"]) == ["[CLS]", "d", "[SEP]", "f", "[SEP]"]
    # Below 3 special tokens + one per text the tokenizer cannot truncate a pair (it returned it whole).
    with pytest.raises(ValueError, match=r"^--max_seq_length 4 leaves no room for the text: the tokenizer adds 3 "
                                         r"special tokens to a pair of texts of task 'stsb'; give at least 5$"):
        tokenize_dataset(ds, stsb, tokenizer, max_seq_length=4)
    sst2 = datasets.Dataset.from_dict({"sentence": ["a b"], "label": [1]})
    with pytest.raises(ValueError, match=r"adds 2 special tokens to a text of task 'sst2'; give at least 3$"):
        tokenize_dataset(sst2, get_task("sst2"), tokenizer, max_seq_length=2)


def test_boolq_bool_answers_become_int_labels():
    boolq = get_task("boolq")
    ds = datasets.Dataset.from_dict({"question": ["is it"], "passage": ["it is"], "answer": [True]})
    encoded = tokenize_dataset(ds, boolq, build_word_level_tokenizer(["is it"]), max_seq_length=16)
    assert encoded[0]["labels"] == 1 and type(encoded[0]["labels"]) is int


def test_tokenize_errors():
    sst2 = get_task("sst2")
    tokenizer = build_word_level_tokenizer(["a"])
    with pytest.raises(ValueError, match=r"text column 'sentence' of task 'sst2' has non-text values"):
        tokenize_dataset(datasets.Dataset.from_dict({"sentence": ["a", None], "label": [0, 1]}), sst2, tokenizer, 8)
    with pytest.raises(ValueError, match=r"max_seq_length=1 must be >= 2"):
        tokenize_dataset(datasets.Dataset.from_dict({"sentence": ["a"], "label": [0]}), sst2, tokenizer, 1)
    with pytest.raises(ValueError, match=r"task 'digits' is a vision task; use prepare_vision_datasets"):
        tokenize_dataset(datasets.Dataset.from_dict({"image": [None], "label": [0]}), get_task("digits"), tokenizer, 8)
    with pytest.raises(ValueError, match=r"task 'digits' is a vision task; it has no texts"):
        training_texts(datasets.Dataset.from_dict({"x": [1]}), get_task("digits"))


def test_text_pipeline_and_collator():
    task = get_task("synth-sentiment")
    raw = load_raw_datasets(task, max_train_samples=8, max_eval_samples=4)
    tokenizer = build_word_level_tokenizer(training_texts(raw["train"], task))
    ready = prepare_text_datasets(raw, task, tokenizer, max_seq_length=32)
    collator = build_data_collator(task, tokenizer)
    batch = collator([ready["train"][i] for i in range(4)])
    lengths = [len(ready["train"][i]["input_ids"]) for i in range(4)]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].tolist() == list(raw["train"]["label"][:4])
    assert label_names(raw["train"], task) == ["negative", "positive"]
    assert label_names(raw["train"], get_task("stsb")) is None
    no_pad = build_word_level_tokenizer(["a"])
    no_pad.pad_token = None
    with pytest.raises(ValueError, match=r"has no pad token; set one first, e.g. tokenizer.pad_token = "
                                         r"tokenizer.eos_token"):
        build_data_collator(task, no_pad)
    with pytest.raises(ValueError, match=r"needs the tokenizer to pad batches"):
        build_data_collator(task)


def test_vision_pipeline_on_a_saved_cifar_like_dataset(tmp_path):
    gray = Image.fromarray(np.full((4, 4), 51, dtype=np.uint8))
    rgb = Image.fromarray(np.stack([np.full((4, 4), v, dtype=np.uint8) for v in (0, 102, 255)], axis=-1))
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    split = datasets.Dataset.from_dict({"img": [gray, rgb], "label": [3, 7]}, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(tmp_path / "cifar")
    task = get_task("cifar10")
    raw = load_raw_datasets(task, dataset_path=tmp_path / "cifar")
    config = ImageTransformConfig(image_size=2, resize_size=2, mean=(0.0, 0.0, 0.0), std=(0.5, 0.5, 0.5))
    ready = prepare_vision_datasets(raw, task, config)
    assert ready["validation"].column_names == ["pixel_values", "labels"]
    batch = build_data_collator(task)([ready["train"][0], ready["train"][1]])
    assert batch["pixel_values"].dtype == torch.float32 and batch["labels"].tolist() == [3, 7]
    expected_gray = torch.full((3, 2, 2), 51 / 255 / 0.5)
    expected_rgb = torch.stack([torch.full((2, 2), v / 255 / 0.5) for v in (0, 102, 255)])
    assert torch.allclose(batch["pixel_values"], torch.stack([expected_gray, expected_rgb]), atol=1e-6)
    assert label_names(raw["train"], task) == [str(i) for i in range(10)]
    with pytest.raises(ValueError, match=r"task 'sst2' is a text task; use prepare_text_datasets"):
        prepare_vision_datasets(raw, get_task("sst2"), config)


# --- a task only in the user's files, and metrics that need two classes ----------------------

REVIEWS = TaskSpec(name="my-reviews", modality="text", num_labels=3, label_column="label",
                   metric_names=("accuracy",), main_metric="eval_accuracy", text_columns=("text",))
REVIEWS_NEEDS_FILES = ("task 'my-reviews' is read only from local files (its TaskSpec has no hub_path): pass "
                       "--train_file and --validation_file (csv/json/jsonl/parquet with columns ['text', 'label']), "
                       "or --dataset_path, a folder written by DatasetDict.save_to_disk with splits 'train' and "
                       "'validation'")


def test_a_local_only_task_without_local_data_is_refused_naming_the_flags():
    assert REVIEWS.hub_path is None and REVIEWS.local_only
    with pytest.raises(ValueError) as error:
        check_local_sources(REVIEWS, None, None, None)  # at parse time: before anything else
    assert str(error.value) == REVIEWS_NEEDS_FILES
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:  # never the hub, nor its seconds-long reachability check
        load_raw_datasets(REVIEWS)
    assert str(error.value) == REVIEWS_NEEDS_FILES and time.perf_counter() - start < 1


def test_a_local_only_task_reads_local_files_and_saved_datasets(tmp_path):
    frame = pd.DataFrame({"text": ["good", "bad", "so so"], "label": [2, 0, 1]})
    raw = load_raw_datasets(REVIEWS, train_file=write(frame, tmp_path / "train.csv"),
                            validation_file=write(frame, tmp_path / "val.jsonl"))
    assert list(raw["train"]["label"]) == [2, 0, 1] and list(raw["validation"]["text"]) == ["good", "bad", "so so"]
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame),
                          "validation": datasets.Dataset.from_pandas(frame)}).save_to_disk(str(tmp_path / "saved"))
    assert list(load_raw_datasets(REVIEWS, dataset_path=tmp_path / "saved")["validation"]["label"]) == [2, 0, 1]


@pytest.mark.parametrize("metric", ["f1", "precision", "recall"])
def test_a_binary_metric_on_more_than_two_classes_is_refused_before_training(tmp_path, metric):
    """evaluate's f1/precision/recall average over class 1 by default: scikit-learn refused the
    labels at the final evaluation, after the whole training."""
    frame = pd.DataFrame({"text": ["good", "bad", "so so"], "label": [2, 0, 1]})
    train, val = write(frame, tmp_path / "train.csv"), write(frame, tmp_path / "val.csv")
    with pytest.raises(ValueError) as error:
        load_raw_datasets(REVIEWS, train_file=train, validation_file=val, metric_names=(metric,))
    assert str(error.value) == (
        f"--metric {metric} is binary (evaluate's {metric} takes average='binary', class 1 against the rest) and task "
        f"'my-reviews' has 3 classes: the run would train, then fail at its evaluation; leave --metric unset for the "
        f"task's metrics (accuracy), or pass a local evaluate module folder or script that averages over the classes "
        f"as --metric")
    with pytest.raises(ValueError, match=rf"^--metric {metric} is binary .* task 'mnli' has 3 classes: "):
        load_raw_datasets("mnli", metric_names=(metric,))  # before the data is looked for
    raw = load_raw_datasets("sst2", train_file=write(SST2_TRAIN, tmp_path / "sst2.csv"),
                            validation_file=write(SST2_VAL, tmp_path / "sst2_val.csv"), metric_names=(metric,))
    assert raw["validation"].num_rows == 2  # two classes: binary is right
    assert load_raw_datasets(REVIEWS, train_file=train, validation_file=val,
                             metric_names=("accuracy",))["train"].num_rows == 3
