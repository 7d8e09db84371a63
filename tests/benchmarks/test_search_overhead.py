"""The search-overhead benchmark runs end to end on the CPU and reports each part against the step."""
import json

from benchmarks.bench_search_overhead import WHOLE_STEP, main


def test_parts_are_timed_against_the_whole_search_step(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    payload = main(["--models", "resnet-small", "--repeats", "2", "--warmup", "0", "--inner", "2", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == payload["results"]
    (result,) = payload["results"]
    assert (result["model"], result["quantized_layers"], result["decisions"]) == ("resnet-small", 21, 21)
    parts = {row["name"]: row for row in result["parts"]}
    assert list(parts) == [WHOLE_STEP, "sample", "set_formats", "snapshot_buffers", "quality",
                           "sample_and_update_policy", "plan_policy_update", "update_after_reward", "group_check",
                           "group_weights"]
    step_ms = parts[WHOLE_STEP]["median_ms"]
    assert parts[WHOLE_STEP]["share_of_step"] == 1.0 and step_ms > 0
    for name, row in parts.items():
        assert row["rounds"] == 2 and row["share_of_step"] == row["median_ms"] / step_ms, name
    assert "sample_and_update_policy" in capsys.readouterr().out


def test_the_group_weights_part_runs_the_models_hooks(monkeypatch):
    """With grouping forced on (the CPU's default is off), the part quantizes every weight and
    leaves nothing behind."""
    from quant import weight_group

    calls = []
    real = weight_group.quantize_weights
    monkeypatch.setattr(weight_group, "quantize_weights", lambda ws, fmts, channel: calls.append(len(ws)) or real(ws, fmts, channel))
    monkeypatch.setattr(weight_group, "_mode", weight_group.GroupMode.ALWAYS)
    main(["--models", "resnet-small", "--repeats", "1", "--warmup", "0", "--inner", "1"])
    assert calls and set(calls[-2:]) == {21}


def test_parts_only_times_the_parts_without_running_a_step(monkeypatch):
    """--parts_only (the GPU preset's models on a CPU): no training step runs, no share of one."""
    from benchmarks import bench_search_overhead

    def no_step(self):
        raise AssertionError("--parts_only ran a training step")

    monkeypatch.setattr(bench_search_overhead.TrainerStep, "__call__", no_step)
    payload = main(["--models", "bert-small", "--parts_only", "--repeats", "1", "--warmup", "0", "--inner", "1"])
    (result,) = payload["results"]
    assert (result["model"], result["decisions"]) == ("bert-small", 26)
    assert [row["name"] for row in result["parts"]] == ["sample", "set_formats", "snapshot_buffers", "quality",
                                                        "sample_and_update_policy", "plan_policy_update",
                                                        "update_after_reward", "group_check", "group_weights"]
    assert all(row["share_of_step"] is None and row["median_ms"] > 0 for row in result["parts"])
