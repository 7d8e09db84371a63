"""What a run starts from: a --load_config run of the run's model and task."""
import argparse

import pytest

from eval.run_inputs import check_load_config_run
from tests.eval.test_eval_parse import error_of, write_results


def test_load_config_mismatch_calls_only_the_flags_not_given_the_default(tmp_path, capsys):
    """--task digits --model resnet18 typed against a bert-tiny run: both were given, so neither
    is "(the default)", as it said before."""
    other = tmp_path / "bert" / "r.json"
    other.parent.mkdir()
    write_results(other, task="synth-sentiment", model_type="bert-tiny")
    tail = ("contradict it (the formats it found are for that model and task): pass --model bert-tiny --task "
            "synth-sentiment, or load a run of resnet18 on digits (see --help)\n")
    head = f"eval_run: error: --load_config '{other}' is a run of bert-tiny on synth-sentiment, and "
    typed = error_of(["--task", "digits", "--model", "resnet18", "--load_config", str(other), "--eval_only"], capsys)
    assert typed == f"{head}--model resnet18 --task digits {tail}"
    one_typed = error_of(["--task", "digits", "--load_config", str(other), "--eval_only"], capsys)
    assert one_typed == f"{head}--model resnet18 (the default) --task digits {tail}"
    neither = error_of(["--load_config", str(other), "--eval_only"], capsys)
    assert neither == f"{head}--model resnet18 (the default) --task digits (the default) {tail}"
    # Flags not parsed from a command line (unknown which were typed): a value at its default is one.
    args = argparse.Namespace(load_config=str(other), model_type="resnet18", task="digits")
    with pytest.raises(ValueError, match=r"and --model resnet18 \(the default\) --task digits \(the default\) "
                                         r"contradict it"):
        check_load_config_run(args)
    with pytest.raises(ValueError, match=r"and --model resnet18 --task digits \(the default\) contradict it"):
        check_load_config_run(args, given=frozenset({"model_type"}))
