"""QuantConv2d: nn.Conv2d with fake-quantized weights and inputs."""
from __future__ import annotations

import torch
from torch import nn

from quant.quant_module import QuantConfig, QuantModule, new_without_allocation


def _conv_kwargs(module: nn.Conv2d) -> dict:
    return dict(in_channels=module.in_channels, out_channels=module.out_channels,
                kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                padding_mode=module.padding_mode)


class QuantConv2d(QuantModule, nn.Conv2d):
    """Weight (out, in/groups, kh, kw): output channels on dim 0; inputs (N, C, H, W) or unbatched
    (C, H, W): per-token scales are per spatial position (reduced over C)."""

    weight_channel_dim = 0
    act_feature_dim = -3  # C in both (N, C, H, W) and (C, H, W); dim 1 would be H of the latter

    def __init__(self, *args, config: QuantConfig | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(QuantConfig() if config is None else config)

    @classmethod
    def from_float(cls, module: nn.Conv2d, config: QuantConfig) -> "QuantConv2d":
        cls._check_float_layer(module, nn.Conv2d)
        new = new_without_allocation(cls, **_conv_kwargs(module), config=config)
        new.weight, new.bias = module.weight, module.bias
        new.train(module.training)
        new._finish_from_float(module)
        return new

    def to_float(self) -> nn.Conv2d:
        plain = new_without_allocation(nn.Conv2d, **_conv_kwargs(self))
        plain.weight, plain.bias = self.weight, self.bias
        plain.train(self.training)
        return self._finish_to_float(plain)

    def output_hw(self, height: int, width: int) -> tuple[int, int]:
        """Output spatial size (PyTorch's Conv2d formula; 'same' padding keeps the input size)."""
        if isinstance(self.padding, str):
            if self.padding == "same":
                return height, width
            padding = (0, 0)  # 'valid'
        else:
            padding = self.padding
        out = []
        for size, pad, dil, k, s in zip((height, width), padding, self.dilation, self.kernel_size, self.stride):
            out.append((size + 2 * pad - dil * (k - 1) - 1) // s + 1)
        return out[0], out[1]

    def macs_for_input_shape(self, input_shape: tuple[int, ...]) -> int:
        out_h, out_w = self.output_hw(input_shape[-2], input_shape[-1])
        kh, kw = self.kernel_size
        macs_per_output = (self.in_channels // self.groups) * kh * kw
        return out_h * out_w * self.out_channels * macs_per_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._record_geometry(x)
        x_q, w_q = self.quantize_input(x), self.quantized_weight()
        with self.saved_input_hooks(x_q):
            return self._conv_forward(x_q, w_q, self.bias)


QuantConv2D = QuantConv2d
