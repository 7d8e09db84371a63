"""README.md stays true: its test command is CI's, and every command in it parses (the hub ones
fail fast offline with the ways out). .ci/run executes the smoke commands as written."""
import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
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
    export = next(i for i, c in enumerate(smoke) if c.startswith("python -m quant.export output/"))
    assert smoke[export + 1].startswith("python examples/onnx_agreement.py output/")  # after the export it reads
    assert "python tests/readme_commands.py" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("python eval_parallel.py")])
def test_launcher_commands_plan_cleanly(command, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)[2:]
    out = io.StringIO()
    gpus = ["0", "1", "2", "3"] if "--gpus" in argv else []  # a GPU machine for the GPU examples, else CPU
    # A fresh output root: completed runs from a local Quickstart in output/ would refuse the plan.
    # In place where the command gives one: a flag given twice is an error.
    if "--output_root_dir" in argv:
        argv[argv.index("--output_root_dir") + 1] = str(tmp_path)
    else:
        argv += ["--output_root_dir", str(tmp_path)]
    if "--dry_run" not in argv:
        argv.append("--dry_run")
    code = launcher_main(argv, available_gpus=gpus, out=out)
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


STUDY_SCRIPTS = ["pareto_digits", "pareto_text", "pareto_text_weight_only"]


@pytest.fixture(scope="module")
def planned_studies(tmp_path_factory):
    """Each study script's plan (a `python` that plans the study with --dry_run and skips the
    report, which needs the runs), in a directory of its own: script -> its process. The three
    are independent and start together, sharing the machine's cores."""
    started = {}
    for script in STUDY_SCRIPTS:
        tmp_path = tmp_path_factory.mktemp(script)
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "python").write_text(f'#!/bin/sh\n[ "$1" = eval_parallel.py ] && exec {sys.executable} "$@" --dry_run\n'
                                     f'[ "$2" = eval.eval_parse ] && exit 0\nexec {sys.executable} "$@"\n')
        (shim / "python").chmod(0o755)
        out = tmp_path / "out"
        out.mkdir()
        env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
               "CUDA_VISIBLE_DEVICES": ""}
        started[script] = subprocess.Popen(["bash", str(ROOT / "examples" / f"{script}.sh"), str(out)], env=env,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("script", STUDY_SCRIPTS)
def test_examples_script_plans_cleanly(planned_studies, script):
    done = _finished(planned_studies[script], timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("-m eval.eval_run") == 36  # 12 experiments x 3 seeds
    if script.endswith("weight_only"):  # every model but float keeps INT8 activations; 6 x 3 searches of weights
        assert done.stdout.count(" --activation_bits 8 ") == 33 and done.stdout.count(" --weight_only_search ") == 18


def _finished(process: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    """What subprocess.run gives, for a process started with Popen (stdout and stderr piped)."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _fake_launcher_path(tmp_path, exit_code=0):
    """PATH with a `python` that skips `python eval_parallel.py ...` (the study; exits with
    `exit_code`) and runs everything else."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\n[ "$1" = eval_parallel.py ] && exit {exit_code}\n'
                                 f'exec {sys.executable} "$@"\n')
    (shim / "python").chmod(0o755)
    return f"{shim}{os.pathsep}{os.environ['PATH']}"


def _docs_digest():
    """Every study's report in docs/ (a study run elsewhere must leave them as they are)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((ROOT / "docs").glob("pareto_*")) if path.suffix in (".md", ".png")}


@pytest.fixture(scope="module")
def reported_studies(tmp_path_factory):
    """Each study script run on an output root of its own holding one completed run, its study
    skipped (the report only): script -> (output root, its process, docs/ before). The three are
    independent and start together, sharing the machine's cores."""
    from tests.eval.test_results import make_results, write_run

    before = _docs_digest()
    started = {}
    for script in STUDY_SCRIPTS:
        tmp_path = tmp_path_factory.mktemp(script)
        out = tmp_path / "study"
        write_run(out, make_results("float_seed=0", method="float"))
        env = dict(os.environ, PATH=_fake_launcher_path(tmp_path))
        started[script] = (out, subprocess.Popen(["bash", str(ROOT / "examples" / f"{script}.sh"), str(out)], env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), before)
    yield started
    for _, process, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize("script", STUDY_SCRIPTS)
def test_examples_script_writes_its_report_next_to_another_output_root(reported_studies, script):
    out, process, before = reported_studies[script]
    done = _finished(process, timeout=120)
    assert done.returncode == 0, done.stderr
    report = (out / f"{script}.md").read_text()
    assert report.startswith(f"# FLIQS results: {out}") and done.stdout == report
    assert (out / f"{script}.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["digits", f"{script}.md", f"{script}.png"]
    assert _docs_digest() == before  # docs/ is the default study's, not this one's


def test_examples_script_takes_a_relative_root_from_where_it_is_started_and_reports_failed_runs(tmp_path):
    from tests.eval.test_results import make_failed, make_results, write_run

    caller = tmp_path / "here"
    write_run(caller / "rel", make_results("float_seed=0", method="float"))
    write_run(caller / "rel", make_failed("int8_seed=0", error="RuntimeError: boom"))
    before = _docs_digest()
    env = dict(os.environ, PATH=_fake_launcher_path(tmp_path, exit_code=1))  # some run failed
    done = subprocess.run(["bash", str(ROOT / "examples" / "pareto_digits.sh"), "rel", "--workers", "2"], env=env,
                          cwd=caller, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1  # the launcher's status, after the report
    report = (caller / "rel" / "pareto_digits.md").read_text()
    assert "int8_seed=0" in report and "RuntimeError: boom" in report
    assert _docs_digest() == before


def test_examples_script_without_output_root_plans_the_default_and_skips_the_report_on_a_dry_run(tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (shim / "python").chmod(0o755)
    before = _docs_digest()
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "SEEDS": "5"}
    done = subprocess.run(["bash", str(ROOT / "examples" / "pareto_digits.sh"), "--dry_run", "--workers", "2"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("-m eval.eval_run") == 12  # one seed
    assert "--output_root_dir runs/pareto_digits " in done.stdout and "--seed 5 " in done.stdout  # the repo's runs/
    assert _docs_digest() == before and not (ROOT / "runs" / "pareto_digits").exists()


def test_examples_script_takes_the_callers_value_of_a_study_flag(tmp_path):
    """The launcher refuses a flag given twice: the study's own --num_train_epochs gives way."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (shim / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": "",
           "SEEDS": "5"}
    extras = (["--num_train_epochs", "2"], ["--num_train_epochs=2"], ["--model_type", "resnet50"], ["--model=resnet50"])
    # The four dry runs are independent: started together, they share the machine's cores.
    started = [subprocess.Popen(["bash", str(ROOT / "examples" / "pareto_digits.sh"), str(tmp_path / "out"),
                                 "--dry_run", *extra], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for extra in extras]
    for extra, process in zip(extras, started):
        done = _finished(process, timeout=300)
        assert done.returncode == 0, done.stderr
        runs = [line for line in done.stdout.splitlines() if "-m eval.eval_run" in line]
        assert len(runs) == 12 and all(f" {' '.join(extra)} " in line for line in runs), runs[0]
        assert all("--report_to none" in line for line in runs)
        assert ("--num_train_epochs 6" in done.stdout) == ("num_train_epochs" not in extra[0])
        assert ("--model resnet18" in done.stdout) == ("model" not in extra[0])


def test_examples_script_keeps_the_previous_report_when_the_report_fails(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "pareto_digits.md").write_text("previous report\n")
    env = dict(os.environ, PATH=_fake_launcher_path(tmp_path))
    done = subprocess.run(["bash", str(ROOT / "examples" / "pareto_digits.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"python -m eval.eval_parse: error: no run directories under '{out}' (a run directory " \
        "holds one of results.json, config.json, output.txt, stdout.log); check OUTPUT_ROOT\n"
    assert sorted(p.name for p in out.iterdir()) == ["pareto_digits.md"]  # no temporary file left
    assert (out / "pareto_digits.md").read_text() == "previous report\n"


def test_code_fences_stand_on_lines_of_their_own():
    # A closing fence with text after it ("``` Only completed runs ...") does not close the block:
    # the rest of the README rendered as code.
    for number, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            assert re.fullmatch(r"```[a-z]*", line.strip()), f"README.md:{number}: {line!r}"
