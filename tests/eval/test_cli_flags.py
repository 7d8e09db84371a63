"""A flag given twice is refused by every CLI (eval/cli_flags.py): the edge cases, with argparse's
own matching, and the program named as the user typed it."""
import argparse
import sys
import types

import pytest

from eval.cli_flags import FlagSegment, OnceArgumentParser, program_name, repeated_flag_error, split_argv
from eval.eval_parse import create_arg_parser


@pytest.fixture(scope="module")
def run_parser():
    return create_arg_parser("eval_run")


def demo_parser() -> OnceArgumentParser:
    """A parser that allows abbreviations (as argparse does by default) and has flags of every kind."""
    parser = OnceArgumentParser(prog="demo")
    parser.add_argument("root")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--group_by", nargs="+")
    parser.add_argument("--tag", action="append")
    parser.add_argument("--also", action="extend", nargs="+")
    parser.add_argument("-v", "--verbose", action="count")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction)
    return parser


@pytest.mark.parametrize("argv, message", [
    (["--seed", "0", "--seed", "1"], "--seed given twice (0 and 1): give it once"),
    (["--seed=0", "--seed", "1"], "--seed given twice (0 and 1): give it once"),  # both spellings of a value
    (["--seed", "0", "--seed", "1", "--seed=2"], "--seed given 3 times (0, 1 and 2): give it once"),
    (["--seed", "7", "--seed", "7"], "--seed given twice (7 and 7): give it once"),  # the same value: still a slip
    (["--fp16", "--fp16"], "--fp16 given twice: give it once"),  # store_true
    (["--pretrained", "--task", "digits", "--pretrained"], "--pretrained given twice: give it once"),  # store_false
    (["--search", "--no-search"], "--search and --no-search both given: give one of them"),
    (["--no-quantize_pooler", "--seed", "1", "--quantize_pooler"],
     "--no-quantize_pooler and --quantize_pooler both given: give one of them"),
    (["--no-search", "--no-search"], "--no-search given twice: give it once"),
    (["--model", "bert", "--model_type", "gpt2"],  # an alias: each occurrence as written
     "--model_type given twice (--model bert and --model_type gpt2): give it once"),
    (["--model", "bert", "--model", "bert"], "--model given twice (bert and bert): give it once"),
    (["--exp_name", "a b", "--exp_name", ""], "--exp_name given twice ('a b' and ''): give it once"),
    (["--cost_beta", "-0.5", "--cost_beta=-1"], "--cost_beta given twice (-0.5 and -1): give it once"),
    (["--seed", "1", "--task", "digits", "--task", "sst2", "--seed", "2"],  # the first flag repeated
     "--task given twice (digits and sst2): give it once"),
])
def test_repeated_run_flags(run_parser, argv, message):
    assert repeated_flag_error(run_parser, argv) == message


@pytest.mark.parametrize("argv", [
    ["--seed", "1", "--task", "digits"],
    ["--from_scratch", "--pretrained"],  # two flags of one setting: argparse's "not allowed with" says so
    ["--seed", "--seed", "1"],  # a flag without its value: argparse's "expected one argument" says so
    ["--se", "1", "--seed", "2"],  # eval_run allows no abbreviations: --se is unrecognized
    ["--config_overrides", "--seed", "--seed", "2"],  # argparse reads no flag as a value either
])
def test_not_a_repeat_or_left_to_argparse(run_parser, argv):
    assert repeated_flag_error(run_parser, argv) is None


@pytest.mark.parametrize("argv, message", [
    (["r", "--see", "1", "--seed", "2"], "--seed given twice (--see 1 and --seed 2): give it once"),
    (["r", "--see", "1", "--see=2"], "--seed given twice (1 and 2): give it once"),
    (["r", "--group_by", "seed", "task", "--group_by", "model"],
     "--group_by given twice (--group_by seed task and --group_by model): give it once"),
    (["r", "--no-sea", "--search"], "--no-search and --search both given: give one of them"),
    (["r", "--sea", "--search"], "--search given twice (--sea and --search): give it once"),
    (["r", "--seed", "1", "-v", "-v", "--tag", "a", "--tag", "b", "--also", "x", "--also", "y", "--verbose",
      "--seed", "2"], "--seed given twice (1 and 2): give it once"),  # append, extend and count repeat freely
])
def test_abbreviations_nargs_and_repeatable_actions(argv, message, capsys):
    parser = demo_parser()
    assert repeated_flag_error(parser, argv) == message
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"demo: error: {message}"


def test_repeatable_actions_and_everything_after_a_double_dash_parse():
    args = demo_parser().parse_args(["--tag", "a", "--tag", "b", "-v", "-v", "--also", "x", "--also", "y", "--seed",
                                     "1", "--", "--seed"])
    assert (args.tag, args.verbose, args.also, args.seed, args.root) == (["a", "b"], 2, ["x", "y"], 1, "--seed")


def test_split_argv_takes_the_values_argparse_gives_each_flag():
    parser = demo_parser()
    assert split_argv(parser, ["r", "--group_by", "seed", "task", "--seed=-3", "--seed", "-4", "--bogus", "x",
                               "--search"]) == [
        FlagSegment(None, ("r",)),
        FlagSegment("group_by", ("--group_by", "seed", "task")),
        FlagSegment("seed", ("--seed=-3",)),
        FlagSegment("seed", ("--seed", "-4")),  # a negative number is a value
        FlagSegment(None, ("--bogus",)),
        FlagSegment(None, ("x",)),
        FlagSegment("search", ("--search",)),
    ]


@pytest.mark.parametrize("argv0, main_module, expected", [
    ("/venv/bin/fliqs-export", None, "fliqs-export"),
    ("/venv/Scripts/fliqs-export.exe", None, "fliqs-export"),  # Windows' launchers
    ("/venv/bin/fliqs-export-script.py", None, "fliqs-export"),
    ("/repo/quant/export.py", "quant.export", "python -m quant.export"),
    ("/repo/eval/report.py", "eval.report", "python -m quant.export"),  # a module not of this command
    ("/venv/lib/python3/site-packages/pytest/__main__.py", "pytest", "python -m quant.export"),  # in-process
    ("/venv/bin/fliqs-report", None, "python -m quant.export"),  # another command's script
    ("", None, "python -m quant.export"),
])
def test_program_name_is_what_the_user_typed(argv0, main_module, expected, monkeypatch):
    monkeypatch.setattr(sys, "argv", [argv0, "--out", "x"])
    main = types.ModuleType("__main__")
    main.__spec__ = None if main_module is None else types.SimpleNamespace(name=main_module)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert program_name("python -m quant.export", "fliqs-export", ("quant.export",)) == expected
