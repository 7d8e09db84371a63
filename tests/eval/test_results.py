"""Finding, loading, validating and grouping run directories (eval/results.py).

`make_results` / `write_run` build synthetic run directories in the results.json schema
(docs/results_schema.md); tests/eval/test_report.py uses them too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval.results import EXPORTED_WEIGHTS, find_run_dirs, load_run, load_runs
from eval.results_schema import COMPLETED, FAILED, INCOMPLETE, validate_results
from eval.run_compare import REPLICA_ARGS, available_group_keys, changed_args, group_runs, group_value

SEARCH_SPACE = ["int2", "int4", "int8"]


def make_results(exp_name: str = "run", task: str = "digits", method: str = "search", seed: int = 0,
                 metric: float = 0.9, memory_mib: float = 1.0, gbops: float = 2.0, cost_target: float | None = 1.5,
                 weight_bits: int = 8, args_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid completed results.json for a two-layer model."""
    search = method == "search"
    args = {"task": task, "model_type": "resnet18", "exp_name": exp_name, "seed": seed,
            "output_root_dir": "/out", "cuda_visible_devices": str(seed), "learning_rate": 5e-5,
            "search": search, "search_space": "2,4,8" if search else None, "block_search": False,
            "weight_bits": 0 if method == "float" else (None if search else weight_bits),
            "activation_bits": 0 if method == "float" else (None if search else 8),
            "cost_target": cost_target if search else None, "cost_type": "memory"}
    args.update(args_extra or {})
    if search:
        formats = {"conv1": ("int4", "int4"), "fc": ("int8", "int8")}
    elif method == "uniform":
        formats = {"conv1": (f"int{weight_bits}", "int8"), "fc": (f"int{weight_bits}", "int8")}
    else:
        formats = {"conv1": ("none", "none"), "fc": ("none", "none")}
    layers = {name: {"weight_format": w, "act_format": a, "num_weights": 1000, "macs_per_sample": 10_000,
                     "memory_mib": memory_mib / 2, "gbops": gbops / 2} for name, (w, a) in formats.items()}
    decisions = {
        "conv1": {"layers": ["conv1"], "format": "int4", "probabilities": {"int2": 0.1, "int4": 0.7, "int8": 0.2}},
        "fc": {"layers": ["fc"], "format": "int8", "probabilities": {"int2": 0.05, "int4": 0.05, "int8": 0.9}},
    }
    return {
        "schema_version": 1, "status": "completed", "error": None, "traceback": None,
        "exp_name": exp_name, "task": task, "model_type": "resnet18", "method": method, "args": args,
        "main_metric": "eval_accuracy", "metrics": {"eval_accuracy": metric, "eval_loss": 1.0 - metric},
        "cost": {"memory_mib": memory_mib, "gbops": gbops, "float_memory_mib": 8.0, "float_gbops": 64.0,
                 "cost_type": "memory", "target": cost_target if search else None,
                 "ratio": memory_mib / cost_target if search else None},
        "layers": layers,
        "search": {"granularity": "layer", "search_space": SEARCH_SPACE, "weight_only": False,
                   "decisions": decisions, "cost_function": "tunas_abs", "cost_beta": 1.0,
                   "reward_metric": "loss", "reward_source": "train", "steps": 300} if search else None,
        "wall_time_s": 12.5, "versions": {"python": "3.11.7"}, "device": "cpu",
    }


def make_failed(exp_name: str = "failed_run", task: str = "digits",
                error: str = "RuntimeError: CUDA out of memory") -> dict[str, Any]:
    return {"schema_version": 1, "status": "failed", "error": error, "traceback": "Traceback ...\n" + error,
            "exp_name": exp_name, "task": task, "model_type": "resnet18", "method": "search",
            "args": {"task": task, "exp_name": exp_name, "seed": 0}, "main_metric": None, "metrics": {},
            "cost": None, "layers": {}, "search": None, "wall_time_s": 1.0, "versions": {}, "device": "cpu"}


def write_run(root: Path, results: dict[str, Any] | None, *, task: str | None = None, exp_name: str | None = None,
              raw: str | None = None, log: str = "step 10 loss 0.5\n") -> Path:
    """Write root/task/exp_name/ with config.json, output.txt and (unless None) results.json or raw text."""
    task = task or (results or {}).get("task") or "digits"
    exp_name = exp_name or (results or {}).get("exp_name") or "run"
    run_dir = root / task / exp_name
    run_dir.mkdir(parents=True, exist_ok=True)
    args = (results or {}).get("args") or {"task": task, "exp_name": exp_name}
    (run_dir / "config.json").write_text(json.dumps(args))
    (run_dir / "output.txt").write_text(log)
    if raw is not None:
        (run_dir / "results.json").write_text(raw)
    elif results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))  # NaN is written as NaN, like json.dump
    return run_dir


def test_valid_results_have_no_problems():
    for method in ("search", "uniform", "float"):
        assert validate_results(make_results(method=method)) == []
    assert validate_results(make_failed()) == []


@pytest.mark.parametrize("method", ["uniform", "float"])
def test_a_run_that_did_not_search_has_no_search_object(method):
    results = make_results(method=method)
    results["search"] = make_results(method="search")["search"]
    assert validate_results(results) == [f"search is {{'granularity': 'layer', 'search_spac..., expected null for a "
                                         f"{method} run"]


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["cost"].pop("gbops"), "missing cost.gbops"),
    (lambda d: d.pop("main_metric"), "missing main_metric"),
    (lambda d: d.update(main_metric="eval_f1"),
     "main_metric 'eval_f1' is not in metrics (has: eval_accuracy, eval_loss)"),
    (lambda d: d.update(schema_version=2), "schema_version is 2, this reader knows version 1: re-run it with this "
     "version of FLIQS (or read it with the version that wrote it)"),
    (lambda d: d.pop("schema_version"), "schema_version is None, this reader knows version 1: re-run it with this "
     "version of FLIQS (or read it with the version that wrote it)"),
    (lambda d: d.update(status="running"), "status is 'running', expected 'completed' or 'failed'"),
    (lambda d: d.update(method="random"), "method is 'random', expected one of ('search', 'uniform', 'loaded', 'float')"),
    (lambda d: d["cost"].update(target=None), "cost.target is None, expected a number >= 0"),
    # Values that equal 1, strings and booleans for numbers, unknown formats, negative costs, a
    # search object on a run that did not search: all used to pass.
    (lambda d: d.update(schema_version=True), "schema_version is True, this reader knows version 1: re-run it with "
     "this version of FLIQS (or read it with the version that wrote it)"),
    (lambda d: d.update(schema_version=1.0), "schema_version is 1.0, this reader knows version 1: re-run it with "
     "this version of FLIQS (or read it with the version that wrote it)"),
    (lambda d: d["layers"]["fc"].update(weight_format="int99"), "layers.fc.weight_format is 'int99', expected a "
     "format name"),
    (lambda d: d["layers"]["fc"].update(act_format="INT8"), "layers.fc.act_format is 'INT8', expected a format name"),
    (lambda d: d["cost"].update(memory_mib=-1), "cost.memory_mib is -1, expected a number >= 0"),
    (lambda d: d["cost"].update(ratio=-0.5), "cost.ratio is -0.5, expected a number >= 0"),
    (lambda d: d["layers"]["conv1"].update(gbops=-2.0), "layers.conv1.gbops is -2.0, expected a number >= 0"),
    (lambda d: d["metrics"].update(eval_accuracy="0.5"), "metrics.eval_accuracy is '0.5', expected a number (null "
     "if not finite)"),
    (lambda d: d["metrics"].update(eval_loss=True), "metrics.eval_loss is True, expected a number (null if not "
     "finite)"),
    (lambda d: d["search"].update(search_space=["int2", "int4", "int99"]), "search.search_space is ['int2', 'int4', "
     "'int99'], expected a non-empty list of format names"),
    (lambda d: d["search"]["decisions"]["fc"].update(format="fp8_e4m3"), "search.decisions.fc.format is 'fp8_e4m3', "
     "expected a format name of the search_space"),
    (lambda d: d["layers"]["fc"].pop("act_format"), "missing layers.fc.act_format"),
    (lambda d: d["search"]["decisions"]["fc"]["probabilities"].pop("int2"),
     "search.decisions.fc.probabilities has options ['int4', 'int8'], "
     "expected the search_space ['int2', 'int4', 'int8']"),
    (lambda d: d.update(search=None), "search is None, expected an object for a search run"),
])
def test_validate_results_names_each_problem(edit, expected):
    data = make_results()
    edit(data)
    assert expected in validate_results(data)


def test_validate_results_rejects_non_objects_and_failed_without_error():
    assert validate_results([1, 2]) == ["the top level is list, expected an object"]
    failed = make_failed()
    del failed["error"]
    assert validate_results(failed) == ["missing error"]


def test_find_run_dirs_any_depth_and_not_inside_runs(tmp_path):
    deep = tmp_path / "a" / "b" / "c" / "run1"
    deep.mkdir(parents=True)
    (deep / "results.json").write_text("{}")
    config_only = tmp_path / "digits" / "run2"
    (config_only / "checkpoint-10").mkdir(parents=True)
    (config_only / "config.json").write_text("{}")
    (config_only / "checkpoint-10" / "config.json").write_text("{}")  # a saved model, not a run
    log_only = tmp_path / "digits" / "run3"
    log_only.mkdir()
    (log_only / "stdout.log").write_text("starting\n")
    (tmp_path / "empty" / "nothing").mkdir(parents=True)
    # A checkpoint exported into the output root (quant.export) is no run, though it holds a config.json.
    exported = tmp_path / "digits" / "deploy"
    exported.mkdir()
    (exported / "config.json").write_text("{}")
    (exported / EXPORTED_WEIGHTS).write_bytes(b"")
    assert find_run_dirs(tmp_path) == [deep, config_only, log_only]
    assert find_run_dirs(deep) == [deep]


def test_the_exported_weights_name_is_quant_exports():
    from quant.export import WEIGHTS_NAME

    assert EXPORTED_WEIGHTS == WEIGHTS_NAME


@pytest.mark.parametrize("stray", ["stdout.log", "config.json", "output.txt"])
def test_a_stray_file_at_the_root_does_not_hide_the_runs_below(tmp_path, stray):
    (tmp_path / stray).write_text("{}")
    done = write_run(tmp_path, make_results(exp_name="done"))
    started = tmp_path / "digits" / "started"
    started.mkdir()
    (started / "config.json").write_text("{}")  # a run that has not written anything else yet
    assert find_run_dirs(tmp_path) == [done, started]
    # With results.json the root is a run itself (and what is below it is its own).
    (tmp_path / "results.json").write_text("{}")
    assert find_run_dirs(tmp_path) == [tmp_path]


def test_an_incomplete_run_with_checkpoints_is_one_run(tmp_path):
    run = tmp_path / "digits" / "run"
    for inner in ("checkpoint-10", "final_model"):
        (run / inner).mkdir(parents=True)
        (run / inner / "config.json").write_text("{}")
    (run / "config.json").write_text("{}")
    assert find_run_dirs(tmp_path) == [run]
    (run / "stdout.log").write_text("# CUDA_VISIBLE_DEVICES= python -u -m eval.eval_run\n")
    assert find_run_dirs(tmp_path) == [run]


def test_find_run_dirs_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory; pass the --output_root_dir"):
        find_run_dirs(tmp_path / "nope")


def test_load_run_statuses(tmp_path):
    completed = load_run(write_run(tmp_path, make_results(exp_name="ok", metric=0.75)))
    assert (completed.status, completed.exp_name, completed.method, completed.task) == \
        (COMPLETED, "ok", "search", "digits")
    assert completed.metrics["eval_accuracy"] == 0.75 and completed.reason is None
    assert completed.cost["memory_mib"] == 1.0 and completed.search["granularity"] == "layer"

    failed = load_run(write_run(tmp_path, make_failed(error="RuntimeError: CUDA out of memory\n  at step 3")))
    assert (failed.status, failed.reason) == (FAILED, "RuntimeError: CUDA out of memory at step 3")

    text = json.dumps(make_results(exp_name="partial"))
    partial = load_run(write_run(tmp_path, None, exp_name="partial", raw=text[: len(text) // 2]))
    assert partial.status == INCOMPLETE
    assert partial.reason.startswith("results.json does not parse (") and partial.reason.endswith("a truncated write?")

    killed = load_run(write_run(tmp_path, None, exp_name="killed", log="step 1\nstep 2 loss 0.4\n\n"))
    assert killed.status == INCOMPLETE
    assert killed.reason == "no results.json (killed or still running); last log line output.txt: step 2 loss 0.4"

    header = "# CUDA_VISIBLE_DEVICES=0 python -u -m eval.eval_run --seed 1\n"
    launched = write_run(tmp_path, None, exp_name="launched", log="")
    (launched / "output.txt").unlink()
    (launched / "stdout.log").write_text(header)
    assert load_run(launched).reason == "no results.json (killed or still running)"
    (launched / "stdout.log").write_text(header + "step 3 loss 0.2\n")
    assert load_run(launched).reason == \
        "no results.json (killed or still running); last log line stdout.log: step 3 loss 0.2"
    refusal = "eval_run: error: --train_file 'd/empty.csv' has no rows; give a file with a header and rows"
    (launched / "stdout.log").write_text(header + refusal + "\n")
    assert load_run(launched).reason == \
        f"no results.json: the run refused its input before starting; stdout.log: {refusal}"
    (launched / "stdout.log").write_text(header + "python -m eval.eval_run: error: --seed given twice\n")
    assert load_run(launched).reason.startswith("no results.json: the run refused its input before starting; ")

    bad = make_results(exp_name="bad")
    del bad["cost"]["gbops"], bad["metrics"]
    broken = load_run(write_run(tmp_path, bad))
    assert broken.status == INCOMPLETE
    assert broken.reason == "results.json is invalid: missing metrics; missing cost.gbops"


def test_load_run_keeps_nan_metrics_for_the_report(tmp_path):
    run = load_run(write_run(tmp_path, make_results(exp_name="nan", metric=float("nan"))))
    assert run.status == COMPLETED and run.metrics["eval_accuracy"] != run.metrics["eval_accuracy"]


def test_load_runs_labels_collisions_by_path(tmp_path):
    write_run(tmp_path, make_results(exp_name="same", task="digits"))
    write_run(tmp_path, make_results(exp_name="same", task="mnist"))
    write_run(tmp_path, make_results(exp_name="unique", task="mnist"))
    assert [run.label for run in load_runs(tmp_path)] == ["digits/same", "mnist/same", "unique"]


def _runs(tmp_path: Path, specs: list[tuple[str, int, float]]):
    for exp_name, seed, lr in specs:
        write_run(tmp_path, make_results(exp_name=exp_name, seed=seed, args_extra={"learning_rate": lr}))
    return load_runs(tmp_path)


def test_group_runs_automatic_groups_seed_replicas_only(tmp_path):
    runs = _runs(tmp_path, [("a_s0", 0, 5e-5), ("a_s1", 1, 5e-5), ("b_s0", 0, 1e-4)])
    groups = group_runs(runs)
    assert [[run.label for run in group.runs] for group in groups] == [["a_s0", "a_s1"], ["b_s0"]]
    assert all(not group.mismatches for group in groups)
    assert ("learning_rate", "5e-05") in groups[0].key and ("method", '"search"') in groups[0].key
    assert not any(name in {"seed", "exp_name", "output_root_dir", "cuda_visible_devices"} for name, _ in groups[0].key)


def test_group_runs_by_keys_reports_mismatched_arguments(tmp_path):
    runs = _runs(tmp_path, [("a_s0", 0, 5e-5), ("a_s1", 1, 5e-5), ("b_s0", 0, 1e-4)])
    (group,) = group_runs(runs, ["cost_target", "method"])
    assert group.key == (("cost_target", "1.5"), ("method", '"search"'), ("fixed_formats", "null"))
    assert group.mismatches == {"learning_rate": {"5e-05": ["a_s0", "a_s1"], "0.0001": ["b_s0"]}}


def test_replicas_spelled_differently_are_one_group(tmp_path):
    # "INT4,8" and "4,8" are one search space (search_formats records it resolved); "Cosine" (as
    # runs recorded it before the CLI canonicalised it) and "cosine" are one schedule.
    for name, seed, space, schedule in (("a_s0", 0, "4,8", "cosine"), ("a_s1", 1, "INT4,8", "Cosine"),
                                        ("b_s0", 0, "4,8", "linear")):
        write_run(tmp_path, make_results(name, seed=seed, args_extra={
            "search_space": space, "search_formats": ["int4", "int8"], "entropy_schedule_type": schedule}))
    groups = group_runs(load_runs(tmp_path))
    assert [[run.label for run in group.runs] for group in groups] == [["a_s0", "a_s1"], ["b_s0"]]
    assert all(not group.mismatches for group in groups)
    assert not any(name == "search_space" for name, _ in groups[0].key)
    (group,) = group_runs(load_runs(tmp_path), ["method"])
    assert group.mismatches == {"entropy_schedule_type": {'"cosine"': ["a_s0", "a_s1"], '"linear"': ["b_s0"]}}


def test_explicit_keys_keep_fixed_formats_apart(tmp_path):
    """Uniform baselines share cost_target_bits=null: grouping by it must not make INT4 and INT8 replicas."""
    for name, bits, seed in (("u4_s0", 4, 0), ("u4_s1", 4, 1), ("u8_s0", 8, 0)):
        write_run(tmp_path, make_results(name, method="uniform", weight_bits=bits, seed=seed,
                                         args_extra={"cost_target_bits": None}))
    write_run(tmp_path, make_results("float_s0", method="float", args_extra={"cost_target_bits": None}))
    groups = group_runs(load_runs(tmp_path), ["method", "cost_target_bits"])
    assert [[run.label for run in group.runs] for group in groups] == [["float_s0"], ["u4_s0", "u4_s1"], ["u8_s0"]]
    assert all(not group.mismatches and not group.repeated_seeds for group in groups)
    assert groups[1].key == (("method", '"uniform"'), ("cost_target_bits", "null"),
                             ("fixed_formats", '"w=int4 a=int8"'))


def test_runs_that_do_not_search_ignore_the_search_only_flags(tmp_path):
    """A uniform run given --search_space (an experiments file's shared flags) says it ignores it:
    it is a replica of one without, and --skip_completed does not count it as changed. Between
    searches the same flag still counts."""
    for name, seed, extra in (("u8_s0", 0, {}), ("u8_s1", 1, {"search_space": "2,4,8", "delay_steps": 5})):
        write_run(tmp_path, make_results(name, method="uniform", seed=seed, args_extra={"mode": "uniform", **extra}))
    (group,) = group_runs(load_runs(tmp_path))
    assert [run.label for run in group.runs] == ["u8_s0", "u8_s1"] and not group.mismatches
    assert not any(name in {"search_space", "delay_steps"} for name, _ in group.key)
    uniform = {"mode": "uniform", "search_space": None, "cost_target": None, "learning_rate": 0.1}
    assert changed_args({**uniform, "search_space": "2,4,8", "cost_target": 1.0}, uniform) == []
    assert changed_args({**uniform, "learning_rate": 0.2}, uniform) == ["learning_rate 0.1 -> 0.2"]
    search = {**uniform, "mode": "search", "search_space": "4,8"}
    assert changed_args({**search, "search_space": "2,4,8"}, search) == ['search_space "4,8" -> "2,4,8"']
    assert changed_args(search, uniform) == ['mode "uniform" -> "search"', 'search_space null -> "4,8"']


def test_searches_ignore_the_settings_of_other_kinds_of_search(tmp_path):
    """A search with --reward_source train and a stray --heldout_fraction (noted as ignored) is a
    replica of one without: one group, no mismatch, and --skip_completed/resume see no change.
    Likewise --target_tolerance under --final_selection argmax and --bn_recalibration_batches for a
    model without BatchNorm. Where the search reads them they still count."""
    base = {"mode": "search", "reward_source": "train", "heldout_fraction": 0.1, "final_selection": "constrained",
            "target_tolerance": 0.05, "bn_recalibration_batches": 20}
    for name, seed, extra in (("a_s0", 0, {}), ("a_s1", 1, {"heldout_fraction": 0.3}),
                              ("h_s0", 0, {"reward_source": "heldout", "heldout_fraction": 0.3}),
                              ("h_s1", 1, {"reward_source": "heldout"})):
        write_run(tmp_path, make_results(name, seed=seed, args_extra={**base, **extra}))
    groups = group_runs(load_runs(tmp_path))
    assert [[run.label for run in group.runs] for group in groups] == [["a_s0", "a_s1"], ["h_s0"], ["h_s1"]]
    assert not groups[0].mismatches and not any(name == "heldout_fraction" for name, _ in groups[0].key)
    assert ("heldout_fraction", "0.3") in groups[1].key and ("heldout_fraction", "0.1") in groups[2].key
    (heldout,) = group_runs([run for run in load_runs(tmp_path) if run.label.startswith("h")], ["reward_source"])
    assert heldout.mismatches == {"heldout_fraction": {"0.3": ["h_s0"], "0.1": ["h_s1"]}}

    assert changed_args({**base, "heldout_fraction": 0.3}, base) == []
    assert changed_args({**base, "reward_source": "heldout", "heldout_fraction": 0.3}, base) == [
        'reward_source "train" -> "heldout"', "heldout_fraction 0.1 -> 0.3"]
    heldout_args = {**base, "reward_source": "heldout"}
    assert changed_args({**heldout_args, "heldout_fraction": 0.3}, heldout_args) == ["heldout_fraction 0.1 -> 0.3"]
    argmax = {**base, "final_selection": "argmax"}
    assert changed_args({**argmax, "target_tolerance": 0.2}, argmax) == []
    assert changed_args({**base, "target_tolerance": 0.2}, base) == ["target_tolerance 0.05 -> 0.2"]
    bert, resnet = {**base, "model_type": "bert-tiny"}, {**base, "model_type": "resnet18"}
    assert changed_args({**bert, "bn_recalibration_batches": 0}, bert) == []
    assert changed_args({**resnet, "bn_recalibration_batches": 0}, resnet) == ["bn_recalibration_batches 20 -> 0"]
    # recorded without the deciding flag (an older run): compared, as before
    assert changed_args({"mode": "search", "heldout_fraction": 0.3}, {"mode": "search", "heldout_fraction": 0.1}) == [
        "heldout_fraction 0.1 -> 0.3"]


def test_batchnorm_prefixes_match_the_registered_models():
    """run_compare.has_batchnorm reads model type names (the report does not import transformers):
    every registered model type, built on the meta device, holds BatchNorm exactly where it says."""
    import torch
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    from eval.model_configs import MODEL_REGISTRY
    from eval.run_compare import has_batchnorm

    families: dict[str, bool] = {}
    for spec in MODEL_REGISTRY.values():
        if spec.family not in families:
            auto = AutoModelForSequenceClassification if spec.modality == "text" else AutoModelForImageClassification
            with torch.device("meta"):
                model = auto.from_config(spec.builtin_config())
            families[spec.family] = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        assert has_batchnorm(spec.name) is families[spec.family], spec.name
    assert families == {"bert": False, "roberta": False, "gpt2": False, "resnet": True, "efficientnet": True,
                        "mobilenetv2": True, "deit": False}
    assert has_batchnorm("some-future-model") and has_batchnorm(None)  # unknown: compared, as before


def test_replicas_may_differ_in_logging_and_placement(tmp_path):
    extras = [{"report_to": "tensorboard", "log_steps": 20, "eval_steps": None, "device": "cuda",
               "save_strategy": "no", "save_steps": 500},
              {"report_to": "none", "log_steps": 5, "eval_steps": 10, "device": "cpu", "save_strategy": "steps",
               "save_steps": 10}]
    for seed, extra in enumerate(extras):
        write_run(tmp_path, make_results(f"a_s{seed}", seed=seed, args_extra=extra))
    (group,) = group_runs(load_runs(tmp_path))
    assert [run.label for run in group.runs] == ["a_s0", "a_s1"] and not group.mismatches
    assert {"report_to", "log_steps", "eval_steps", "device", "cuda_visible_devices", "save_strategy", "save_steps",
            "seed"} <= REPLICA_ARGS


def test_a_group_with_a_repeated_seed_says_so(tmp_path):
    for name, seed in (("float_seed=0", 0), ("float_seed=1", 1), ("float", 1)):
        write_run(tmp_path, make_results(name, method="float", seed=seed))
    (group,) = group_runs(load_runs(tmp_path))
    assert group.repeated_seeds == {"1": ["float", "float_seed=1"]} and not group.mismatches


def test_group_value_and_available_keys(tmp_path):
    (run,) = _runs(tmp_path, [("a", 0, 5e-5)])
    assert [group_value(run, k) for k in ("method", "task", "model_type", "granularity", "fixed_formats",
                                          "cost_target")] == ["search", "digits", "resnet18", "layer", None, 1.5]
    assert group_value(run, "not_an_arg") == "<missing>"
    keys = available_group_keys([run])
    assert keys[:5] == ["method", "task", "model_type", "granularity", "fixed_formats"]
    assert "cost_target" in keys and "weight_bits" in keys and keys.count("task") == 1



def test_a_planned_default_matches_only_a_run_time_default_the_run_derived_itself():
    derived = {"delay_steps": 2, "rl_learning_rate": 0.1, "derived_defaults": ["delay_steps", "rl_learning_rate"]}
    given = {"delay_steps": 0, "rl_learning_rate": 0.5, "derived_defaults": []}
    plan = {"delay_steps": None, "rl_learning_rate": None, "resume_from_checkpoint": None}
    assert changed_args(plan, derived) == []
    assert changed_args(plan, given) == ["delay_steps 0 -> default", "rl_learning_rate 0.5 -> default"]
    assert changed_args(plan, {**given, "derived_defaults": ["rl_learning_rate"]}) == ["delay_steps 0 -> default"]
    # Given values are compared as before, derived or not.
    assert changed_args({**plan, "delay_steps": 0}, derived) == ["delay_steps 2 -> 0"]
    assert changed_args({**plan, "delay_steps": 0, "rl_learning_rate": 0.5}, given) == []
    # A resumed run takes them from its checkpoint's run (eval_run inherits them): not from this plan.
    assert changed_args({**plan, "resume_from_checkpoint": "/out/run/checkpoint-8"}, given) == []
    # Runs recorded before they said what they derived: a planned default matches, as it did.
    assert changed_args(plan, {"delay_steps": 0, "rl_learning_rate": 0.5}) == []


def test_the_record_of_derived_defaults_does_not_split_replicas(tmp_path):
    write_run(tmp_path, make_results("a_s0", seed=0,
                                     args_extra={"delay_steps": 2, "derived_defaults": ["delay_steps"]}))
    write_run(tmp_path, make_results("a_s1", seed=1, args_extra={"delay_steps": 2, "derived_defaults": []}))
    (group,) = group_runs(load_runs(tmp_path))
    assert len(group.runs) == 2 and not group.mismatches
