"""QuantLinear: nn.Linear with fake-quantized weights and inputs, and HF GPT-2's Conv1D twin."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from quant.quant_module import QuantConfig, QuantModule, new_without_allocation


class QuantLinear(QuantModule, nn.Linear):
    """y = Q_a(x) @ Q_w(W)^T + b. Weight (out, in): output channels on dim 0."""

    weight_channel_dim = 0
    act_feature_dim = -1

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 config: QuantConfig | None = None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(QuantConfig() if config is None else config)

    @classmethod
    def from_float(cls, module: nn.Linear, config: QuantConfig) -> "QuantLinear":
        cls._check_float_layer(module, nn.Linear)
        new = new_without_allocation(cls, module.in_features, module.out_features,
                                     bias=module.bias is not None, config=config)
        new.weight, new.bias = module.weight, module.bias  # shared, not copied
        new.train(module.training)
        new._finish_from_float(module)
        return new

    def to_float(self) -> nn.Linear:
        plain = new_without_allocation(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None)
        plain.weight, plain.bias = self.weight, self.bias
        plain.train(self.training)
        return self._finish_to_float(plain)

    def macs_for_input_shape(self, input_shape: tuple[int, ...]) -> int:
        # (B, ..., in) -> every leading position after the batch dim is one matrix row.
        rows_per_sample = math.prod(input_shape[1:-1])
        return rows_per_sample * self.in_features * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_geometry(x)
        x_q, w_q = self.quantize_input(x), self.quantized_weight()
        with self.saved_input_hooks(x_q):
            return F.linear(x_q, w_q, self.bias)


class QuantConv1D(QuantModule, Conv1D):
    """HF GPT-2's Conv1D (a linear layer with a transposed weight (nx, nf)): output channels on dim 1."""

    weight_channel_dim = 1
    act_feature_dim = -1

    def __init__(self, nf: int, nx: int, config: QuantConfig | None = None) -> None:
        super().__init__(nf, nx)
        self._init_quant(QuantConfig() if config is None else config)

    @classmethod
    def from_float(cls, module: Conv1D, config: QuantConfig) -> "QuantConv1D":
        cls._check_float_layer(module, Conv1D)
        new = new_without_allocation(cls, module.nf, module.weight.shape[0], config=config)
        new.weight, new.bias = module.weight, module.bias
        new.train(module.training)
        new._finish_from_float(module)
        return new

    def to_float(self) -> Conv1D:
        plain = new_without_allocation(Conv1D, self.nf, self.weight.shape[0])
        plain.weight, plain.bias = self.weight, self.bias
        plain.train(self.training)
        return self._finish_to_float(plain)

    def macs_for_input_shape(self, input_shape: tuple[int, ...]) -> int:
        nx, nf = self.weight.shape
        return math.prod(input_shape[1:-1]) * nx * nf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_geometry(x)
        size_out = x.size()[:-1] + (self.nf,)
        x_q, w_q = self.quantize_input(x), self.quantized_weight()
        with self.saved_input_hooks(x_q):
            x = torch.addmm(self.bias, x_q.view(-1, x.size(-1)), w_q)
        return x.view(size_out)
