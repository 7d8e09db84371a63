"""torch.compile of quantized code: one graph (fullgraph), the same values and gradients as eager.

Inside a compiled graph the quantizer takes its eager core (quant/quant_utils.py): the fused GPU
kernel, the CPU slicing and the device-constant cache are host-side work the compiler does not
trace, and it fuses the elementwise core itself. `aot_eager` traces forward and backward as
inductor would, without compiling kernels (fast enough for CPU tests)."""
import copy
import warnings

import pytest
import torch
from torch import nn

from quant.cpu_quantize import SLICE_ELEMENTS
from quant.formats import FloatFormat, cached_per_format
from quant.quant_module import QuantConfig
from quant.quant_utils import quantize
from quant.surgery import QuantSpec, quantize_model


@pytest.mark.parametrize("token", ["int8", "fp4", "bf16", "e3m3"])
def test_a_compiled_quantizer_equals_eager_on_a_tensor_the_cpu_slices(token):
    x = torch.randn(SLICE_ELEMENTS // 500 + 100, 1000, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(lambda t: quantize(t, token, "per_channel"), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), quantize(x, token, "per_channel"))


@pytest.mark.parametrize("config", [QuantConfig("int4", "int8"),
                                    QuantConfig(FloatFormat(2, 2), "fp4", per_channel=True, per_token=True),
                                    QuantConfig("bf16", "fp16", weight_range_percentile=99.0)])
def test_a_compiled_quantized_model_trains_as_eager(config):
    """Forward and backward in one graph each, outputs and every gradient bit for bit; and no
    warning of ours or about lru_cache wrappers (which torch.compile skips with one; plain dicts
    here)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    quantize_model(model, QuantSpec(["0", "2"], config))
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(twin, backend="aot_eager", fullgraph=True)(x)
        out.square().sum().backward()
    assert not [w for w in caught if "quant" in str(w.filename) or "lru_cache" in str(w.message)]
    want = model(x)
    want.square().sum().backward()
    assert torch.equal(out, want)
    for (name, got), expected in zip(twin.named_parameters(), model.parameters()):
        assert torch.equal(got.grad, expected.grad), name


def test_cached_per_format_computes_once_per_format():
    calls = []

    @cached_per_format
    def bits_twice(fmt):
        calls.append(fmt)
        return 2 * fmt.bits

    assert [bits_twice(FloatFormat(2, 1)), bits_twice(FloatFormat(2, 1)), bits_twice(FloatFormat(3, 1))] == [8, 8, 10]
    assert calls == [FloatFormat(2, 1), FloatFormat(3, 1)]
    assert bits_twice.__name__ == "bits_twice"
