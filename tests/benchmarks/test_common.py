"""Interleaved timing: which calls are timed, in which order."""
import pytest
import torch

from benchmarks.common import time_interleaved


def test_settle_calls_run_untimed_before_each_variants_timed_calls():
    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    timings = time_interleaved(variants, repeats=2, warmup=1, device=torch.device("cpu"), inner=2, settle=1)
    # Round r starts at variant r % 3; each turn is 1 settle call + 2 timed calls.
    assert calls == ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"] * 3 \
        + ["c"] * 3 + ["a"] * 3 + ["b"] * 3
    assert {name: len(t.times_ms) for name, t in timings.items()} == {"a": 2, "b": 2, "c": 2}


def test_bad_inner_and_settle_are_refused():
    with pytest.raises(ValueError, match="inner must be >= 1 and settle >= 0, got 1 and -1"):
        time_interleaved({"a": lambda: None}, repeats=1, warmup=0, device=torch.device("cpu"), settle=-1)
    with pytest.raises(ValueError, match="inner must be >= 1 and settle >= 0, got 0 and 0"):
        time_interleaved({"a": lambda: None}, repeats=1, warmup=0, device=torch.device("cpu"), inner=0)
