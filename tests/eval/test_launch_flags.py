import pytest

from eval.cli_flags import FlagSegment, split_argv
from eval.eval_parse import create_arg_parser
from eval.launch_flags import LaunchError, apply_overrides, override_tokens, resolve_key, value_text


@pytest.fixture(scope="module")
def parser():
    return create_arg_parser("eval_run")


def test_split_argv_groups_each_flag_with_its_value(parser):
    argv = ["--task", "digits", "--seed=3", "--max_st", "5", "--fp16", "--no-quantize_pooler", "--bogus", "7",
            "--cost_beta", "-0.5", "--model", "bert"]
    assert split_argv(parser, argv) == [
        FlagSegment("task", ("--task", "digits")),
        FlagSegment("seed", ("--seed=3",)),
        FlagSegment(None, ("--max_st",)),  # no abbreviations: left for the run's parser to reject
        FlagSegment(None, ("5",)),
        FlagSegment("fp16", ("--fp16",)),
        FlagSegment("quantize_pooler", ("--no-quantize_pooler",)),
        FlagSegment(None, ("--bogus",)),  # left for the run's parser to reject
        FlagSegment(None, ("7",)),
        FlagSegment("cost_beta", ("--cost_beta", "-0.5")),
        FlagSegment("model_type", ("--model", "bert")),
    ]


def test_ambiguous_prefix_is_left_unmatched(parser):
    # --max could be --max_steps, --max_train_samples, ...: argparse rejects it, so do we.
    assert split_argv(parser, ["--max", "3"]) == [FlagSegment(None, ("--max",)), FlagSegment(None, ("3",))]


@pytest.mark.parametrize("key, value, expected", [
    ("seed", "3", ("seed", ["--seed", "3"])),
    ("seed", 3, ("seed", ["--seed", "3"])),
    ("learning_rate", 0.001, ("learning_rate", ["--learning_rate", "0.001"])),
    ("cost_beta", -0.5, ("cost_beta", ["--cost_beta=-0.5"])),
    ("model", "bert", ("model_type", ["--model", "bert"])),
    ("search_space", [4, 8], ("search_space", ["--search_space", "4,8"])),
    ("fp16", "true", ("fp16", ["--fp16"])),
    ("fp16", "FALSE", ("fp16", [])),
    ("fp16", False, ("fp16", [])),
    ("from_scratch", "false", ("from_scratch", ["--pretrained"])),
    ("from_scratch", True, ("from_scratch", ["--from_scratch"])),
    ("pretrained", True, ("from_scratch", ["--pretrained"])),
    ("pretrained", False, ("from_scratch", ["--from_scratch"])),
    ("quantize_pooler", "false", ("quantize_pooler", ["--no-quantize_pooler"])),
    ("search", "true", ("search", ["--search"])),
    ("search", False, ("search", ["--no-search"])),
    ("seed", None, ("seed", [])),
])
def test_override_tokens(parser, key, value, expected):
    assert override_tokens(parser, key, value) == expected


@pytest.mark.parametrize("key, value, message", [
    ("fp16", "yes", r"fp16 is an on/off flag: give true or false, not 'yes'"),
    ("learning_rat", 1, r"'learning_rat' is not a run flag; did you mean learning_rate"),
    ("zzz", 1, r"'zzz' is not a run flag; see python -m eval.eval_run --help"),
    ("cuda_visible_devices", "0", r"cuda_visible_devices cannot be set per experiment: .*--gpus or --num_gpus"),
    ("exp_name", "x", r"exp_name cannot be swept: give each entry of --experiments its own exp_name"),
    ("seed", True, r"seed takes a value, not true"),
    ("seed", {"a": 1}, r"seed: \{'a': 1\} is a dict; give a string, number, true/false or a list"),
    ("search_space", [], r"search_space: an empty list is not a value"),
    # `no-X: true` resolved to X's flag and turned X on
    ("no-quantize_pooler", True, r"^'no-quantize_pooler' is not a key: on/off flags are set by their name, e\.g\. "
                                 r"quantize_pooler: false \(--sweep quantize_pooler=false\)$"),
    ("no-search", "false", r"^'no-search' is not a key: .* search: false \(--sweep search=false\)$"),
])
def test_override_errors(parser, key, value, message):
    with pytest.raises(LaunchError, match=message):
        override_tokens(parser, key, value)


def test_apply_overrides_replaces_every_occurrence(parser):
    base = split_argv(parser, ["--seed", "1", "--task", "digits", "--fp16", "--seed=9"])
    assert apply_overrides(parser, base, [("seed", "2"), ("fp16", "false"), ("max_steps", 3)]) == [
        "--task", "digits", "--seed", "2", "--max_steps", "3"]


def test_apply_overrides_rejects_one_flag_set_twice(parser):
    with pytest.raises(LaunchError, match=r"model_type is set twice for one experiment"):
        apply_overrides(parser, [], [("model", "bert"), ("model_type", "gpt2")])


def test_resolve_key_and_value_text(parser):
    assert resolve_key(parser, "model").dest == "model_type"
    assert value_text("x", True) == "true"
    assert value_text("x", ["int4", 8]) == "int4,8"
