"""The export's Q/DQ stand-in layers compute exactly the fake-quant (quant/onnx_ops.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from quant.onnx_ops import _QDQLayer
from quant.quant_conv2d import QuantConv2d
from quant.quant_linear import QuantConv1D, QuantLinear
from quant.quant_module import QuantConfig
from tests.quant.test_onnx_export import SUPPORTED

torch.set_num_threads(1)


@pytest.mark.parametrize("weight, act", SUPPORTED + [("fp4", "fp4"), ("int2", "int2"), ("int4", "fp8_e5m2")])
@pytest.mark.parametrize("per_channel, per_token", [(False, False), (True, True)])
def test_export_layers_compute_exactly_the_fake_quant(weight, act, per_channel, per_token):
    torch.manual_seed(0)
    config = QuantConfig(weight, act, per_channel=per_channel, per_token=per_token)
    cases = [(QuantLinear.from_float(nn.Linear(6, 5), config), torch.randn(2, 3, 6)),
             (QuantConv1D.from_float(Conv1D(5, 6), config), torch.randn(2, 3, 6)),
             (QuantConv2d.from_float(nn.Conv2d(4, 3, 3, padding=1), config), torch.randn(2, 4, 5, 5))]
    for layer, x in cases:
        with torch.no_grad():
            assert torch.equal(_QDQLayer(layer, as_float=False)(x), layer(x)), type(layer).__name__
