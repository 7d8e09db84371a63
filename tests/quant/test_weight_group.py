"""Grouped weight quantization changes no number, and only the layers it should.

On the CPU the group runs in mode "always" (its batch computed with the per-layer function),
which exercises everything but the kernels: the hooks, the autograd node, which layers join,
and that nothing outlives a forward. The kernels are tests/quant/test_fused_multi_quantize.py.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from quant import fused_multi_quantize, fused_quantize, weight_group
from quant.quant_module import QuantConfig, QuantModule
from quant.surgery import QuantSpec, dequantize_model, quantize_model
from quant.weight_group import WeightQuantizerGroup
from tests.quant.test_fused_quantize import KERNEL_DEVICES, needs_kernel


@pytest.fixture
def mode():
    """Set the group's mode for one test, and put back the default after it."""
    before = weight_group.get_mode()
    yield weight_group.set_mode
    weight_group.set_mode(before)


class Net(nn.Module):
    """Conv2d, Linear and GPT-2 Conv1D layers; `skip` leaves `unused` out of the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 32)
        self.gpt = Conv1D(24, 32)
        self.head = nn.Linear(24, 5)
        self.unused = nn.Linear(24, 5)
        self.skip = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        h = self.gpt(torch.relu(self.fc(h)))
        return self.head(h) if self.skip else self.head(h) + self.unused(h)


LAYERS = ["conv", "fc", "gpt", "head", "unused"]


def build(formats: dict[str, tuple[str, str]] | None = None, **config) -> tuple[Net, dict[str, QuantModule]]:
    torch.manual_seed(0)
    formats = formats or {"conv": ("int4", "int8"), "fc": ("fp8_e4m3", "fp8_e4m3"), "gpt": ("fp4_e2m1", "int8"),
                          "head": ("int8", "none"), "unused": ("int2", "int4")}
    return quantize_model(Net(), QuantSpec(LAYERS, QuantConfig(**config), formats))  # type: ignore[return-value]


def run(model: nn.Module, seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    device = next(model.parameters()).device
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(seed)).to(device)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters()}


def tiny_bert(hidden_layers: int = 1) -> nn.Module:
    """A BERT classifier with 32-wide layers (rows of a multiple of 16: per-channel groupable)."""
    from eval.models import build_model

    return build_model("bert", num_labels=3, from_scratch=True, vocab_size=64, pad_token_id=1,
                       config_overrides={"num_hidden_layers": hidden_layers, "hidden_size": 32,
                                         "num_attention_heads": 2, "intermediate_size": 64})


def seen_weights(model: Net, layers: dict[str, QuantModule]) -> dict[str, torch.Tensor | None]:
    """The grouped Q(w) each layer holds during its own forward (None: per-layer path)."""
    seen: dict[str, torch.Tensor | None] = {}
    for name, layer in layers.items():
        layer.register_forward_pre_hook(
            lambda m, a, name=name: seen.__setitem__(name, None if m._grouped_weight is None else m._grouped_weight.value))
    return seen


def test_values_and_gradients_equal_the_per_layer_path(mode) -> None:
    mode("off")
    want_out, want_grads = run(build()[0])
    mode("always")
    model, layers = build()
    seen = seen_weights(model, layers)
    got_out, got_grads = run(model)
    assert [name for name, w in seen.items() if w is not None] == ["conv", "fc", "gpt", "head"]
    assert torch.equal(got_out, want_out)
    assert want_grads.keys() == got_grads.keys()
    for name, grad in want_grads.items():
        if grad is None:  # the layer the forward skipped gets no gradient either way
            assert got_grads[name] is None, name
        else:
            assert torch.equal(got_grads[name], grad), name
    assert got_grads["unused.weight"] is None
    for layer in layers.values():  # nothing outlives the forward
        assert layer._grouped_weight is None


def test_a_grouped_weight_is_the_layers_own_quantized_weight(mode) -> None:
    mode("always")
    model, layers = build()
    seen = seen_weights(model, layers)
    run(model)
    mode("off")
    for name in ("conv", "fc", "gpt", "head"):
        assert torch.equal(seen[name], layers[name].quantized_weight()), name


@pytest.mark.parametrize(("change", "left_out"), [
    ("per_channel", ["gpt"]),  # per channel groups too, but for GPT-2's Conv1D (channels on dim 1)
    ("range_percentile", ["fc"]),
    ("cast_format", ["fc"]),
    ("no_quant_format", ["fc"]),
    ("prequantized", ["fc"]),
])
def test_layers_that_keep_the_per_layer_path(mode, change: str, left_out: list[str]) -> None:
    """Per-channel scales, clipping ranges, cast and no-quant formats and prequantized weights
    stay per layer (and the result still equals the per-layer path)."""
    mode("always")
    model, layers = build(per_channel=True) if change == "per_channel" else build()
    if change == "range_percentile":
        layers["fc"].weight_range_percentile = 99.0
    elif change == "cast_format":
        layers["fc"].weight_format = "bf16"
    elif change == "no_quant_format":
        layers["fc"].weight_format = "none"
    elif change == "prequantized":
        model.eval()
        with torch.no_grad():
            layers["fc"].weight.copy_(layers["fc"].quantized_weight())
        layers["fc"].weight_prequantized = True
    expected = [name for name in LAYERS if name not in left_out]  # "unused" too: the group cannot know
    assert model.__dict__["_fliqs_weight_group"].groupable() == [layers[n] for n in expected]
    seen = seen_weights(model, layers)
    got_out, got_grads = run(model)
    assert [name for name, w in seen.items() if w is not None] == [n for n in expected if n != "unused"]
    mode("off")
    for layer in layers.values():
        layer.weight.grad = None
    want_out, want_grads = run(model)
    assert torch.equal(got_out, want_out)
    for name, grad in want_grads.items():
        assert (grad is None and got_grads[name] is None) or torch.equal(got_grads[name], grad), name


def test_no_grouping_without_gradients_nor_in_mode_off_nor_off_the_gpu_in_auto(mode) -> None:
    model, layers = build()
    group = model.__dict__["_fliqs_weight_group"]
    mode("always")
    with torch.no_grad():  # each Q(w) is freed right after its layer: grouping would hold them all
        assert group.groupable() == []
    mode("off")
    assert group.groupable() == []
    mode("auto")  # the CPU keeps the per-layer path
    assert group.groupable() == []
    with pytest.raises(ValueError, match=r"grouped weight mode must be one of \['auto', 'off', 'always'\], got 'on'"):
        weight_group.set_mode("on")


def test_a_forward_that_raises_leaves_no_grouped_weight(mode) -> None:
    mode("always")
    model, layers = build()
    with pytest.raises(RuntimeError):
        model(torch.randn(4, 5, 6, 6))  # 5 input channels: the conv raises
    assert all(layer._grouped_weight is None for layer in layers.values())
    assert model.__dict__["_fliqs_weight_group"]._grouped == []


def test_one_autograd_node_for_every_grouped_weight(mode) -> None:
    mode("always")
    model, layers = build()
    seen = seen_weights(model, layers)
    model(torch.randn(2, 3, 6, 6))
    nodes = {seen[name].grad_fn for name in ("conv", "fc", "gpt", "head")}
    assert len(nodes) == 1 and type(next(iter(nodes))).__name__ == "_GroupedFakeQuantizeBackward"


def test_a_copy_groups_its_own_layers_and_dequantize_removes_the_group(mode) -> None:
    mode("always")
    model, layers = build()
    clone = copy.deepcopy(model)
    group = clone.__dict__["_fliqs_weight_group"]
    assert group.model is clone and group.layers[0] is clone.conv
    seen = seen_weights(clone, {"conv": clone.conv})
    clone(torch.randn(2, 3, 6, 6))
    assert seen["conv"] is not None
    dequantize_model(model)
    assert "_fliqs_weight_group" not in model.__dict__
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_quantizing_more_layers_later_replaces_the_group(mode) -> None:
    mode("always")
    torch.manual_seed(0)
    model, _ = quantize_model(Net(), QuantSpec(["conv", "fc"], QuantConfig(weight_format="int4")))
    model, layers = quantize_model(model, QuantSpec(["head"], QuantConfig(weight_format="int8")))
    group = model.__dict__["_fliqs_weight_group"]
    assert group.layers == tuple(layers.values()) and len(group.layers) == 3
    # one pair of hooks each: the weight group's and the input share's (quant/input_share.py)
    assert len(model._forward_pre_hooks) == 2 and len(model._forward_hooks) == 2


def test_a_replica_calling_the_hooks_is_left_per_layer(mode) -> None:
    """nn.DataParallel's replicas share the original's hooks but have their own layers."""
    mode("always")
    model, layers = build()
    group: WeightQuantizerGroup = model.__dict__["_fliqs_weight_group"]
    group._before_forward(nn.Sequential(), ())
    assert all(layer._grouped_weight is None for layer in layers.values())


def test_the_kernels_run_only_on_a_checked_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_quantize, "is_available", lambda: True)
    cuda = torch.device("cuda", 0)
    assert weight_group._use_kernels(torch.device("cpu")) is False
    monkeypatch.setattr(weight_group, "_verified", {cuda: True})
    assert weight_group._use_kernels(cuda) is True
    assert weight_group.kernels_verified(cuda) is True and weight_group.kernels_verified(torch.device("cpu")) is None
    monkeypatch.setattr(weight_group, "_verified", {cuda: False})
    assert weight_group._use_kernels(cuda) is False
    monkeypatch.setattr(fused_quantize, "is_available", lambda: False)  # no Triton, or FLIQS_FUSED_QUANTIZE=0
    monkeypatch.setattr(weight_group, "_verified", {cuda: True})
    assert weight_group._use_kernels(cuda) is False


def test_one_kernel_batch_per_dtype_in_the_callers_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(weight_group, "_use_kernels", lambda device: True)
    monkeypatch.setattr(fused_multi_quantize, "fused_multi_fake_quantize",
                        lambda tensors, fmts, per_channel: calls.append([t.dtype for t in tensors])
                        or weight_group._reference(tensors, fmts, per_channel))
    fmts = [weight_group.parse_format(t) for t in ("int8", "int4", "fp8_e4m3")]
    weights = [torch.randn(4), torch.randn(4).half(), torch.randn(6)]
    got = weight_group.quantize_weights(weights, fmts, [False] * 3)
    assert calls == [[torch.float32, torch.float32], [torch.float16]]
    want = weight_group._reference(weights, fmts, [False] * 3)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))


def test_the_one_time_check_catches_a_kernel_that_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weight_group, "_verified", {})
    monkeypatch.setattr(fused_multi_quantize, "applies", lambda tensors, fmts, per_channel=None: True)
    monkeypatch.setattr(fused_multi_quantize, "fused_multi_fake_quantize",
                        lambda tensors, fmts, per_channel: [t.clone() for t in tensors])  # no quantization at all
    with pytest.warns(UserWarning, match="grouped weight quantization disagrees with the per-layer path on cpu; "
                                         "using the per-layer path \\(set FLIQS_GROUPED_WEIGHTS=0"):
        assert weight_group.verified_on(torch.device("cpu")) is False
    assert weight_group.verified_on(torch.device("cpu")) is False  # cached: no second warning


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_the_one_time_check_passes_where_the_kernels_run(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weight_group, "_verified", {})
    if device == "cpu":  # the interpreter does not round float32 -> bf16 as the GPU does
        monkeypatch.setattr(weight_group, "_PROBE_DTYPES", (torch.float32, torch.float16))
    index = torch.cuda.current_device() if device == "cuda" else None
    assert weight_group.verified_on(torch.device(device, index)) is True


def test_the_one_time_check_tells_minus_zero_from_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weight_group, "_verified", {})
    monkeypatch.setattr(fused_multi_quantize, "applies", lambda tensors, fmts, per_channel=None: True)
    def flip_zero_sign(tensors, fmts, per_channel):
        return [torch.where(q == 0, -q, q) for q in weight_group._reference(tensors, fmts, per_channel)]

    monkeypatch.setattr(fused_multi_quantize, "fused_multi_fake_quantize", flip_zero_sign)
    with pytest.warns(UserWarning, match="disagrees"):
        assert weight_group.verified_on(torch.device("cpu")) is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or fused_quantize.triton is None, reason="needs CUDA and Triton")
def test_cuda_model_in_auto_uses_one_batch_and_equals_the_per_layer_path(mode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # two runs compared bit for bit
    assert weight_group.verified_on(torch.device("cuda", torch.cuda.current_device())) is True  # before counting
    calls = []
    real = fused_multi_quantize.fused_multi_fake_quantize
    monkeypatch.setattr(fused_multi_quantize, "fused_multi_fake_quantize",
                        lambda tensors, fmts, per_channel=None: calls.append(len(tensors))
                        or real(tensors, fmts, per_channel))
    mode("off")
    want_out, want_grads = run(build()[0].cuda())
    mode("auto")
    model = build()[0].cuda()
    assert len(model.__dict__["_fliqs_weight_group"].groupable()) == 5  # "unused" too
    got_out, got_grads = run(model)
    assert calls == [5]
    assert torch.equal(got_out, want_out)
    for name, grad in want_grads.items():
        assert (grad is None and got_grads[name] is None) or torch.equal(got_grads[name], grad), name


def test_paused_keeps_the_hooks_in_place_and_groups_nothing(mode) -> None:
    mode("always")
    model, layers = build()
    hooks = list(model._forward_pre_hooks.values())
    with weight_group.paused(model):
        seen = seen_weights(model, {"conv": layers["conv"]})
        run(model)
        assert seen["conv"] is None
        with weight_group.paused(model):  # nested: the outer block still pauses after it
            pass
        assert model.__dict__["_fliqs_weight_group"].paused
    assert list(model._forward_pre_hooks.values()) == hooks  # the order among other hooks kept
    for layer in layers.values():
        layer.weight.grad = None
    run(model)
    assert seen["conv"] is not None
    with weight_group.paused(nn.Linear(2, 2)):  # no group: nothing to do
        pass


@pytest.mark.parametrize("model_name", ["resnet-small", "bert-small"])
def test_search_steps_with_grouped_weights_are_bit_identical(mode, model_name: str, tmp_path) -> None:
    """Three ReinforceTrainer steps (sampling, forward, backward, optimizer, policy update) of a
    real HF model give the same weights and policy with the group as without."""
    from benchmarks.step_setup import StepVariant, TrainerStep, build_trainer, preset_cases

    (case,) = preset_cases("cpu", [model_name])
    variant = StepVariant("search", "search", ("int4", "int8", "fp4_e2m1", "fp8_e4m3"))
    states = {}
    for setting in ("off", "always"):
        mode(setting)
        built = build_trainer(case, variant, device=torch.device("cpu"), output_dir=str(tmp_path))
        step = TrainerStep(built)
        grouped = []
        hook = built.model.register_forward_hook(
            lambda m, a, o: grouped.append(sum(layer._grouped_weight is not None
                                               for layer in m.__dict__["_fliqs_weight_group"].layers)),
            prepend=True)  # before the group's own hook clears them
        for _ in range(3):
            step()
        hook.remove()
        assert (min(grouped) > 1) if setting == "always" else (grouped == [0, 0, 0])
        states[setting] = ({k: v.clone() for k, v in built.model.state_dict().items()},
                           built.trainer.policy.logits.detach().clone())
    (off_weights, off_logits), (on_weights, on_logits) = states["off"], states["always"]
    assert torch.equal(off_logits, on_logits)
    assert off_weights.keys() == on_weights.keys()
    for key, value in off_weights.items():
        assert torch.equal(on_weights[key], value), key


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_recomputes_the_same_weights(mode, reentrant: bool) -> None:
    """Checkpointed blocks run their layers again in backward, after the forward's grouped
    weights are gone: they recompute Q(w) per layer, which is the same number. (HF's switch
    turns grouping off, for memory; checkpointing it cannot see, e.g. torch.utils.checkpoint
    in a model's own code, must still be exact: here the switch is hidden from the group.)"""
    from eval.eval_partitions import LayerSelection, select_layers

    grads = {}
    for setting in ("off", "always"):
        mode(setting)
        torch.manual_seed(0)
        model = tiny_bert(hidden_layers=2)
        quantize_model(model, QuantSpec(select_layers(model, LayerSelection()), QuantConfig(weight_format="int4",
                                                                                            act_format="int8")))
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model.__dict__["_fliqs_weight_group"]._checkpointing_switches = []
        model.train()
        assert bool(model.__dict__["_fliqs_weight_group"].groupable()) == (setting == "always")
        ids = torch.randint(2, 64, (2, 7), generator=torch.Generator().manual_seed(3))
        model(input_ids=ids, labels=torch.tensor([0, 2])).loss.backward()
        grads[setting] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads["off"].items():
        assert (grad is None and grads["always"][name] is None) or torch.equal(grads["always"][name], grad), name
    assert grads["off"]["bert.encoder.layer.0.attention.self.query.weight"] is not None


def test_frozen_weights_and_weights_with_a_gradient_stay_per_layer(mode) -> None:
    """A frozen weight would get a gradient computed for nothing; one that already has a
    gradient (a later micro-batch of gradient accumulation) would have its new one wait for the
    end of backward. Both keep the per-layer path, and the results stay the per-layer path's."""
    mode("always")
    model, layers = build()
    group = model.__dict__["_fliqs_weight_group"]
    layers["fc"].weight.requires_grad_(False)
    layers["conv"].weight.grad = torch.zeros_like(layers["conv"].weight)
    assert group.groupable() == [layers["gpt"], layers["head"], layers["unused"]]
    got_out, got_grads = run(model)
    mode("off")
    model_off, layers_off = build()
    layers_off["fc"].weight.requires_grad_(False)
    layers_off["conv"].weight.grad = torch.zeros_like(layers_off["conv"].weight)
    want_out, want_grads = run(model_off)
    assert torch.equal(got_out, want_out)
    for name, grad in want_grads.items():
        assert (grad is None and got_grads[name] is None) or torch.equal(got_grads[name], grad), name
    assert got_grads["fc.weight"] is None


def test_gradient_accumulation_groups_the_first_micro_batch_only(mode) -> None:
    mode("always")
    model, layers = build()
    seen = seen_weights(model, {"fc": layers["fc"]})
    got = [run(model, seed)[1]["fc.weight"].clone() for seed in (1, 2)]
    assert seen["fc"] is None  # the second micro-batch: fc.weight had a gradient
    mode("off")
    model_off, _ = build()
    want = [run(model_off, seed)[1]["fc.weight"].clone() for seed in (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_no_grouping_under_ddp_in_auto(mode, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more than one DDP rank every gradient would be ready only at the end of backward,
    and DDP could not overlap its all-reduce with it."""
    model, layers = build()
    group = model.__dict__["_fliqs_weight_group"]
    monkeypatch.setattr(fused_quantize, "is_available", lambda: True)
    for layer in layers.values():  # stand-in for CUDA weights
        monkeypatch.setattr(type(layer.weight), "is_cuda", property(lambda t: True), raising=False)
    mode("auto")
    assert len(group.groupable()) == 5
    monkeypatch.setattr(weight_group, "_distributed_world_size", lambda: 2)
    assert group.groupable() == []
    mode("always")  # the tests' mode groups regardless
    assert len(group.groupable()) == 5


def test_a_format_changed_after_the_group_ran_gets_the_per_layer_path(mode) -> None:
    """A model pre-hook registered after the group's that changes a format: the layer must not
    use the Q(w) of the old format."""
    mode("always")
    model, layers = build()
    model.register_forward_pre_hook(lambda m, a: layers["fc"].set_formats("int2", "int8"))
    got_out, _ = run(model)
    mode("off")
    model_off, layers_off = build()
    layers_off["fc"].set_formats("int2", "int8")
    want_out, _ = run(model_off)
    assert torch.equal(got_out, want_out)


def test_weights_the_kernels_do_not_cover_are_quantized_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = []
    monkeypatch.setattr(weight_group, "_use_kernels", lambda device: True)
    monkeypatch.setattr(fused_multi_quantize, "fused_multi_fake_quantize",
                        lambda tensors, fmts, per_channel: batches.append(len(tensors))
                        or weight_group._reference(tensors, fmts, per_channel))
    conv = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)  # not contiguous
    # a per-channel weight whose rows are not a multiple of 16 elements is left out too
    weights = [torch.randn(8, 3), conv, torch.randn(5), torch.randn(4, 20), torch.randn(4, 32)]
    fmts = [weight_group.parse_format("int8")] * 5
    per_channel = [False, False, False, True, True]
    got = weight_group.quantize_weights(weights, fmts, per_channel)
    assert batches == [3]
    assert all(torch.equal(a, b) for a, b in zip(got, weight_group._reference(weights, fmts, per_channel)))


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_the_real_kernels_inside_the_model(mode, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values and gradients through the multi-tensor kernels (outputs: views of one buffer)
    equal the per-layer path's, with a frozen layer and a layer the forward skips."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    if device == "cpu":  # the interpreter: let the kernels run on CPU tensors
        monkeypatch.setattr(weight_group, "_use_kernels", lambda device: True)
    mode("off")
    model_off, layers_off = build()
    layers_off["fc"].weight.requires_grad_(False)
    want_out, want_grads = run(model_off.to(device))
    mode("always")
    model, layers = build()
    layers["fc"].weight.requires_grad_(False)
    model.to(device)
    calls = []
    real = fused_multi_quantize.fused_multi_fake_quantize
    monkeypatch.setattr(fused_multi_quantize, "fused_multi_fake_quantize",
                        lambda tensors, fmts, per_channel=None: calls.append(len(tensors))
                        or real(tensors, fmts, per_channel))
    got_out, got_grads = run(model)
    assert calls and calls[-1] == 4  # all but the frozen fc
    assert got_grads["fc.weight"] is None
    assert torch.equal(got_out, want_out)
    for name, grad in want_grads.items():
        assert (grad is None and got_grads[name] is None) or torch.equal(got_grads[name], grad), name


def test_a_whole_search_run_groups_every_training_step_and_changes_no_result(mode, tmp_path, monkeypatch) -> None:
    """Through eval_run and the HF Trainer (which zeroes gradients to None after each step), every
    training forward is grouped, and the run's results equal a run without grouping."""
    import json

    from eval.eval_run import main
    from tests.eval.test_eval_run import FAST, RESNET_TINY

    grouped_forwards = []
    real_apply = weight_group._GroupedFakeQuantize.apply
    monkeypatch.setattr(weight_group._GroupedFakeQuantize, "apply",
                        lambda fmts, per_channel, *weights: grouped_forwards.append(len(weights))
                        or real_apply(fmts, per_channel, *weights))
    results = {}
    for setting in ("off", "always"):
        mode(setting)
        grouped_forwards.clear()
        root = tmp_path / setting
        assert main([*RESNET_TINY, "--search", "--exp_name", "s", *FAST, "--output_root_dir", str(root)]) == 0
        results[setting] = json.loads((root / "digits" / "s" / "results.json").read_text())
        # 8 training steps, every one grouped, all 13 layers (the evaluation runs under no_grad)
        assert grouped_forwards == ([] if setting == "off" else [13] * 8)
    for key in ("metrics", "layers", "cost", "search"):
        off, on = results["off"][key], results["always"][key]
        if key == "metrics":  # runtimes differ
            off, on = ({k: v for k, v in m.items() if "runtime" not in k and "per_second" not in k} for m in (off, on))
        assert on == off, key


def test_a_weight_changed_in_place_after_the_group_ran_gets_the_per_layer_path(mode) -> None:
    """A layer pre-hook that edits its weight in place (max-norm, noise): the layer must not use
    the Q(w) of the old values."""
    def halve(module: nn.Module, args: tuple) -> None:
        with torch.no_grad():
            module.weight.mul_(0.5)  # an in-place op: bumps the version counter

    outputs = {}
    for setting in ("off", "always"):
        mode(setting)
        model, layers = build()
        layers["fc"].register_forward_pre_hook(halve)
        seen = seen_weights(model, {"conv": layers["conv"]})
        outputs[setting] = run(model)[0]
        assert (seen["conv"] is not None) == (setting == "always")  # the other layers still grouped
    assert torch.equal(outputs["always"], outputs["off"])


def test_no_grouping_with_hf_gradient_checkpointing(mode) -> None:
    """The Q(w) of checkpointed layers would stay alive through the backward as views of the
    one buffer that the layers outside the checkpoints keep."""
    mode("always")
    model = tiny_bert()
    model, layers = quantize_model(model, QuantSpec(["bert.encoder.layer.0.output.dense", "classifier"],
                                                    QuantConfig(weight_format="int4")))
    group = model.__dict__["_fliqs_weight_group"]
    assert group.groupable() == list(layers.values())
    model.gradient_checkpointing_enable()
    assert group.groupable() == []
    model.gradient_checkpointing_disable()
    assert group.groupable() == list(layers.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or fused_quantize.triton is None, reason="needs CUDA and Triton")
def test_cuda_new_layouts_and_steps_never_wait_for_the_gpu() -> None:
    """Neither a new layout (tables built on the device from one pinned upload) nor a step
    synchronizes the host with the GPU."""
    fmts = [weight_group.parse_format("int8"), weight_group.parse_format("fp8_e4m3")]
    warm = [torch.randn(300, device="cuda"), torch.randn(7, 5, device="cuda")]
    fused_multi_quantize.fused_multi_fake_quantize(warm, fmts)  # compile first
    tensors = [torch.randn(2049, device="cuda"), torch.randn(33, 16, device="cuda")]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused_multi_quantize.fused_multi_fake_quantize(tensors, fmts)  # a new layout
        fused_multi_quantize.fused_multi_fake_quantize(tensors, fmts)  # a cached one
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(("value", "expected"), [
    (None, "auto"), ("", "auto"), ("1", "auto"), ("auto", "auto"), ("0", "off"), ("off", "off"), ("OFF", "off"),
    ("always", "always"), (" Always ", "always"),
])
def test_the_environment_switch(value: str | None, expected: str) -> None:
    assert weight_group.mode_from_environment(value) is weight_group.GroupMode(expected)


def test_an_unknown_environment_value_warns_and_uses_auto() -> None:
    with pytest.warns(UserWarning, match=r"FLIQS_GROUPED_WEIGHTS='yes' is not one of 0, 1, auto, off, always; "
                                         r"using auto"):
        assert weight_group.mode_from_environment("yes") is weight_group.GroupMode.AUTO


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_per_channel_weights_through_the_kernels(mode, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A BERT with per-output-channel weight scales: its Linear weights go through the
    multi-tensor kernels in one batch, with values and gradients of the per-layer path."""
    from eval.eval_partitions import LayerSelection, select_layers

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    if device == "cpu":  # the interpreter: let the kernels run on CPU tensors
        monkeypatch.setattr(weight_group, "_use_kernels", lambda device: True)
    batches = []
    real = fused_multi_quantize.fused_multi_fake_quantize
    monkeypatch.setattr(fused_multi_quantize, "fused_multi_fake_quantize",
                        lambda tensors, fmts, per_channel=None: batches.append(sum(per_channel or []))
                        or real(tensors, fmts, per_channel))
    outputs = {}
    for setting in ("off", "always"):
        mode(setting)
        torch.manual_seed(0)
        model = tiny_bert()
        names = select_layers(model, LayerSelection())
        formats = {name: (("int4", "int8"), ("fp8_e4m3", "int8"), ("fp4_e2m1", "none"))[i % 3]
                   for i, name in enumerate(names)}
        model, layers = quantize_model(model, QuantSpec(names, QuantConfig(per_channel=True), formats))
        model.to(device).train()
        ids = torch.randint(2, 64, (2, 7), generator=torch.Generator().manual_seed(3)).to(device)
        loss = model(input_ids=ids, labels=torch.tensor([0, 2], device=device)).loss
        loss.backward()
        outputs[setting] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    assert batches and batches[-1] == len(layers)  # every weight per channel, in one batch
    assert torch.equal(outputs["always"][0], outputs["off"][0])
    for name, grad in outputs["off"][1].items():
        got = outputs["always"][1][name]
        assert (grad is None and got is None) or torch.equal(got, grad), name


def test_a_granularity_changed_after_the_group_ran_gets_the_per_layer_path(mode) -> None:
    mode("always")
    model, layers = build()
    model.register_forward_pre_hook(lambda m, a: setattr(layers["fc"], "weight_granularity",
                                                         weight_group.Granularity.PER_CHANNEL))
    got_out, _ = run(model)
    mode("off")
    model_off, layers_off = build()
    layers_off["fc"].weight_granularity = weight_group.Granularity.PER_CHANNEL
    want_out, _ = run(model_off)
    assert torch.equal(got_out, want_out)
