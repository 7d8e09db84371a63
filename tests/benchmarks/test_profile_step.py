"""The step profile: per-step figures from profiler events, and an end-to-end CPU run."""
import json
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from benchmarks.profile_step import _merged_length, main, summarize_events


def _event(name, start, end, self_us=0.0, device=DeviceType.CPU):
    time_range = SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start)
    return SimpleNamespace(name=name, time_range=time_range, self_cpu_time_total=self_us, device_type=device)


def test_merged_length_counts_overlaps_once():
    assert _merged_length([]) == 0.0
    assert _merged_length([(0, 10), (5, 15), (20, 30), (30, 31), (2, 3)]) == 26.0


def test_summarize_events_per_step():
    events = [
        _event("cudaLaunchKernel", 0, 4, self_us=4.0),
        _event("cuLaunchKernelEx", 4, 6, self_us=2.0),
        _event("aten::mm", 0, 30, self_us=20.0),
        _event("aten::mm", 40, 60, self_us=10.0),
        _event("cudaStreamSynchronize", 60, 1060, self_us=1000.0),
        _event("cudaMemcpyAsync", 1100, 1600, self_us=500.0),
        _event("gemm_kernel", 10, 510, device=DeviceType.CUDA),
        _event("quant_kernel", 500, 900, device=DeviceType.CUDA),
        _event("Memset (Device)", 895, 900, device=DeviceType.CUDA),  # busy, but not a kernel
        _event("Activity Buffer Request", 0, 3000, self_us=3000.0),  # the profiler's own: left out
    ]
    summary = summarize_events(events, steps=2, top=2)
    assert summary["kernels_per_step"] == 1.0
    assert summary["launches_per_step"] == 1.0
    assert summary["device_busy_ms"] == pytest.approx(0.890 / 2)
    assert summary["host_wait_ms"] == pytest.approx(1.5 / 2)
    assert summary["top_host_ops"] == [
        {"name": "cudaStreamSynchronize", "self_ms_per_step": 0.5, "calls_per_step": 0.5},
        {"name": "cudaMemcpyAsync", "self_ms_per_step": 0.25, "calls_per_step": 0.5},
    ]
    assert summarize_events(events[:3], steps=1, top=1)["device_busy_ms"] is None  # a CPU run


def test_cpu_run_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "profile.json"
    payload = main(["--models", "resnet-small", "--repeats", "1", "--warmup", "0", "--steps", "1", "--top", "3",
                    "--out", str(out)])
    assert json.loads(out.read_text())["results"] == payload["results"]
    (result,) = payload["results"]
    rows = {row["name"]: row for row in result["variants"]}
    assert list(rows) == ["float", "fixed_int8", "search_train"]
    for name, row in rows.items():
        assert row["device_busy_ms"] is None and row["launches_per_step"] == 0, name
        assert row["host_busy_ms"] == row["profiled_wall_ms"] - row["host_wait_ms"], name
        assert row["profiled_wall_ms"] > 0 and len(row["top_host_ops"]) == 3, name
    assert "search_train top host ops per step" in capsys.readouterr().out


def test_flags_are_checked():
    with pytest.raises(SystemExit):
        main(["--steps", "0"])
    with pytest.raises(SystemExit):
        main(["--clock", "thread"])


def test_per_layer_twins_are_profiled_too(tmp_path):
    payload = main(["--models", "resnet-small", "--repeats", "1", "--warmup", "0", "--steps", "1", "--top", "1",
                    "--per_layer_weights", "--out", str(tmp_path / "profile.json")])
    names = [row["name"] for row in payload["results"][0]["variants"]]
    assert names == ["float", "fixed_int8", "search_train", "fixed_int8_per_layer", "search_train_per_layer"]
