"""quant/input_share.py: layers reading the same input share its range and quantized tensor."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from eval.models import build_model
from quant import input_share
from quant.input_share import InputShare
from quant.quant_module import QuantConfig
from quant.quant_utils import quantize
from quant.surgery import QuantSpec, dequantize_model, quantize_model, set_layer_formats


class Attention(nn.Module):
    """BERT's pattern: three projections of one input, plus a residual use of it."""

    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.query(x) * self.key(x) + self.value(x) + x
        return self.out(mixed)


def attention(formats: dict[str, tuple[str, str]] | None = None, config: QuantConfig | None = None):
    torch.manual_seed(0)
    model, layers = quantize_model(Attention(), QuantSpec(("query", "key", "value", "out"),
                                                          config or QuantConfig("int8", "int8")))
    if formats:
        set_layer_formats(layers, formats)
    return model, layers


@pytest.fixture
def enabled():
    before = input_share.is_enabled()
    yield input_share.set_enabled
    input_share.set_enabled(before)


@pytest.fixture
def calls(monkeypatch):
    """Counts of input_share's range and quantization calls in the forwards that follow."""
    counts: Counter = Counter()
    real_range, real_quantize = input_share.input_range, input_share.quantize_checked

    def counting_range(*args):
        counts["range"] += 1
        return real_range(*args)

    def counting_quantize(*args):
        counts["quantize"] += 1
        return real_quantize(*args)

    monkeypatch.setattr(input_share, "input_range", counting_range)
    monkeypatch.setattr(input_share, "quantize_checked", counting_quantize)
    return counts


def forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("formats", [
    None,  # every layer int8: one quantized input for the three projections
    {"key": ("int8", "int4"), "value": ("int4", "fp8_e4m3")},  # one range, three formats
    {"query": ("int8", "bf16"), "key": ("int8", "int4"), "value": ("int8", "none")},  # a cast and a float input
])
def test_values_equal_the_per_layer_path_bit_for_bit(enabled, formats) -> None:
    x = torch.randn(5, 8) * 3
    model, _ = attention(formats)
    shared = forward_backward(model, x)
    enabled(False)
    alone = forward_backward(model, x)
    assert torch.equal(shared[0], alone[0])
    for a, b in zip(shared[2], alone[2]):  # each parameter's gradient has one source
        assert torch.equal(a, b)
    # The input's gradient is the same sum, possibly added in another order.
    torch.testing.assert_close(shared[1], alone[1], rtol=1e-6, atol=1e-6)


def test_layers_at_one_format_share_one_range_and_one_output(calls) -> None:
    model, layers = attention()
    outputs = {}
    for name in ("query", "key", "value"):
        real = layers[name].quantize_input
        layers[name].quantize_input = lambda x, real=real, name=name: outputs.setdefault(name, real(x))
    model(torch.randn(5, 8))
    # query/key/value: one range, one quantization; out (another input): its own
    assert calls == Counter(range=2, quantize=2)
    assert outputs["query"] is outputs["key"] is outputs["value"]


def test_other_formats_share_the_range_only(calls) -> None:
    model, _ = attention({"key": ("int8", "int4"), "value": ("int8", "int4")})
    model(torch.randn(5, 8))
    assert calls == Counter(range=2, quantize=3)  # query int8, key/value int4, out int8


def test_mse_clipping_ranges_are_per_format(calls) -> None:
    model, _ = attention({"key": ("int8", "int4")}, QuantConfig("int8", "int8", act_range_percentile=-1.0))
    x = torch.randn(5, 8)
    out = model(x)
    assert calls == Counter(range=3, quantize=3)  # query/value int8 share; key int4 has its own range
    input_share.set_enabled(False)
    try:
        assert torch.equal(out, model(x))
    finally:
        input_share.set_enabled(True)


def test_per_token_ranges_are_shared_and_equal(calls, enabled) -> None:
    model, _ = attention({"key": ("int8", "int4")}, QuantConfig("int8", "int8", per_token=True))
    x = torch.randn(2, 5, 8)
    out = model(x)
    assert calls == Counter(range=2, quantize=3)
    enabled(False)
    assert torch.equal(out, model(x))


class InPlace(nn.Module):
    """Changes its input in place between two layers that read it."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.first(x)
        x.mul_(3.0)
        return a, self.second(x)


def test_an_input_changed_in_place_is_quantized_again() -> None:
    model, layers = quantize_model(InPlace(), QuantSpec(("first", "second"), QuantConfig("int8", "int8")))
    x = torch.randn(4, 8)
    with torch.no_grad():
        _, second = model(x.clone())
        want = nn.functional.linear(quantize(x * 3.0, "int8", "per_tensor", dim=-1),
                                    quantize(layers["second"].weight, "int8", "per_tensor"), layers["second"].bias)
    assert torch.equal(second, want)


class GradModes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.first(x)
        return self.second(x)


def test_an_output_made_without_gradients_is_not_reused_with_them(calls) -> None:
    model, _ = quantize_model(GradModes(), QuantSpec(("first", "second"), QuantConfig("int8", "int8")))
    x = torch.randn(4, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert calls == Counter(range=2, quantize=2)


def test_the_share_is_set_for_the_forward_only_and_cleared_after_an_error() -> None:
    model, layers = attention()
    share = model.__dict__["_fliqs_input_share"]
    inside = []
    layers["query"].register_forward_pre_hook(lambda m, args: inside.append(m._input_share))
    model(torch.randn(5, 8))
    assert inside == [share]
    assert all(layer._input_share is None for layer in layers.values())
    assert share._inputs == []  # nothing held after
    with pytest.raises(RuntimeError):
        model(torch.randn(5, 7))  # the projections' shapes do not fit
    assert all(layer._input_share is None for layer in layers.values()) and share._inputs == []


def test_a_layer_called_on_its_own_quantizes_alone(calls) -> None:
    _, layers = attention()
    x = torch.randn(5, 8)
    layers["query"](x)
    layers["key"](x)
    assert calls == Counter()  # the per-layer path: input_share is not asked


def test_a_replica_calling_the_hooks_gets_no_share() -> None:
    """nn.DataParallel's replicas share the original's hooks but have their own layers."""
    model, layers = attention()
    model.__dict__["_fliqs_input_share"]._before_forward(nn.Sequential(), ())
    assert all(layer._input_share is None for layer in layers.values())


def test_switched_off_every_layer_quantizes_its_own(calls, enabled) -> None:
    enabled(False)
    model, _ = attention()
    model(torch.randn(5, 8))
    assert calls == Counter()
    with pytest.raises(TypeError, match=r"set_enabled takes True or False, got 'no'"):
        input_share.set_enabled("no")  # type: ignore[arg-type]


def test_install_replaces_and_dequantize_removes_the_hooks() -> None:
    model, layers = attention()
    share = input_share.install(model, list(layers.values()))
    assert model.__dict__["_fliqs_input_share"] is share and isinstance(share, InputShare)
    assert len(model._forward_pre_hooks) == 2 and len(model._forward_hooks) == 2  # with the weight group's
    dequantize_model(model)
    assert "_fliqs_input_share" not in model.__dict__
    assert len(model._forward_pre_hooks) == 0 and len(model._forward_hooks) == 0
    assert not hasattr(model.query, "_input_share")  # to_float leaves the quantized layers' attributes


def test_bert_projections_share_and_match_the_per_layer_path(calls, enabled) -> None:
    torch.manual_seed(0)
    model = build_model("bert", num_labels=3, from_scratch=True, vocab_size=50, pad_token_id=0,
                        config_overrides={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                          "intermediate_size": 64})
    model, layers = quantize_model(model, QuantSpec(tuple(n for n, m in model.named_modules()
                                                          if isinstance(m, nn.Linear)), QuantConfig("int8", "int8")))
    model.eval()  # no dropout: the two forwards see the same numbers
    batch = {"input_ids": torch.randint(1, 50, (2, 7)), "labels": torch.tensor([0, 2])}

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = model(**batch)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return out.logits.detach(), grads

    logits, grads = run()
    # 2 blocks x (query/key/value once + 3 others) + pooler + classifier, against 14 layers alone
    assert len(layers) == 14 and calls == Counter(range=10, quantize=10)
    enabled(False)
    alone_logits, alone_grads = run()
    assert torch.equal(logits, alone_logits)
    for a, b in zip(grads, alone_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_resnet_shortcut_shares_its_block_input(calls, enabled) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_labels=3, from_scratch=True, image_size=32,
                        config_overrides={"embedding_size": 8, "hidden_sizes": [8, 16, 16, 16]})
    model, layers = quantize_model(model, QuantSpec(tuple(n for n, m in model.named_modules()
                                                          if isinstance(m, (nn.Conv2d, nn.Linear))),
                                                    QuantConfig("int8", "int8")))
    model.eval()  # BatchNorm's running statistics stay as they are; gradients are recorded
    pixels = torch.randn(2, 3, 32, 32)
    logits = model(pixel_values=pixels).logits
    shortcuts = [name for name in layers if "shortcut" in name]
    # Each shortcut conv reads its block's input, after the block's two convs (HF ResNet): with
    # gradients recorded the share keeps that input until then.
    assert len(shortcuts) == 3 and calls == Counter(range=len(layers) - 3, quantize=len(layers) - 3)
    calls.clear()
    with torch.no_grad():  # without, only the latest input is kept
        assert torch.equal(logits, model(pixel_values=pixels).logits)
    assert calls == Counter(range=len(layers), quantize=len(layers))
    enabled(False)
    assert torch.equal(logits, model(pixel_values=pixels).logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("formats", [None, {"key": ("int8", "int4"), "value": ("int4", "fp8_e4m3")}])
def test_on_cuda_values_equal_the_per_layer_path_bit_for_bit(enabled, calls, formats) -> None:
    """On a GPU the shared range feeds the fused kernel (quant/fused_quantize.py)."""
    x = torch.randn(64, 8, device="cuda") * 3
    model, _ = attention(formats)
    model.cuda()
    shared = forward_backward(model, x)
    assert calls["range"] == 2  # query/key/value share one
    enabled(False)
    alone = forward_backward(model, x)
    assert torch.equal(shared[0], alone[0])
    for a, b in zip(shared[2], alone[2]):
        assert torch.equal(a, b)
    torch.testing.assert_close(shared[1], alone[1], rtol=1e-6, atol=1e-6)
