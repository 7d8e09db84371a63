"""The step benchmark's variants, and a CPU run with the per-layer comparison."""
import json

import pytest
import torch

from benchmarks.bench_search_step import main, step_variants
from benchmarks.step_setup import StepVariant


def test_per_layer_twins_follow_every_quantized_variant():
    variants = step_variants(["int8"], ["int4", "int8"], ["train"], per_layer_weights=True)
    assert [(v.name, v.per_layer_weights) for v in variants] == [
        ("float", False), ("fixed_int8", False), ("search_train", False),
        ("fixed_int8_per_layer", True), ("search_train_per_layer", True)]
    assert variants[4].formats == ("int4", "int8") and variants[4].reward_source == "train"
    assert [v.name for v in step_variants(["int8"], ["int4"], ["train"])] == ["float", "fixed_int8", "search_train"]


def test_a_float_variant_cannot_be_per_layer():
    with pytest.raises(ValueError, match="variant 'f': per_layer_weights needs quantized layers, not kind float"):
        StepVariant("f", "float", per_layer_weights=True)


def test_cpu_run_with_per_layer_twins(tmp_path):
    out = tmp_path / "step.json"
    payload = main(["--models", "resnet-small", "--repeats", "2", "--warmup", "0", "--fixed_formats", "int8",
                    "--reward_sources", "train", "--per_layer_weights", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == payload["results"]
    rows = {row["name"]: row for row in payload["results"][0]["variants"]}
    assert list(rows) == ["float", "fixed_int8", "search_train", "fixed_int8_per_layer", "search_train_per_layer"]
    assert rows["fixed_int8"]["ratio_to_per_layer"] > 0 and rows["search_train"]["ratio_to_per_layer"] > 0
    assert rows["float"]["ratio_to_per_layer"] is None and rows["search_train_per_layer"]["ratio_to_per_layer"] is None
    assert [rows[n]["per_layer_weights"] for n in rows] == [False, False, False, True, True]
    # on the CPU grouping is off by default: no step groups, and no kernel was checked
    assert [rows[n]["grouped_layers"] for n in rows] == [0, 0, 0, 0, 0]
    assert payload["results"][0]["grouped_kernels_verified"] is None


def test_grouped_layers_are_counted_where_grouping_runs(tmp_path, monkeypatch):
    from quant import weight_group

    monkeypatch.setattr(weight_group, "_mode", weight_group.GroupMode.ALWAYS)
    payload = main(["--models", "resnet-small", "--repeats", "1", "--warmup", "0", "--fixed_formats", "int8",
                    "--reward_sources", "train", "--per_layer_weights"])
    rows = {row["name"]: row["grouped_layers"] for row in payload["results"][0]["variants"]}
    assert rows == {"float": 0, "fixed_int8": 21, "search_train": 21, "fixed_int8_per_layer": 0,
                    "search_train_per_layer": 0}


def test_the_host_preset_has_the_gpu_presets_quantized_layers():
    """The host preset stands in for the gpu preset's host work: the same layers (so the same
    quantizers and search decisions), only narrower. Built on the meta device: no weights."""
    from benchmarks.step_setup import build_float_model, preset_cases
    from eval.eval_partitions import LayerSelection, select_layers

    def layers(preset: str) -> list[list[str]]:
        with torch.device("meta"):
            return [select_layers(build_float_model(case, seed=0), LayerSelection()) for case in preset_cases(preset)]

    host, gpu = layers("host"), layers("gpu")
    assert [len(names) for names in gpu] == [21, 74]
    assert host == gpu
