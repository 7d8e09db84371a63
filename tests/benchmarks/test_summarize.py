"""The goal table of benchmarks/summarize.py: which measurement meets which goal, on which device."""
import json
from pathlib import Path

import pytest

from benchmarks.summarize import summarize


def step_payload(device: str, ratios: dict[str, float]) -> dict:
    variants = [{"name": "float", "ratio_to_float": 1.0}] + [
        {"name": name, "ratio_to_float": ratio} for name, ratio in ratios.items()]
    return {"benchmark": "search_step", "environment": {"device": device},
            "results": [{"model": "resnet-small", "variants": variants}]}


def verdicts(folder: Path) -> dict[tuple[str, str], tuple[float, str, str]]:
    return {(line.subject, line.metric): (line.value, *line.verdict()) for line in summarize(folder)}


def test_every_fixed_format_meets_the_fixed_format_goal_on_the_cpu(tmp_path):
    ratios = {"fixed_int8": 1.19, "fixed_fp8_e4m3": 1.41, "search_train": 1.5, "search_heldout": 1.8}
    (tmp_path / "step_cpu.json").write_text(json.dumps(step_payload("cpu", ratios)))
    got = verdicts(tmp_path)
    assert got[("resnet-small fixed_int8", "fixed-format step / float")] == (1.19, "<= 1.4", "PASS")
    assert got[("resnet-small fixed_fp8_e4m3", "fixed-format step / float")] == (1.41, "<= 1.4", "MISS")
    assert got[("resnet-small", "search_train step / float")] == (1.5, "<= 1.5", "PASS")
    assert got[("resnet-small", "search_heldout step / float")] == (1.8, "-", "info")  # not a goal
    assert len(got) == 4  # the float reference itself is no line


def test_goals_depend_on_the_device(tmp_path):
    (tmp_path / "step_gpu.json").write_text(json.dumps(step_payload("cuda:0", {"fixed_int8": 1.3,
                                                                               "search_train": 1.3})))
    got = verdicts(tmp_path)
    assert got[("resnet-small", "search_train step / float")] == (1.3, "<= 1.25", "MISS")
    assert got[("resnet-small fixed_int8", "fixed-format step / float")] == (1.3, "-", "info")  # a CPU goal only


def test_the_host_presets_steps_are_info_on_every_device(tmp_path):
    for device in ("cpu", "cuda:0"):
        payload = step_payload(device, {"fixed_int8": 1.3, "search_train": 1.9})
        payload["preset"] = "host"
        (tmp_path / "step.json").write_text(json.dumps(payload))
        assert verdicts(tmp_path) == {
            ("resnet-small fixed_int8", "fixed-format step / float (host preset)"): (1.3, "-", "info"),
            ("resnet-small", "search_train step / float (host preset)"): (1.9, "-", "info"),
        }


def test_per_layer_twins_are_info_and_the_grouped_variants_get_their_ratio(tmp_path):
    payload = step_payload("cuda:0", {"search_train": 1.2, "search_train_per_layer": 1.4})
    rows = payload["results"][0]["variants"]
    rows[1].update(ratio_to_per_layer=0.86, grouped_layers=21)
    rows[2].update(per_layer_weights=True, ratio_to_per_layer=None, grouped_layers=0)
    (tmp_path / "step_gpu.json").write_text(json.dumps(payload))
    got = verdicts(tmp_path)
    assert got == {
        ("resnet-small", "search_train step / float"): (1.2, "<= 1.25", "PASS"),
        ("resnet-small (21 layers grouped)", "search_train step / per-layer weights"): (0.86, "-", "info"),
        ("resnet-small", "search_train_per_layer step / float"): (1.4, "-", "info"),  # not the goal's variant
    }


def test_quantizer_goal_takes_the_worst_format(tmp_path):
    rows = [{"name": f"fq fwd {f}/per_tensor", "format": f, "granularity": "per_tensor", "pct_of_copy": pct}
            for f, pct in (("int8", 85.0), ("fp4_e2m1", 79.9))]
    payload = {"benchmark": "quantizer", "environment": {"device": "cuda:0"}, "results": rows}
    (tmp_path / "quantizer_gpu.json").write_text(json.dumps(payload))
    got = verdicts(tmp_path)
    assert got == {("fq fwd fp4_e2m1/per_tensor", "quantizer fwd % of copy (worst format)"): (79.9, ">= 80", "MISS")}
    # The form given the range (the layers') counts too.
    rows.append({"name": "fq range fwd int4/per_channel", "format": "int4", "granularity": "per_channel",
                 "pct_of_copy": 79.0})
    (tmp_path / "quantizer_gpu.json").write_text(json.dumps(payload))
    assert verdicts(tmp_path) == {("fq range fwd int4/per_channel", "quantizer fwd % of copy (worst format)"):
                                  (79.0, ">= 80", "MISS")}


def test_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        summarize(tmp_path / "missing")


def test_profile_shares_are_information_only(tmp_path):
    variants = [{"name": "float", "wall_ms": 20.0, "profiled_wall_ms": 25.0, "host_busy_ms": 10.0,
                 "device_busy_ms": 18.0},
                {"name": "search_train", "wall_ms": 25.0, "profiled_wall_ms": 25.0, "host_busy_ms": 20.0,
                 "device_busy_ms": None},
                {"name": "fixed_int8", "wall_ms": 20.0, "host_busy_ms": 19.0, "device_busy_ms": 15.0}]  # an old file
    payload = {"benchmark": "profile_step", "environment": {"device": "cuda:0"},
               "results": [{"model": "resnet18", "variants": variants}]}
    (tmp_path / "profile_gpu.json").write_text(json.dumps(payload))
    assert verdicts(tmp_path) == {("resnet18 float", "host busy / wall"): (0.4, "-", "info"),
                                  ("resnet18 float", "device busy / wall"): (0.9, "-", "info"),
                                  ("resnet18 search_train", "host busy / wall"): (0.8, "-", "info"),
                                  ("resnet18 fixed_int8", "device busy / wall"): (0.75, "-", "info")}


def test_cli_errors_are_one_line(tmp_path, capsys):
    from benchmarks.summarize import main

    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == (f"summarize: error: {tmp_path / 'missing'} is not a folder; pass the --out "
                                       "folder of the benchmarks (e.g. benchmarks/out)\n")
    (tmp_path / "step.json").write_text("{")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"summarize: error: {tmp_path / 'step.json'} is not valid JSON (") and err.count("\n") == 1


def test_launch_rows_are_info(tmp_path):
    payload = {"benchmark": "launch", "environment": {"device": "cuda"},
               "results": [{"name": "aten add", "us_per_call": 5.0}, {"name": "direct launch", "us_per_call": 4.0},
                           {"name": "direct launch / triton dispatch", "ratio": 0.4}]}
    (tmp_path / "launch_gpu.json").write_text(json.dumps(payload))
    got = verdicts(tmp_path)
    assert got == {("aten add", "host us per call"): (5.0, "-", "info"),
                   ("direct launch", "host us per call"): (4.0, "-", "info"),
                   ("direct launch / triton dispatch", "ratio"): (0.4, "-", "info")}
