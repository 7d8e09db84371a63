"""--data_seed: the --max_*_samples subsets are drawn with it, not with --seed, so seed replicas
train and evaluate on the same examples; runs recorded before the flag drew them with their seed."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.builtin_tasks import load_builtin_task
from eval.eval_parse import parse_run_args
from eval.results import RunRecord
from eval.results_schema import COMPLETED
from eval.run_compare import changed_args, group_runs, same_settings
from eval.run_inputs import eval_subset_note
from eval.run_setup import load_data_and_model

TINY = ["--model_type", "resnet18", "--config_overrides", "depths=[1,1,1,1],hidden_sizes=[8,8,8,8],embedding_size=8",
        "--bits", "8", "--device", "cpu", "--report_to", "none"]


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parse_run_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("value, message", [
    ("1.5", "eval_run: error: argument --data_seed: '1.5' is not an integer; give a whole number in 0 .. 2**32 - 1 "
            "(e.g. --data_seed 0), or leave --data_seed out for the default 42 (see --help)\n"),
    ("seven", "eval_run: error: argument --data_seed: 'seven' is not an integer; give a whole number in 0 .. 2**32 - 1 "
              "(e.g. --data_seed 0), or leave --data_seed out for the default 42 (see --help)\n"),
    ("-1", "eval_run: error: --data_seed must be in 0 .. 2**32 - 1 (what numpy accepts), got -1; give a non-negative "
           "integer such as 0, or leave --data_seed out for the default 42 (see --help)\n"),
    (str(2**32), f"eval_run: error: --data_seed must be in 0 .. 2**32 - 1 (what numpy accepts), got {2**32}; give a "
                 f"non-negative integer such as 0, or leave --data_seed out for the default 42 (see --help)\n"),
])
def test_bad_data_seeds_are_one_line_naming_the_value_and_the_way_out(capsys, tmp_path, value, message):
    assert error_of([*TINY, "--output_root_dir", str(tmp_path), f"--data_seed={value}"], capsys) == message


def test_the_default_data_seed_is_fixed_and_recorded(tmp_path):
    args = [parse_run_args([*TINY, "--output_root_dir", str(tmp_path), "--seed", seed]) for seed in ("0", "1")]
    assert [a.data_seed for a in args] == [42, 42]
    assert parse_run_args([*TINY, "--output_root_dir", str(tmp_path), "--data_seed", "0"]).data_seed == 0


def _eval_rows(tmp_path: Path, *flags: str) -> tuple[list[int], torch.Tensor]:
    """(labels, pixels) of the evaluation set a run with `flags` evaluates on, as the Trainer reads it."""
    args = parse_run_args([*TINY, "--output_root_dir", str(tmp_path), "--max_train_samples", "64",
                           "--max_eval_samples", "20", *flags])
    rows = load_data_and_model(args).eval_dataset[:]
    return [int(label) for label in rows["labels"]], torch.stack(list(rows["pixel_values"]))


def test_seed_replicas_evaluate_the_same_examples(tmp_path):
    """--seed 0 and 1 at one --data_seed: the same evaluation rows, bit for bit, those the data seed
    draws from the digits validation split; another --data_seed draws others."""
    labels0, pixels0 = _eval_rows(tmp_path, "--seed", "0")
    labels1, pixels1 = _eval_rows(tmp_path, "--seed", "1")
    validation = load_builtin_task("digits")["validation"]
    drawn = np.sort(np.random.default_rng(42).choice(len(validation), size=20, replace=False))
    assert labels0 == labels1 == [int(validation[int(i)]["label"]) for i in drawn]
    assert torch.equal(pixels0, pixels1)
    labels7, pixels7 = _eval_rows(tmp_path, "--seed", "0", "--data_seed", "7")
    drawn7 = np.sort(np.random.default_rng(7).choice(len(validation), size=20, replace=False))
    assert labels7 == [int(validation[int(i)]["label"]) for i in drawn7] and labels7 != labels0
    assert not torch.equal(pixels7, pixels0)
    again, pixels_again = _eval_rows(tmp_path, "--seed", "5", "--data_seed", "7")
    assert again == labels7 and torch.equal(pixels_again, pixels7)


BASE = {"task": "digits", "model_type": "resnet18", "mode": "uniform", "bits": "8", "max_eval_samples": 100,
        "max_train_samples": None}


def record(name: str, **args) -> RunRecord:
    results = {"status": COMPLETED, "method": "uniform", "task": "digits", "model_type": "resnet18",
               "layers": {"conv": {"weight_format": "int8", "act_format": "int8"}}}
    return RunRecord(Path(name), name, COMPLETED, None, results, {**BASE, "exp_name": name, **args}, name)


def _groups(runs: list[RunRecord]) -> list[tuple[list[str], dict]]:
    return sorted(([run.label for run in group.runs], dict(group.mismatches)) for group in group_runs(runs))


def test_replicas_share_a_data_seed_and_other_data_seeds_are_other_settings():
    replicas = [record(f"s{seed}", seed=seed, data_seed=42) for seed in (0, 1, 2)]
    assert _groups(replicas) == [(["s0", "s1", "s2"], {})]
    other = record("s3_d7", seed=3, data_seed=7)
    assert _groups([*replicas, other]) == [(["s0", "s1", "s2"], {}), (["s3_d7"], {})]
    # Explicit keys that leave data_seed out: one group, with the data seeds named as what differs.
    [group] = group_runs([*replicas, other], keys=["task"])
    assert group.mismatches == {"data_seed": {"42": ["s0", "s1", "s2"], "7": ["s3_d7"]}}
    # Without a subset the data seed changes nothing: runs of any data seed are replicas.
    whole = [record(f"w{seed}", seed=seed, data_seed=seed, max_eval_samples=None) for seed in (0, 1)]
    assert _groups(whole) == [(["w0", "w1"], {})]


def test_runs_recorded_before_data_seed_drew_their_subsets_with_their_seed():
    old = [record(f"old{seed}", seed=seed) for seed in (0, 1)]  # no data_seed: subsets drawn with the seed
    assert _groups(old) == [(["old0"], {}), (["old1"], {})]
    new = [record(f"new{seed}", seed=seed, data_seed=42) for seed in (0, 1)]
    old42 = record("old42", seed=42)  # drew what --data_seed 42 draws
    assert _groups([*new, old42]) == [(["new0", "new1", "old42"], {})]
    # Without a subset an old run and a new one are replicas.
    whole_old = record("whole_old", seed=0, max_eval_samples=None)
    whole_new = record("whole_new", seed=1, data_seed=42, max_eval_samples=None)
    assert _groups([whole_old, whole_new]) == [(["whole_old", "whole_new"], {})]
    # --skip_completed and resumes: an old run of seed 1 drew other examples than --data_seed 42.
    planned = {**BASE, "seed": 1, "data_seed": 42}
    assert changed_args(planned, old[1].args) == [
        "data_seed 1 -> 42 (recorded before --data_seed, it drew its --max_*_samples subsets with its --seed 1: pass "
        "--data_seed 1 to draw the same)"]
    assert changed_args({**planned, "data_seed": 7}, new[1].args) == ["data_seed 42 -> 7"]  # a recorded data_seed
    assert changed_args({**planned, "data_seed": 1}, old[1].args) == []
    assert changed_args({**planned, "max_eval_samples": None}, whole_old.args) == ["seed 0 -> 1"]
    assert changed_args({**planned, "seed": 0, "max_eval_samples": None}, whole_old.args) == []
    # Planned duplicates (the launcher): the same run whatever its data seed when it draws no subset.
    assert same_settings({**planned, "max_eval_samples": None}) == \
        same_settings({**planned, "max_eval_samples": None, "data_seed": 3})
    assert same_settings(planned) != same_settings({**planned, "data_seed": 3})


def _write_loaded_run(path: Path, args: dict) -> None:
    from eval.model_configs import get_model_spec

    (path.parent / "final_model").mkdir(parents=True, exist_ok=True)
    get_model_spec("resnet18").builtin_config().to_json_file(path.parent / "final_model" / "config.json")
    path.write_text(json.dumps({"status": "completed", "task": "digits", "model_type": "resnet18", "args": args,
                                "layers": {"resnet.embedder.embedder.convolution": {"weight_format": "int4",
                                                                                    "act_format": "int8"}}}))


def _note(tmp_path: Path, loaded: dict, *flags: str) -> str | None:
    _write_loaded_run(tmp_path / "run" / "results.json", loaded)
    return eval_subset_note(parse_run_args(["--load_config", str(tmp_path / "run" / "results.json"), "--eval_only",
                                            "--output_root_dir", str(tmp_path / "out"), *flags]))


def test_re_evaluation_note_speaks_of_the_data_seed(tmp_path, capsys):
    loaded = {"seed": 0, "data_seed": 42, "max_eval_samples": 64}
    assert _note(tmp_path, loaded, "--max_eval_samples", "64", "--seed", "7") is None  # another seed: same examples
    assert _note(tmp_path, loaded, "--max_eval_samples", "64", "--data_seed", "3") == (
        "note: --max_eval_samples 64 draws its examples with --data_seed 3; the loaded run was evaluated on those of "
        "--data_seed 42 --max_eval_samples 64: pass the same to evaluate the same examples")
    old = {"seed": 5, "max_eval_samples": 64}  # recorded before --data_seed
    assert _note(tmp_path, old, "--max_eval_samples", "64", "--seed", "5") == (
        "note: --max_eval_samples 64 draws its examples with --data_seed 42; the loaded run (recorded before "
        "--data_seed: its subset was drawn with its --seed) was evaluated on those of --data_seed 5 "
        "--max_eval_samples 64: pass the same to evaluate the same examples")
    assert _note(tmp_path, old, "--max_eval_samples", "64", "--data_seed", "5") is None
    assert _note(tmp_path, {"seed": 0, "data_seed": 42, "max_eval_samples": None}, "--max_eval_samples", "64") == (
        "note: --max_eval_samples 64 draws its examples with --data_seed 42; the loaded run was evaluated on the "
        "whole split: drop --max_eval_samples to evaluate the same examples")
    assert _note(tmp_path, loaded, "--data_seed", "3") is None  # the whole split
    capsys.readouterr()


@pytest.mark.parametrize("argv, note", [
    (["--data_seed", "7"], "eval_run: note: --data_seed 7 only draws the --max_train_samples/--max_eval_samples "
                           "subsets, and this run takes whole splits: it ignores it\n"),
    (["--data_seed", "42"], "eval_run: note: --data_seed 42 only draws the --max_train_samples/--max_eval_samples "
                            "subsets, and this run takes whole splits: it ignores it\n"),  # typed at its default
    (["--data_seed", "7", "--max_eval_samples", "16"], ""),  # it draws the subset
    ([], ""),
])
def test_a_data_seed_that_draws_nothing_is_noted(argv, note, capsys):
    parse_run_args(["--task", "digits", "--model_type", "resnet18", *argv])
    assert capsys.readouterr().err == note
