"""Notes for flags that do nothing in a resolved run (eval/run_flag_notes.py) and the comparison of
runs without them (eval/run_compare.py): --precision_warmup without a delay, --entropy_schedule_type
without an entropy penalty, and the scale flags of weights or activations a run leaves unscaled."""
import argparse

import pytest

from eval.eval_parse import create_arg_parser, parse_run_args
from eval.launch_flags import LaunchError
from eval.launch_plan import parse_sweep, plan_experiments
from eval.run_compare import (SEARCH_SETTING_READERS, changed_args, unscaled_sides, same_settings, unread_args,
                              unread_scale_settings, unread_search_settings)
from eval.run_flag_notes import (SCALE_FLAG_SIDES, SEARCH_ONLY_FLAGS, unscaled_side_scale_note, ignored_flags_note,
                                 unread_settings_note)

WARMUP = ("only applies to the --delay_steps warm-up, and this search has --delay_steps 0 (the policy samples from the "
          "first step): it ignores it (to warm up first, change --delay_steps 0 to the number of warm-up steps, or "
          "drop --delay_steps for the default, half of the steps)")
SCHEDULE = ("only shapes the rise of the entropy penalty to --max_entropy_beta, and this search has --max_entropy_beta "
            "0 (no penalty): it ignores it (to push every decision to converge, change --max_entropy_beta 0 to a "
            "positive value such as 0.1)")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --output_root_dir's write check probes the working directory


@pytest.mark.parametrize("argv, note", [
    # --precision_warmup: the warm-up's sampling; --delay_steps 0 has no warm-up step
    (["--delay_steps", "0", "--precision_warmup"], f"eval_run: note: --precision_warmup {WARMUP}\n"),
    (["--delay_steps", "0", "--no-precision_warmup"], f"eval_run: note: --no-precision_warmup {WARMUP}\n"),
    (["--delay_steps", "0"], ""),  # at its default: not named
    (["--delay_steps", "1", "--no-precision_warmup", "--max_steps", "4"], ""),  # one warm-up step reads it
    (["--no-precision_warmup"], ""),  # the default delay: half of the steps
    # --entropy_schedule_type: the shape of a penalty that --max_entropy_beta 0 turns off
    (["--max_entropy_beta", "0", "--entropy_schedule_type", "Cosine"],
     f"eval_run: note: --entropy_schedule_type cosine {SCHEDULE}\n"),
    (["--max_entropy_beta", "0", "--entropy_schedule_type", "linear"],  # typed at its default: named too
     f"eval_run: note: --entropy_schedule_type linear {SCHEDULE}\n"),
    (["--max_entropy_beta", "0"], ""),
    (["--max_entropy_beta", "-0.05", "--entropy_schedule_type", "cosine"], ""),  # a negative penalty is shaped too
    (["--entropy_schedule_type", "heaviside"], ""),
    # both, in SEARCH_SETTING_READERS order, with another setting's clause
    (["--delay_steps", "0", "--max_entropy_beta", "0", "--entropy_schedule_type", "constant", "--precision_warmup",
      "--heldout_fraction", "0.2"],
     f"eval_run: note: --precision_warmup {WARMUP}; --entropy_schedule_type constant {SCHEDULE}; --heldout_fraction "
     f"0.2 only applies to --reward_source heldout, and this search takes its reward from the batch just trained on "
     f"(--reward_source train): it ignores it (to score the policy on a held-out split, add --reward_source "
     f"heldout)\n"),
    # a fixed-format run names them among its search-only flags, as before (not twice)
    (["--bits", "8", "--delay_steps", "0", "--no-precision_warmup"],
     "eval_run: note: --delay_steps --no-precision_warmup only apply to a search; this run has fixed formats (weights "
     "int8, activations int8) and ignores them (to search instead, drop --bits)\n"),
])
def test_search_settings_without_a_delay_or_an_entropy_penalty_are_noted(argv, note, capsys):
    parse_run_args(argv)
    assert capsys.readouterr().err == note


@pytest.mark.parametrize("argv, note", [
    (["--weight_bits", "4", "--per_token", "--act_range_percentile", "99.9"],
     "eval_run: note: --per_token --act_range_percentile 99.9 only apply to scaled activations, and this run keeps its "
     "activations in float (weights int4, activations none): it ignores them (to quantize the activations with a "
     "scale, add --activation_bits 8)\n"),
    (["--weight_bits", "4", "--activation_bits", "0", "--act_range_percentile", "100"],  # typed at its default
     "eval_run: note: --act_range_percentile 100 only applies to scaled activations, and this run keeps its "
     "activations in float (weights int4, activations none): it ignores it (to quantize the activations with a "
     "scale, change --activation_bits 0 to 8)\n"),
    (["--activation_bits", "fp8_e4m3", "--per_channel", "--weight_range_percentile", "-1"],
     "eval_run: note: --per_channel --weight_range_percentile -1 only apply to scaled weights, and this run keeps its "
     "weights in float (weights none, activations fp8_e4m3): it ignores them (to quantize the weights with a scale, "
     "add --weight_bits 8)\n"),
    # a bf16/fp16 cast takes no scale (its scale is 1)
    (["--weight_bits", "4", "--activation_bits", "bf16", "--per_token"],
     "eval_run: note: --per_token only applies to scaled activations, and this run casts its activations to bf16, "
     "which takes no scale (weights int4, activations bf16): it ignores it (to quantize the activations with a "
     "scale, change --activation_bits bf16 to 8)\n"),
    (["--weight_bits", "fp16", "--activation_bits", "0", "--per_channel", "--per_token"],
     "eval_run: note: --per_channel --per_token only apply to scaled layers, and this run casts its weights to fp16, "
     "which takes no scale, and keeps its activations in float (weights fp16, activations none): it ignores them (to "
     "quantize the layers with a scale, change --weight_bits fp16 to 8 and change --activation_bits 0 to 8)\n"),
    (["--bits", "bf16", "--per_channel", "--per_token"],
     "eval_run: note: --per_channel --per_token only apply to scaled layers, and this run casts its weights and "
     "activations to bf16, which takes no scale (weights bf16, activations bf16): it ignores them (to quantize the "
     "layers with a scale, change --bits bf16 to 8)\n"),
    (["--weight_only_search", "--per_token"],
     "eval_run: note: --per_token only applies to scaled activations, and this weight-only search keeps its "
     "activations in float (activations none): it ignores it (to quantize the activations with a scale, add "
     "--activation_bits 8)\n"),
    (["--weight_only_search", "--activation_bits", "none", "--per_token"],
     "eval_run: note: --per_token only applies to scaled activations, and this weight-only search keeps its "
     "activations in float (activations none): it ignores it (to quantize the activations with a scale, change "
     "--activation_bits none to 8)\n"),
    (["--weight_only_search", "--activation_bits", "bf16", "--act_range_percentile", "99"],
     "eval_run: note: --act_range_percentile 99 only applies to scaled activations, and this weight-only search casts "
     "its activations to bf16, which takes no scale (activations bf16): it ignores it (to quantize the activations "
     "with a scale, change --activation_bits bf16 to 8)\n"),
    (["--bits", "0", "--per_channel", "--per_token"],
     "eval_run: note: --per_channel --per_token only apply to scaled layers, and this run is float: it ignores them "
     "(to quantize the layers with a scale, change --bits 0 to 8)\n"),
    # a float run: the way out names the side of the flags noted (--weight_bits 8 alone would leave the
    # activations in float, and --per_token unread)
    (["--weight_bits", "0", "--per_token"],
     "eval_run: note: --per_token only applies to scaled activations, and this run is float: it ignores it (to "
     "quantize the activations with a scale, add --activation_bits 8)\n"),
    (["--activation_bits", "0", "--per_channel"],
     "eval_run: note: --per_channel only applies to scaled weights, and this run is float: it ignores it (to quantize "
     "the weights with a scale, add --weight_bits 8)\n"),
    (["--weight_bits", "0", "--activation_bits", "0", "--per_token"],
     "eval_run: note: --per_token only applies to scaled activations, and this run is float: it ignores it (to "
     "quantize the activations with a scale, change --activation_bits 0 to 8)\n"),
    # a float run's search-only flags keep their own note; the scale flags get theirs
    (["--no-search", "--per_token", "--cost_beta", "3"],
     "eval_run: note: --cost_beta only applies to a search; this run has fixed formats (float) and ignores them (to "
     "search instead, drop --no-search)\n"
     "eval_run: note: --per_token only applies to scaled activations, and this run is float: it ignores it (to "
     "quantize the activations with a scale, add --activation_bits 8)\n"),
    # where the side is quantized, the flags are read
    (["--weight_bits", "4", "--per_channel", "--weight_range_percentile", "99"], ""),
    (["--bits", "8", "--per_channel", "--per_token", "--act_range_percentile", "99.9"], ""),
    (["--per_token", "--act_range_percentile", "99.9", "--per_channel"], ""),  # a full search quantizes both
    (["--search_space", "none,4,8", "--per_token"], ""),  # 'none' is one option among quantizing ones
    (["--weight_only_search", "--activation_bits", "8", "--per_token", "--per_channel"], ""),
    (["--weight_bits", "4"], ""),  # at their defaults: not named
    (["--weight_bits", "bf16", "--activation_bits", "8", "--per_token"], ""),  # the activations are scaled
    # a search space without a format that takes a scale: the sides it searches are unscaled
    (["--search_space", "bf16,fp16", "--per_channel", "--per_token"],
     "eval_run: note: --per_channel --per_token only apply to scaled layers, and no format of --search_space "
     "bf16,fp16 takes a scale (none and the bf16/fp16 casts do not): it ignores them (to quantize the layers with a "
     "scale, add a format that takes one, e.g. int8, to --search_space)\n"),
    (["--search_space", "none,bf16", "--weight_only_search", "--activation_bits", "8", "--per_channel", "--per_token"],
     "eval_run: note: --per_channel only applies to scaled weights, and no format of --search_space none,bf16 takes "
     "a scale (none and the bf16/fp16 casts do not): it ignores it (to quantize the weights with a scale, add a "
     "format that takes one, e.g. int8, to --search_space)\n"),
    (["--search_space", "none,bf16", "--weight_only_search", "--weight_range_percentile", "99", "--per_token"],
     "eval_run: note: --weight_range_percentile 99 --per_token only apply to scaled layers, and no format of "
     "--search_space none,bf16 takes a scale (none and the bf16/fp16 casts do not) and this weight-only search keeps "
     "its activations in float (activations none): it ignores them (to quantize the layers with a scale, add a "
     "format that takes one, e.g. int8, to --search_space and add --activation_bits 8)\n"),
    (["--search_space", "bf16,4", "--per_channel", "--per_token"], ""),  # one format of the space takes a scale
])
def test_scale_flags_of_an_unscaled_side_are_noted(argv, note, capsys):
    parse_run_args(argv)
    assert capsys.readouterr().err == note


def _defaults() -> dict:
    parser = create_arg_parser()
    return {name: parser.get_default(name) for name in (*SEARCH_ONLY_FLAGS, *SCALE_FLAG_SIDES)}


def test_a_resumed_search_without_a_delay_or_penalty_drops_the_flag():
    """A resumed search keeps its run's delay and entropy penalty (eval/run_inputs.py
    check_resume_matches refuses another): changing them is no way out, typed or inherited."""
    args = parse_run_args(["--delay_steps", "0"])
    args.resume_from_checkpoint, args.precision_warmup = "run/checkpoint-2", False
    assert unread_settings_note(args, _defaults()) == (
        "note: --no-precision_warmup only applies to the --delay_steps warm-up, and the run being resumed has "
        "--delay_steps 0 (recorded in its config.json: the policy samples from the first step): it ignores it (drop "
        "the flag)")
    assert unread_settings_note(args, _defaults(), given=frozenset({"delay_steps"})) == (
        "note: --no-precision_warmup only applies to the --delay_steps warm-up, and the run being resumed has "
        "--delay_steps 0 (the policy samples from the first step): it ignores it (drop the flag)")
    args = parse_run_args(["--max_entropy_beta", "0", "--entropy_schedule_type", "cosine"])
    args.resume_from_checkpoint = "run/checkpoint-2"
    assert unread_settings_note(args, _defaults(), given=frozenset({"max_entropy_beta", "entropy_schedule_type"})) == (
        "note: --entropy_schedule_type cosine only shapes the rise of the entropy penalty to --max_entropy_beta, and "
        "the run being resumed has --max_entropy_beta 0 (no penalty): it ignores it (drop the flag)")


def test_the_note_functions_name_only_flags_set_away_from_their_defaults_or_given():
    args = parse_run_args(["--delay_steps", "0", "--max_entropy_beta", "0"])
    assert ignored_flags_note(args, _defaults()) is None
    assert ignored_flags_note(args, _defaults(), given=frozenset({"precision_warmup"})) == (
        f"note: --precision_warmup {WARMUP}")
    fixed = parse_run_args(["--weight_bits", "4"])
    assert unscaled_side_scale_note(fixed, _defaults()) is None
    # the weights are quantized: their flag is read, typed or not
    assert unscaled_side_scale_note(fixed, _defaults(), given=frozenset({"weight_range_percentile"})) is None
    fixed.act_range_percentile = 99.0
    assert unscaled_side_scale_note(fixed, _defaults()) == (
        "note: --act_range_percentile 99 only applies to scaled activations, and this run keeps its activations in "
        "float (weights int4, activations none): it ignores it (to quantize the activations with a scale, add "
        "--activation_bits 8)")
    # --load_config takes its formats from that run: not judged here (eval.run_inputs.load_config_note)
    loaded = argparse.Namespace(**{**vars(fixed), "mode": "loaded", "weight_format": "none", "act_format": "none"})
    assert unscaled_side_scale_note(loaded, _defaults()) is None


def test_readers_of_the_new_settings():
    reads = {name: SEARCH_SETTING_READERS[name] for name in ("precision_warmup", "entropy_schedule_type")}
    assert not reads["precision_warmup"]({"delay_steps": 0})
    assert reads["precision_warmup"]({"delay_steps": 3})
    assert reads["precision_warmup"]({"delay_steps": None})  # planned default: half of the steps
    assert reads["precision_warmup"]({})  # not recorded: compared, as before
    assert not reads["entropy_schedule_type"]({"max_entropy_beta": 0.0})
    assert reads["entropy_schedule_type"]({"max_entropy_beta": -0.1})
    assert reads["entropy_schedule_type"]({})
    search = {"mode": "search", "delay_steps": 0, "max_entropy_beta": 0}
    assert {"precision_warmup", "entropy_schedule_type"} <= unread_search_settings(search)
    assert unread_search_settings({**search, "mode": "uniform"}) == frozenset()  # all its search-only flags instead


@pytest.mark.parametrize("args, sides", [
    ({"mode": "float", "weight_format": "none", "act_format": "none"}, {"weights", "activations"}),
    ({"mode": "uniform", "weight_format": "int4", "act_format": "none"}, {"activations"}),
    ({"mode": "uniform", "weight_format": "none", "act_format": "int8"}, {"weights"}),
    ({"mode": "uniform", "weight_format": "int4", "act_format": "int8"}, set()),
    ({"mode": "search", "weight_only_search": True, "weight_format": None, "act_format": "none"}, {"activations"}),
    ({"mode": "search", "weight_only_search": True, "weight_format": None, "act_format": "int8"}, set()),
    # a full search records act_format none too, and searches both sides
    ({"mode": "search", "weight_only_search": False, "weight_format": None, "act_format": "none"}, set()),
    ({"mode": "loaded", "weight_format": "none", "act_format": "none"}, set()),  # its formats are in its file
    ({"mode": "uniform"}, set()),  # recorded without the formats: compared, as before
    # a bf16/fp16 cast takes no scale
    ({"mode": "uniform", "weight_format": "int4", "act_format": "bf16"}, {"activations"}),
    ({"mode": "uniform", "weight_format": "fp16", "act_format": "int8"}, {"weights"}),
    ({"mode": "search", "weight_only_search": True, "weight_format": None, "act_format": "fp16"}, {"activations"}),
    # a search space where no format takes a scale leaves the sides it searches unscaled
    ({"mode": "search", "weight_only_search": False, "act_format": "none", "search_formats": ["bf16", "fp16"]},
     {"weights", "activations"}),
    ({"mode": "search", "weight_only_search": True, "act_format": "int8", "search_formats": ["none", "bf16"]},
     {"weights"}),
    ({"mode": "search", "weight_only_search": True, "act_format": "none", "search_formats": ["fp16"]},
     {"weights", "activations"}),
    ({"mode": "search", "weight_only_search": False, "act_format": "none", "search_formats": ["bf16", "int4"]}, set()),
    ({"mode": "search", "act_format": "none", "search_formats": ["bf16"]}, set()),  # weight_only_search not recorded
    ({"mode": "search", "weight_only_search": False, "search_formats": []}, set()),  # damaged record: compared
    ({"mode": "search", "weight_only_search": False, "search_formats": "bf16"}, set()),
    # a --load_config run recorded before mode "loaded" (uniform, formats none): its formats are in its file
    ({"mode": "uniform", "weight_format": "none", "act_format": "none", "load_config": "r.json"}, set()),
])
def test_unscaled_sides_from_recorded_args(args, sides):
    assert unscaled_sides(args) == sides
    assert unread_scale_settings(args) == {name for name, side in SCALE_FLAG_SIDES.items() if side in sides}


def test_runs_that_differ_only_in_an_unread_flag_are_the_same_setting():
    weight_only = {"mode": "uniform", "weight_format": "int4", "act_format": "none", "per_token": False,
                   "act_range_percentile": 100.0, "per_channel": False}
    assert changed_args({**weight_only, "per_token": True, "act_range_percentile": 99.0}, weight_only) == []
    assert same_settings({**weight_only, "per_token": True}) == same_settings(weight_only)
    assert changed_args({**weight_only, "per_channel": True}, weight_only) == ["per_channel false -> true"]
    full = {**weight_only, "act_format": "int8"}
    assert changed_args({**full, "per_token": True}, full) == ["per_token false -> true"]
    assert same_settings({**full, "per_token": True}) != same_settings(full)
    # a changed act format is itself listed, and then the flag is compared (one side reads it)
    assert changed_args({**full, "per_token": True}, weight_only) == ['act_format "none" -> "int8"',
                                                                       "per_token false -> true"]

    search = {"mode": "search", "delay_steps": 0, "precision_warmup": True, "max_entropy_beta": 0.0,
              "entropy_schedule_type": "linear"}
    assert changed_args({**search, "precision_warmup": False, "entropy_schedule_type": "cosine"}, search) == []
    assert "precision_warmup" in unread_args(search) and "entropy_schedule_type" in unread_args(search)
    delayed = {**search, "delay_steps": 5, "max_entropy_beta": 0.1}
    assert changed_args({**delayed, "precision_warmup": False, "entropy_schedule_type": "cosine"}, delayed) == [
        "precision_warmup true -> false", 'entropy_schedule_type "linear" -> "cosine"']


def test_a_sweep_of_a_flag_the_runs_do_not_read_is_one_run_twice():
    base = ["--task", "digits", "--model_type", "resnet18", "--max_steps", "3", "--device", "cpu",
            "--output_root_dir", "out"]
    with pytest.raises(LaunchError, match=r"^--sweep per_token=true and per_token=false are the same run under two "
                                          r"names .*; these runs do not read per_token \(each run's note "
                                          r"says why\): drop --sweep per_token$"):
        plan_experiments([*base, "--weight_bits", "4"], [parse_sweep("per_token=true,false")])
    with pytest.raises(LaunchError, match=r"these runs do not read entropy_schedule_type \(each run's note says "
                                          r"why\)"):
        plan_experiments([*base, "--max_entropy_beta", "0"], [parse_sweep("entropy_schedule_type=linear,cosine")])
    both = plan_experiments([*base, "--bits", "8"], [parse_sweep("per_token=true,false")])
    assert [e.args["per_token"] for e in both] == [True, False]



@pytest.mark.parametrize("name, unscaled", [("none", True), ("bf16", True), ("fp16", True), ("int8", False),
                                            ("fp8_e4m3", False), ("fp4_e2m1", False), ("int2", False),
                                            (None, False), ("int99", False), (8, False)])
def test_recorded_formats_that_take_no_scale(name, unscaled):
    """What a record holds for a format: canonical names, None (a search's weights) or, from a
    damaged or hand-edited file, anything; only a format that takes no scale counts."""
    from eval.run_compare import takes_no_scale

    assert takes_no_scale(name) is unscaled
