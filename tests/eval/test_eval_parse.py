"""The run CLI: every flag of the original README, defaults, and one error line per rule."""
import re
import sys
from pathlib import Path

import pytest

from eval.eval_parse import create_arg_parser, parse_run_args
from tests.readme_commands import readme_commands

REPO_ROOT = Path(__file__).resolve().parents[2]

SEED_README_FLAGS = [
    "num_train_epochs", "learning_rate", "train_batch_size", "eval_batch_size", "gradient_accumulation_steps",
    "optimizer", "fp16", "max_steps", "delay_steps", "rl_learning_rate", "cost_beta", "max_entropy_beta",
    "entropy_schedule_type", "cost_target", "search", "bits", "search_space", "single_decision", "block_search",
    "weight_only_search", "cost_function", "cost_type", "weight_bits", "activation_bits", "per_channel",
    "per_token", "act_range_percentile", "weight_range_percentile", "quantize_self_attention",
    "quantize_self_output", "quantize_output", "quantize_intermediate", "quantize_pooler", "quantize_classifier",
    "cuda_visible_devices", "eval_steps", "log_steps", "exp_name", "save_strategy", "seed",
    "gradient_checkpointing", "task", "model", "model_type", "output_root_dir",
]

# The original README's four examples, as the README gives them (without "python eval_parallel.py").
README_EXAMPLES = [" ".join(command.split()[2:]) for command in readme_commands()
                   if command.startswith("python eval_parallel.py --task") and "--output_root_dir output" in command]


def test_every_original_flag_exists():
    options = {opt for action in create_arg_parser()._actions for opt in action.option_strings}
    missing = [flag for flag in SEED_README_FLAGS if f"--{flag}" not in options]
    assert missing == []
    for flag in ("quantize_pooler", "quantize_classifier", "quantize_self_attention"):
        assert f"--no-{flag}" in options  # the originals could not be switched off


@pytest.mark.parametrize("example", README_EXAMPLES)
def test_readme_examples_parse(example):
    args = parse_run_args(example.split())
    assert args.learning_rate == 5e-5 and args.train_batch_size == 32 and not args.from_scratch


def test_readme_example_resolution():
    block = parse_run_args(README_EXAMPLES[0].split())
    assert (block.mode, block.granularity, block.search_formats, block.model_type) == \
        ("search", "block", ["int4", "int8"], "bert")
    assert block.exp_name == "bert_search_int4-int8_block_memory_t6b_s42"
    single = parse_run_args(README_EXAMPLES[2].split())
    assert (single.granularity, single.search_formats) == ("single", ["int4", "int8"])
    baseline = parse_run_args(README_EXAMPLES[3].split())
    assert (baseline.mode, baseline.weight_format, baseline.act_format) == ("uniform", "int8", "int8")
    assert baseline.exp_name == "efficientnet-b0_uniform_wint8-aint8_s42"


def test_bare_defaults_are_an_offline_search():
    args = parse_run_args([])
    assert (args.task, args.model_type, args.mode, args.from_scratch) == ("digits", "resnet18", "search", True)
    assert args.learning_rate == 1e-3 and args.cost_target_bits == 6.0 and args.reward_metric == "loss"
    assert args.cost_beta == 5.0 and args.granularity == "layer" and args.rl_learning_rate is None


def test_mode_and_format_resolution():
    assert parse_run_args(["--weight_bits", "0", "--activation_bits", "0"]).mode == "float"
    fp = parse_run_args(["--weight_bits", "fp8_e4m3", "--activation_bits", "E5M2"])
    assert (fp.mode, fp.weight_format, fp.act_format) == ("uniform", "fp8_e4m3", "fp8_e5m2")
    assert parse_run_args(["--bits", "4"]).weight_format == "int4"
    wo = parse_run_args(["--search", "--weight_only_search", "--activation_bits", "8"])
    assert (wo.mode, wo.weight_format, wo.act_format) == ("search", None, "int8")
    exp = parse_run_args(["--cost_function", "soft_exponential"])
    assert (exp.cost_beta, exp.reward_metric) == (-0.07, "likelihood")
    assert parse_run_args(["--search_space", "int2,int4,fp4,fp8_e4m3,int8"]).cost_target_bits == 5.0
    assert parse_run_args(["--no-quantize_pooler"]).quantize_pooler is False
    assert parse_run_args(["--task", "sst2", "--model", "bert"]).from_scratch is False


def write_results(path, **fields) -> None:
    """A minimal completed run's results.json for --load_config, with its final_model/ beside it."""
    import json

    from eval.model_configs import get_model_spec

    data = {"status": "completed", "task": "digits", "model_type": "resnet18",
            "layers": {"resnet.embedder.embedder.convolution": {"weight_format": "int4", "act_format": "int8"}}}
    (path.parent / "final_model").mkdir(exist_ok=True)
    get_model_spec(data["model_type"]).builtin_config().to_json_file(path.parent / "final_model" / "config.json")
    path.write_text(json.dumps({**data, **fields}))


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        parse_run_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # exactly one line
    return err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--task", "glue"], r"unknown task 'glue'|'glue'.*valid"),
        (["--model", "resnet34"], r"'resnet34'"),
        (["--task", "sst2", "--model", "resnet18"], r"resnet18 is a vision model but --task sst2 is a text task"),
        (["--search_space", "4,int9x"], r"--search_space: unknown format 'int9x'"),
        (["--search_space", ""], r"--search_space: empty search space"),
        (["--search_space", "4,,8"], r"--search_space: search space '4,,8' has an empty entry \(entry 2\)"),
        (["--search_space", "4,8,"], r"--search_space: search space '4,8,' has an empty entry \(entry 3\)"),
        (["--weight_bits", "1"], r"--weight_bits: invalid format '1'"),
        (["--cost_target", "0"], r"--cost_target must be > 0"),
        (["--cost_target", "-2"], r"--cost_target must be > 0"),
        (["--cost_target", "1", "--cost_target_bits", "4"], "mutually exclusive"),
        (["--cost_target_bits", "20"], r"error: --cost_target_bits 20 is outside what the search space int4,int8 can reach: "
                                       r"every assignment averages between 4 and 8 bits; give a target in that range "
                                       r"or widen the search space \(see --help\)$"),
        (["--search_space", "8,4", "--cost_target_bits", "3.5"], r"--cost_target_bits 3.5 is outside what the "
                                                                 r"search space int8,int4 can reach"),
        (["--task", "sst2", "--model", "bert", "--no-quantize_self_attention", "--no-quantize_self_output",
          "--no-quantize_output", "--no-quantize_intermediate", "--no-quantize_pooler", "--no-quantize_classifier"],
         "no quantizable layer is selected"),
        (["--single_decision", "--block_search"], "mutually exclusive; pick one granularity"),
        (["--search", "--weight_bits", "8"], "--search picks the formats itself"),
        (["--bits", "4", "--weight_bits", "8"], "either --bits or those two"),
        (["--fp16", "--bf16"], "mutually exclusive"),
        (["--cost_function", "hard_exponential", "--cost_beta", "0.5"],
         r"would reward larger models.*negative value such as -0.5"),
        (["--cost_beta", "-1"], r"would reward missing the target; use a positive value such as 1.0"),
        (["--cost_function", "soft_exponential", "--reward_metric", "loss"], "use --reward_metric likelihood"),
        (["--cost_function", "nope"], r"--cost_function 'nope' is not one of"),
        (["--cost_type", "latency"], r"unknown cost type 'latency'"),
        (["--entropy_schedule_type", "step"], r"unknown entropy schedule|'step'"),
        (["--reward_source", "eval"], r"--reward_source 'eval' is not one of \['train', 'heldout'\]"),
        (["--reward_source", "heldout", "--heldout_fraction", "0.9"], r"--heldout_fraction must be in \(0, 0.5\]"),
        (["--task", "stsb", "--model", "bert", "--reward_metric", "accuracy"], "stsb is a regression"),
        (["--train_batch_size", "0"], "--train_batch_size must be > 0"),
        (["--learning_rate", "-1"], "--learning_rate must be > 0"),
        (["--warmup_steps", "-5"], r"--warmup_steps must be >= 0, got -5 "),
        (["--weight_decay", "-1"], r"--weight_decay must be >= 0, got -1.0 "),
        (["--seed", "-1"], r"--seed must be in 0 \.\. 2\*\*32 - 1 \(what torch and numpy accept\), got -1 "),
        (["--seed", str(2**32)], r"--seed must be in 0 \.\. 2\*\*32 - 1"),
        (["--max_steps", "0"], "--max_steps must be > 0, or -1"),
        (["--act_range_percentile", "0"], r"--act_range_percentile must be in \(0, 100\]"),
        (["--train_file", "a.csv"], "--train_file and --validation_file go together"),
        (["--dataset_path", "d", "--train_file", "a", "--validation_file", "b"], "mutually exclusive"),
        (["--weight_bits", "8", "--block_search"], "--search picks the formats itself; drop --weight_bits"),
        (["--weight_only_search", "--bits", "8"],
         r"--weight_only_search searches the weight formats, and --bits 8 would fix them too; give the "
         r"activations' format alone: --activation_bits 8 "),
        (["--weight_only_search", "--weight_bits", "8", "--activation_bits", "8"],
         r"--weight_only_search searches the weight formats; drop --weight_bits "),
        (["--no-search", "--block_search"], "are search options and this run does not search .*; drop them"),
        (["--load_config", "r.json", "--search"], "cannot be combined with --search"),
        (["--cuda_visible_devices", "gpu0"], "comma-separated list of GPU indices"),
        (["--image_size", "32", "--task", "sst2", "--model", "bert"], "--image_size applies to vision tasks"),
        (["--save_strategy", "always"], r"--save_strategy 'always' is not one of"),
        (["--exp_name", "a/b"], "without '/'"),
        (["--delay_steps", "-3"], "--delay_steps must be >= 0"),
        (["--advantage", "local"], r"--advantage 'local' is not one of"),
        (["--bits", "0", "--export_dir", "exported"],
         r"--export_dir writes the low-bit checkpoint of a quantized run, and this run is float \(--bits 0\): drop "
         r"--export_dir"),
        (["--task", "synth-sentiment", "--model", "bert-tiny", "--metric", "glue"],
         r"--metric glue has no configuration for task 'synth-sentiment' \(only for GLUE tasks\); leave --metric "
         r"unset for the task's built-in offline metrics \(accuracy\)"),
        (["--recompute_inputs", "sometimes"],
         r"argument --recompute_inputs: invalid choice: 'sometimes' \(choose from '?off'?, '?mixed'?, '?all'?\)"),
        (["--model", "efficientnet-b0", "--gradient_checkpointing"],
         r"--gradient_checkpointing: efficientnet-b0 does not support it \(transformers has no activation "
         r"checkpointing for efficientnet\); drop the flag"),
    ],
)
def test_validation_errors_are_one_line_exit_2(argv, match, capsys):
    err = error_of(argv, capsys)
    assert err.startswith("eval_run: error: ") and re.search(match, err), err


def test_entropy_schedule_names_are_case_insensitive_and_recorded_canonically():
    # ' Cosine' passed the parse-time check and then failed after data loading (the trainer's
    # config is case-sensitive): it is now recorded, and passed on, as 'cosine'.
    assert parse_run_args(["--entropy_schedule_type", " Cosine"]).entropy_schedule_type == "cosine"


def test_recompute_inputs_takes_a_mode_case_insensitively_and_defaults_to_the_environment():
    assert parse_run_args(["--recompute_inputs", "ALL"]).recompute_inputs == "all"
    assert parse_run_args([]).recompute_inputs is None  # FLIQS_RECOMPUTE_INPUTS, else mixed


def test_gradient_checkpointing_is_accepted_where_transformers_supports_it():
    assert parse_run_args(["--task", "sst2", "--model", "bert-tiny", "--gradient_checkpointing"]).gradient_checkpointing


def test_bad_cost_type_of_a_fixed_run_fails_before_loading(capsys):
    # Fixed-format runs record their cost too: a bad --cost_type used to fail after data loading.
    err = error_of(["--bits", "8", "--cost_type", "bogus"], capsys)
    assert err.startswith("eval_run: error: ") and "unknown cost type 'bogus'" in err, err


@pytest.mark.parametrize(
    "argv, note",
    [
        (["--bits", "8", "--search_space", "2,4", "--cost_beta", "3", "--no-precision_warmup"],
         "eval_run: note: --search_space --cost_beta --no-precision_warmup only apply to a search; this run has "
         "fixed formats (weights int8, activations int8) and ignores them (to search instead, drop --bits)\n"),
        (["--weight_bits", "4", "--activation_bits", "8", "--cost_beta", "3"],
         "eval_run: note: --cost_beta only applies to a search; this run has fixed formats (weights int4, "
         "activations int8) and ignores them (to search instead, drop --weight_bits/--activation_bits)\n"),
        (["--bits", "0", "--cost_target_bits", "3"],
         "eval_run: note: --cost_target_bits only applies to a search; this run has fixed formats (float) and "
         "ignores them (to search instead, drop --bits)\n"),
        (["--no-search", "--search_space", "2,4"],
         "eval_run: note: --search_space only applies to a search; this run has fixed formats (float) and "
         "ignores them (to search instead, drop --no-search)\n"),
        (["--no-search", "--bits", "8", "--cost_target_bits", "3"],
         "eval_run: note: --cost_target_bits only applies to a search; this run has fixed formats (weights int8, "
         "activations int8) and ignores them (to search instead, drop --bits/--no-search)\n"),
        (["--load_config", "r.json", "--reward_source", "heldout"],
         "eval_run: note: --reward_source only applies to a search; this run has fixed formats (formats from "
         "--load_config r.json) and ignores them (to search instead, drop --load_config)\n"),
        (["--bits", "8", "--search_space", "4,8", "--cost_type", "compute"], ""),  # defaults and shared flags
        (["--search_space", "2,4", "--cost_beta", "3"], ""),  # a search reads them
        (["--search_space", "4"],
         "eval_run: note: --search_space 4 has one format (int4): every decision takes it, so this search is a "
         "fixed-format run with extra steps; list several formats (e.g. 4,8) to search, or run --bits int4 instead\n"),
        (["--search_space", "fp8_e4m3", "--weight_only_search", "--activation_bits", "8"],
         "eval_run: note: --search_space fp8_e4m3 has one format (fp8_e4m3): every decision takes it, so this search "
         "is a fixed-format run with extra steps; list several formats (e.g. 4,8) to search, or run --weight_bits "
         "fp8_e4m3 instead\n"),
    ],
)
def test_search_flags_of_a_fixed_run_are_named_as_ignored(argv, note, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_results(tmp_path / "r.json")
    parse_run_args(argv)
    assert capsys.readouterr().err == note


def test_search_only_flags_are_run_flags_that_only_searches_read():
    from eval.run_flag_notes import SEARCH_ONLY_FLAGS

    dests = {action.dest for action in create_arg_parser()._actions}
    assert set(SEARCH_ONLY_FLAGS) <= dests
    # Shared with fixed-format runs (their cost is recorded) or errors without --search.
    assert not {"cost_type", "single_decision", "block_search", "weight_only_search"} & set(SEARCH_ONLY_FLAGS)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--optimizer", "adamw_bogus"], r"--optimizer 'adamw_bogus' is not one of \[.*'adamw_torch'"),
        (["--lr_scheduler_type", "bogus"], r"--lr_scheduler_type 'bogus' is not one of \['linear'"),
        (["--save_strategy", "epoch", "--save_steps", "5"], "--save_steps applies to --save_strategy steps, not 'epoch'"),
        (["--save_strategy", "best"], "--save_strategy best saves a checkpoint whenever .*; give --eval_steps N"),
        (["--resume_from_checkpoint", "nowhere"], "--resume_from_checkpoint 'nowhere' is not a directory"),
        (["--resume_from_checkpoint", "."], r"--resume_from_checkpoint '.' holds no checkpoint"),
        (["--bits", "8", "--eval_only"], "--eval_only needs trained weights: give --load_config"),
        (["--config_overrides", "bogus=1"], "--config_overrides: unknown config key 'bogus' for ResNetConfig"),
        (["--config_overrides", "num_labels=3"], "'num_labels' is not allowed: it is set from the task's labels"),
        (["--task", "digits", "--train_file", "a.csv", "--validation_file", "b.csv"],
         "task 'digits' is built in and generates its own data"),
        (["--task", "sst2", "--model", "bert", "--train_file", "a.csv", "--validation_file", "b.csv"],
         "--train_file 'a.csv' is not a file"),
        (["--task", "sst2", "--model", "bert", "--train_file", "a.tsv", "--validation_file", "b.csv"],
         r"--train_file 'a.tsv': the extension must be one of"),
        (["--exp_name", "x" * 256], "--exp_name is 256 bytes long .*at most 255: give a shorter --exp_name"),
        (["--max_steps", "10", "--delay_steps", "10"], "--delay_steps 10 leaves no search step in --max_steps 10"),
    ],
)
def test_checks_that_used_to_fail_after_loading(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = error_of(argv, capsys)
    assert err.startswith("eval_run: error: ") and re.search(match, err), err


def test_load_config_must_be_a_completed_run_of_this_task_and_model(capsys, tmp_path):
    write_results(tmp_path / "failed.json", status="failed", layers={})
    write_results(tmp_path / "r.json")
    for argv, match in (
        (["--load_config", str(tmp_path / "missing.json")], "is not a readable results.json"),
        (["--load_config", str(tmp_path / "failed.json")], r"is not a completed run with per-layer formats \(status "
                                                            r"'failed'\)"),
        (["--load_config", str(tmp_path / "r.json"), "--model", "resnet50"],
         r"is a run of resnet18 on digits, and --model resnet50 contradicts it \(the formats it found are for that "
         r"model and task\): drop --model, or load a run of resnet50 on digits \(see --help\)$"),
    ):
        err = error_of(argv, capsys)
        assert re.search(match, err), err
    assert parse_run_args(["--load_config", str(tmp_path / "r.json"), "--eval_only"]).mode == "loaded"


def test_load_config_with_other_scales_is_refused_for_evaluation_and_noted_for_training(capsys, tmp_path):
    scales = {"per_channel": True, "per_token": False, "weight_range_percentile": 100.0, "act_range_percentile": 99.0}
    write_results(tmp_path / "r.json", args=scales)
    err = error_of(["--load_config", str(tmp_path / "r.json"), "--eval_only"], capsys)
    assert err == (f"eval_run: error: --load_config '{tmp_path / 'r.json'}' was run with other scales (--per_channel "
                   "True -> False, --act_range_percentile 99.0 -> 100.0); to evaluate its model pass the same: "
                   "--per_channel --weight_range_percentile 100 --act_range_percentile 99 (see --help)\n")
    args = parse_run_args(["--load_config", str(tmp_path / "r.json"), "--eval_only", "--per_channel",
                           "--act_range_percentile", "99"])
    assert (args.per_channel, args.act_range_percentile) == (True, 99.0) and capsys.readouterr().err == ""
    parse_run_args(["--load_config", str(tmp_path / "r.json"), "--max_steps", "3"])  # retraining: may be meant
    assert capsys.readouterr().err == (
        "eval_run: note: --load_config takes the formats of a run with other scales (--per_channel True -> False, "
        "--act_range_percentile 99.0 -> 100.0); this run trains with its own (for that run's: --per_channel "
        "--weight_range_percentile 100 --act_range_percentile 99)\n")
    err = error_of(["--load_config", str(tmp_path / "r.json"), "--eval_only", "--per_channel", "--per_token",
                    "--act_range_percentile", "99"], capsys)
    assert err.endswith("to evaluate its model pass the same: --per_channel --weight_range_percentile 100 "
                        "--act_range_percentile 99 and drop --per_token (see --help)\n")


def test_load_config_compares_only_the_scales_its_run_read(capsys, tmp_path):
    """A run whose weights stayed in float did not read --per_channel: its formats leave them in float
    here too, so evaluating it with another --per_channel is the same model (eval/run_compare.py
    unscaled_sides)."""
    scales = {"per_channel": True, "per_token": False, "weight_range_percentile": 100.0, "act_range_percentile": 99.0}
    write_results(tmp_path / "r.json", args={**scales, "mode": "uniform", "weight_format": "none", "act_format": "int8"},
                  layers={"resnet.embedder.embedder.convolution": {"weight_format": "none", "act_format": "int8"}})
    args = parse_run_args(["--load_config", str(tmp_path / "r.json"), "--eval_only", "--act_range_percentile", "99"])
    assert args.per_channel is False and capsys.readouterr().err == ""
    err = error_of(["--load_config", str(tmp_path / "r.json"), "--eval_only", "--per_token"], capsys)
    assert err == (f"eval_run: error: --load_config '{tmp_path / 'r.json'}' was run with other scales (--per_token "
                   "False -> True, --act_range_percentile 99.0 -> 100.0); to evaluate its model pass the same: "
                   "--act_range_percentile 99 and drop --per_token (see --help)\n")
    parse_run_args(["--load_config", str(tmp_path / "r.json"), "--max_steps", "3", "--act_range_percentile", "99"])
    assert capsys.readouterr().err == ""  # retraining with its read scales: nothing to note


def test_checkpoint_flags_resolve(tmp_path):
    run_dir = tmp_path / "run"
    for step in (5, 40, 10, 50):
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        if step != 50:  # a search's checkpoint-50 cut short before its search state was saved
            (run_dir / f"checkpoint-{step}" / "reinforce_state.pt").write_bytes(b"")
    (run_dir / "checkpoint-99").mkdir()  # no trainer_state.json: not a checkpoint
    args = parse_run_args(["--resume_from_checkpoint", str(run_dir)])
    assert args.resume_from_checkpoint == str(run_dir / "checkpoint-40")  # the latest complete one
    args = parse_run_args(["--resume_from_checkpoint", str(run_dir / "checkpoint-5")])
    assert args.resume_from_checkpoint == str(run_dir / "checkpoint-5")
    args = parse_run_args(["--save_steps", "7"])
    assert (args.save_strategy, args.save_steps) == ("steps", 7)
    args = parse_run_args([])
    assert (args.save_strategy, args.save_steps) == ("no", 500)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the errors of a machine without a GPU")
@pytest.mark.parametrize("argv, match", [
    (["--device", "cuda"], "--device cuda: no CUDA device is visible on this machine; drop --device"),
    (["--fp16"], "--fp16 autocast needs a CUDA device and this run is on the CPU; use --bf16"),
])
def test_device_flags_are_checked_by_the_run_before_it_starts(argv, match, capsys, tmp_path):
    from eval.eval_run import main

    assert main([*argv, "--output_root_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eval_run: error: ") and match in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("flag", ["--cost_beta", "--rl_learning_rate", "--learning_rate", "--cost_target_bits",
                                  "--act_range_percentile", "--target_tolerance"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_flags_must_be_finite(flag, value, capsys):
    err = error_of([f"{flag}={value}"], capsys)  # '=': argparse reads a lone '-inf' as a flag
    assert err == f"eval_run: error: argument {flag}: '{value}' is not a finite number (see --help)\n"


def test_every_float_flag_rejects_nan(capsys):
    floats = [a.option_strings[0] for a in create_arg_parser()._actions if a.type is not None
              and getattr(a.type, "__name__", "") == "finite_float"]
    assert len(floats) == 14
    for flag in floats:
        assert "is not a finite number" in error_of([flag, "nan"], capsys)


def test_search_granularity_flags_ask_for_a_search():
    args = parse_run_args(["--weight_only_search", "--activation_bits", "8"])  # as docs/results.md suggests
    assert (args.mode, args.weight_format, args.act_format) == ("search", None, "int8")
    assert parse_run_args(["--block_search"]).granularity == "block"


def test_every_flag_has_help_and_abbreviations_are_refused(capsys):
    from eval.eval_parse import _DefaultsFormatter

    assert [a.option_strings for a in create_arg_parser()._actions if not a.help] == []
    assert error_of(["--lear", "0.1"], capsys) == "eval_run: error: unrecognized arguments: --lear 0.1 (see --help)\n"
    text = create_arg_parser().format_help()
    # A default resolved from other flags is explained by the help, not shown as "None".
    assert "(default: None)" not in text and "(default: 42)" in text
    assert create_arg_parser().formatter_class is _DefaultsFormatter


def test_the_registries_help_lists_every_name_they_accept():
    """--task, --model_type and --cost_function list their registries (no hand-kept list to forget
    a new entry in)."""
    from cost.cost import REWARD_FORMS
    from eval.model_configs import MODEL_REGISTRY
    from eval.tasks import TASKS

    helps = {a.dest: a.help for a in create_arg_parser()._actions}
    assert helps["model_type"] == ", ".join(MODEL_REGISTRY) and "deit-base" in MODEL_REGISTRY
    assert helps["cost_function"] == ", ".join(REWARD_FORMS) and "hard_exponential" in REWARD_FORMS
    assert helps["task"] == ("built-in task (digits, synth-sentiment: offline) or a hub task (cola, sst2, mrpc, qqp, "
                             "qnli, rte, wnli, mnli, stsb, boolq, piqa, cifar10, cifar100, imagenet-1k)")
    assert all(f" {name}" in helps["task"] or f"({name}" in helps["task"] for name in TASKS)


def test_unknown_flag_is_one_line(capsys):
    err = error_of(["--quantise_pooler"], capsys)
    assert "unrecognized arguments: --quantise_pooler" in err


@pytest.mark.parametrize("argv, message", [
    (["--seed", "0", "--bits", "8", "--seed", "1"], "--seed given twice (0 and 1): give it once"),
    (["--seed=0", "--seed", "1"], "--seed given twice (0 and 1): give it once"),
    (["--per_channel", "--bits", "8", "--per_channel"], "--per_channel given twice: give it once"),
    (["--search", "--no-search"], "--search and --no-search both given: give one of them"),
    (["--quantize_pooler", "--no-quantize_pooler"],
     "--quantize_pooler and --no-quantize_pooler both given: give one of them"),
    (["--model", "bert", "--model_type", "bert"],
     "--model_type given twice (--model bert and --model_type bert): give it once"),
])
def test_a_flag_given_twice_is_refused(argv, message, capsys):
    """argparse would keep the last value silently: a command composed from two snippets would
    run another experiment than either says."""
    assert error_of(argv, capsys) == f"eval_run: error: {message} (see --help)\n"


def test_an_abbreviation_is_no_flag_and_so_no_repeat(capsys):
    assert error_of(["--se", "1", "--seed", "2"], capsys) == \
        "eval_run: error: unrecognized arguments: --se 1 (see --help)\n"


def test_errors_name_the_console_script_the_run_was_started_as(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fliqs-run", "--seed", "0", "--seed", "1"])
    assert error_of(None, capsys) == "fliqs-run: error: --seed given twice (0 and 1): give it once (see --help)\n"
    monkeypatch.setattr(sys, "argv", ["/repo/eval/eval_run.py"])  # python -m eval.eval_run: the launcher reads it
    assert error_of(["--seed", "0", "--seed", "1"], capsys).startswith("eval_run: error: --seed given twice")


def test_python_dash_m_refuses_a_repeated_flag_without_a_traceback():
    import subprocess

    done = subprocess.run([sys.executable, "-m", "eval.eval_run", "--seed", "0", "--seed", "1"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "eval_run: error: --seed given twice (0 and 1): give it once (see --help)\n")


def test_output_and_export_dirs_are_checked_before_anything_runs(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    err = error_of(["--output_root_dir", str(a_file)], capsys)
    assert f"--output_root_dir '{a_file}' is a file; choose another path" in err
    err = error_of(["--output_root_dir", str(a_file / "out")], capsys)
    assert f"--output_root_dir '{a_file / 'out'}' cannot be a directory: '{a_file}' is a file" in err
    err = error_of(["--weight_bits", "4", "--output_root_dir", str(tmp_path), "--export_dir", str(a_file / "deploy")],
                   capsys)
    assert f"--export_dir '{a_file / 'deploy'}' cannot be a directory: '{a_file}' is a file" in err
    err = error_of(["--weight_bits", "4", "--output_root_dir", str(tmp_path), "--export_dir", str(tmp_path)], capsys)
    assert f"--export_dir '{tmp_path}' already exists" in err
    # Nothing was left behind by the probes; a creatable path passes and creates nothing.
    args = parse_run_args(["--weight_bits", "4", "--output_root_dir", str(tmp_path / "new" / "out"),
                           "--export_dir", str(tmp_path / "deploy" / "model")])
    assert args.export_dir == str(tmp_path / "deploy" / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_an_unwritable_location_is_an_error(tmp_path, capsys, monkeypatch):
    import errno

    import eval.run_args

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(eval.run_args.tempfile, "mkdtemp", read_only)
    err = error_of(["--output_root_dir", str(tmp_path / "out")], capsys)
    assert (f"--output_root_dir '{tmp_path / 'out'}': cannot create directories in '{tmp_path}' "
            "(Read-only file system); choose a writable location") in err


def test_a_run_may_not_read_from_the_directory_it_replaces(capsys, tmp_path):
    run_dir = tmp_path / "digits" / "again"
    (run_dir / "final_model").mkdir(parents=True)
    write_results(run_dir / "results.json")
    base = ["--bits", "8", "--output_root_dir", str(tmp_path), "--exp_name", "again"]
    for argv, flag in ((["--eval_only", "--model_name_or_path", str(run_dir / "final_model")], "--model_name_or_path"),
                       (["--load_config", str(run_dir / "results.json")], "--load_config")):
        if flag == "--load_config":
            base = base[2:]  # --load_config sets the formats
        err = error_of([*base, *argv], capsys)
        assert f"{flag} '{run_dir}" in err and f"lies in this run's own directory '{run_dir}', which the run " \
            "replaces; give the run another --exp_name" in err, err
    # under another name it is fine
    args = parse_run_args(["--load_config", str(run_dir / "results.json"), "--output_root_dir", str(tmp_path),
                           "--exp_name", "other", "--eval_only"])
    assert args.model_name_or_path == str(run_dir / "final_model")


def test_a_resumed_run_keeps_the_flags_of_the_run_that_wrote_the_checkpoint(capsys, tmp_path):
    import json

    first = parse_run_args(["--bits", "8", "--output_root_dir", str(tmp_path), "--exp_name", "r"])
    run_dir = tmp_path / "digits" / "r"
    (run_dir / "checkpoint-3").mkdir(parents=True)
    (run_dir / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (run_dir / "config.json").write_text(json.dumps(vars(first), default=str))
    base = ["--bits", "8", "--output_root_dir", str(tmp_path), "--exp_name", "r", "--resume_from_checkpoint",
            str(run_dir)]
    assert parse_run_args(base).resume_from_checkpoint == str(run_dir / "checkpoint-3")
    assert parse_run_args([*base, "--max_steps", "50", "--log_steps", "5"]).max_steps == 50  # may change
    err = error_of([*base, "--learning_rate", "0.01", "--per_channel"], capsys)
    assert ("was written by a run with other flags (learning_rate 0.001 -> 0.01, per_channel false -> true); "
            "resume with that run's flags (only --max_steps/--num_train_epochs may change), or start a new run") in err



def test_a_resumed_search_keeps_its_delay_and_says_so_when_too_few_steps_remain(capsys, tmp_path):
    # An interrupted 5000-step search (delay: half, 2500) resumed with --max_steps 120 used to fail
    # after loading, about a --delay_steps the user never gave (and giving one was refused).
    import json

    first = parse_run_args(["--max_steps", "5000", "--output_root_dir", str(tmp_path), "--exp_name", "k"])
    first.delay_steps = 2500  # resolved by the run, as config.json records it
    run_dir = tmp_path / "digits" / "k"
    (run_dir / "checkpoint-100").mkdir(parents=True)
    (run_dir / "checkpoint-100" / "trainer_state.json").write_text(json.dumps({"global_step": 100}))
    (run_dir / "checkpoint-100" / "reinforce_state.pt").write_bytes(b"")
    (run_dir / "config.json").write_text(json.dumps(vars(first), default=str))
    base = ["--output_root_dir", str(tmp_path), "--exp_name", "k", "--resume_from_checkpoint", str(run_dir)]
    err = error_of([*base, "--max_steps", "120"], capsys)
    assert err == ("eval_run: error: the run being resumed searches after 2500 delay steps (recorded in its "
                   "config.json), so --max_steps 120 leaves no search step; resume with --max_steps above 2500 "
                   "(see --help)\n")
    resumed = parse_run_args([*base, "--max_steps", "3000"])
    # config.json predates derived_defaults: what the run left to itself counts as derived
    assert resumed.delay_steps == 2500 and resumed.derived_defaults == ["delay_steps"]
    # a delay given on a fresh run keeps its own message
    err = error_of(["--max_steps", "10", "--delay_steps", "10"], capsys)
    assert "--delay_steps 10 leaves no search step in --max_steps 10" in err


def test_load_config_needs_the_weights_its_formats_go_with(capsys, tmp_path):
    # Without final_model/ beside the results.json, a built-in task's default (random weights)
    # stood in silently: --eval_only scored a random model and reported it as completed.
    import shutil

    write_results(tmp_path / "r.json")
    shutil.rmtree(tmp_path / "final_model")
    results = str(tmp_path / "r.json")
    for extra in ([], ["--eval_only"]):
        err = error_of(["--load_config", results, *extra], capsys)
        assert err == (f"eval_run: error: --load_config '{results}': that run has no final_model/ beside its "
                       "results.json (the weights its formats go with); pass --model_name_or_path DIR with those "
                       "weights, --pretrained for the hub checkpoint, or --from_scratch to train the assignment "
                       "from random weights (see --help)\n")
    assert parse_run_args(["--load_config", results, "--from_scratch"]).from_scratch is True  # said: trains
    err = error_of(["--load_config", results, "--from_scratch", "--eval_only"], capsys)
    assert "--eval_only needs trained weights" in err and "it would evaluate a random model" in err


def test_export_dir_may_not_lie_in_the_run_directory(capsys, tmp_path):
    run_dir = tmp_path / "digits" / "e"
    base = ["--bits", "8", "--output_root_dir", str(tmp_path), "--exp_name", "e"]
    for inside in (run_dir, run_dir / "final_model", run_dir / "tensorboard" / "x", run_dir / "export"):
        err = error_of([*base, "--export_dir", str(inside)], capsys)
        assert err == (f"eval_run: error: --export_dir '{inside}' lies in this run's own directory '{run_dir}', "
                       "whose contents the run and its reruns replace; export outside it, e.g. --export_dir "
                       "deploy/e (see --help)\n")
    assert parse_run_args([*base, "--export_dir", str(tmp_path / "digits" / "e_export")]).export_dir


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "bert-tiny", "--task", "synth-sentiment", "--max_seq_length", "513"],
         "--max_seq_length 513 is more than the 512 positions of this bert-tiny; use at most 512"),
        (["--model", "roberta", "--task", "synth-sentiment", "--from_scratch", "--max_seq_length", "513"],
         "--max_seq_length 513 is more than the 512 positions of this roberta; use at most 512"),
        (["--model", "gpt2", "--task", "synth-sentiment", "--max_seq_length", "2000",
          "--config_overrides", "n_layer=1"],
         "--max_seq_length 2000 is more than the 1024 positions of this gpt2; use at most 1024"),
        (["--model", "bert-tiny", "--task", "synth-sentiment", "--max_seq_length", "64",
          "--config_overrides", "max_position_embeddings=32"],
         "--max_seq_length 64 is more than the 32 positions of this bert-tiny; use at most 32"),
        (["--model", "bert-tiny", "--task", "synth-sentiment", "--max_seq_length", "1"],
         "--max_seq_length must be at least 2, got 1"),
        (["--model", "bert-tiny", "--task", "synth-sentiment", "--config_overrides", "num_hidden_layers=0"],
         "--config_overrides: num_hidden_layers=0 leaves the model without layers; use at least 1"),
        (["--model", "bert-tiny", "--task", "synth-sentiment", "--config_overrides", "num_attention_heads=3"],
         r"--config_overrides 'num_attention_heads=3': bert-tiny cannot be built or run with them \(ValueError: "
         r"The hidden size \(128\) is not a multiple of the number of attention heads \(3\)\); check the values "
         r"against the architecture"),
        (["--config_overrides", "num_channels=1"],  # builds, but fails on the RGB images at the first forward
         r"--config_overrides 'num_channels=1': resnet18 cannot be built or run with them \(ValueError: .*"
         r"channel dimension .*\); check the values against the architecture"),
        (["--model_name_or_path", "/nonexistent/model"],
         "--model_name_or_path '/nonexistent/model' is not a directory; pass a directory written by "
         "save_pretrained()"),
        # the config class's own validators: they ran only when the trained model was saved (a basic ResNet
        # trained under layer_type=bogus, then the run failed); a field's type raised a traceback
        (["--config_overrides", "layer_type=bogus"],
         r"^eval_run: error: --config_overrides: layer_type=bogus is not one of basic,bottleneck \(see --help\)$"),
        (["--model", "mobilenetv2", "--config_overrides", "depth_multiplier=0"],
         r"^eval_run: error: --config_overrides: depth_multiplier must be greater than zero. \(see --help\)$"),
        (["--model", "gpt2", "--task", "synth-sentiment", "--config_overrides", "n_inner=abc"],
         r"^eval_run: error: --config_overrides: Field 'n_inner' with value 'abc' doesn't match any type in "
         r"\(int, NoneType\) \(see --help\)$"),
    ],
)
def test_model_flags_are_checked_against_the_architecture_before_loading(argv, message, capsys):
    err = error_of(argv, capsys)
    assert re.search(message, err), err


@pytest.mark.parametrize("argv, message", [
    # the hub checkpoint's architecture is the built-in config's: checked without the hub
    (["--task", "sst2", "--model", "bert-tiny", "--bits", "8", "--config_overrides", "no_such_key=1"],
     "--config_overrides: unknown config key 'no_such_key' for BertConfig"),
    (["--task", "sst2", "--model", "bert-tiny", "--bits", "8", "--max_seq_length", "600"],
     "--max_seq_length 600 is more than the 512 positions of this bert-tiny; use at most 512"),
])
def test_hub_models_are_checked_against_their_built_in_architecture(argv, message, capsys):
    assert message in error_of(argv, capsys)


@pytest.mark.parametrize("overrides", [
    "depths=[1,1],hidden_sizes=[32,64]",  # fewer stages: a copy of the config, not one rebuilt from its dict
    "depths=[1,1,1,1,1,1,1],hidden_sizes=[8,8,8,8,8,8,8]",  # a 1x1 last map: BatchNorm in eval mode at batch 1
])
def test_valid_architectures_pass_the_meta_device_check(overrides):
    assert parse_run_args(["--config_overrides", overrides]).config_overrides == overrides


def test_model_name_or_path_must_be_a_checkpoint_of_the_model_type(capsys, tmp_path):
    from eval.model_configs import get_model_spec

    err = error_of(["--model_name_or_path", str(tmp_path)], capsys)
    assert (f"--model_name_or_path: '{tmp_path}' holds no config.json, so it is no checkpoint written by "
            "save_pretrained(); pass such a directory (e.g. a run's final_model/)") in err
    get_model_spec("bert-tiny").builtin_config().to_json_file(tmp_path / "config.json")
    err = error_of(["--model_name_or_path", str(tmp_path)], capsys)
    assert f"--model_name_or_path: '{tmp_path}' holds a 'bert' model, but model type 'resnet18' expects" in err
    assert parse_run_args(["--model_name_or_path", str(tmp_path), "--model", "bert-tiny", "--task",
                           "synth-sentiment"]).model_name_or_path == str(tmp_path)


def test_re_evaluating_on_another_eval_subset_is_noted(capsys, tmp_path):
    """--max_eval_samples draws its subset with --data_seed (a run recorded before that flag: with
    its --seed): another data seed evaluates other examples; --seed alone changes nothing."""
    write_results(tmp_path / "new.json", args={"seed": 0, "data_seed": 3, "max_eval_samples": 64})
    base = ["--load_config", str(tmp_path / "new.json"), "--eval_only", "--max_eval_samples", "64"]
    parse_run_args([*base, "--data_seed", "3", "--seed", "7"])
    assert capsys.readouterr().err == ""
    parse_run_args([*base, "--data_seed", "5"])
    assert capsys.readouterr().err == (
        "eval_run: note: --max_eval_samples 64 draws its examples with --data_seed 5; the loaded run was evaluated "
        "on those of --data_seed 3 --max_eval_samples 64: pass the same to evaluate the same examples\n")
    write_results(tmp_path / "old.json", args={"seed": 0, "max_eval_samples": 64})
    base = ["--load_config", str(tmp_path / "old.json"), "--eval_only", "--max_eval_samples", "64"]
    parse_run_args([*base, "--data_seed", "0"])
    assert capsys.readouterr().err == ""
    parse_run_args([*base, "--seed", "0"])  # the default --data_seed 42 draws other examples
    assert capsys.readouterr().err == (
        "eval_run: note: --max_eval_samples 64 draws its examples with --data_seed 42; the loaded run (recorded "
        "before --data_seed: its subset was drawn with its --seed) was evaluated on those of --data_seed 0 "
        "--max_eval_samples 64: pass the same to evaluate the same examples\n")
    write_results(tmp_path / "whole.json", args={"seed": 0, "data_seed": 42})
    parse_run_args(["--load_config", str(tmp_path / "whole.json"), "--eval_only", "--max_eval_samples", "64"])
    assert capsys.readouterr().err == (
        "eval_run: note: --max_eval_samples 64 draws its examples with --data_seed 42; the loaded run was evaluated "
        "on the whole split: drop --max_eval_samples to evaluate the same examples\n")
    parse_run_args(["--load_config", str(tmp_path / "old.json"), "--eval_only", "--seed", "7"])  # the whole split
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        # --eval_only alone: the search is the default, not something the user asked for
        ([], "--eval_only evaluates trained weights at fixed formats, and this run gives neither (without formats a "
             "run searches): give --load_config RUN/results.json (a completed run's formats and its final_model/), or "
             "--model_name_or_path DIR with --bits N (or --weight_bits and --activation_bits; --bits 0 = float)"),
        (["--model_name_or_path", "{final_model}"],
         "--eval_only evaluates --model_name_or_path {final_model} at fixed formats, and none are given (without them "
         "a run searches): add --bits N (or --weight_bits and --activation_bits; --bits 0 = float)"),
        (["--single_decision"],
         "--eval_only evaluates trained weights at fixed formats, and --single_decision asks for a search, which "
         "trains: drop --single_decision and give fixed formats, --load_config RUN/results.json or --bits N (or "
         "--weight_bits and --activation_bits; --bits 0 = float); or drop --eval_only to search"),
        (["--search", "--block_search"],
         "--eval_only evaluates trained weights at fixed formats, and --search/--block_search asks for a search, "
         "which trains: drop --search/--block_search and give fixed formats, --load_config RUN/results.json or "
         "--bits N (or --weight_bits and --activation_bits; --bits 0 = float); or drop --eval_only to search"),
    ],
)
def test_eval_only_without_formats_says_what_it_needs(argv, message, capsys, tmp_path):
    write_results(tmp_path / "r.json")
    final_model = str(tmp_path / "final_model")
    argv = [arg.format(final_model=final_model) for arg in argv]
    err = error_of(["--eval_only", *argv], capsys)
    assert err == f"eval_run: error: {message.format(final_model=final_model)} (see --help)\n"
    # each way out it names parses
    assert parse_run_args(["--eval_only", "--model_name_or_path", final_model, "--bits", "8"]).mode == "uniform"
    assert parse_run_args(["--eval_only", "--model_name_or_path", final_model, "--bits", "0"]).mode == "float"
    assert parse_run_args(["--eval_only", "--load_config", str(tmp_path / "r.json")]).mode == "loaded"


def test_load_config_of_another_model_and_task_blames_the_flags_given(capsys, tmp_path):
    """A resnet18/digits run loaded with --model bert-tiny --task synth-sentiment: the check of its
    final_model/ used to blame --model_name_or_path, a flag the user never gave, listing every model type."""
    results = tmp_path / "r.json"
    write_results(results)  # resnet18 on digits, with its final_model/
    err = error_of(["--load_config", str(results), "--task", "synth-sentiment", "--model", "bert-tiny",
                    "--eval_only"], capsys)
    assert err == (f"eval_run: error: --load_config '{results}' is a run of resnet18 on digits, and --model bert-tiny "
                   "--task synth-sentiment contradict it (the formats it found are for that model and task): drop "
                   "--model and --task, or load a run of bert-tiny on synth-sentiment (see --help)\n")
    err = error_of(["--load_config", str(results), "--task", "cifar10", "--eval_only"], capsys)
    assert err == (f"eval_run: error: --load_config '{results}' is a run of resnet18 on digits, and --task cifar10 "
                   "contradicts it (the formats it found are for that model and task): drop --task, or load a run of "
                   "resnet18 on cifar10 (see --help)\n")
    # a run of other values than the defaults: the defaults are named as such, and the way out gives its values
    other = tmp_path / "bert" / "r.json"
    other.parent.mkdir()
    write_results(other, task="synth-sentiment", model_type="bert-tiny")
    err = error_of(["--load_config", str(other), "--eval_only"], capsys)
    assert err == (f"eval_run: error: --load_config '{other}' is a run of bert-tiny on synth-sentiment, and --model "
                   "resnet18 (the default) --task digits (the default) contradict it (the formats it found are for "
                   "that model and task): pass --model bert-tiny --task synth-sentiment, or load a run of resnet18 on "
                   "digits (see --help)\n")
    assert parse_run_args(["--load_config", str(results), "--eval_only"]).model_type == "resnet18"


@pytest.mark.parametrize("argv", [
    ["--heldout_fraction", "1.5"],  # a search with --reward_source train: it was accepted and recorded
    ["--bits", "8", "--heldout_fraction", "1.5"],  # a fixed-format run
    ["--reward_source", "heldout", "--heldout_fraction", "1.5"],
])
def test_heldout_fraction_is_checked_whatever_the_reward_source(argv, capsys):
    err = error_of(argv, capsys)
    assert err == "eval_run: error: --heldout_fraction must be in (0, 0.5], got 1.5 (see --help)\n"


@pytest.mark.parametrize("argv, message", [
    (["--bits", "8", "--target_tolerance", "1"], "--target_tolerance must be in [0, 1), got 1.0"),
    (["--bits", "8", "--baseline_decay", "1"], "--baseline_decay must be in [0, 1), got 1.0"),
    (["--bits", "8", "--bn_recalibration_batches", "-1"], "--bn_recalibration_batches must be >= 0 (0 = off), got -1"),
    (["--bits", "8", "--delay_steps", "-1"], "--delay_steps must be >= 0, got -1"),
    (["--bits", "8", "--final_selection", "best"], "--final_selection 'best' is not one of ['argmax', 'constrained']"),
    (["--bits", "8", "--reward_source", "eval"], "--reward_source 'eval' is not one of ['train', 'heldout']"),
    (["--bits", "8", "--reward_metric", "f1"], "--reward_metric 'f1' is not one of ['loss', 'likelihood', 'accuracy']"),
    (["--bits", "8", "--cost_target", "1", "--cost_target_bits", "4"],
     "--cost_target and --cost_target_bits are mutually exclusive; give one target"),
    (["--no-search", "--cost_target_bits", "40"], "--cost_target_bits must be in (0, 32], got 40.0"),
])
def test_search_flag_values_are_checked_in_runs_that_ignore_them(argv, message, capsys):
    """A value no run accepts is refused in a fixed-format run too (it used to be noted as ignored
    and recorded), as --rl_learning_rate and --policy_temperature already were."""
    assert error_of(argv, capsys) == f"eval_run: error: {message} (see --help)\n"


@pytest.mark.parametrize("argv, note", [
    (["--heldout_fraction", "0.3"],
     "eval_run: note: --heldout_fraction 0.3 only applies to --reward_source heldout, and this search takes its reward "
     "from the batch just trained on (--reward_source train): it ignores it (to score the policy on a held-out split, "
     "add --reward_source heldout)\n"),
    (["--final_selection", "argmax", "--target_tolerance", "0.1", "--heldout_fraction", "0.2"],
     "eval_run: note: --heldout_fraction 0.2 only applies to --reward_source heldout, and this search takes its reward "
     "from the batch just trained on (--reward_source train): it ignores it (to score the policy on a held-out split, "
     "add --reward_source heldout); --target_tolerance 0.1 only applies to --final_selection constrained, and this "
     "search answers with --final_selection argmax: it ignores it (to pick the answer within that band of the target, "
     "drop --final_selection argmax)\n"),
    (["--task", "synth-sentiment", "--model", "bert-tiny", "--bn_recalibration_batches", "5"],
     "eval_run: note: --bn_recalibration_batches 5 only applies to models with BatchNorm, and bert-tiny has none (it "
     "normalises with LayerNorm): the search ignores it (drop the flag)\n"),
    # a run that does not search names it among its search-only flags, as before
    (["--bits", "8", "--heldout_fraction", "0.3"],
     "eval_run: note: --heldout_fraction only applies to a search; this run has fixed formats (weights int8, "
     "activations int8) and ignores them (to search instead, drop --bits)\n"),
    (["--reward_source", "train", "--heldout_fraction", "0.3"],  # typed: adding another would be refused
     "eval_run: note: --heldout_fraction 0.3 only applies to --reward_source heldout, and this search takes its reward "
     "from the batch just trained on (--reward_source train): it ignores it (to score the policy on a held-out split, "
     "change --reward_source train to --reward_source heldout)\n"),
    (["--reward_source", "heldout", "--heldout_fraction", "0.3"], ""),  # read
    (["--bn_recalibration_batches", "5", "--target_tolerance", "0.1"], ""),  # resnet18 has BatchNorm; constrained
    (["--final_selection", "argmax"], ""),  # settings at their defaults are not named
    (["--task", "synth-sentiment", "--model", "bert-tiny"], ""),
])
def test_settings_another_kind_of_search_reads_are_noted_as_ignored(argv, note, capsys):
    parse_run_args(argv)
    assert capsys.readouterr().err == note


def test_a_setting_typed_at_its_default_is_noted_when_the_caller_says_it_was_given():
    """ignored_flags_note(given=...): what eval_parse can pass from the argv (split_argv's dests),
    so that `--heldout_fraction 0.1` (the default, typed) is named too."""
    from eval.run_flag_notes import SEARCH_ONLY_FLAGS, ignored_flags_note

    parser = create_arg_parser()
    defaults = {name: parser.get_default(name) for name in SEARCH_ONLY_FLAGS}
    args = parse_run_args(["--heldout_fraction", "0.1"])
    assert ignored_flags_note(args, defaults) is None
    assert ignored_flags_note(args, defaults, given=frozenset({"heldout_fraction", "max_steps"})) == (
        "note: --heldout_fraction 0.1 only applies to --reward_source heldout, and this search takes its reward from "
        "the batch just trained on (--reward_source train): it ignores it (to score the policy on a held-out split, "
        "add --reward_source heldout)")
