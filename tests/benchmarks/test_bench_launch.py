"""The launch benchmark runs on the CPU (without the Triton rows) and its variants do what they are named after."""
import json

import torch

from benchmarks.bench_launch import build_variants, main
from quant.formats import parse_format
from quant.quant_utils import quantize
from quant.scales import Granularity


def test_cpu_run_times_every_host_variant(tmp_path):
    out = tmp_path / "launch.json"
    payload = main(["--repeats", "2", "--warmup", "0", "--inner", "3", "--size", "256", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == payload["results"]
    names = [row["name"] for row in payload["results"]]
    assert names == ["aten add", "range", "quantize fwd", "quantize fwd+bwd", "linear fwd+bwd", "quant linear fwd+bwd"]
    add = next(row for row in payload["results"] if row["name"] == "aten add")
    assert add["ratio_to_aten_add"] == 1.0 and add["us_per_call"] == add["median_ms"] * 1e3
    assert payload["size"] == 256 and payload["format"] == "int8"


def test_variants_compute_the_quantizer_and_a_quantized_layers_step():
    x = torch.randn(256, generator=torch.Generator().manual_seed(0))
    variants = build_variants(x, "int4")
    assert torch.equal(variants["quantize fwd"](), quantize(x, parse_format("int4"), Granularity.PER_TENSOR))
    assert torch.equal(variants["aten add"](), x + 1.0)
    assert variants["range"]().item() == x.abs().max().item()
