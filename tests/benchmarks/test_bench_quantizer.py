"""The quantizer benchmark's variants compute what they are named after."""
import torch

from benchmarks.bench_quantizer import BYTES_PER_ELEMENT, build_variants, main
from quant.formats import parse_format
from quant.scales import Granularity


def test_the_range_form_gives_the_scale_forms_result():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 3
    formats = [parse_format("int4"), parse_format("fp4_e2m1")]
    variants, _ = build_variants(x, formats, list(Granularity)[:2], use_compile=False)
    by_name = {v.name: v for v in variants}
    for fmt in formats:
        for granularity in list(Granularity)[:2]:
            tag = f"{fmt.name}/{granularity.value}"
            given_scale, given_range = by_name[f"fq fwd {tag}"].fn(), by_name[f"fq range fwd {tag}"].fn()
            assert torch.equal(given_scale.view(torch.int32), given_range.view(torch.int32)), tag
            assert by_name[f"quantize fwd+bwd {tag}"].kind == "layer_path"
    assert BYTES_PER_ELEMENT["layer_path"] == 12


def test_cpu_run_lists_every_variant(tmp_path):
    payload = main(["--size", "4096", "--channels", "8", "--formats", "int8", "--granularities", "per_tensor",
                    "--repeats", "1", "--warmup", "0", "--out", str(tmp_path / "q.json")])
    names = [row["name"] for row in payload["results"]]
    assert {"copy", "fq fwd int8/per_tensor", "fq range fwd int8/per_tensor", "quantize fwd+bwd int8/per_tensor",
            "torch fwd int8/per_tensor"} <= set(names)
