"""Tables, Pareto marks, plots and the CLI over synthetic run directories (eval/report*.py)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from eval.report import main
from eval.report_table import aggregate
from tests.eval.test_results import make_failed, make_results, write_run
from tests.readme_commands import readme_commands

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Binary-fraction numbers so that means, stds and ties are exact."""
    root = tmp_path / "out"
    write_run(root, make_results("float_s0", method="float", metric=0.96, memory_mib=8.0, gbops=64.0))
    write_run(root, make_results("uniform_w4_s0", method="uniform", weight_bits=4, metric=0.5, memory_mib=1.0,
                                 gbops=4.0))
    write_run(root, make_results("uniform_w8_s0", method="uniform", weight_bits=8, metric=0.875, memory_mib=2.0,
                                 gbops=8.0))
    for seed, (metric, memory) in enumerate([(0.75, 1.25), (0.875, 1.5), (1.0, 1.75)]):
        write_run(root, make_results(f"search_t1.5_s{seed}", seed=seed, metric=metric, memory_mib=memory,
                                     gbops=memory * 4))
    write_run(root, make_results("search_t1.2_s0", cost_target=1.2, metric=0.625, memory_mib=1.25, gbops=5.0))
    write_run(root, make_failed("failed_run", error="RuntimeError: CUDA out of memory"))
    text = json.dumps(make_results("partial_run"))
    write_run(root, None, exp_name="partial_run", raw=text[:100])
    write_run(root, None, exp_name="killed_run")
    write_run(root, make_results("nan_run", cost_target=1.0, metric=float("nan")))
    return root


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def parse_md(text: str) -> dict[str, list[dict[str, str]]]:
    """'## heading' -> rows of the pipe table under it."""
    sections: dict[str, list[dict[str, str]]] = {}
    heading, header = None, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading, header = line[3:], None
            sections[heading] = []
        elif line.startswith("|") and heading is not None:
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-"):
                sections[heading].append(dict(zip(header, cells)))
    return sections


def parse_csv(text: str) -> tuple[list[str], list[list[dict[str, str]]]]:
    notes = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("# "))
    return notes, [list(csv.DictReader(io.StringIO(chunk))) for chunk in body.split("\n\n")]


EXPECTED = {  # run -> (method, memory_mib, memory_mib_std, value, std, n, pareto)
    "uniform_w4_s0": ("uniform", 1.0, None, 0.5, None, 1, True),
    "search_t1.2_s0": ("search", 1.25, None, 0.625, None, 1, True),
    "search_t1.5_s0, search_t1.5_s1, search_t1.5_s2": ("search", 1.5, 0.25, 0.875, 0.125, 3, True),
    "uniform_w8_s0": ("uniform", 2.0, None, 0.875, None, 1, False),  # same metric as the search, higher cost
    "float_s0": ("float", 8.0, None, 0.96, None, 1, True),
}
EXPECTED_INVALID = {"failed_run": "failed", "killed_run": "incomplete", "partial_run": "incomplete",
                    "nan_run": "non_finite"}


def _num(cell: str) -> float | None:
    return float(cell) if cell else None


def test_markdown_report(sweep, capsys):
    code, out, err = run_cli([sweep], capsys)
    assert (code, err) == (0, "")
    assert "grouped automatically by every argument except" in out and "seed replicas are aggregated" in out
    assert "11 run directories: 8 completed, 1 failed, 2 incomplete; 5 table rows from 7 runs; 4 invalid runs" in out
    sections = parse_md(out)
    rows = sections["Runs"]
    assert [row["run"] for row in rows] == list(EXPECTED)  # sorted by cost
    for row in rows:
        method, memory, memory_std, value, std, n, pareto = EXPECTED[row["run"]]
        assert row["method"] == method and row["metric"] == "eval_accuracy"
        assert (_num(row["memory_mib"]), _num(row["memory_mib_std"])) == (memory, memory_std)
        assert (_num(row["value"]), _num(row["std"]), int(row["n"])) == (value, std, n)
        assert row["pareto"] == ("yes" if pareto else "")
    search = rows[1]
    assert (search["search_space"], search["granularity"], search["cost_target"]) == ("int2,int4,int8", "layer", "1.2")
    assert float(search["ratio"]) == pytest.approx(1.25 / 1.2, rel=1e-5)
    assert rows[0]["formats"] == "w=int4 a=int8" and rows[1]["formats"] == "w=mixed a=mixed"
    invalid = sections["Invalid runs (4)"]
    assert {row["run"]: row["status"] for row in invalid} == EXPECTED_INVALID
    reasons = {row["run"]: row["reason"] for row in invalid}
    assert reasons["failed_run"] == "RuntimeError: CUDA out of memory"
    assert reasons["killed_run"].startswith("no results.json (killed or still running)")
    assert reasons["partial_run"].startswith("results.json does not parse")
    assert reasons["nan_run"] == "metric eval_accuracy is nan"


def test_csv_report_parses_back_exactly(sweep, capsys):
    code, out, err = run_cli([sweep, "--format", "csv"], capsys)
    assert code == 0
    notes, (rows,) = parse_csv(out)  # one table: the invalid runs are not folded into it
    assert any(note.startswith("grouped automatically") for note in notes)
    assert notes[-1] == "4 invalid runs: on stderr, one line each"
    for row in rows:
        method, memory, memory_std, value, std, n, pareto = EXPECTED[row["run"]]
        assert (row["method"], _num(row["memory_mib"]), _num(row["memory_mib_std"])) == (method, memory, memory_std)
        assert (_num(row["value"]), _num(row["std"]), int(row["n"]), row["pareto"] == "yes") == (value, std, n, pareto)
    assert float(rows[1]["ratio"]) == 1.25 / 1.2  # csv keeps full precision
    lines = err.splitlines()
    assert len(lines) == 4 and all(line.startswith("python -m eval.eval_parse: invalid run ") for line in lines)
    statuses = {line.split(" invalid run ")[1].split(" (")[0]: line.split(" (")[1].split(")")[0] for line in lines}
    assert statuses == EXPECTED_INVALID
    assert ("python -m eval.eval_parse: invalid run failed_run (failed): RuntimeError: CUDA out of memory "
            f"[{sweep}/digits/failed_run]") in lines


def test_csv_is_one_table_for_pandas(sweep, capsys):
    pandas = pytest.importorskip("pandas")
    code, out, _ = run_cli([sweep, "--format", "csv"], capsys)
    table = pandas.read_csv(io.StringIO(out), comment="#")
    assert code == 0 and list(table["run"]) == list(EXPECTED)
    assert list(table["n"]) == [1, 1, 3, 1, 1]


def test_json_report_parses_back_exactly(sweep, capsys):
    code, out, _ = run_cli([sweep, "--format", "json", "--cost", "compute"], capsys)
    assert code == 0
    report = json.loads(out)
    assert (report["cost_type"], report["cost_column"], report["group_by"]) == ("compute", "gbops", "auto")
    got = {row["run"]: tuple(row[k] for k in ("method", "gbops", "gbops_std", "value", "std", "n", "pareto"))
           for row in report["rows"]}
    expected = {run: (method, memory * 4 if method != "float" else 64.0, None if memory_std is None else 1.0,
                      value, std, n, pareto)
                for run, (method, memory, memory_std, value, std, n, pareto) in EXPECTED.items()}
    assert got == expected
    assert {row["run"]: row["status"] for row in report["invalid"]} == EXPECTED_INVALID
    assert "cost_target and ratio are in each search's own cost_type, not in the reported cost" in report["notes"]


def test_runs_that_load_formats_are_neither_uniform_nor_search(sweep, capsys):
    """A --load_config run applies another run's (usually mixed) formats: it must not join the
    uniform line, and it gets its own vs_uniform. Older runs recorded it as uniform."""
    code, out, _ = run_cli([sweep, "--format", "json"], capsys)
    before = {row["run"]: row["vs_uniform"] for row in json.loads(out)["rows"]}
    for name, method, memory in (("loaded_new_s0", "loaded", 1.5), ("loaded_old_s0", "uniform", 1.0)):
        results = make_results(name, method="search", metric=1.0, memory_mib=memory, gbops=memory * 4,
                               args_extra={"load_config": f"/out/digits/{name}/source.json", "search": False,
                                           "cost_target": None})
        results["method"], results["search"] = method, None
        results["cost"].update(target=None, ratio=None)
        write_run(sweep, results)
    code, out, _ = run_cli([sweep, "--format", "json"], capsys)
    rows = {row["run"]: row for row in json.loads(out)["rows"]}
    assert code == 0 and rows["loaded_new_s0"]["method"] == rows["loaded_old_s0"]["method"] == "loaded"
    # The uniform line still runs through INT4 (1.0 MiB, 0.5) and INT8 (2.0 MiB, 0.875) only.
    assert {run: rows[run]["vs_uniform"] for run in before} == before
    assert rows["loaded_new_s0"]["vs_uniform"] == 1.0 - (0.5 + 0.375 / 2)
    assert rows["loaded_old_s0"]["vs_uniform"] == 0.5
    plot = sweep.parent / "pareto.png"
    assert run_cli([sweep, "--plot", str(plot)], capsys)[0] == 0
    _assert_real_png(plot, min_colours=4)


def test_default_cost_is_the_runs_cost_type(tmp_path, capsys):
    compute = {"cost_type": "compute"}
    for name in ("a", "b"):
        results = make_results(name, cost_target=3.0 if name == "a" else 4.0, args_extra=compute)
        results["cost"]["cost_type"] = "compute"
        write_run(tmp_path, results)
    code, out, _ = run_cli([tmp_path, "--format", "json"], capsys)
    report = json.loads(out)
    assert (code, report["cost_type"], [row["gbops"] for row in report["rows"]]) == (0, "compute", [2.0, 2.0])
    write_run(tmp_path, make_results("c", cost_target=1.0))  # a memory search joins: ambiguous, so memory
    report = json.loads(run_cli([tmp_path, "--format", "json"], capsys)[1])
    assert report["cost_type"] == "memory"
    assert "the runs optimised different cost types (compute, memory): reporting memory; pass --cost" in report["notes"]


def test_a_cost_column_missing_from_older_runs_is_listed(tmp_path, monkeypatch):
    """A cost type added later (docs/extending.md): runs written before it lack its column."""
    from eval import report_table
    from eval.results import load_runs

    monkeypatch.setitem(report_table.COST_COLUMNS, "weight_compute", ("weight_gbops", "weight compute (GBOPs)"))
    new = make_results("new")
    new["cost"]["weight_gbops"] = 0.5
    write_run(tmp_path, new)
    write_run(tmp_path, make_results("old", cost_target=1.0))
    report = report_table.build_report(load_runs(tmp_path), str(tmp_path), cost_type="weight_compute")
    assert [row["run"] for row in report.rows] == ["new"]
    assert [(entry["run"], entry["status"], entry["reason"]) for entry in report.invalid] == [
        ("old", "missing_cost", "cost.weight_gbops is not in this run's results.json (written before that cost type "
                                "existed?); rerun it, or report another --cost")]


def test_metric_missing_from_some_runs_is_listed(tmp_path, capsys):
    with_f1 = make_results("with_f1")
    with_f1["metrics"]["eval_f1"] = 0.5
    write_run(tmp_path, with_f1)
    write_run(tmp_path, make_results("without_f1", cost_target=1.0))
    code, out, _ = run_cli([tmp_path, "--metric", "eval_f1", "--format", "json"], capsys)
    report = json.loads(out)
    assert code == 0 and [(row["run"], row["value"]) for row in report["rows"]] == [("with_f1", 0.5)]
    assert report["invalid"][0]["status"] == "missing_metric"
    assert report["invalid"][0]["reason"] == \
        "metric 'eval_f1' is not in this run's metrics (has: eval_accuracy, eval_loss)"


def test_aggregate_mean_and_sample_std():
    result = aggregate([0.90, 0.92, 0.97])
    assert result.mean == pytest.approx(0.93, rel=1e-15)
    assert result.std == pytest.approx(math.sqrt(0.0013), rel=1e-12)  # ((.03)^2 + (.01)^2 + (.04)^2) / 2
    assert result.n == 3
    assert aggregate([2.5]) == type(result)(2.5, None, 1)
    with pytest.raises(ValueError, match="at least one value"):
        aggregate([])


def test_group_by_keeps_uniform_baselines_of_other_formats_apart(sweep, capsys):
    code, out, _ = run_cli([sweep, "--group_by", "cost_target", "method", "--format", "json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["group_by"] == ["cost_target", "method"]
    assert [row["run"] for row in report["rows"]] == \
        ["uniform_w4_s0", "search_t1.2_s0", "search_t1.5_s0, search_t1.5_s1, search_t1.5_s2", "uniform_w8_s0",
         "float_s0"]
    assert not any(row["status"] == "mismatched_args" for row in report["invalid"])
    assert any(note.startswith("grouped by cost_target, method (and, for fixed-format runs, their formats): runs "
                               "that agree") for note in report["notes"])


def test_group_by_lists_mismatched_runs(sweep, capsys):
    code, out, _ = run_cli([sweep, "--group_by", "method", "--format", "json"], capsys)
    report = json.loads(out)
    mismatched = {row["run"]: row["reason"] for row in report["invalid"] if row["status"] == "mismatched_args"}
    assert code == 0 and set(mismatched) == {"search_t1.2_s0", "search_t1.5_s0", "search_t1.5_s1", "search_t1.5_s2"}
    assert mismatched["search_t1.2_s0"] == (
        'grouped on method="search", fixed_formats=null with runs that differ in cost_target (1.2: search_t1.2_s0; '
        "1.5: search_t1.5_s0, search_t1.5_s1, search_t1.5_s2); add those keys to --group_by, or rerun the sweep "
        "with matching arguments")


def _readme_csv_command() -> list[str]:
    [command] = [c for c in readme_commands() if c.startswith("python -m eval.eval_parse output --format csv")]
    return command.split()[4:]


def test_the_readme_csv_command_gives_every_baseline_a_row(tmp_path, capsys):
    """Uniform baselines share cost_target_bits=null and differ in their formats: one row each."""
    root = tmp_path / "output"
    for seed in (0, 1):
        for bits in (2, 4, 8):
            write_run(root, make_results(f"uniform_int{bits}_seed={seed}", method="uniform", weight_bits=bits,
                                         seed=seed, memory_mib=bits / 4, gbops=bits, args_extra={"bits": str(bits)}))
        write_run(root, make_results(f"float_seed={seed}", method="float", seed=seed, memory_mib=8.0, gbops=64.0))
        for target in (3.0, 4.0):
            write_run(root, make_results(f"fliqs_t{target:g}_seed={seed}", seed=seed, memory_mib=target / 4,
                                         gbops=target, args_extra={"cost_target_bits": target}))
    code, out, err = run_cli([root, *_readme_csv_command()], capsys)
    assert (code, err) == (0, "")
    notes, (rows,) = parse_csv(out)
    assert [(row["run"], row["method"], row["formats"], row["n"], row["gbops"]) for row in rows] == [
        ("uniform_int2_seed=0, uniform_int2_seed=1", "uniform", "w=int2 a=int8", "2", "2.0"),
        ("fliqs_t3_seed=0, fliqs_t3_seed=1", "search", "w=mixed a=mixed", "2", "3.0"),
        ("fliqs_t4_seed=0, fliqs_t4_seed=1", "search", "w=mixed a=mixed", "2", "4.0"),
        ("uniform_int4_seed=0, uniform_int4_seed=1", "uniform", "w=int4 a=int8", "2", "4.0"),
        ("uniform_int8_seed=0, uniform_int8_seed=1", "uniform", "w=int8 a=int8", "2", "8.0"),
        ("float_seed=0, float_seed=1", "float", "w=none a=none", "2", "64.0")]
    assert notes[-1] == "0 invalid runs: on stderr, one line each"


def test_group_by_learning_rate_mismatch_in_a_seed_sweep(tmp_path, capsys):
    for seed, lr in enumerate([5e-5, 5e-5, 1e-4]):
        write_run(tmp_path, make_results(f"s{seed}", seed=seed, args_extra={"learning_rate": lr}))
    code, out, _ = run_cli([tmp_path, "--group_by", "cost_target", "--format", "json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["rows"] == []
    assert [row["run"] for row in report["invalid"]] == ["s0", "s1", "s2"]
    assert "differ in learning_rate (5e-05: s0, s1; 0.0001: s2)" in report["invalid"][0]["reason"]
    # Automatic grouping keeps the two learning rates apart instead.
    code, out, _ = run_cli([tmp_path, "--format", "json"], capsys)
    assert [(row["run"], row["n"]) for row in json.loads(out)["rows"]] == [("s0, s1", 2), ("s2", 1)]


@pytest.mark.parametrize("flags", [[], ["--lower_is_better"]])
def test_a_loss_metric_is_lower_is_better(sweep, capsys, flags):
    code, out, _ = run_cli([sweep, "--metric", "eval_loss", *flags, "--format", "json"], capsys)
    assert code == 0
    report = json.loads(out)
    rows = {row["run"]: row for row in report["rows"]}
    assert report["higher_is_better"] == {"eval_loss": False}
    assert rows["uniform_w8_s0"]["metric"] == "eval_loss"
    assert rows["uniform_w8_s0"]["value"] == 0.125 and rows["uniform_w8_s0"]["pareto"] is False
    assert rows["float_s0"]["pareto"] is True and rows["uniform_w4_s0"]["pareto"] is True
    # Loss 0.375 at 1.25 MiB against the uniform line 0.5 -> 0.125 over 1 -> 2 MiB (0.40625 there): better.
    assert rows["search_t1.2_s0"]["vs_uniform"] == pytest.approx(0.40625 - 0.375)
    source = ("as --higher_is_better/--lower_is_better says" if flags else "told from the name (loss, perplexity, "
              "error, mse and mae are lower-is-better; --higher_is_better/--lower_is_better override it)")
    assert report["notes"][1].startswith(f"metric: eval_loss: eval_loss (lower is better), {source}; cost: ")


def test_higher_is_better_overrides_the_name(sweep, capsys):
    code, out, _ = run_cli([sweep, "--metric", "eval_loss", "--higher_is_better", "--format", "json"], capsys)
    report = json.loads(out)
    rows = {row["run"]: row for row in report["rows"]}
    assert code == 0 and report["higher_is_better"] == {"eval_loss": True}
    assert rows["uniform_w8_s0"]["pareto"] is False and rows["uniform_w4_s0"]["pareto"] is True
    # The higher "loss" of INT4 now dominates INT8: the line ends at INT4 and stays level up to INT8's
    # cost, so a search between them is compared with INT4.
    search = rows["search_t1.2_s0"]
    assert search["memory_mib"] > rows["uniform_w4_s0"]["memory_mib"]
    assert search["vs_uniform"] == pytest.approx(search["value"] - rows["uniform_w4_s0"]["value"])
    code, _, err = run_cli([sweep, "--lower_is_better", "--higher_is_better"], capsys)
    assert code == 2 and err == ("python -m eval.eval_parse: error: argument --higher_is_better: not allowed with "
                                 "argument --lower_is_better\n")


def test_non_finite_numbers_are_null_in_json(tmp_path, capsys):
    results = make_results("search_nan", cost_target=1.0)
    results["search"]["decisions"]["fc"]["probabilities"]["int2"] = float("nan")
    results["cost"]["target"] = float("nan")
    results["cost"]["ratio"] = float("inf")
    write_run(tmp_path, results)
    code, out, err = run_cli([tmp_path, "--format", "json"], capsys)
    assert (code, err) == (0, "")
    [row] = json.loads(out)["rows"]
    assert (row["cost_target"], row["ratio"]) == (None, None)
    code, out, err = run_cli([tmp_path, "--layers", "search_nan", "--format", "json"], capsys)
    report = json.loads(out)
    assert (code, err) == (0, "") and report["layers"][1]["p_int2"] is None
    assert report["decisions"]["fc"]["probabilities"]["int2"] is None and report["cost"]["target"] is None


def test_a_metric_that_is_not_a_number_is_an_invalid_file_not_a_non_finite_metric(tmp_path, capsys):
    for name, value in (("text_metric", "0.5"), ("bool_metric", True)):
        results = make_results(name)
        results["metrics"]["eval_accuracy"] = value
        write_run(tmp_path, results)
    write_run(tmp_path, make_results("nan_metric", metric=float("nan")))
    code, out, err = run_cli([tmp_path, "--format", "json"], capsys)
    assert (code, err) == (0, "")
    assert [(row["run"], row["status"], row["reason"]) for row in json.loads(out)["invalid"]] == [
        ("bool_metric", "incomplete", "results.json is invalid: metrics.eval_accuracy is True, expected a number (null "
                                      "if not finite)"),
        ("text_metric", "incomplete", "results.json is invalid: metrics.eval_accuracy is '0.5', expected a number "
                                      "(null if not finite)"),
        ("nan_metric", "non_finite", "metric eval_accuracy is nan")]


def test_a_repeated_seed_is_flagged_not_averaged(tmp_path, capsys):
    for name, seed, metric in (("float_seed=0", 0, 0.5), ("float_seed=1", 1, 0.75), ("float", 1, 0.75)):
        write_run(tmp_path, make_results(name, method="float", seed=seed, metric=metric))
    code, out, _ = run_cli([tmp_path, "--format", "json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["rows"] == []
    assert [(row["run"], row["status"]) for row in report["invalid"]] == \
        [("float", "repeated_seed"), ("float_seed=0", "repeated_seed"), ("float_seed=1", "repeated_seed")]
    assert report["invalid"][0]["reason"] == (
        "runs of one setting share a seed (seed 1: float, float_seed=1): the same run twice (relaunched under another "
        "name?), not replicas; delete the duplicate run directory or give the runs distinct seeds")


def test_replicas_split_by_a_flag_get_a_note(tmp_path, capsys):
    for seed, lr in ((0, 1e-3), (1, 1e-3), (2, 1e-2)):
        write_run(tmp_path, make_results(f"float_seed={seed}", method="float", seed=seed,
                                         args_extra={"learning_rate": lr}))
    code, out, _ = run_cli([tmp_path, "--format", "json"], capsys)
    report = json.loads(out)
    assert code == 0 and [(row["run"], row["n"]) for row in report["rows"]] == \
        [("float_seed=0, float_seed=1", 2), ("float_seed=2", 1)]
    assert report["notes"][-1] == (
        "digits/float: runs named alike apart from the seed are in 2 groups, not aggregated, because they differ in "
        "learning_rate (0.001: float_seed=0; 0.01: float_seed=2); rerun them with matching flags to aggregate them")


def test_a_name_part_like_a_seed_is_not_taken_for_the_seed(tmp_path, capsys):
    """`s3_seed=0` and `s4_seed=0` are two settings (s3, s4 are part of their names), not replicas split by a flag."""
    for name, lr in (("s3_seed=0", 1e-3), ("s4_seed=0", 1e-2)):
        write_run(tmp_path, make_results(name, method="float", seed=0, args_extra={"learning_rate": lr}))
    code, out, _ = run_cli([tmp_path, "--format", "json"], capsys)
    assert code == 0 and not any("named alike" in note for note in json.loads(out)["notes"])


def test_sweep_without_splits_has_no_split_note(sweep, capsys):
    code, out, _ = run_cli([sweep, "--format", "json"], capsys)
    assert code == 0 and not any("named alike" in note for note in json.loads(out)["notes"])


@pytest.mark.parametrize("plot, message", [
    ("/proc/x.png", "--plot '/proc/x.png' cannot be written: no file can be created in '/proc' (No such file or "
                    "directory); choose a writable location"),
    ("{tmp}/afile/x.png", "--plot '{tmp}/afile/x.png' cannot be written: '{tmp}/afile' is a file, not a directory; "
                          "choose another path"),
    ("{tmp}/afile/deeper/x.png", "--plot '{tmp}/afile/deeper/x.png' cannot be written: '{tmp}/afile' is a file, "
                                 "not a directory; choose another path"),
    ("{tmp}/adir.png", "--plot '{tmp}/adir.png' is a directory; name a .png file in it"),
])
def test_a_plot_path_that_cannot_be_written_is_one_error_line(sweep, tmp_path, capsys, plot, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.png").mkdir()
    for extra in ([], ["--layers", "search_t1.2_s0"]):
        code, out, err = run_cli([sweep, "--plot", plot.format(tmp=tmp_path), *extra], capsys)
        assert (code, out) == (2, "")
        assert err == f"python -m eval.eval_parse: error: {message.format(tmp=tmp_path)}\n"


def test_the_plot_is_written_atomically(sweep, tmp_path, capsys, monkeypatch):
    import eval.pareto

    plot = tmp_path / "pareto.png"
    plot.write_bytes(b"old plot")

    def broken_savefig(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken_savefig)
    code, out, err = run_cli([sweep, "--plot", plot], capsys)
    assert (code, out) == (2, "")
    assert err == (f"python -m eval.eval_parse: error: --plot '{plot}' could not be written (No space left on "
                   "device); choose another path\n")
    assert plot.read_bytes() == b"old plot" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "pareto.png"]
    assert eval.pareto.save_figure  # the one writer of every plot


@pytest.mark.parametrize("args", [[], ["--format", "csv"], ["--format", "json"]])
def test_stdout_that_cannot_be_written_is_one_error_line(sweep, args):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "eval.eval_parse", str(sweep), *args], cwd=REPO_ROOT,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert done.returncode == 2
    assert lines[-1] == ("python -m eval.eval_parse: error: cannot write the report to stdout (No space left on "
                         "device); redirect it to a writable file")
    assert all(line.startswith("python -m eval.eval_parse: ") for line in lines)  # no traceback


RESNET18_LAYERS = ["resnet.embedder.embedder.convolution"] + [
    f"resnet.encoder.stages.{stage}.layers.{block}.{part}"
    for stage in range(4) for block in range(2)
    for part in ("layer.0.convolution", "layer.1.convolution") + (("shortcut.convolution",)
                                                                   if stage and not block else ())] + ["classifier.1"]


def _draw_heat_map(tmp_path: Path, results: dict) -> tuple[object, list]:
    """Draw `results`' heat map to tmp_path/heat.png (no matplotlib warning allowed); the figure, laid
    out again at its own dpi, and its non-empty texts: tick labels, axis labels, titles."""
    import warnings

    from eval.report_render import plot_decision_heatmap
    from eval.results import load_run

    run = load_run(write_run(tmp_path, results))
    drawn = {}

    def keep(figure, path, **kwargs):
        drawn["figure"] = figure
        save_figure(figure, path, **kwargs)

    from eval import report_render
    save_figure = report_render.save_figure
    report_render.save_figure = keep
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "Tight layout not applied"
            plot_decision_heatmap(run, tmp_path / "heat.png")
    finally:
        report_render.save_figure = save_figure
    figure = drawn["figure"]
    figure.canvas.draw()  # lays it out again at the figure's own dpi, where the extents are measured
    # Figure._suptitle: Figure.get_suptitle is matplotlib >= 3.8, setup.py allows 3.7.
    titles = [figure._suptitle] + [ax.title for ax in figure.axes]  # noqa: SLF001
    texts = [t for t in titles + [t for ax in figure.axes for t in ax.get_yticklabels() + [ax.yaxis.label]]
             if t is not None and t.get_text()]
    return figure, texts


def _assert_inside(figure, texts: list) -> None:
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    for text in texts:  # every label whole, inside the image
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, \
            text.get_text()


def test_heat_map_of_resnet18_fits_every_label(tmp_path):
    from matplotlib.image import imread

    results = make_results("resnet18_search_int2-int4-fp4_e2m1-fp8_e4m3-int8_layer_memory_t3b_s0")
    space = ["int2", "int4", "fp4_e2m1", "fp8_e4m3", "int8"]
    results["search"]["search_space"] = space
    results["search"]["decisions"] = {name: {"layers": [name], "format": "int4",
                                             "probabilities": {f: 0.2 for f in space}} for name in RESNET18_LAYERS}
    figure, texts = _draw_heat_map(tmp_path, results)
    assert {t.get_text() for t in texts} >= set(RESNET18_LAYERS) | {"probability"}
    assert texts[0].get_text() == ("resnet18_search_int2-int4-fp4_e2m1-fp8_e4m3-int8_layer_memory_t3b_s0: final "
                                   "probabilities")
    _assert_inside(figure, texts)
    assert imread(tmp_path / "heat.png").shape[0] > 300


@pytest.mark.parametrize("name, lines, min_width_px", [
    # Wide letters: 0.085 in per character under-estimated them, and the title, centred on the cells
    # (right of the layer names), ran off the right edge.
    ("W" * 60, ["W" * 60 + ": final probabilities"], 900),
    ("fliqs_mixed_t2.5_bert_base_sst2_weight_only_lr3e-5_seed=0",
     ["fliqs_mixed_t2.5_bert_base_sst2_weight_only_lr3e-5_seed=0: final probabilities"], 600),
    ("x" * 250, ["x" * 100, "x" * 100, "x" * 50 + ":", "final probabilities"], 600),  # wrapped, not 25 inches wide
])
def test_heat_map_title_of_a_long_run_name_fits(tmp_path, name, lines, min_width_px):
    from matplotlib.image import imread

    figure, texts = _draw_heat_map(tmp_path, make_results(name))
    assert texts[0].get_text() == "\n".join(lines)
    _assert_inside(figure, texts)
    height, width = imread(tmp_path / "heat.png").shape[:2]
    assert min_width_px <= width <= 1700 and height < 350


@pytest.mark.parametrize("args, message", [
    (["{root}", "--metric", "eval_f1"],
     "--metric 'eval_f1' is in no run's metrics; metrics that exist: eval_accuracy, eval_loss"),
    (["{root}/missing"], "is not a directory; pass the --output_root_dir of the runs"),
    ([], "the following arguments are required: OUTPUT_ROOT"),
    (["{root}", "--group_by", "nope"],
     "--group_by nope: not a pseudo-key or an argument of any completed run; valid keys: method, task"),
    (["{root}", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["{root}", "--plot", "{root}/p.jpg"], "must name a .png file"),
    (["{root}", "--plot", ""], "--plot '' must name a .png file"),  # it used to write nothing and exit 0
    (["{root}", "--layers", "nope"], "--layers 'nope' is neither a run directory nor an exp_name"),
    (["{root}", "--layers", "failed_run"], "the run is failed (RuntimeError: CUDA out of memory)"),
    (["{root}", "--layers", "uniform_w4_s0", "--plot", "{root}/h.png"],
     "uniform_w4_s0 is a uniform run without decisions"),
    (["{root}", "--layers", "search_t1.2_s0", "--metric", "eval_loss"], "--metric do not apply, drop them"),
])
def test_bad_input_exits_2_with_one_error_line(sweep, capsys, args, message):
    code, out, err = run_cli([a.format(root=sweep) for a in args], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("python -m eval.eval_parse: error: ")
    assert message in err


def test_empty_root_and_ambiguous_layers(tmp_path, capsys):
    code, _, err = run_cli([tmp_path], capsys)
    assert code == 2 and "no run directories under" in err
    write_run(tmp_path, make_results("same", task="digits"))
    write_run(tmp_path, make_results("same", task="mnist"))
    code, _, err = run_cli([tmp_path, "--layers", "same"], capsys)
    assert code == 2 and "--layers 'same' names 2 runs" in err
    code, out, _ = run_cli([tmp_path, "--layers", "mnist/same", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["path"] == str(tmp_path / "mnist" / "same")


def _assert_real_png(path: Path, min_colours: int) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5_000
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[2])[::7]}) >= min_colours


def test_pareto_plot_is_a_real_png(sweep, tmp_path, capsys):
    plot = tmp_path / "plots" / "pareto.png"
    code, out, _ = run_cli([sweep, "--plot", plot], capsys)
    assert code == 0 and f"plot written to {plot}" in out
    _assert_real_png(plot, min_colours=20)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(plot.stat().st_mode) == 0o666 & ~umask  # readable like every other output, not 0600


def test_layers_table_and_heat_map(sweep, tmp_path, capsys):
    heat_map = tmp_path / "heat.png"
    code, out, _ = run_cli([sweep, "--layers", "search_t1.2_s0", "--plot", heat_map], capsys)
    assert code == 0
    rows = parse_md(out)["Layers"]
    assert [(r["layer"], r["decision"], r["weight_format"], r["act_format"]) for r in rows] == \
        [("conv1", "conv1", "int4", "int4"), ("fc", "fc", "int8", "int8")]
    assert [(float(r["memory_mib"]), float(r["gbops"])) for r in rows] == [(0.625, 2.5), (0.625, 2.5)]
    assert [(float(r["p_int2"]), float(r["p_int4"]), float(r["p_int8"])) for r in rows] == \
        [(0.1, 0.7, 0.2), (0.05, 0.05, 0.9)]
    _assert_real_png(heat_map, min_colours=10)

    code, out, _ = run_cli([sweep, "--layers", sweep / "digits" / "uniform_w4_s0", "--format", "csv"], capsys)
    notes, (rows,) = parse_csv(out)
    assert code == 0 and list(rows[0]) == ["layer", "decision", "weight_format", "act_format", "memory_mib", "gbops"]
    assert [(r["weight_format"], r["act_format"], float(r["memory_mib"])) for r in rows] == [("int4", "int8", 0.5)] * 2
    assert notes[1] == "total 1 MiB of 8 MiB at fp32; 4 GBOPs of 64 at fp32 (the quantized layers only)"

    code, out, _ = run_cli([sweep, "--layers", "search_t1.2_s0", "--format", "json"], capsys)
    report = json.loads(out)
    assert report["decisions"]["fc"]["probabilities"] == {"int2": 0.05, "int4": 0.05, "int8": 0.9}
    assert report["layers"][0]["p_int4"] == 0.7


def test_python_dash_m_entry_point(sweep):
    done = subprocess.run([sys.executable, "-m", "eval.report", str(sweep), "--format", "csv"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert parse_csv(done.stdout)[1][0][0]["run"] == "uniform_w4_s0"
    done = subprocess.run([sys.executable, "-m", "eval.report", str(sweep), "--metric", "f1"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--format", "md", "--format", "csv"], "--format given twice (md and csv): give it once"),
    (["--form", "md", "--format=csv"], "--format given twice (--form md and --format=csv): give it once"),  # prefixes
    (["--metric=f1", "--metric", "eval_accuracy"], "--metric given twice (f1 and eval_accuracy): give it once"),
    (["--group_by", "seed", "task", "--group_by", "model_type"],
     "--group_by given twice (--group_by seed task and --group_by model_type): give it once"),
    (["--lower_is_better", "--lower_is_better"], "--lower_is_better given twice: give it once"),
])
def test_a_flag_given_twice_is_refused(sweep, args, message, capsys):
    assert run_cli([sweep, *args], capsys) == (2, "", f"python -m eval.eval_parse: error: {message}\n")


def test_output_root_swallowed_by_group_by_says_where_it_goes(sweep, capsys, monkeypatch):
    """--group_by takes every value up to the next flag: `--group_by method ROOT` left no OUTPUT_ROOT,
    and argparse's "the following arguments are required" did not say why."""
    monkeypatch.chdir(sweep.parent)
    prog = "python -m eval.eval_parse"
    assert run_cli(["--group_by", "method", "cost_target", "out"], capsys) == (
        2, "", f"{prog}: error: OUTPUT_ROOT is missing: --group_by took 'out' as a key (it takes every value up to the "
        f"next flag); put OUTPUT_ROOT before --group_by ({prog} out --group_by method cost_target), or end the keys "
        "with -- (--group_by method cost_target -- out)\n")
    assert run_cli(["--format", "json", "--group_by", "out"], capsys)[2] == (
        f"{prog}: error: OUTPUT_ROOT is missing: --group_by took 'out' as a key (it takes every value up to the next "
        f"flag); put OUTPUT_ROOT before --group_by ({prog} out --group_by KEY), or end the keys with -- (--group_by "
        "KEY -- out)\n")
    # Not a directory (or a --group_by=KEY, or no --group_by): argparse's own line stays.
    for args in (["--group_by", "method", "missing"], ["--group_by=method"], ["--format", "md"]):
        assert run_cli(args, capsys) == (2, "", f"{prog}: error: the following arguments are required: OUTPUT_ROOT\n")
    code, out, _ = run_cli(["--format", "json", "--group_by", "method", "cost_target", "--", "out"], capsys)
    assert code == 0 and json.loads(out)["group_by"] == ["method", "cost_target"]  # the way out the line names


def _group_by_error(sweep: Path, keys: list[str], capsys) -> str:
    code, out, err = run_cli([sweep, "--group_by", *keys], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1)
    prefix, valid = err.split(" keys: ")
    assert valid.startswith("method, task, model_type, granularity, fixed_formats, activation_bits, block_search, ")
    return prefix


def test_unknown_group_by_key_names_the_closest_keys(sweep, capsys, monkeypatch):
    monkeypatch.chdir(sweep / "digits")  # no folder named like a key (the repository has cost/, quant/, ...)
    lead = "python -m eval.eval_parse: error: --group_by"
    assert _group_by_error(sweep, ["methd"], capsys) == (
        f"{lead} methd: not a pseudo-key or an argument of any completed run; did you mean method? Valid")
    assert _group_by_error(sweep, ["method", "model", "sed"], capsys) == (
        f"{lead} model, sed: not a pseudo-key or an argument of any completed run; did you mean model_type (for "
        "model), seed (for sed)? Valid")
    assert _group_by_error(sweep, ["cuda"], capsys) == (  # no close spelling: the keys it starts
        f"{lead} cuda: not a pseudo-key or an argument of any completed run; did you mean cuda_visible_devices? Valid")
    assert _group_by_error(sweep, ["zzz"], capsys) == (
        f"{lead} zzz: not a pseudo-key or an argument of any completed run; valid")
    monkeypatch.chdir(sweep.parent)  # the root given again after the keys
    assert _group_by_error(sweep, ["method", "out"], capsys) == (
        f"{lead} out: not a pseudo-key or an argument of any completed run; 'out' is a directory, not a key: give "
        "OUTPUT_ROOT once, before --group_by; valid")


def test_errors_name_the_command_as_typed(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fliqs-report"])
    assert run_cli([sweep, "--cost", "memory", "--cost", "compute"], capsys) == (
        2, "", "fliqs-report: error: --cost given twice (memory and compute): give it once\n")
    assert run_cli([tmp_path / "none"], capsys)[2] == (f"fliqs-report: error: OUTPUT_ROOT '{tmp_path / 'none'}' is not "
                                                       "a directory; pass the --output_root_dir of the runs\n")
    for module in ("eval.report", "eval.eval_parse"):  # both run the report
        done = subprocess.run([sys.executable, "-m", module, str(sweep), "--plot", "a.png", "--plot", "b.png"],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (
            2, "", f"python -m {module}: error: --plot given twice (a.png and b.png): give it once\n")


def test_vs_uniform_is_the_gap_to_the_uniform_line(tmp_path):
    from eval.report_table import build_report
    from eval.results import load_runs

    write_run(tmp_path, make_results("u2", method="uniform", weight_bits=2, memory_mib=2.0, metric=0.1))
    write_run(tmp_path, make_results("u4", method="uniform", weight_bits=4, memory_mib=4.0, metric=0.9))
    write_run(tmp_path, make_results("s3", metric=0.8, memory_mib=3.0, cost_target=3.0))
    write_run(tmp_path, make_results("s5", metric=0.95, memory_mib=5.0, cost_target=5.0))
    rows = {row["run"]: row for row in build_report(load_runs(tmp_path), str(tmp_path)).rows}
    assert rows["s3"]["vs_uniform"] == pytest.approx(0.8 - 0.5)
    assert rows["s5"]["vs_uniform"] is None  # beyond the most expensive uniform baseline
    assert rows["u2"]["vs_uniform"] is None


def test_runs_that_quantize_other_layers_are_compared_apart(tmp_path, capsys):
    """A cost counts only the quantized layers: a search leaving its largest layers in float must not
    look cheapest on the uniform baselines' axis (it was marked pareto, above uniform INT2)."""
    from eval.pareto import family_key
    from eval.report_table import build_report
    from eval.results import load_runs

    write_run(tmp_path, make_results("u2", method="uniform", weight_bits=2, memory_mib=2.0, metric=0.1))
    write_run(tmp_path, make_results("u4", method="uniform", weight_bits=4, memory_mib=4.0, metric=0.9))
    write_run(tmp_path, make_results("s3", metric=0.8, memory_mib=3.0, cost_target=3.0))
    partial = make_results("partial", metric=0.5, memory_mib=1.0, cost_target=1.0,
                           args_extra={"quantize_output": False})
    del partial["layers"]["fc"]  # left in float: not counted
    partial["cost"].update(float_memory_mib=4.0, float_gbops=32.0)
    write_run(tmp_path, partial)
    report = build_report(load_runs(tmp_path), str(tmp_path))
    rows = {row["run"]: row for row in report.rows}
    assert [row["run"] for row in report.rows] == ["partial", "u2", "s3", "u4"]  # by layer set, then cost
    assert {run: (row["quantized_layers"], row["float_memory_mib"], row["pareto"], row["vs_uniform"])
            for run, row in rows.items()} == {
        "partial": (1, 4.0, True, None), "u2": (2, 8.0, True, None), "s3": (2, 8.0, True, pytest.approx(0.3)),
        "u4": (2, 8.0, True, None)}
    assert len({row["quantized_layers_id"] for row in report.rows}) == 2
    assert family_key(rows["partial"]) == ("digits", "resnet18", "eval_accuracy", rows["partial"]["quantized_layers_id"])
    assert ("digits/resnet18/eval_accuracy: runs quantize different sets of layers (1 layer, 4 MiB at fp32: "
            "partial; 2 layers, 8 MiB at fp32: u2, s3, u4), and a cost counts only the quantized layers, so each set "
            "has its own pareto frontier and uniform line (vs_uniform is empty for a search whose set has no uniform "
            "baselines); to compare them, run them with the same --quantize_*/--config_overrides flags") in report.notes
    # The plot gets one panel per set, titled with it.
    titles: list[str] = []
    import matplotlib.axes
    original = matplotlib.axes.Axes.set_title
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.axes.Axes, "set_title",
                      lambda self, label, *a, **k: (titles.append(label), original(self, label, *a, **k))[1])
        code, _, _ = run_cli([tmp_path, "--plot", tmp_path / "pareto.png"], capsys)
    assert code == 0
    assert titles == ["digits / resnet18 (1 layer, 4 MiB at fp32)", "digits / resnet18 (2 layers, 8 MiB at fp32)"]


def test_runs_at_other_input_sizes_compare_on_one_compute_axis(tmp_path):
    """GBOPs depend on the input size as well as the layers: the same layers at two image sizes are
    one family (comparing resolutions is a study of its own), and a layer resized is another."""
    from eval.report_table import build_report
    from eval.results import load_runs

    write_run(tmp_path, make_results("u4_32", method="uniform", weight_bits=4, gbops=4.0, metric=0.9))
    small = make_results("u8_16", method="uniform", weight_bits=8, gbops=2.0, metric=0.8,
                         args_extra={"image_size": 16})
    small["cost"]["float_gbops"] = 16.0
    write_run(tmp_path, small)
    report = build_report(load_runs(tmp_path), str(tmp_path), cost_type="compute")
    assert {row["run"]: row["pareto"] for row in report.rows} == {"u8_16": True, "u4_32": True}
    assert len({row["quantized_layers_id"] for row in report.rows}) == 1
    assert not [note for note in report.notes if "different sets of layers" in note]
    wider = make_results("wide", method="uniform", weight_bits=8, gbops=8.0, metric=0.95,
                         args_extra={"config_overrides": "hidden_sizes=[16]"})
    wider["layers"]["fc"]["num_weights"] = 2000
    write_run(tmp_path, wider)
    report = build_report(load_runs(tmp_path), str(tmp_path), cost_type="compute")
    assert len({row["quantized_layers_id"] for row in report.rows}) == 2
    assert len([note for note in report.notes if "different sets of layers" in note]) == 1


def test_one_set_of_layers_has_no_note_and_plain_titles(sweep):
    from eval.report_table import build_report
    from eval.results import load_runs

    report = build_report(load_runs(sweep), str(sweep))
    assert not [note for note in report.notes if "different sets of layers" in note]
    assert {(row["quantized_layers"], row["float_memory_mib"]) for row in report.rows} == {(2, 8.0)}
