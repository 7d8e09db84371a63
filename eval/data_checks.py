"""The checks of a task's raw splits, before any training: columns, labels, inputs, image files.

A bad row found while training or evaluating stops a run after minutes of work, with a
traceback naming the batch; found here, it is one error naming the row as the user can find it
in their file or split (`RowNames`: counting from 0, in the whole file rather than in a
--max_*_samples subset, and for a csv or JSON Lines file the line it starts on).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np
from PIL import Image

from eval.tasks import REGRESSION_METRICS, TaskSpec
from eval.vision_utils import image_file_problem

LOCAL_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
MAX_ROWS_SHOWN = 3  # bad rows an error message lists one by one
# --metric names (evaluate's) that score a regression by correlation, beside the tasks' own
# REGRESSION_METRICS: as named in the error.
CORRELATION_METRICS = {"pearsonr": "pearsonr", "glue": "glue's pearson and spearmanr"}
# --metric names (evaluate's hub metrics) whose default is average='binary': scikit-learn refuses
# more than two classes, at the first evaluation, after the training.
BINARY_AVERAGE_METRICS = ("f1", "precision", "recall")


def _data_lines(path: Path, num_rows: int) -> list[int] | None:
    """The line (from 1) on which each data row of a csv or JSON Lines file starts, or None where
    that cannot be told for sure (a JSON array, parquet, a count that does not match the rows read)."""
    builder = LOCAL_FILE_BUILDERS.get(path.suffix.lower())
    starts: list[int] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if builder == "csv":
                reader = csv.reader(f)
                end = 0  # a quoted field may span lines: a row starts after the previous one ends
                for record in reader:
                    if len(record) > 1 or any(field.strip() for field in record):  # pandas skips blank lines
                        starts.append(end + 1)
                    end = reader.line_num
                starts = starts[1:]  # the header
            elif builder == "json":
                lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
                if lines and not lines[0][1].lstrip().startswith("{"):
                    return None  # a JSON array: rows are not lines
                starts = [number for number, _ in lines]
            else:
                return None
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return starts if len(starts) == num_rows else None


class RowNames:
    """Names a row of a loaded split the way its user can find it: its index in their file or
    split (not in a --max_*_samples subset), counting from 0, and for a csv or JSON Lines file the
    line it starts on."""

    def __init__(self, num_rows: int, subset: np.ndarray | None = None,
                 file: str | os.PathLike[str] | None = None) -> None:
        self.num_rows = num_rows  # rows of the whole file or split
        self.subset = subset  # the original index of each row of a subset, None without one
        self.file = Path(file) if file is not None else None
        self._lines: list[int] | None = None
        self._lines_read = False

    def original(self, row: int) -> int:
        return int(self.subset[row]) if self.subset is not None else row

    def name(self, row: int) -> str:
        """E.g. "row 15 (counting from 0; line 17 of the file)"."""
        original = self.original(row)
        if self.file is not None and not self._lines_read:  # read only for an error message
            self._lines, self._lines_read = _data_lines(self.file, self.num_rows), True
        if self._lines is not None:
            return f"row {original} (counting from 0; line {self._lines[original]} of the file)"
        if self.file is not None and LOCAL_FILE_BUILDERS.get(self.file.suffix.lower()) == "csv":
            return f"row {original} (counting from 0, after the header)"
        return f"row {original} (counting from 0)"


def check_columns(ds: datasets.Dataset, task: TaskSpec, source: str) -> None:
    missing = [c for c in task.required_columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source} lacks columns {missing} needed by task {task.name!r} "
                         f"(it has {ds.column_names}); rename its columns to {list(task.required_columns)}")


def check_labels(ds: datasets.Dataset, task: TaskSpec, source: str, rows: RowNames) -> None:
    labels = list(ds[task.label_column])
    missing = [row for row, label in enumerate(labels) if label is None]
    if missing:
        raise ValueError(f"{source}: label column {task.label_column!r} has a missing value in "
                         f"{rows.name(missing[0])}{_more_rows(missing)}; drop or fill those rows")
    if task.is_regression:
        numbers = [_number(label) for label in labels]
        bad = [row for row, number in enumerate(numbers) if number is None or not math.isfinite(number)]
        text = [row for row, label in enumerate(labels) if not isinstance(label, (int, float, np.number))]
        bad = bad or text  # a column of text that spells numbers (JSON's "1.5"): text, every row
        if not bad:
            return
        first, more = bad[0], _more_rows(bad)
        label, number = labels[first], numbers[first]
        if number is not None and not math.isfinite(number):  # would train on NaN losses and end with NaN metrics
            nan = ", not a number" if math.isnan(number) else ""
            raise ValueError(f"{source}: label column {task.label_column!r} has a non-finite value ({label!r}{nan}) "
                             f"in {rows.name(first)}{more}; drop or fix those rows")
        way_out = "write them as numbers, without quotes" if number is not None else "drop or fix those rows"
        raise ValueError(f"{source}: task {task.name!r} is a regression; labels in {task.label_column!r} must be "
                         f"numbers, found {label!r} in {rows.name(first)}{more}; {way_out}")
    # bool is an int subclass: boolq's answers pass as 0/1.
    not_ids = [row for row, label in enumerate(labels) if not _is_class_id(label)]
    if not_ids:
        # A csv label column with one cell that is no number is read as text whole ('1' for 1):
        # the cells that name no integer are the bad ones, unless all do (a column of text ids).
        bad = [row for row in not_ids if not _names_class_id(labels[row])] or not_ids
        found = sorted({repr(labels[row]): labels[row] for row in bad}.values(), key=str)  # [1] is unhashable
        raise ValueError(f"{source}: labels in {task.label_column!r} must be class ids 0..{task.num_labels - 1} "
                         f"for task {task.name!r}, found {found[:10]}, first in {rows.name(bad[0])}; map them to "
                         "integers first")
    out_of_range = [row for row, label in enumerate(labels) if not 0 <= label < task.num_labels]
    if out_of_range:
        found = sorted({int(labels[row]) for row in out_of_range})
        raise ValueError(f"{source}: labels in {task.label_column!r} must be class ids 0..{task.num_labels - 1} "
                         f"for task {task.name!r} ({task.num_labels} classes), found {found[:10]}, first in "
                         f"{rows.name(out_of_range[0])}; drop those rows (-1 marks the unlabelled rows of GLUE test "
                         "splits) or pick a task with that many classes")


def _more_rows(bad: Sequence[int]) -> str:
    """After naming the first of the bad rows: how many more there are."""
    others = len(bad) - 1
    return f" and {others} more row{'s' if others > 1 else ''}" if others else ""


def _number(label: Any) -> float | None:
    """A regression label as a float; text that spells a number too (a csv column with one cell
    that is no number is read as text whole); None for anything else."""
    if isinstance(label, (int, float, np.number)):
        return float(label)
    if isinstance(label, str):
        try:
            return float(label)
        except ValueError:
            return None
    return None


def _names_class_id(label: Any) -> bool:
    """A class id, or text that spells one ('3', not '3.5' or 'abc')."""
    number = _number(label)
    return number is not None and math.isfinite(number) and number.is_integer()


def _is_class_id(label: Any) -> bool:
    """An integer, or a float holding one: a CSV label column with a blank cell anywhere (even in
    rows a --max_*_samples subset leaves out) is read as floats, 0.0 and 1.0."""
    return isinstance(label, (int, np.integer)) or (isinstance(label, (float, np.floating))
                                                     and math.isfinite(label) and float(label).is_integer())


def check_inputs(ds: datasets.Dataset, task: TaskSpec, source: str, rows: RowNames) -> None:
    """Text columns hold strings; an image column holds images (not, say, file names)."""
    if task.modality == "text":
        for column in task.required_columns[:-1]:  # the raw text columns (before a task's preparer)
            for row, value in enumerate(ds[column]):
                if not isinstance(value, str):
                    what = ("a missing value" if value is None else f"a number ({value!r})"
                            if isinstance(value, (int, float, np.number)) else f"a {type(value).__name__} ({value!r})")
                    raise ValueError(f"{source}: text column {column!r} has {what} in {rows.name(row)}; every "
                                     "row needs text: drop or fill those rows")
        return
    column = task.image_column
    feature = ds.features.get(column)
    if isinstance(feature, datasets.Image) or len(ds) == 0:
        return
    value = ds[0][column]
    if not isinstance(value, (Image.Image, np.ndarray)):
        text = repr(value)
        shown = text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
        raise ValueError(f"{source}: image column {column!r} holds {type(value).__name__} values ({shown}), not "
                         "images; give image file paths (csv/json/jsonl), a parquet file or a saved DatasetDict "
                         "with a datasets.Image column")


JPEG_START = b"\xff\xd8\xff"  # SOI, then the first segment's marker
JPEG_END = b"\xff\xd9"  # EOI


def _reaches_jpeg_end(data: bytes) -> bool:
    """Whether the JPEG in `data` reaches its end-of-image marker: its segments walked by their
    lengths (an EXIF thumbnail's own FF D9 inside APP1 is skipped with it), its entropy-coded scans
    marker to marker (FF 00 is a stuffed byte, FF D0-D7 a restart; a progressive JPEG has several)."""
    pos, end = 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= end:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:
            return True
        elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # no length: stuffed byte, TEM, restart
            pos += 2
        else:
            if pos + 4 > end:
                return False
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            if length < 2:
                return False
            pos += 2 + length  # past the segment (after SOS, its entropy-coded data follows)


def jpeg_end_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a JPEG file whose header PIL read is cut short, or None (also for any other format).

    PIL's verify() does not read a JPEG's compressed body, and a full decode costs about 0.5 ms a
    small image; a cut file then stops the run when a batch decodes it. Writers end the file with
    the EOI marker FF D9 (PIL, libjpeg), so its last two bytes answer (two small reads). Some add
    data after it (a phone's motion-photo video, a maker trailer, zero padding, a second MPF image):
    only such a file is read whole, to walk its markers to the main image's EOI.
    """
    try:
        with open(path, "rb") as f:
            if f.read(len(JPEG_START)) != JPEG_START:
                return None
            f.seek(-len(JPEG_END), os.SEEK_END)
            if f.read(len(JPEG_END)) == JPEG_END:
                return None
            f.seek(0)
            data = f.read()
    except OSError as error:
        return f"cannot be read ({type(error).__name__}: {error})"
    if _reaches_jpeg_end(data):
        return None
    return (f"is a truncated JPEG ({len(data)} bytes, its image data ends without the end-of-image marker FF D9: "
            f"an interrupted download or copy?); copy or export it again")


def images_from_paths(ds: datasets.Dataset, task: TaskSpec, file: str | os.PathLike[str], source: str,
                      rows: RowNames, used: np.ndarray | None = None) -> datasets.Dataset:
    """A local file whose image column holds file paths: the images themselves (decoded when
    read), relative paths taken from the file's own folder.

    Every path is checked before the run starts (one stat each: it exists, is a non-empty file),
    and PIL reads the header of those the run uses (`used`, the rows of a --max_*_samples subset;
    None: all), and a JPEG's last bytes (`jpeg_end_problem`: a cut file): a bad file found while
    training or evaluating stopped the run after minutes of work.
    """
    column = task.image_column
    values = list(ds[column]) if column in ds.column_names else []  # the column read once
    if not any(isinstance(v, str) for v in values):
        return ds
    gap = next((row for row, v in enumerate(values) if not isinstance(v, str) or not v.strip()), None)
    if gap is not None:
        raise ValueError(f"{source}: image column {column!r} has no file path in {rows.name(gap)}; every row needs an "
                         "image: drop or fill those rows")
    folder = Path(file).resolve().parent
    paths = [str(folder / Path(v).expanduser()) for v in values]  # an absolute path stays as it is
    used_rows = set(range(len(values))) if used is None else {int(i) for i in used}
    problems: dict[tuple[str, bool], str | None] = {}  # each distinct file checked once
    bad: list[tuple[int, str]] = []
    for row, path in enumerate(paths):
        key = (path, row in used_rows)
        if key not in problems:
            problems[key] = image_file_problem(path, read_header=key[1])
            if problems[key] is None and key[1]:  # the header read: a cut JPEG still passes it
                problems[key] = jpeg_end_problem(path)
        if problems[key] is not None:
            bad.append((row, problems[key]))
    if bad:
        shown = "; ".join(f"{rows.name(row)}: {values[row]!r}"
                          + (f" (read as {paths[row]})" if paths[row] != values[row] else "") + f" {problem}"
                          for row, problem in bad[:MAX_ROWS_SHOWN])
        more = f"; and {len(bad) - MAX_ROWS_SHOWN} more" if len(bad) > MAX_ROWS_SHOWN else ""
        what = "row names no readable image" if len(bad) == 1 else "rows name no readable image"
        raise ValueError(f"{source}: image column {column!r}: {len(bad)} {what}: {shown}{more}; relative paths are "
                         f"read from the file's folder ({folder}): fix those paths or drop those rows")
    return ds.remove_columns(column).add_column(column, paths).cast_column(column, datasets.Image())


def check_metrics_fit_labels(task: TaskSpec, metric_names: Sequence[str]) -> None:
    """A binary metric (evaluate's f1, precision, recall average over class 1 by default) on a task of
    more than two classes fails only at the first evaluation, after the training: refused before it."""
    binary = [m for m in metric_names if m in BINARY_AVERAGE_METRICS]
    if not binary or task.num_labels <= 2:
        return
    raise ValueError(f"--metric {binary[0]} is binary (evaluate's {binary[0]} takes average='binary', class 1 "
                     f"against the rest) and task {task.name!r} has {task.num_labels} classes: the run would train, "
                     f"then fail at its evaluation; leave --metric unset for the task's metrics "
                     f"({', '.join(task.metric_names)}), or pass a local evaluate module folder or script that "
                     f"averages over the classes as --metric")


def check_eval_labels_vary(ds: datasets.Dataset, full: datasets.Dataset, task: TaskSpec, source: str,
                           metric_names: Sequence[str]) -> None:
    """A regression's evaluation split needs labels that differ: the correlation metrics of a
    constant label are undefined, found only after training (NaN metrics, or an error on one row).
    A constant training label is left alone: it trains."""
    correlations = [CORRELATION_METRICS.get(m, m) for m in metric_names
                    if m in REGRESSION_METRICS or m in CORRELATION_METRICS]
    if not task.is_regression or not correlations:
        return
    labels = np.asarray(ds[task.label_column], dtype=np.float64)  # finite numbers: _check_labels
    if labels.min() != labels.max():
        return
    value, column = ds[0][task.label_column], task.label_column
    if len(ds) < len(full):  # a --max_eval_samples subset
        drawn = (f"the row --max_eval_samples drew from its {len(full)} has label {value!r}" if len(ds) == 1 else
                 f"the {len(ds)} rows --max_eval_samples drew from its {len(full)} all have label {value!r}"
                 ) + f" in {column!r}"
        full_labels = np.asarray(full[task.label_column], dtype=np.float64)
        way_out = ("pass a larger --max_eval_samples (the whole split has other labels too), or give it more "
                   "rows with other labels" if full_labels.min() != full_labels.max()
                   else "give it rows with other labels")
    else:
        drawn = (f"its only row has label {value!r}" if len(ds) == 1 else
                 f"all {len(ds)} of its rows have label {value!r}") + f" in {column!r}"
        way_out = "give it more rows, with other labels"
    raise ValueError(f"{source}: {drawn}; task {task.name!r} is scored by {' and '.join(correlations)} correlation, "
                     f"undefined when the evaluation labels do not vary (the run would train, then fail on NaN "
                     f"metrics); {way_out}")
