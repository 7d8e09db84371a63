"""README.md stays true: its test command is CI's, and every command in it parses (the hub ones
fail fast offline with the ways out). .ci/run executes the smoke commands as written."""
import io
import shlex
import time

import pytest

from eval.eval_parse import parse_run_args
from eval.launch_cli import main as launcher_main
from tests.readme_commands import ROOT, readme_commands, smoke_commands

COMMANDS = readme_commands()
TEST_COMMAND = "python -m pytest tests -q"


def test_readme_test_command_is_the_one_ci_runs():
    assert TEST_COMMAND in COMMANDS
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST_COMMAND in ci
    assert (ROOT / "README.md").read_text().count("## Quickstart") == 1


def test_smoke_commands_cover_quickstart_report_and_export():
    smoke = smoke_commands()
    assert smoke[0] == "python eval_parallel.py"
    assert sum(c.startswith("python -m eval.eval_parse output") for c in smoke) == 4
    assert any(c.startswith("python -m quant.export output/") for c in smoke)
    assert "python tests/readme_commands.py" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("python eval_parallel.py")])
def test_launcher_commands_plan_cleanly(command, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[2:]
    out = io.StringIO()
    gpus = ["0", "1", "2", "3"] if "--gpus" in argv else []  # a GPU machine for the GPU examples, else CPU
    code = launcher_main([*argv, "--dry_run"], available_gpus=gpus, out=out)
    assert code == 0, out.getvalue()
    assert "-m eval.eval_run" in out.getvalue()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("python -m eval.eval_run")])
def test_run_commands_parse(command):
    args = parse_run_args(shlex.split(command)[3:])
    assert args.mode == "search"


HUB_EXAMPLES = [c for c in COMMANDS if c.startswith("python eval_parallel.py --task") and "--output_root_dir output"
                in c and "--model " in c]


def test_the_four_original_examples_are_in_the_readme():
    assert len(HUB_EXAMPLES) == 4
    assert {shlex.split(c)[3] for c in HUB_EXAMPLES} == {"mrpc", "cifar10", "sst2", "imagenet-1k"}


@pytest.mark.parametrize("command", HUB_EXAMPLES)
def test_original_examples_fail_fast_offline_with_the_ways_out(command, tmp_path, capsys):
    from eval.eval_run import main as run_main

    argv = shlex.split(command)[2:]
    argv[argv.index("--output_root_dir") + 1] = str(tmp_path)
    start = time.time()
    assert run_main(argv) == 1
    assert time.time() - start < 10
    err = capsys.readouterr().err
    assert "needs the Hugging Face hub" in err and "--train_file" in err or "--from_scratch" in err


def test_examples_script_plans_cleanly(monkeypatch):
    monkeypatch.chdir(ROOT)
    text = (ROOT / "examples" / "pareto_digits.sh").read_text()
    launch = next(line for line in text.splitlines() if line.startswith("python eval_parallel.py"))
    continuation = text.split(launch)[1].split("\n")[1].strip()
    argv = shlex.split(launch.rstrip("\\") + " " + continuation.replace('"$out"', "runs/x").replace('"$@"', ""))
    out = io.StringIO()
    assert launcher_main([*argv[2:], "--dry_run"], available_gpus=[], out=out) == 0
    assert out.getvalue().count("-m eval.eval_run") == 36
