"""Whole runs on the built-in tasks with tiny models: outputs, fields, failures, --load_config."""
import json
import time
from pathlib import Path

import pytest

from eval.eval_run import main
from eval.run_lock import LOCK_NAME, holding_run_lock, run_lock_holder

RESNET_TINY = ["--model_type", "resnet18", "--config_overrides",
               "depths=[1,1,1,1],hidden_sizes=[8,8,8,8],embedding_size=8"]
BERT_TINY = ["--task", "synth-sentiment", "--model_type", "bert-tiny", "--config_overrides",
             "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64"]
FAST = ["--max_steps", "8", "--max_train_samples", "128", "--max_eval_samples", "64", "--train_batch_size", "16",
        "--device", "cpu", "--log_steps", "4"]


def setting(argv: list[str], *flags_and_values: str) -> list[str]:
    """`argv` with each FLAG VALUE pair in place of FLAG's value there (a flag given twice is an
    error), else appended."""
    argv = list(argv)
    for flag, value in zip(flags_and_values[::2], flags_and_values[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def run(tmp_path: Path, *argv: str) -> tuple[int, dict, Path]:
    code = main([*argv, *FAST, "--output_root_dir", str(tmp_path)])
    results_files = list(tmp_path.glob("*/*/results.json"))
    assert len(results_files) == 1
    return code, json.loads(results_files[0].read_text()), results_files[0].parent


def contents(run_dir: Path) -> dict[Path, bytes]:
    """Every file of a run directory, but its lock's holder line (eval/run_lock.py)."""
    return {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file() and path.name != LOCK_NAME}


def test_uniform_baseline_on_digits(tmp_path):
    code, results, run_dir = run(tmp_path, *RESNET_TINY, "--weight_bits", "4", "--activation_bits", "fp8_e4m3")
    assert code == 0 and results["status"] == "completed" and results["method"] == "uniform"
    assert results["best_checkpoint"] is None  # only with --save_strategy best
    for name in ("config.json", "model.txt", "output.txt", "final_model/config.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir()) and not (run_dir / "runs").exists()  # every log in one place
    assert {(run_dir / name).stat().st_mode & 0o777 for name in ("results.json", "config.json", "output.txt")} == \
        {0o666 & ~_umask()}  # readable by colleagues like every other output
    assert run_dir == tmp_path / "digits" / "resnet18_uniform_wint4-afp8_e4m3_s42"
    layers = results["layers"]
    assert len(layers) == 13  # 1 stem + 4 stages x 2 convs + 3 shortcuts + classifier
    assert {(l["weight_format"], l["act_format"]) for l in layers.values()} == {("int4", "fp8_e4m3")}
    assert results["cost"]["memory_mib"] == pytest.approx(sum(l["num_weights"] for l in layers.values()) * 4 / 8 / 2**20)
    assert results["cost"]["gbops"] == pytest.approx(sum(l["macs_per_sample"] for l in layers.values()) * 32 / 1e9)
    assert results["cost"]["target"] is None and results["search"] is None
    assert 0 <= results["metrics"]["eval_accuracy"] <= 1 and results["main_metric"] == "eval_accuracy"
    assert json.loads((run_dir / "config.json").read_text())["weight_format"] == "int4"
    # The seed its --max_*_samples subsets were drawn with, recorded beside --seed.
    assert (results["args"]["seed"], results["args"]["data_seed"]) == (42, 42)
    assert json.loads((run_dir / "config.json").read_text())["data_seed"] == 42
    assert "eval_accuracy" in (run_dir / "output.txt").read_text()


def _umask() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_rerun_replaces_everything_of_the_earlier_run(tmp_path, capsys):
    run_dir = tmp_path / "digits" / "again"
    for stale in ("checkpoint-3/trainer_state.json", "final_model/stale.txt", "tensorboard/events.old", "runs/x/e"):
        (run_dir / stale).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / stale).write_text("old")
    code, results, _ = run(tmp_path, *RESNET_TINY, "--bits", "8", "--exp_name", "again")
    assert code == 0 and results["status"] == "completed"
    assert "replacing" not in capsys.readouterr().err  # nothing completed was there
    # The same flags again: replaced, without a word.
    code, results, _ = run(tmp_path, *RESNET_TINY, "--bits", "8", "--exp_name", "again")
    assert code == 0 and results["status"] == "completed"
    assert "replacing" not in capsys.readouterr().err
    # The same name with other flags: refused before anything is loaded, written or deleted.
    before = contents(run_dir)
    code, _, _ = run(tmp_path, *RESNET_TINY, "--bits", "4", "--exp_name", "again")
    assert code == 2 and contents(run_dir) == before
    assert capsys.readouterr().err == (
        f"eval_run: error: {run_dir} holds a completed run that was run with other flags (weight_format \"int8\" -> "
        '"int4", act_format "int8" -> "int4"); give --exp_name NAME to keep both, or pass --overwrite_output_dir '
        "to replace it\n")  # formats resolved, not the --bits spelling
    # --overwrite_output_dir replaces it, with a note naming what differed.
    code, results, _ = run(tmp_path, *RESNET_TINY, "--bits", "4", "--exp_name", "again", "--overwrite_output_dir")
    assert code == 0 and results["layers"]["classifier.1"]["weight_format"] == "int4"
    err = capsys.readouterr().err
    assert (f"eval_run: note: replacing the completed run {run_dir}, which was run with other flags (weight_format "
            '"int8" -> "int4", act_format "int8" -> "int4"), as --overwrite_output_dir asks\n') in err
    assert not (run_dir / "checkpoint-3").exists() and not (run_dir / "runs").exists()
    assert not (run_dir / "final_model" / "stale.txt").exists() and (run_dir / "final_model" / "config.json").is_file()
    assert not (run_dir / "tensorboard" / "events.old").exists()


def test_a_run_that_fails_before_training_leaves_the_completed_run_it_would_replace(tmp_path, capsys):
    code, _, run_dir = run(tmp_path, *RESNET_TINY, "--search", "--exp_name", "kept")
    assert code == 0
    before = contents(run_dir)
    capsys.readouterr()
    # Found only once the data is loaded (one epoch of 128 samples is 8 steps); it used to delete
    # the completed run's final_model/ and output.txt first.
    # Bad input found by our own check: refused like a bad flag (exit code 2, the message alone).
    code = main([*RESNET_TINY, "--search", "--exp_name", "kept", *setting(FAST, "--max_steps", "-1"),
                 "--num_train_epochs", "1", "--delay_steps", "1000", "--output_root_dir", str(tmp_path),
                 "--overwrite_output_dir"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "eval_run: error: --delay_steps 1000 leaves no search step in this run's 8 steps: the policy "
        f"would never learn; use fewer delay steps (default: half of the steps) (the completed run in {run_dir} was "
        "left as it was)")  # --overwrite_output_dir asked to replace it: said
    assert contents(run_dir) == before


def test_resuming_a_finished_run_without_more_steps_fails_before_touching_it(tmp_path, capsys):
    code, _, run_dir = run(tmp_path, *RESNET_TINY, "--search", "--exp_name", "done", "--save_steps", "8")
    assert code == 0 and (run_dir / "checkpoint-8").is_dir()
    before = contents(run_dir)
    same = [*RESNET_TINY, "--search", "--exp_name", "done", "--save_steps", "8", *FAST, "--output_root_dir", str(tmp_path),
            "--resume_from_checkpoint", str(run_dir)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # --max_steps 8 (FAST): known at parse time
        main(same)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"error: this run's 8 steps (from --max_steps or --num_train_epochs) are not more than the step of checkpoint "
        f"'{run_dir / 'checkpoint-8'}', 8: nothing is left to train; resume with more steps than 8, or start a new "
        "run (see --help)\n")
    # One epoch of 128 samples is 8 steps: known once the data is loaded, before the run is replaced.
    assert main([*setting(same, "--max_steps", "-1"), "--num_train_epochs", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "nothing is left to train; resume with more steps than 8, or start a new run")
    assert contents(run_dir) == before
    # More steps continue the same search: the delay and policy learning rate the first run derived
    # from its 8 steps stay (derived again from 12, they differed from the checkpoint's and failed).
    first = json.loads((run_dir / "results.json").read_text())["args"]
    assert main(setting(same, "--max_steps", "12")) == 0
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["status"] == "completed" and resumed["search"]["steps"] == 12
    assert (resumed["args"]["delay_steps"], resumed["args"]["rl_learning_rate"]) == \
        (first["delay_steps"], first["rl_learning_rate"]) == (4, 0.1)
    # still the run's own derivations: a launch that leaves them to the run finds it the same run
    assert resumed["args"]["derived_defaults"] == first["derived_defaults"] == ["delay_steps", "rl_learning_rate"]
    from eval.run_compare import changed_args

    planned = {**first, "delay_steps": None, "rl_learning_rate": None, "max_steps": 12}
    assert changed_args(planned, resumed["args"]) == []


def test_resume_checks_the_search_state_before_touching_the_run(tmp_path, capsys):
    import shutil

    code, _, run_dir = run(tmp_path, *RESNET_TINY, "--search", "--exp_name", "s", "--save_steps", "4")
    assert code == 0 and (run_dir / "checkpoint-8" / "reinforce_state.pt").is_file()
    flags = [*RESNET_TINY, "--search", "--exp_name", "s", "--save_steps", "4", *FAST, "--output_root_dir", str(tmp_path)]
    # checkpoint-8 cut short while saving (no search state): the run directory means checkpoint-4.
    (run_dir / "checkpoint-8" / "reinforce_state.pt").unlink()
    from eval.eval_parse import parse_run_args

    assert parse_run_args([*flags, "--resume_from_checkpoint", str(run_dir)]).resume_from_checkpoint == \
        str(run_dir / "checkpoint-4")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*setting(flags, "--max_steps", "12"), "--resume_from_checkpoint", str(run_dir / "checkpoint-8")])
    assert exit_info.value.code == 2 and (
        f"--resume_from_checkpoint '{run_dir / 'checkpoint-8'}' has no reinforce_state.pt: a fixed-format run wrote "
        "it, or its save was cut short; resume a search from a checkpoint of a search run") in capsys.readouterr().err
    # A checkpoint moved away from its run (no config.json to compare flags with): its search
    # settings are checked once the trainer is built, before the completed run is replaced.
    shutil.copytree(run_dir / "checkpoint-4", tmp_path / "moved" / "checkpoint-4")
    before = contents(run_dir)
    code = main([*setting(flags, "--max_steps", "12"), "--cost_beta", "3", "--resume_from_checkpoint",
                 str(tmp_path / "moved" / "checkpoint-4"), "--overwrite_output_dir"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("eval_run: error: the checkpoint's search settings differ from this run's")
    assert "cost_beta" in last
    assert contents(run_dir) == before


def test_save_strategy_best_saves_at_an_improving_evaluation_and_resumes_from_the_run_dir(tmp_path):
    code, results, run_dir = run(tmp_path, *RESNET_TINY, "--bits", "8", "--save_strategy", "best", "--eval_steps", "4")
    saved = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert code == 0 and saved and set(saved) <= {4, 8} and (run_dir / "checkpoint-4").is_dir()  # the first is best
    # results.json names the best one; its metrics are the last step's (final_model/).
    best = results["best_checkpoint"]
    assert best["checkpoint"] == f"checkpoint-{saved[-1]}" and best["metric"] == "eval_accuracy"
    state = json.loads((run_dir / best["checkpoint"] / "trainer_state.json").read_text())
    assert best["value"] == state["best_metric"]
    from eval.eval_parse import parse_run_args

    same = [*RESNET_TINY, "--bits", "8", "--save_strategy", "best", "--eval_steps", "4", *FAST, "--output_root_dir",
            str(tmp_path)]
    resumed = parse_run_args([*setting(same, "--max_steps", "12"), "--resume_from_checkpoint", str(run_dir)])
    assert resumed.resume_from_checkpoint == str(run_dir / f"checkpoint-{saved[-1]}")


def test_non_finite_metrics_fail_the_run(tmp_path, capsys):
    code, results, run_dir = run(tmp_path, *RESNET_TINY, "--bits", "0", "--learning_rate", "1e30")
    assert code == 1 and results["status"] == "failed" and results["error"] == "non-finite evaluation metrics"
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"eval_run: error: non-finite evaluation metrics (status failed in {run_dir / 'results.json'})"


def test_export_dir_writes_the_low_bit_checkpoint_of_the_final_model(tmp_path):
    from quant.checkpoint_load import load_quantized_checkpoint
    from quant.surgery import quantized_layers

    export_dir = tmp_path / "deploy" / "model"
    code, results, run_dir = run(tmp_path / "out", *RESNET_TINY, "--weight_bits", "4", "--activation_bits", "8",
                                 "--export_dir", str(export_dir))
    assert code == 0 and results["status"] == "completed"
    assert results["export"]["dir"] == str(export_dir) and (export_dir / "config.json").is_file()
    loaded = quantized_layers(load_quantized_checkpoint(export_dir))
    assert {name: (layer.weight_format.name, layer.act_format.name) for name, layer in loaded.items()} == \
        {name: (layer["weight_format"], layer["act_format"]) for name, layer in results["layers"].items()}
    assert [p.name for p in export_dir.parent.iterdir()] == ["model"]  # no temporary left behind


def test_an_unreachable_cost_target_stops_the_run_before_training(tmp_path, capsys):
    """--cost_target in MiB needs the model to check (--cost_target_bits is checked with the flags):
    bad input, refused like a bad flag once the model is built, with nothing written."""
    code = main([*RESNET_TINY, "--search_space", "4,8", "--cost_target", "1000", *FAST, "--output_root_dir",
                 str(tmp_path / "out")])
    error = capsys.readouterr().err.splitlines()[-1]
    assert code == 2 and error.startswith("eval_run: error: --cost_target 1000: the cost_target 1000 MiB is above "
                                          "every cost this search space can reach ([")
    assert error.endswith("MiB): the cost term pushes every decision towards its most expensive option; give a "
                          "--cost_target in that range, or --cost_target_bits between the search space's narrowest "
                          "and widest formats (int4, int8)")
    assert [path.name for path in (tmp_path / "out").rglob("*") if path.is_file()] == [".run.lock"]


def test_a_failed_export_keeps_the_runs_metrics_and_says_how_to_export_again(tmp_path, capsys, monkeypatch):
    """The export runs after training: its failure (here the directory appeared meanwhile, as when
    two runs share one --export_dir) fails the run but keeps what it measured and its model."""
    import quant.export

    def taken(model, out_dir, processor=None, **options):
        raise FileExistsError(f"{out_dir} already exists")

    monkeypatch.setattr(quant.export, "export_quantized_checkpoint", taken)
    code, results, run_dir = run(tmp_path / "out", *RESNET_TINY, "--bits", "8", "--export_dir",
                                 str(tmp_path / "deploy"))
    error = (f"the export to --export_dir {tmp_path / 'deploy'} failed (FileExistsError: {tmp_path / 'deploy'} "
             f"already exists); the trained model is in {run_dir / 'final_model'}: export it with python -m "
             f"quant.export {run_dir} --out DIR")
    assert code == 1 and results["status"] == "failed" and results["error"] == error
    assert results["metrics"]["eval_accuracy"] > 0 and results["cost"]["memory_mib"] > 0
    assert "FileExistsError" in results["traceback"] and (run_dir / "final_model" / "config.json").is_file()
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"eval_run: error: {error} (status failed in {run_dir / 'results.json'})"


def test_a_failed_export_write_is_quoted_without_its_type(tmp_path, monkeypatch):
    """An ExportWriteError names the file and its own way out (quant/export.py): quoted as it is."""
    import errno

    import quant.export

    def full(model, out_dir, processor=None, **options):
        raise quant.export.ExportWriteError(f"{out_dir}/fliqs_model.safetensors",
                                            OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(quant.export, "export_quantized_checkpoint", full)
    code, results, run_dir = run(tmp_path / "out", *RESNET_TINY, "--bits", "8", "--export_dir",
                                 str(tmp_path / "deploy"))
    assert code == 1 and results["error"] == (
        f"the export to --export_dir {tmp_path / 'deploy'} failed (cannot write {tmp_path / 'deploy'}/"
        f"fliqs_model.safetensors: No space left on device (errno 28)); the "
        f"trained model is in {run_dir / 'final_model'}: export it with python -m quant.export {run_dir} --out DIR")


def test_a_search_that_ends_in_float_skips_its_export_with_a_note(tmp_path, capsys):
    # A 32-bit target (exactly) over none/int8 gives format none everywhere: nothing low-bit to write, and the
    # run completes (it used to fail after training, when the export refused a float model).
    code, results, run_dir = run(tmp_path / "runs", *RESNET_TINY, "--search_space", "none,8", "--cost_target_bits",
                                 "32", "--target_tolerance", "0", "--export_dir", str(tmp_path / "exported"))
    assert code == 0 and results["status"] == "completed" and results.get("export") is None
    assert {layer["weight_format"] for layer in results["layers"].values()} == {"none"}
    assert (f"eval_run: note: every layer ended at format none: no low-bit checkpoint to write to --export_dir "
            f"{tmp_path / 'exported'} (final_model/ holds the float weights)") in capsys.readouterr().err
    assert not (tmp_path / "exported").exists()


def test_export_refuses_what_would_give_wrong_weights_or_destroy_the_run(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageClassification

    from quant.export_cli import main as export_main

    code, results, run_dir = run(tmp_path / "out", *RESNET_TINY, "--weight_bits", "4", "--activation_bits", "8",
                                 "--export_dir", str(tmp_path / "deploy"))
    assert code == 0
    # transformers cannot load the low-bit checkpoint: an error, not a model with random conv weights
    with pytest.raises(OSError):
        AutoModelForImageClassification.from_pretrained(str(tmp_path / "deploy"))
    # --out may not replace the run it reads, even with --overwrite
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    for out in (run_dir, run_dir / "final_model", run_dir.parent, run_dir / "final_model" / "x", run_dir / "deploy"):
        with pytest.raises(ValueError, match=f"^--out '{out}' would overwrite or lie inside the run '{run_dir}' it "
                                             f"exports .*; choose a directory outside it, e.g. 'deploy/{run_dir.name}'$"):
            export_main([str(run_dir), "--out", str(out), "--overwrite"])
        if out == run_dir or out == run_dir.parent:  # it exists: the same answer without --overwrite
            with pytest.raises(ValueError, match="would overwrite or lie inside the run"):
                export_main([str(run_dir), "--out", str(out)])
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before
    # a failed run is not exported
    failed = tmp_path / "failed"
    shutil.copytree(run_dir, failed)
    data = json.loads((failed / "results.json").read_text())
    data.update(status="failed", error="non-finite evaluation metrics")
    (failed / "results.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="is not a completed run \\(failed: non-finite evaluation metrics\\)"):
        export_main([str(failed), "--out", str(tmp_path / "x")])
    # final_model/ without one of the model's weights: an error, not a freshly initialised conv
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    weights = load_file(str(partial / "final_model" / "model.safetensors"))
    del weights["resnet.embedder.embedder.convolution.weight"]
    save_file(weights, str(partial / "final_model" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="does not hold the float weights of this resnet18 model \\(missing keys: "
                       "resnet.embedder.embedder.convolution.weight\\)"):
        export_main([str(partial), "--out", str(tmp_path / "x")])
    # final_model/ without its config or its weights file: our error, not transformers' (rc 1 or a wrong key)
    for missing, lacking in (("config.json", "config.json"), ("model.safetensors", "weights")):
        (partial / "final_model" / missing).unlink()
        with pytest.raises(FileNotFoundError, match=rf"^{partial}/final_model has no {lacking} \(the run's model is "
                                                    r"incomplete: was part of it moved or deleted\?\); rerun it to "
                                                    r"rebuild its model$"):
            export_main([str(partial), "--out", str(tmp_path / "x")])
        shutil.copy(run_dir / "final_model" / missing, partial / "final_model" / missing)
    # bad ONNX example sizes and an --out under a file fail before loading
    (tmp_path / "afile").write_text("")
    for argv, match in ((["--onnx", "--seq_len", "1"], "--seq_len must be >= 2"),
                        (["--onnx", "--image_size", "0"], "--image_size must be >= 1, got 0")):
        with pytest.raises(ValueError, match=match):
            export_main([str(run_dir), "--out", str(tmp_path / "x"), *argv])
    with pytest.raises(ValueError, match="--out .*afile/x' cannot be a directory: .*afile' is a file"):
        export_main([str(run_dir), "--out", str(tmp_path / "afile" / "x")])
    assert not (tmp_path / "x").exists()


def test_search_on_digits_and_load_config_reproduces_it(tmp_path, capsys):
    code, results, run_dir = run(tmp_path / "search", *RESNET_TINY, "--search_space", "int2,int4,fp8_e4m3",
                                 "--cost_target_bits", "4", "--delay_steps", "2")
    assert code == 0 and results["method"] == "search"
    # config.json holds what the run resolved itself, as results.json does (rl: min(0.1, 10 / (8 - 2)))
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["delay_steps"], config["device"]) == (2, "cpu") and config["rl_learning_rate"] == pytest.approx(0.1)
    assert config == results["args"]
    # examples/reselect.py recomputes the answer from results.json alone: the run's own
    import importlib.util

    spec = importlib.util.spec_from_file_location("reselect", Path(__file__).parents[2] / "examples" / "reselect.py")
    reselect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reselect)
    assert reselect.reselect(results) == [d["format"] for d in results["search"]["decisions"].values()]
    search = results["search"]
    assert search["search_space"] == ["int2", "int4", "fp8_e4m3"] and search["granularity"] == "layer"
    assert set(search["decisions"]) == set(results["layers"])
    for name, decision in search["decisions"].items():
        assert sum(decision["probabilities"].values()) == pytest.approx(1.0)
        assert decision["format"] in decision["probabilities"]
        assert results["layers"][name]["weight_format"] == decision["format"]
    cost = results["cost"]
    assert cost["target"] == pytest.approx(sum(l["num_weights"] for l in results["layers"].values()) * 4 / 8 / 2**20)
    assert cost["ratio"] == pytest.approx(cost["memory_mib"] / cost["target"])
    # Re-apply the found assignment to the trained weights and evaluate again: same numbers.
    code, again, _ = run(tmp_path / "again", *RESNET_TINY, "--load_config", str(run_dir / "results.json"),
                         "--eval_only")
    assert code == 0 and again["method"] == "loaded" and again["exp_name"] == "resnet18_loaded_s42"
    assert again["metrics"]["eval_loss"] == results["metrics"]["eval_loss"]
    assert again["metrics"]["eval_accuracy"] == results["metrics"]["eval_accuracy"]
    assert {n: l["weight_format"] for n, l in again["layers"].items()} == \
        {n: l["weight_format"] for n, l in results["layers"].items()}
    # Into a model of another shape (one more block in the last stage) it would quantize part of
    # the model only and under-report its cost: refused, naming the layers.
    deeper = ["--model_type", "resnet18", "--config_overrides", "depths=[1,1,1,2],hidden_sizes=[8,8,8,8],embedding_size=8"]
    capsys.readouterr()
    code = main([*deeper, "--load_config", str(run_dir / "results.json"), "--from_scratch", *FAST,
                 "--output_root_dir", str(tmp_path / "deeper")])
    assert code == 2 and not list((tmp_path / "deeper").rglob("results.json"))  # bad input: nothing written
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"eval_run: error: --load_config '{run_dir / 'results.json'}' assigns formats to {len(results['layers'])} "
        "layers of another model than this resnet18 (this model's layers missing from it: 2 (resnet.encoder.stages.3."
        "layers.1.layer.0.convolution, resnet.encoder.stages.3.layers.1.layer.1.convolution)); load it into the model "
        "it was found on (that run's --config_overrides and weights)")


def test_block_search_on_the_text_task(tmp_path):
    code, results, _ = run(tmp_path, *BERT_TINY, "--block_search", "--search_space", "4,8", "--reward_source",
                           "heldout", "--report_to", "none")
    assert code == 0
    decisions = results["search"]["decisions"]
    assert list(decisions) == ["query", "key", "value", "attention_output", "intermediate", "output", "pooler",
                               "classifier"]
    assert results["args"]["from_scratch"] is True


def test_float_run_counts_32_bits(tmp_path):
    code, results, _ = run(tmp_path, *BERT_TINY, "--bits", "0", "--no-quantize_pooler", "--report_to", "none")
    assert code == 0 and results["method"] == "float"
    assert "bert.pooler.dense" not in results["layers"]
    assert {l["weight_format"] for l in results["layers"].values()} == {"none"}
    assert results["cost"]["memory_mib"] == results["cost"]["float_memory_mib"]


def test_local_csv_files_as_a_task(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["sentence,label"] + [f"{'good fine nice' if i % 2 else 'bad awful poor'} movie {i},{i % 2}"
                                 for i in range(40)]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    (data / "dev.csv").write_text("\n".join(rows[:21]) + "\n")
    code, results, _ = run(tmp_path / "out", "--task", "sst2", "--model_type", "bert-tiny", "--from_scratch",
                           "--train_file", str(data / "train.csv"), "--validation_file", str(data / "dev.csv"),
                           "--weight_bits", "8", "--activation_bits", "8", "--report_to", "none")
    assert code == 0 and results["status"] == "completed"
    assert results["args"]["train_file"].endswith("train.csv")


def test_a_crash_writes_a_failed_results_json(tmp_path, capsys, monkeypatch):
    """A failure inside the libraries (not one of our checks) keeps its type, writes a failed
    results.json with the traceback, and exits 1: during training, and during setup too."""
    import transformers

    import eval.run_setup

    def crash(self, *args, **kwargs):
        import torch

        torch.zeros(2).view(3)  # torch's own RuntimeError, as a real crash in training raises it

    monkeypatch.setattr(transformers.Trainer, "train", crash)
    code, results, run_dir = run(tmp_path / "a", *RESNET_TINY, "--bits", "8")
    assert code == 1 and results["status"] == "failed" and results["error"].startswith("RuntimeError: shape '[3]'")
    assert "Traceback" in results["traceback"]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"eval_run: error: {results['error']} (traceback in {run_dir / 'results.json'})")

    def library_value_error(args):
        json.loads("{")  # a ValueError raised inside a library while loading: not bad input of ours

    monkeypatch.setattr(eval.run_setup, "load_data_and_model", library_value_error)
    code, results, run_dir = run(tmp_path / "b", *RESNET_TINY, "--bits", "8")
    assert code == 1 and results["status"] == "failed" and results["error"].startswith("JSONDecodeError: ")
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("eval_run: error: JSONDecodeError: ")

    # A bug in our own code (the interpreter raises in our frame, not a `raise` of a check): a
    # failure with its traceback, not a refusal of the input.
    monkeypatch.undo()
    real_quantize = eval.run_setup.quantize_model
    monkeypatch.setattr(eval.run_setup, "quantize_model", lambda *a, **k: (*real_quantize(*a, **k), None))
    code, results, run_dir = run(tmp_path / "c", *RESNET_TINY, "--bits", "8")
    assert code == 1 and results["status"] == "failed"
    assert results["error"] == "ValueError: too many values to unpack (expected 2)"
    assert "run_setup.py" in results["traceback"]


def test_bad_data_is_refused_like_a_bad_flag(tmp_path, capsys):
    """A data file our checks refuse once it is read: one error line without the exception type,
    exit code 2, and nothing written or deleted (a completed run of the directory stays)."""
    data = tmp_path / "d d"
    data.mkdir()
    rows = ["sentence,label"] + [f"{'good fine' if i % 2 else 'bad awful'} movie {i},{i % 2}" for i in range(32)]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    (data / "empty.csv").write_text("sentence,label\n")
    (data / "wrong.csv").write_text("text,target\nfine,1\n")
    text = ["--task", "sst2", "--model_type", "bert-tiny", "--from_scratch", "--validation_file",
            str(data / "train.csv"), "--report_to", "none", "--exp_name", "text"]
    out = tmp_path / "out"
    code, _, run_dir = run(out, *text, "--train_file", str(data / "train.csv"))
    assert code == 0
    before = contents(run_dir)
    capsys.readouterr()
    for name, message in (
            ("empty.csv", f"--train_file '{data / 'empty.csv'}' has no rows; give a csv file with at least one "
                          "example"),
            ("wrong.csv", f"train file '{data / 'wrong.csv'}' lacks columns ['sentence', 'label'] needed by task "
                          "'sst2' (it has ['text', 'target']); rename its columns to ['sentence', 'label']")):
        code = main([*text, "--train_file", str(data / name), *FAST, "--output_root_dir", str(out),
                     "--overwrite_output_dir"])
        err = capsys.readouterr().err.splitlines()  # after the datasets library's progress bars
        left = f" (the completed run in {run_dir} was left as it was)"  # though --overwrite_output_dir
        assert code == 2 and err[-1] == f"eval_run: error: {message}{left}", err
        assert contents(run_dir) == before
    # A directory without a run: nothing is written in it either (no config.json, no failed results.json).
    code = main([*setting(text, "--exp_name", "new"), "--train_file", str(data / "empty.csv"), *FAST,
                 "--output_root_dir", str(out)])
    assert code == 2 and contents(out / "sst2" / "new") == {}


def test_offline_hub_fails_fast_with_the_ways_out(tmp_path, capsys):
    start = time.time()
    code, results, _ = run(tmp_path, "--task", "mrpc", "--model", "bert", "--block_search", "--report_to", "none")
    assert time.time() - start < 10
    assert code == 1 and results["status"] == "failed"
    assert "--train_file" in results["error"] and "built-in" in results["error"]


def test_main_metric_follows_a_custom_metric():
    from eval.eval_run import main_metric_of

    trainer_keys = {"eval_loss": 0.3, "eval_runtime": 1.0, "eval_samples_per_second": 9.0, "epoch": 1.0}
    assert main_metric_of({**trainer_keys, "eval_accuracy": 0.9}, "eval_accuracy") == "eval_accuracy"
    assert main_metric_of({**trainer_keys, "eval_myacc": 0.5, "eval_f1": 0.4}, "eval_accuracy") == "eval_myacc"
    assert main_metric_of(trainer_keys, "eval_accuracy") == "eval_loss"


def test_a_missed_target_is_named():
    import argparse

    from eval.eval_run import missed_target_note

    args = argparse.Namespace(target_tolerance=0.05, cost_function="tunas_abs", final_selection="constrained")
    assert missed_target_note(args, 1.04) is None
    assert missed_target_note(args, 0.8) == (
        "note: the answer's cost is 0.800 of the target, outside 0.95 to 1.05 (--target_tolerance 0.05): the search "
        "found no assignment inside; check --cost_target/--cost_target_bits against the search space")
    args.cost_function = "hard_exponential"  # one-sided: cheaper is fine
    assert missed_target_note(args, 0.8) is None
    args.final_selection = "argmax"  # it ignores --target_tolerance: the band is only the way out
    assert missed_target_note(args, 1.2) == (
        "note: the answer's cost is 1.200 of the target: --final_selection argmax takes every decision's most likely "
        "format and does not aim for the target; --final_selection constrained takes the most likely answer costing "
        "at most 1.05 of it (--target_tolerance 0.05), where the search space has one")
    assert missed_target_note(args, 1.04) is None  # where constrained would keep it too
    args.cost_function, args.target_tolerance = "tunas_abs", 0.2
    assert missed_target_note(args, 0.7) == (
        "note: the answer's cost is 0.700 of the target: --final_selection argmax takes every decision's most likely "
        "format and does not aim for the target; --final_selection constrained takes the most likely answer costing "
        "0.8 to 1.2 of it (--target_tolerance 0.2), where the search space has one")


@pytest.mark.parametrize("accumulation", [2, 4])
def test_gradient_accumulation_averages_like_one_big_batch(tmp_path, accumulation):
    # transformers skips dividing by the accumulation steps for models whose forward takes **kwargs
    # (it expects them to normalise by num_items_in_batch; these average over their batch instead).
    import torch
    from transformers import Trainer, TrainingArguments

    from eval.models import build_model
    from eval.run_trainer import mean_loss_trainer

    overrides = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
                 "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    generator = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(2, 30, (6,), generator=generator), "labels": torch.tensor(i % 2)}
            for i in range(8)]

    def one_step(batch_size: int, steps: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("bert-tiny", num_labels=2, from_scratch=True, config_overrides=overrides, vocab_size=32,
                            pad_token_id=0)
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=steps, max_steps=1, learning_rate=1.0, optim="sgd",
                                 lr_scheduler_type="constant", max_grad_norm=0.0, report_to=[], use_cpu=True,
                                 save_strategy="no", disable_tqdm=True)
        mean_loss_trainer(Trainer(model=model, args=args, train_dataset=data)).train()
        return {name: p.detach().clone() for name, p in model.named_parameters()}

    whole, accumulated = one_step(8, 1), one_step(8 // accumulation, accumulation)
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_a_subset_larger_than_the_split_is_named(tmp_path, capsys):
    code = main([*RESNET_TINY, "--bits", "8", "--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples",
                 "5000", "--device", "cpu", "--report_to", "none", "--output_root_dir", str(tmp_path)])
    assert code == 0
    assert ("eval_run: note: --max_eval_samples 5000 is more than the 360 rows of the validation split; using all of "
            "them\n") in capsys.readouterr().err


def test_a_resumed_run_drops_what_the_earlier_attempt_logged_after_its_checkpoint(tmp_path):
    """TensorBoard: resuming from checkpoint-4 of an 8-step run replaces its steps 5-8 (they were
    logged twice, with different values); a search's model.txt shows the formats it found."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _, run_dir = run(tmp_path, *RESNET_TINY, "--search", "--exp_name", "r", "--save_steps", "4")
    assert code == 0
    first = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [e.step for e in first.Scalars("train/loss")] == [4, 8]  # --log_steps 4
    # TensorBoard reads a directory's event files in name order: the time in whole seconds, then a
    # per-process counter compared as text (".10" < ".9"). A resume in the same second as a tiny
    # run's start could sort first and be read before the steps it purges: not so for real runs.
    time.sleep(1.0 - time.time() % 1.0)
    assert main([*RESNET_TINY, "--search", "--exp_name", "r", "--save_steps", "4", *FAST,
                 "--output_root_dir", str(tmp_path), "--resume_from_checkpoint", str(run_dir / "checkpoint-4")]) == 0
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8]
    assert [e.step for e in events.Scalars("train/search/reward")] == [4, 8]
    results = json.loads((run_dir / "results.json").read_text())
    model_text = (run_dir / "model.txt").read_text()
    for layer in results["layers"].values():
        assert f"weight_format={layer['weight_format']}, act_format={layer['act_format']}" in model_text
    assert "weight_format=none" not in model_text


@pytest.mark.parametrize(("mode_flags", "reused"), [
    (["--bits", "8"], True),  # a fixed-format run
    (["--search_space", "4,8"], False),  # a search: BatchNorm re-estimated for its answer (ResNet)
    (["--search_space", "4,8", "--bn_recalibration_batches", "0"], True),
])
def test_an_evaluation_at_the_last_step_is_not_run_again(tmp_path, monkeypatch, mode_flags, reused):
    """With --eval_steps dividing the steps the Trainer evaluates the final model at the last step;
    unless a search re-estimated its BatchNorm statistics after that, the final metrics are those
    (a second pass would give the same numbers, which the forced fresh evaluation shows)."""
    from transformers import Trainer

    passes = []
    real = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate",
                        lambda self, *a, **k: passes.append(self.state.global_step) or real(self, *a, **k))
    flags = [*RESNET_TINY, *mode_flags, "--eval_steps", "4"]
    code, results, _ = run(tmp_path / "reuse", *flags)
    assert code == 0 and passes == ([4, 8] if reused else [4, 8, 8])
    passes.clear()
    monkeypatch.setattr("eval.eval_run.last_step_evaluation", lambda state: None)
    code, fresh, _ = run(tmp_path / "fresh", *flags)
    assert code == 0 and passes == [4, 8, 8]
    timing = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    assert {k: v for k, v in results["metrics"].items() if k not in timing} == \
        {k: v for k, v in fresh["metrics"].items() if k not in timing}
    assert set(results["metrics"]) == set(fresh["metrics"])


def test_last_step_evaluation_reads_only_an_evaluation_of_the_last_step():
    from types import SimpleNamespace

    from eval.eval_run import last_step_evaluation

    train = {"loss": 1.0, "step": 8}
    assert last_step_evaluation(SimpleNamespace(global_step=8, log_history=[
        {"eval_accuracy": 0.5, "eval_runtime": 1.0, "epoch": 2.0, "step": 8}, train])) == \
        {"eval_accuracy": 0.5, "eval_runtime": 1.0, "epoch": 2.0}
    assert last_step_evaluation(SimpleNamespace(global_step=8, log_history=[
        {"eval_accuracy": 0.5, "step": 4}, train])) is None  # an earlier step's
    assert last_step_evaluation(SimpleNamespace(global_step=8, log_history=[train])) is None
    assert last_step_evaluation(SimpleNamespace(global_step=0, log_history=[])) is None


def test_resuming_from_another_runs_checkpoint_starts_this_directory_afresh(tmp_path):
    # The old run's checkpoints and logs stayed beside the new run's, with a config.json of the new
    # run: a later resume from a stale checkpoint was checked against the wrong flags.
    base = [*RESNET_TINY, "--bits", "8", "--save_steps", "4", *FAST, "--output_root_dir", str(tmp_path)]
    assert main([*base, "--exp_name", "a", "--learning_rate", "0.01"]) == 0
    run_a = tmp_path / "digits" / "a"
    old_logs = set((run_a / "tensorboard").iterdir())
    assert (run_a / "checkpoint-4").is_dir() and old_logs
    assert main([*base, "--exp_name", "b"]) == 0
    fork = str(tmp_path / "digits" / "b" / "checkpoint-4")
    # `a` completed with another learning rate: replaced only when asked to.
    assert main([*base, "--exp_name", "a", "--resume_from_checkpoint", fork]) == 2
    assert main([*base, "--exp_name", "a", "--resume_from_checkpoint", fork, "--overwrite_output_dir"]) == 0
    assert sorted(p.name for p in run_a.glob("checkpoint-*")) == ["checkpoint-8"]  # the new run's only
    assert not old_logs & set((run_a / "tensorboard").iterdir())
    assert json.loads((run_a / "config.json").read_text())["learning_rate"] == 1e-3
    # resumed from its own checkpoint, a run keeps them
    assert main([*setting(base, "--max_steps", "12"), "--exp_name", "a", "--resume_from_checkpoint",
                 str(run_a / "checkpoint-8")]) == 0
    assert sorted(p.name for p in run_a.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]


def test_a_second_run_of_a_busy_directory_stops_at_once_and_changes_nothing(tmp_path, capsys):
    code, _, run_dir = run(tmp_path, *RESNET_TINY, "--bits", "8", "--exp_name", "busy")
    assert code == 0 and run_lock_holder(run_dir) is None  # released when the run ended
    before = contents(run_dir)
    capsys.readouterr()
    with holding_run_lock(run_dir):  # another open file description: it blocks this process too
        holder = run_lock_holder(run_dir)
        assert holder is not None and holder.startswith("pid ")
        assert main([*RESNET_TINY, "--bits", "8", "--exp_name", "busy", *FAST, "--output_root_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (f"eval_run: error: {run_dir} is being written by another run ({holder}); wait "
                                       "for it to finish, or give this run another --exp_name\n")
    assert contents(run_dir) == before


def write_checkpoints(run_dir, steps, max_steps: int) -> None:
    """checkpoint-N folders with the trainer_state.json a run stopped after step N leaves."""
    for step in steps:
        (run_dir / f"checkpoint-{step}").mkdir()
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "max_steps": max_steps}))


def test_a_launched_run_gives_the_launchers_way_on(tmp_path, capsys, monkeypatch):
    """A run the launcher started (it hands the run its lock in FLIQS_RUN_LOCK_FD) goes on by a
    relaunch with --skip_completed, which resumes it from its checkpoint: not --resume_from_checkpoint."""
    import eval.eval_run as eval_run
    from eval.run_lock import HANDED_LOCK_ENV

    def interrupted(args, prepared, run_dir, start):
        write_checkpoints(run_dir, steps, max_steps=8)
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_run, "_run", interrupted)
    relaunch = ("relaunch the same launcher command (python eval_parallel.py or fliqs-launch) with --skip_completed "
                "(in place of any --overwrite)")
    for name, steps, ending in (
            ("mid", (4,), f"to go on from checkpoint-4, {relaunch}"),
            ("late", (4, 8), "checkpoint-8 is the run's last step (8), which leaves nothing to resume: to go on from "
                             f"checkpoint-4, {relaunch}"),
            ("only", (8,), f"checkpoint-8 is the run's last step (8), which leaves nothing to resume: to run it "
                           f"again, {relaunch}")):
        monkeypatch.setenv(HANDED_LOCK_ENV, "-1")  # as the launcher sets it (a stray value: the run locks itself)
        run_dir = tmp_path / "digits" / name
        assert main([*RESNET_TINY, "--bits", "8", "--exp_name", name, *FAST, "--output_root_dir", str(tmp_path)]) == 130
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"eval_run: interrupted; {run_dir} holds no results.json; " + ending)
    steps = ()
    monkeypatch.setenv(HANDED_LOCK_ENV, "-1")
    assert main([*RESNET_TINY, "--bits", "8", "--exp_name", "none", *FAST, "--output_root_dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"eval_run: interrupted; {tmp_path / 'digits' / 'none'} holds no results.json and no checkpoint (runs save "
        f"them with --save_steps N); to run it again, {relaunch}")


def test_ctrl_c_is_one_line_naming_what_is_left(tmp_path, capsys, monkeypatch):
    import eval.eval_run as eval_run

    def interrupted(args, prepared, run_dir, start):  # training reached a checkpoint, then Ctrl-C
        (run_dir / "checkpoint-4").mkdir()
        (run_dir / "checkpoint-4" / "trainer_state.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_run, "_run", interrupted)
    argv = [*RESNET_TINY, "--bits", "8", "--exp_name", "stop", *FAST, "--output_root_dir", str(tmp_path)]
    assert main(argv) == 130
    run_dir = tmp_path / "digits" / "stop"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"eval_run: interrupted; {run_dir} holds no results.json; to go on from checkpoint-4, run the same command "
        f"with --resume_from_checkpoint {run_dir} (in place of any it has)")
    assert not (run_dir / "results.json").exists() and run_lock_holder(run_dir) is None


def test_messages_name_the_console_script_the_run_was_started_as(tmp_path, capsys, monkeypatch):
    import sys

    import eval.eval_run as eval_run

    def interrupted(args, prepared, run_dir, start):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_run, "_run", interrupted)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fliqs-run"])
    argv = [*RESNET_TINY, "--bits", "8", "--exp_name", "named", *FAST, "--output_root_dir", str(tmp_path)]
    assert main(argv) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"fliqs-run: interrupted; {tmp_path / 'digits' / 'named'} holds no results.json and no checkpoint (runs save "
        "them with --save_steps N)")


def test_a_stop_after_the_last_step_points_to_the_checkpoint_before_it(tmp_path, capsys, monkeypatch):
    """Stopped in the final evaluation: the newest checkpoint is the last step, whose resume is
    refused (nothing left to train); the note names the one before it, or says to run again."""
    import eval.eval_run as eval_run

    def interrupted(args, prepared, run_dir, start):
        write_checkpoints(run_dir, steps, max_steps=8)
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_run, "_run", interrupted)
    for name, steps, ending in (
            ("late", (4, 8), "checkpoint-8 is the run's last step (8), which leaves nothing to resume: to go on from "
                             "checkpoint-4, run the same command with --resume_from_checkpoint {run_dir}/checkpoint-4 (in "
                             "place of any it has)"),
            ("only", (8,), "checkpoint-8 is the run's last step (8), which leaves nothing to resume: run the same "
                           "command again")):
        run_dir = tmp_path / "digits" / name
        assert main([*RESNET_TINY, "--bits", "8", "--exp_name", name, *FAST, "--output_root_dir", str(tmp_path)]) == 130
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"eval_run: interrupted; {run_dir} holds no results.json; " + ending.format(run_dir=run_dir))


def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    """The launcher stops its runs with SIGTERM: the run says what it left, as for Ctrl-C."""
    import signal

    import eval.eval_run as eval_run

    def terminated(args, prepared, run_dir, start):
        signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(eval_run, "_run", terminated)
    assert main([*RESNET_TINY, "--bits", "8", "--exp_name", "term", *FAST, "--output_root_dir", str(tmp_path)]) == 130
    run_dir = tmp_path / "digits" / "term"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"eval_run: interrupted; {run_dir} holds no results.json and no checkpoint (runs save them with --save_steps N)")
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_ctrl_c_while_the_flags_are_checked_is_one_line(tmp_path, capsys, monkeypatch):
    import eval.eval_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval.eval_run, "parse_run_args", interrupted)
    assert main(["--output_root_dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "eval_run: interrupted before the run started; nothing was written\n"
    assert list(tmp_path.iterdir()) == []


def test_recompute_inputs_changes_no_result(tmp_path):
    """--recompute_inputs trades memory for backward work; the search, its answer and its metrics
    are the same in every mode (and the flag is not a result argument)."""
    from eval.run_compare import NON_RESULT_ARGS
    from quant import input_share

    before = input_share.recompute_mode()
    try:
        runs = {mode: run(tmp_path / mode, *RESNET_TINY, "--search_space", "int2,int4,fp8_e4m3", "--cost_target_bits",
                          "4", "--delay_steps", "2", "--recompute_inputs", mode)
                for mode in ("off", "all")}
        assert input_share.recompute_mode() is input_share.RecomputeMode.ALL  # the run set it
    finally:
        input_share.set_recompute_mode(before)
    (code_off, off, _), (code_all, every, _) = runs["off"], runs["all"]
    assert code_off == code_all == 0 and (off["args"]["recompute_inputs"], every["args"]["recompute_inputs"]) == (
        "off", "all")
    timings = ("runtime", "per_second")
    assert {k: v for k, v in off["metrics"].items() if not any(t in k for t in timings)} == {
        k: v for k, v in every["metrics"].items() if not any(t in k for t in timings)}
    assert off["layers"] == every["layers"] and off["search"] == every["search"]
    assert "recompute_inputs" in NON_RESULT_ARGS


def test_a_deit_checkpoint_at_another_image_size_is_refused_before_training(tmp_path, capsys):
    """Its position embeddings fix the image size: the run failed at its first step (exit 1, a
    failed results.json) instead of with the check's one line."""
    deit = ["--task", "digits", "--model_type", "deit-tiny", "--bits", "0", "--config_overrides",
            "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"]
    code, _, run_dir = run(tmp_path / "first", *deit, "--from_scratch")
    assert code == 0
    capsys.readouterr()
    code = main(["--task", "digits", "--model_type", "deit-tiny", "--bits", "0", "--model_name_or_path",
                 str(run_dir / "final_model"), "--image_size", "64", *FAST, "--output_root_dir", str(tmp_path / "second")])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "eval_run: error: deit-tiny checkpoint position embeddings are for 32 px images, not 64; use 32 px images "
        "(--image_size 32) or train new ones (--from_scratch)")
    assert not list((tmp_path / "second").glob("*/*/results.json"))
