import re

import pytest
import torch
from torch import nn

from cost.model_cost import (CostType, LayerCost, ModelCost, average_bits_cost, current_assignment, layer_costs,
                             model_cost, parse_cost_type)
from quant.formats import NO_QUANT, parse_format
from quant.quant_module import QuantConfig
from quant.surgery import QuantSpec, quantize_model

INT2, INT4, INT8, FP4 = (parse_format(t) for t in ("int2", "int4", "int8", "fp4"))


def test_layer_cost_arithmetic():
    cost = LayerCost("fc", num_weights=1000, macs_per_sample=5000)
    assert cost.memory_mib(INT4) == 500 / 2**20
    assert cost.gbops(INT4, INT8) == 5000 * 32 / 1e9
    assert cost.cost(CostType.COMPUTE, FP4, NO_QUANT) == 5000 * 4 * 32 / 1e9
    assert cost.cost(CostType.MEMORY, INT2, INT8) == 250 / 2**20


def test_model_cost_of_an_assignment_without_running():
    costs = [LayerCost("a", 2**20, 10**9), LayerCost("b", 2**21, 2 * 10**9)]
    result = model_cost(costs, {"a": (INT8, INT8), "b": (INT4, INT2)})
    assert result.memory_mib == 1.0 + 1.0  # 1 Mi weights x 1 byte + 2 Mi weights x 0.5 byte
    assert result.gbops == 64 + 16
    assert (result.float_memory_mib, result.float_gbops) == (12.0, 3 * 1024)
    assert result.value(CostType.MEMORY) == 2.0 and result.value(CostType.COMPUTE) == 80
    with pytest.raises(ValueError, match=r"no formats given for layers \['b'\]"):
        model_cost(costs, {"a": (INT8, INT8)})


def test_costs_from_a_quantized_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    _, layers = quantize_model(model, QuantSpec(["0", "2"], QuantConfig(INT4, INT8)))
    with pytest.raises(RuntimeError, match="'0' has no recorded geometry"):
        layer_costs(layers)
    model.eval()
    model(torch.randn(2, 3, 32, 32))
    costs = layer_costs(layers)
    assert costs == [LayerCost("0", 216, 55296), LayerCost("2", 20480, 20480)]
    result = model_cost(costs, current_assignment(layers))
    assert result.memory_mib == pytest.approx(sum(l.memory_cost() for l in layers.values()), rel=0, abs=0)
    assert result.gbops == pytest.approx(sum(l.compute_cost() for l in layers.values()), rel=1e-15)


def test_parse_cost_type():
    assert parse_cost_type("compute") is CostType.COMPUTE and CostType.MEMORY.unit == "MiB"
    with pytest.raises(ValueError, match=r"unknown cost type 'latency'; valid: \['memory', 'compute'\]"):
        parse_cost_type("latency")


def test_a_cost_type_given_as_a_string_is_that_cost_type():
    # "memory" used to be priced in GBOPs: the enum was compared by identity.
    layer = LayerCost("a", 100, 1000)
    assert layer.cost("memory", INT4, INT8) == 100 * 4 / 8 / 2**20
    assert layer.cost("compute", INT4, INT8) == 1000 * 4 * 8 / 1e9
    assert model_cost([layer], {"a": (INT4, INT8)}).value("memory") == 100 * 4 / 8 / 2**20
    assert average_bits_cost([layer], "memory", 4) == 100 * 4 / 8 / 2**20
    assert average_bits_cost([layer], "compute", 4, 8) == 1000 * 4 * 8 / 1e9
    assert parse_cost_type("memory") is CostType.MEMORY and parse_cost_type(CostType.COMPUTE) is CostType.COMPUTE
    for call in (lambda: layer.cost("flops", INT4, INT8),
                 lambda: model_cost([layer], {"a": (INT4, INT8)}).value("flops"),
                 lambda: average_bits_cost([layer], "flops", 4)):
        with pytest.raises(ValueError, match=r"^unknown cost type 'flops'; valid: \['memory', 'compute'\]$"):
            call()
    with pytest.raises(ValueError, match=r"^unknown cost type 3; valid: \['memory', 'compute'\]$"):
        parse_cost_type(3)


@pytest.mark.parametrize("bits", [-4, 0, 33, float("nan"), float("inf"), True, "4"])
def test_average_bits_must_be_a_number_of_bits(bits):
    layer = LayerCost("a", 100, 1000)
    message = rf"^weight_bits={re.escape(repr(bits))} must be a number of bits in \(0, 32\], e.g. 4.5$"
    with pytest.raises(ValueError, match=message):
        average_bits_cost([layer], CostType.MEMORY, bits)
    message = rf"^act_bits={re.escape(repr(bits))} must be a number of bits in \(0, 32\], e.g. 4.5$"
    with pytest.raises(ValueError, match=message):
        average_bits_cost([layer], CostType.COMPUTE, 4, bits)


def test_a_cost_type_without_a_formula_is_an_error_not_another_types_price(monkeypatch):
    """A member added to CostType (docs/extending.md) but not to a pricing function must not be
    priced as compute (or memory) by an `else`."""
    from enum import Enum

    import cost.model_cost as model_cost_module

    class Extended(str, Enum):
        WEIGHT_COMPUTE = "weight_compute"

    monkeypatch.setattr(model_cost_module, "parse_cost_type", lambda name: Extended.WEIGHT_COMPUTE)
    layer = LayerCost("fc", 100, 1000)
    int8 = parse_format("int8")
    for call, where in ((lambda: layer.cost("weight_compute", int8, int8), "LayerCost.cost"),
                        (lambda: ModelCost(1.0, 2.0, 3.0, 4.0).value("weight_compute"), "ModelCost.value"),
                        (lambda: average_bits_cost([layer], "weight_compute", 4), "average_bits_cost")):
        with pytest.raises(NotImplementedError, match=rf"^cost type 'weight_compute' has no formula in {where}; add "
                                                      r"one \(docs/extending.md, 'Add a cost type'\)$"):
            call()
