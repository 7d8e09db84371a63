import json
import re

import pytest

from eval.launch_flags import LaunchError
from eval.launch_plan import SweepAxis, load_experiments_file, parse_sweep, plan_experiments

BASE = ["--task", "digits", "--model_type", "resnet18", "--max_steps", "3", "--device", "cpu",
        "--output_root_dir", "out"]
SEARCH = "resnet18_search_int4-int8_layer_memory_t6b"  # the run's default name, without the seed


def test_parse_sweep():
    assert parse_sweep("seed=1,2,3") == SweepAxis("seed", ("1", "2", "3"))
    assert parse_sweep("--learning_rate= 1e-3 , 1e-2") == SweepAxis("learning_rate", ("1e-3", "1e-2"))
    # ';' separates values that hold commas
    assert parse_sweep("search_space=4,8;2,4,8") == SweepAxis("search_space", ("4,8", "2,4,8"))


@pytest.mark.parametrize("text, message", [
    ("seed", r"--sweep 'seed' must look like KEY=V1,V2,..."),
    ("=1,2", r"--sweep needs KEY=V1,V2,..."),
    ("seed=1,,2", r"--sweep seed: every value must be non-empty, got \['1', '', '2'\]"),
    ("seed=1,1", r"--sweep seed: values repeat in \['1', '1'\]; list each value once"),
])
def test_parse_sweep_errors(text, message):
    with pytest.raises(LaunchError, match=message):
        parse_sweep(text)


def test_experiments_file_json_and_yaml_agree(tmp_path):
    entries = [{"seed": 1, "exp_name": "a"}, {"learning_rate": 0.01, "search_space": [4, 8], "fp16": False}]
    (tmp_path / "e.json").write_text(json.dumps(entries))
    (tmp_path / "e.yaml").write_text("- seed: 1\n  exp_name: a\n- learning_rate: 0.01\n  search_space: [4, 8]\n"
                                     "  fp16: false\n")
    assert load_experiments_file(tmp_path / "e.json") == entries
    assert load_experiments_file(tmp_path / "e.yaml") == entries


@pytest.mark.parametrize("name, text, message", [
    ("e.json", "[{]", r"is not valid JSON \(use .yaml/.yml for YAML\): Expecting property name"),
    ("e.yaml", "- a: [1\n", r"is not valid YAML: "),
    ("e.json", '{"seed": 1}', r"must hold a non-empty list of objects of run-flag overrides"),
    ("e.json", "[]", r"must hold a non-empty list"),
    ("e.json", '[{"seed": 1}, 3]', r"entry 2 is 3, expected an object of run flag name -> value"),
    ("e.json", '[{"exp_name": "a/b"}]', r"entry 1 has exp_name 'a/b'; give a non-empty name without '/'"),
    # Both parsers would keep the last of two equal keys.
    ("e.json", '[{"seed": 1}, {"seed": 1, "lr": 0, "seed": 2}]', r"^--experiments '\S+e.json': entry 2 sets seed "
     r"twice; keep one of its values$"),
    ("e.yaml", "- seed: 1\n  seed: 2\n", r"^--experiments '\S+e.yaml': entry 1 sets seed twice; keep one of its "
     r"values$"),
    ("e.yaml", '- {exp_name: a}\n- {"seed": 1, seed: 2}\n', r"entry 2 sets seed twice"),
])
def test_experiments_file_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(LaunchError, match=message):
        load_experiments_file(tmp_path / name)


def test_a_yaml_entry_may_override_what_it_merges_but_not_repeat_its_own_key(tmp_path):
    (tmp_path / "e.yaml").write_text("- &base {seed: 1, learning_rate: 0.1}\n- <<: *base\n  seed: 2\n")
    assert load_experiments_file(tmp_path / "e.yaml") == [{"seed": 1, "learning_rate": 0.1},
                                                         {"seed": 2, "learning_rate": 0.1}]
    (tmp_path / "e.yaml").write_text("- &base {seed: 1}\n- <<: *base\n  seed: 2\n  seed: 3\n")
    with pytest.raises(LaunchError, match=r"entry 2 sets seed twice; keep one of its values$"):
        load_experiments_file(tmp_path / "e.yaml")


def test_unreadable_experiments_file(tmp_path):
    with pytest.raises(LaunchError, match=r"--experiments '.*missing.json' cannot be read: No such file"):
        load_experiments_file(tmp_path / "missing.json")


def test_no_sweep_is_the_one_experiment_of_the_run_flags():
    [experiment] = plan_experiments(BASE)
    assert experiment.exp_name == f"{SEARCH}_s42"
    assert experiment.argv == (*BASE, "--exp_name", f"{SEARCH}_s42")
    assert str(experiment.run_dir) == f"out/digits/{SEARCH}_s42"
    assert (experiment.index, experiment.overrides, experiment.device) == (1, (), "cpu")


def test_sweep_is_a_cartesian_product_named_by_what_sets_runs_apart():
    experiments = plan_experiments(BASE, [parse_sweep("seed=1,2"), parse_sweep("learning_rate=0.001,0.01")])
    # The default name already holds the seed; the learning rate is appended because it is needed.
    assert [e.exp_name for e in experiments] == [
        f"{SEARCH}_s1_learning_rate=0.001", f"{SEARCH}_s1_learning_rate=0.01",
        f"{SEARCH}_s2_learning_rate=0.001", f"{SEARCH}_s2_learning_rate=0.01"]
    assert experiments[1].argv == (*BASE, "--seed", "1", "--learning_rate", "0.01",
                                   "--exp_name", f"{SEARCH}_s1_learning_rate=0.01")
    assert experiments[1].overrides == (("seed", "1"), ("learning_rate", "0.01"))
    assert [e.index for e in experiments] == [1, 2, 3, 4]


def test_seed_sweep_needs_no_suffix_and_overrides_the_base_flag():
    experiments = plan_experiments([*BASE, "--seed", "7"], [parse_sweep("seed=1,2")])
    assert [e.exp_name for e in experiments] == [f"{SEARCH}_s1", f"{SEARCH}_s2"]
    assert experiments[0].argv.count("--seed") == 1


def test_given_exp_name_gets_the_swept_pairs():
    experiments = plan_experiments([*BASE, "--exp_name", "mine"], [parse_sweep("fp16=true,false")])
    assert [e.exp_name for e in experiments] == ["mine_fp16=true", "mine_fp16=false"]
    assert experiments[1].argv == (*BASE, "--exp_name", "mine_fp16=false")


def test_experiments_entries_times_sweep():
    entries = [{"exp_name": "base"}, {"exp_name": "wide", "search_space": [2, 4, 8]}, {"cost_target_bits": 5}]
    experiments = plan_experiments(BASE, [parse_sweep("seed=1,2")], entries)
    assert [e.exp_name for e in experiments] == [
        "base_seed=1", "base_seed=2", "wide_seed=1", "wide_seed=2", f"{SEARCH[:-4]}_t5b_s1",
        f"{SEARCH[:-4]}_t5b_s2"]
    assert experiments[3].argv == (*BASE, "--search_space", "2,4,8", "--seed", "2", "--exp_name", "wide_seed=2")


def test_unsafe_characters_in_appended_values():
    experiments = plan_experiments(BASE, [parse_sweep("config_overrides=depths=[1,1,1,1];depths=[2,2,2,2]")])
    assert [e.exp_name for e in experiments] == [f"{SEARCH}_s42_config_overrides=depths=-1-1-1-1-",
                                                 f"{SEARCH}_s42_config_overrides=depths=-2-2-2-2-"]


def test_duplicate_experiments_are_an_error():
    with pytest.raises(LaunchError, match=rf"experiments 1 and 2 would both write to /\S+/out/digits/{SEARCH}_s42_"
                       r"max_steps=3 \(they are the same run\); remove the duplicate"):
        plan_experiments(BASE, entries=[{"max_steps": 3}, {"max_steps": 3}])
    # Two entries with one exp_name would share a directory whatever else they set.
    with pytest.raises(LaunchError, match=r"experiments 1 and 2 would both write to /\S+/out/digits/mine \(they are "
                       r"the same run\); remove the duplicate or give them distinct exp_name values in --experiments"):
        plan_experiments(BASE, entries=[{"exp_name": "mine", "seed": 1}, {"exp_name": "mine", "seed": 2}])


def test_a_baseline_swept_over_a_search_only_flag_is_one_run_twice():
    """A uniform entry under --sweep cost_target_bits=... would train the same baseline per value."""
    entries = [{"exp_name": "uniform_int8", "bits": 8}, {"exp_name": "fliqs", "search_space": "2,4,8"}]
    # Named by the file's entry (the sweep's copies of it), not by the expanded runs' numbers.
    with pytest.raises(LaunchError) as error:
        plan_experiments(BASE, [parse_sweep("cost_target_bits=2.5,3")], entries=entries)
    assert str(error.value) == ("--sweep cost_target_bits=2.5 and cost_target_bits=3 of entry 1 of --experiments "
                                "(exp_name=uniform_int8, bits=8) are the same run under two names "
                                "('uniform_int8_cost_target_bits=2.5' and 'uniform_int8_cost_target_bits=3': every "
                                "other flag means the same); a run that does not search ignores cost_target_bits: "
                                "set it only in the search entries of --experiments")
    searches = plan_experiments(BASE, [parse_sweep("cost_target_bits=2.5,3")], entries=entries[1:])
    assert [e.exp_name for e in searches] == ["fliqs_cost_target_bits=2.5", "fliqs_cost_target_bits=3"]


def test_under_a_sweep_the_same_run_twice_names_the_entries_of_the_file():
    """Experiments 3 and 4 of the expanded launch are in no file: the error names entry 2 (of 2)."""
    sweep = parse_sweep("search_space=2,4,8;int2,int4,fp4_e2m1,int8")
    with pytest.raises(LaunchError) as error:
        plan_experiments(BASE, [sweep], entries=[{"search": True}, {"bits": 8}])
    assert str(error.value) == ("--sweep search_space=2,4,8 and search_space=int2,int4,fp4_e2m1,int8 of entry 2 of "
                                "--experiments (bits=8) are the "
                                "same run under two names ('resnet18_uniform_wint8-aint8_s42_search_space=2-4-8' and "
                                "'resnet18_uniform_wint8-aint8_s42_search_space=int2-int4-fp4_e2m1-int8': every other "
                                "flag means the same); a run that does not search ignores search_space: set it only "
                                "in the search entries of --experiments")
    # Two entries that are one run: each named with the sweep value it runs under.
    with pytest.raises(LaunchError) as error:
        plan_experiments(BASE, [parse_sweep("seed=1,2")], entries=[{"exp_name": "a"}, {"exp_name": "b"}])
    assert str(error.value) == ("entry 1 of --experiments (exp_name=a) under --sweep seed=1 and entry 2 (exp_name=b) "
                                "under --sweep seed=1 are the same run under two names ('a_seed=1' and 'b_seed=1': "
                                "every other flag means the same); remove one of them")
    with pytest.raises(LaunchError, match=r"^entry 1 of --experiments \(learning_rate=0.01\) under --sweep seed=1 and "
                                          r"entry 2 \(learning_rate=1e-2\) under --sweep seed=1 would both write to "
                                          rf"/\S+/{SEARCH}_s1_learning_rate=0.01 \(they are the same run\)"):
        plan_experiments(BASE, [parse_sweep("seed=1,2")], entries=[{"learning_rate": 0.01}, {"learning_rate": "1e-2"}])


def test_a_search_swept_over_a_setting_it_does_not_read_is_one_run_twice():
    """--heldout_fraction is read only with --reward_source heldout: two fractions of a train-reward
    search are one run; of a held-out search, two."""
    # Copies of the command line: no "remove one of them" (a sweep makes both).
    with pytest.raises(LaunchError, match=r"^--sweep heldout_fraction=0.1 and heldout_fraction=0.2 are the same run "
                                          r"under two names "
                                          r"\('\S+_heldout_fraction=0.1' and '\S+_heldout_fraction=0.2': every other "
                                          r"flag means the same\); these runs do not read "
                                          r"heldout_fraction \(each run's note says why\): drop --sweep "
                                          r"heldout_fraction$"):
        plan_experiments(BASE, [parse_sweep("heldout_fraction=0.1,0.2")])
    with pytest.raises(LaunchError, match=r"same\); these runs do not read data_seed \(each run's note "
                                          r"says why\): drop --sweep data_seed$"):
        plan_experiments([*BASE, "--bits", "8"], [parse_sweep("data_seed=1,2")])  # whole splits: nothing drawn
    heldout = plan_experiments([*BASE, "--reward_source", "heldout"], [parse_sweep("heldout_fraction=0.1,0.2")])
    assert [e.args["heldout_fraction"] for e in heldout] == [0.1, 0.2]


def test_experiments_exporting_to_one_directory_are_an_error(tmp_path):
    """The second run's export would fail after its training (the directory exists by then)."""
    shared = ["--export_dir", str(tmp_path / "deploy")]
    with pytest.raises(LaunchError, match=rf"^experiments 1 and 2 would both export to {tmp_path / 'deploy'} "
                                          r"\(--export_dir\); give each experiment its own export_dir in "
                                          r"--experiments, or export after the sweep: python -m quant.export RUN_DIR "
                                          r"--out DIR$"):
        plan_experiments([*BASE, *shared], [parse_sweep("seed=0,1")])
    own = [{"seed": 0, "export_dir": str(tmp_path / "a")}, {"seed": 1, "export_dir": str(tmp_path / "b")}]
    assert [e.args["export_dir"] for e in plan_experiments(BASE, entries=own)] == [str(tmp_path / "a"),
                                                                                   str(tmp_path / "b")]


def test_an_entrys_name_does_not_depend_on_the_other_entries():
    """An entry without exp_name is named by its own flags (those its default name does not show),
    so launching it alone later names it the same: --skip_completed finds it."""
    entries = [{"learning_rate": 0.01}, {"learning_rate": 0.1, "seed": 3}, {"cost_target_bits": 5}]
    names = [e.exp_name for e in plan_experiments(BASE, entries=entries)]
    assert names == [f"{SEARCH}_s42_learning_rate=0.01", f"{SEARCH}_s3_learning_rate=0.1", f"{SEARCH[:-4]}_t5b_s42"]
    assert [plan_experiments(BASE, entries=[entry])[0].exp_name for entry in entries] == names
    # The order an entry's flags are written in does not matter (the same run twice is still an
    # error), and flags that leave results unchanged are not part of the name.
    reordered = [{"weight_decay": 0.1, "learning_rate": 0.01, "eval_steps": 5},
                 {"learning_rate": 0.01, "weight_decay": 0.1, "device": "cpu"}]
    with pytest.raises(LaunchError, match=rf"experiments 1 and 2 would both write to /\S+/{SEARCH}_s42_"
                       r"learning_rate=0.01_weight_decay=0.1 \(they are the same run\)"):
        plan_experiments(BASE, entries=reordered)
    # After the run flags' exp_name every flag of the entry is appended; an entry's own exp_name
    # stands for its flags.
    named = [*BASE, "--exp_name", "mine"]
    assert [e.exp_name for e in plan_experiments(named, entries=entries[:2] + [{"exp_name": "own", "seed": 1}])] == [
        "mine_learning_rate=0.01", "mine_learning_rate=0.1_seed=3", "own"]


def test_a_name_too_long_asks_for_an_exp_name():
    entry = {"warmup_steps": 1, "train_batch_size": 4, "eval_batch_size": 4, "gradient_accumulation_steps": 2,
             "delay_steps": 1, "heldout_fraction": 0.5, "learning_rate": 0.001, "rl_learning_rate": 0.01,
             "weight_decay": 0.1, "entropy_schedule_type": "cosine", "baseline_decay": 0.9, "policy_temperature": 2.0}
    with pytest.raises(LaunchError, match=r"^experiment 1: the run name .* is 2\d\d characters; give its entry in "
                       r"--experiments an exp_name$"):
        plan_experiments(BASE, entries=[entry])
    with pytest.raises(LaunchError, match=r"is 2\d\d characters; give it a shorter exp_name$"):
        plan_experiments([*BASE, "--exp_name", "mine"], entries=[entry])


def test_a_bad_value_fails_the_launch_naming_the_experiment():
    entries = [{"seed": seed} for seed in range(1, 7)] + [{"seed": 7, "learning_rate": -1}, {"seed": 8}]
    with pytest.raises(LaunchError, match=r"^experiment 7 of 8 \(seed=7, learning_rate=-1\): --learning_rate must "
                       r"be > 0, got -1.0 \(see --help\)$"):
        plan_experiments(BASE, entries=entries)


def test_a_bad_run_flag_without_sweep_is_one_line():
    with pytest.raises(LaunchError, match=r"^unrecognized arguments: --bogus \(see --help\)$"):
        plan_experiments([*BASE, "--bogus"])


@pytest.mark.parametrize("sweeps, entries, message", [
    (["seed=1,2", "seed=3"], None, r"--sweep seed and --sweep seed set the same flag; merge their values"),
    (["model=resnet18", "model_type=resnet50"], None, r"--sweep model_type and --sweep model set the same flag"),
    (["seed=1,2"], [{"seed": 3}], r"experiment 1 of 2 \(seed=3, seed=1\): seed is set twice for one experiment"),
    (["lr=1,2"], None, r"'lr' is not a run flag"),
])
def test_conflicting_keys(sweeps, entries, message):
    with pytest.raises(LaunchError, match=message):
        plan_experiments(BASE, [parse_sweep(s) for s in sweeps], entries)


def test_cuda_visible_devices_in_the_run_flags_is_taken_out_for_the_launcher():
    [experiment] = plan_experiments([*BASE, "--cuda_visible_devices", "1,3"])
    assert experiment.cuda_visible_devices == "1,3"
    assert "--cuda_visible_devices" not in experiment.argv


def test_names_do_not_depend_on_the_rest_of_the_launch():
    """Relaunching one value of a sweep names the run as the full sweep did."""
    entries = [{"exp_name": "float", "bits": 0}, {"exp_name": "int4", "bits": 4}]
    full = plan_experiments(BASE, [parse_sweep("seed=0,1")], entries)
    assert [e.exp_name for e in full] == ["float_seed=0", "float_seed=1", "int4_seed=0", "int4_seed=1"]
    again = plan_experiments(BASE, [parse_sweep("seed=1")], entries[:1])
    assert [(e.exp_name, e.run_dir) for e in again] == [("float_seed=1", full[1].run_dir)]
    # A default name shows the seed already; a swept flag it does not show is always appended.
    assert [e.exp_name for e in plan_experiments(BASE, [parse_sweep("seed=1")])] == [f"{SEARCH}_s1"]
    assert [e.exp_name for e in plan_experiments(BASE, [parse_sweep("learning_rate=0.01")])] == \
        [f"{SEARCH}_s42_learning_rate=0.01"]
    assert [e.exp_name for e in plan_experiments([*BASE, "--exp_name", "mine"], [parse_sweep("seed=3")])] == \
        ["mine_seed=3"]


@pytest.mark.parametrize("key, base, other", [
    ("seed", [], "7"), ("model_type", [], "resnet50"), ("search", ["--bits", "8"], "true"), ("bits", [], "4"),
    ("weight_bits", [], "4"), ("activation_bits", ["--weight_bits", "8"], "4"), ("search_space", [], "2,8"),
    ("single_decision", [], "true"), ("block_search", [], "true"),
    ("weight_only_search", ["--search"], "true"), ("cost_type", [], "compute"),
    ("cost_target", [], "1.5"), ("cost_target_bits", [], "5"),
])
def test_default_name_keys_are_shown_by_the_default_name(key, base, other):
    """A key in DEFAULT_NAME_KEYS is not appended to default names: it must change them itself."""
    from eval.launch_plan import DEFAULT_NAME_KEYS

    assert key in DEFAULT_NAME_KEYS and len(DEFAULT_NAME_KEYS) == 13
    [plain] = plan_experiments([*BASE, *base])
    [changed] = plan_experiments([*BASE, *([] if key == "search" else base)], [SweepAxis(key, (other,))])
    assert changed.exp_name != plain.exp_name and f"{key}=" not in changed.exp_name


def test_the_plan_records_each_run_args_as_results_json_will():
    [experiment] = plan_experiments([*BASE, "--learning_rate", "0.01"])
    assert experiment.args["learning_rate"] == 0.01 and experiment.args["exp_name"] == f"{SEARCH}_s42"
    assert experiment.args["search_formats"] == ["int4", "int8"] and experiment.args["mode"] == "search"
    assert experiment.args["cuda_visible_devices"] is None


def test_search_only_name_keys_are_appended_to_fixed_format_names():
    # A fixed-format run's default name does not show cost_type: swept, it is appended, so a relaunch
    # of one value finds the same run directory as the sweep of both.
    both = plan_experiments([*BASE, "--bits", "8"], [parse_sweep("cost_type=memory,compute")])
    [one] = plan_experiments([*BASE, "--bits", "8"], [parse_sweep("cost_type=compute")])
    assert [e.exp_name for e in both] == ["resnet18_uniform_wint8-aint8_s42_cost_type=memory",
                                          "resnet18_uniform_wint8-aint8_s42_cost_type=compute"]
    assert one.exp_name == both[1].exp_name


def test_numbers_are_named_in_one_spelling(tmp_path):
    # A sweep, JSON and YAML (PyYAML reads 1e-3 as the string "1e-3") name one run the same.
    lr = f"{SEARCH}_s42_learning_rate=0.001"
    (tmp_path / "e.json").write_text('[{"learning_rate": 1e-3}]')
    (tmp_path / "e.yaml").write_text("- learning_rate: 1e-3\n")
    assert load_experiments_file(tmp_path / "e.yaml") == [{"learning_rate": "1e-3"}]
    for sweeps, entries in (([parse_sweep("learning_rate=1e-3")], None), ([parse_sweep("learning_rate=0.0010")], None),
                            ([], load_experiments_file(tmp_path / "e.json")),
                            ([], load_experiments_file(tmp_path / "e.yaml"))):
        [experiment] = plan_experiments(BASE, sweeps, entries)
        assert experiment.exp_name == lr
        assert experiment.args["learning_rate"] == 0.001
    # Integral values as ints, tiny ones as Python writes them, on/off flags lowercase; values the
    # run does not read as numbers stay as written.
    named = [*BASE, "--exp_name", "mine"]
    cases = [("cost_target_bits=5.0", "mine_cost_target_bits=5"), ("weight_decay=0.00001", "mine_weight_decay=1e-05"),
             ("max_steps=004", "mine_max_steps=4"), ("fp16=True", "mine_fp16=true"),
             ("search_space=INT4,8;2,4", "mine_search_space=INT4-8"), ("metric=1e-3", "mine_metric=1e-3")]
    for sweep, name in cases:
        assert [e.exp_name for e in plan_experiments(named, [parse_sweep(sweep)])][0] == name
    # Names already in that spelling stay as they were.
    assert [e.exp_name for e in plan_experiments(named, [parse_sweep("learning_rate=0.01,0.1,2.5e-05")])] == \
        ["mine_learning_rate=0.01", "mine_learning_rate=0.1", "mine_learning_rate=2.5e-05"]


def test_one_setting_written_twice_is_an_error():
    with pytest.raises(LaunchError, match=r"^--sweep learning_rate: 0.001 and 1e-3 are the same value \(0.001\); list "
                       r"each value once$"):
        plan_experiments(BASE, [parse_sweep("learning_rate=0.001,1e-3")])
    with pytest.raises(LaunchError, match=r"^--sweep fp16: true and TRUE are the same value \(true\)"):
        plan_experiments(BASE, [parse_sweep("fp16=true,TRUE")])
    with pytest.raises(LaunchError, match=rf"^experiments 1 and 2 would both write to /\S+/{SEARCH}_s42_learning_rate="
                       r"0.001 \(they are the same run\)"):
        plan_experiments(BASE, entries=[{"learning_rate": 0.001}, {"learning_rate": "1e-3"}])
    # Under two names: every flag but the name means the same (--search_space INT4,8 is 4,8).
    with pytest.raises(LaunchError, match=r"^experiments 1 and 3 are the same run under two names \('a' and 'c': every "
                       r"other flag means the same\); remove one of them$"):
        plan_experiments(BASE, entries=[{"exp_name": "a", "learning_rate": 0.01}, {"exp_name": "b"},
                                        {"exp_name": "c", "learning_rate": "1e-2", "search_space": "INT4,8"}])


ONE_FORMAT_WAYS_OUT = ("with nothing to choose; for one search over these formats give --search_space {formats} "
                       "(outside --sweep), {several} (--sweep 'search_space=4,8;2,4,8'), or for uniform baselines "
                       "sweep the fixed format (--sweep bits={formats})")
SEPARATE = "to sweep several search spaces separate them with ';'"
EACH_SEVERAL = "give each search space several formats"  # they were separated with ';' already


@pytest.mark.parametrize("text, shown, values, formats, several", [
    # --sweep splits on commas: the user almost surely meant one search over int4 and int8.
    ("search_space=4,8", "search_space=4,8", "4, 8", "4,8", SEPARATE),
    ("search_space=int4,fp8_e4m3,8", "search_space=int4,fp8_e4m3,8", "int4, fp8_e4m3, 8", "int4,fp8_e4m3,8",
     SEPARATE),
    # Separated with ';' as the README says, but still one format each.
    ("search_space=4;8", "'search_space=4;8'", "4, 8", "4,8", EACH_SEVERAL),
])
def test_a_sweep_of_one_format_search_spaces_is_refused(text, shown, values, formats, several):
    with pytest.raises(LaunchError) as error:
        plan_experiments(BASE, [parse_sweep(text)])
    count = len(values.split(", "))
    assert str(error.value) == (f"--sweep {shown} would run {count} searches of one format each ({values}), "
                                + ONE_FORMAT_WAYS_OUT.format(formats=formats, several=several))


def test_search_space_sweeps_that_search_stay():
    # Several search spaces; one of them a single format, which its run notes (as --search_space 8 does).
    plans = plan_experiments(BASE, [parse_sweep("search_space=8;4,8")])
    assert [e.exp_name for e in plans] == ["resnet18_search_int8_layer_memory_t8b_s42", f"{SEARCH}_s42"]
    assert plans[0].notes[0].startswith("note: --search_space 8 has one format (int8)") and plans[1].notes == ()
    # One value is no comma slip; an experiments file gives each entry's space whole (a list or "4,8").
    assert [e.exp_name for e in plan_experiments(BASE, [parse_sweep("search_space=4")])] == [
        "resnet18_search_int4_layer_memory_t4b_s42"]
    plans = plan_experiments(BASE, [], [{"search_space": [4, 8]}, {"search_space": "2,4,8"}])
    assert [e.args["search_formats"] for e in plans] == [["int4", "int8"], ["int2", "int4", "int8"]]
    # Values that are no formats are left to the run's own check, which names them.
    with pytest.raises(LaunchError, match=r"^experiment 2 of 2 \(search_space=int99\): --search_space: "):
        plan_experiments(BASE, [parse_sweep("search_space=4,int99")])


def test_a_sweep_of_one_value_spelled_twice_or_of_a_search_flag_for_a_baseline_names_the_values():
    """Without a file: the values of the command line's sweep, and a way out that exists (neither
    'remove one of them' nor a file's entries)."""
    with pytest.raises(LaunchError, match=r"^--sweep bits=8 and bits=int8 would both write to /\S+/resnet18_uniform_"
                                          r"wint8-aint8_s42 \(they are the same run\); list each value once$"):
        plan_experiments(BASE, [parse_sweep("bits=8,int8")])
    with pytest.raises(LaunchError, match=r"^--sweep cost_target_bits=3 and cost_target_bits=4 are the same run under "
                                          r"two names \('\S+' and '\S+': every other flag means the same\); a run that "
                                          r"does not search ignores cost_target_bits: drop --sweep cost_target_bits, "
                                          r"or launch from an --experiments file that sets it only in its search "
                                          r"entries$"):
        plan_experiments(BASE, [parse_sweep("bits=4,8"), parse_sweep("cost_target_bits=3,4")])


def test_an_experiments_file_that_is_not_utf8_or_sets_a_key_in_two_spellings(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b'- {seed: 1}\n- {exp_name: "caf\xe9"}\n')
    with pytest.raises(LaunchError, match=rf"^--experiments '{re.escape(str(latin1))}' is not UTF-8 text \(byte 0xe9 on "
                                          r"line 2\); save it as UTF-8$"):
        load_experiments_file(latin1)
    twice = tmp_path / "twice.yaml"
    twice.write_text("- {seed: 1}\n- {--bits: 8, bits: 4}\n")
    with pytest.raises(LaunchError, match=r"entry 2 sets bits twice \(as '--bits' and 'bits'\); keep one of its "
                                          r"values$"):
        load_experiments_file(twice)
    dashed = tmp_path / "dashed.yaml"
    dashed.write_text("- {--exp_name: mine, --bits: 8}\n")
    # exp_name written as the flag is the entry's name, as every other key so written is its flag
    assert load_experiments_file(dashed) == [{"exp_name": "mine", "bits": 8}]
    assert [e.exp_name for e in plan_experiments(BASE, entries=load_experiments_file(dashed))] == ["mine"]
