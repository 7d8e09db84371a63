"""quant/input_recompute.py: where layers reading one input run at different formats, their
matmuls save the recipe of Q(x) and the backward recomputes it, with the same values."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from eval.models import build_model
from quant import input_share
from quant.quant_module import QuantConfig
from quant.surgery import QuantSpec, quantize_model, set_layer_formats
from tests.quant.test_input_share import attention

MIXED = {"query": ("int8", "int8"), "key": ("int4", "int4"), "value": ("int8", "fp8_e4m3")}


@pytest.fixture
def switches():
    """input_share's two switches, restored after the test."""
    before = input_share.is_enabled(), input_share.recompute_mode()
    yield
    input_share.set_enabled(before[0])
    input_share.set_recompute_mode(before[1])


@pytest.fixture
def backward_calls(monkeypatch):
    """The quantizer calls input_share makes while a backward pass runs (its recomputations)."""
    calls: list[bool] = []
    real = input_share._recompute

    def counting(*args):
        calls.append(True)
        return real(*args)

    monkeypatch.setattr(input_share, "_recompute", counting)
    return calls


def steps(model: nn.Module, x: torch.Tensor, count: int = 2, **forward_kwargs) -> list:
    """`count` forward + backward passes on `x` (through a non-leaf, as in a network); per pass the
    output, the input's gradient and the parameters' gradients."""
    results = []
    for _ in range(count):
        leaf = x.clone().requires_grad_(True)
        out = model(leaf * 1.0, **forward_kwargs)
        out = out.logits if hasattr(out, "logits") else out
        out.square().sum().backward()
        results.append((out.detach(), leaf.grad, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        model.zero_grad(set_to_none=True)
    return results


def assert_identical(a: list, b: list) -> None:
    for (out_a, grad_a, params_a), (out_b, grad_b, params_b) in zip(a, b, strict=True):
        assert torch.equal(out_a, out_b) and torch.equal(grad_a, grad_b)
        assert len(params_a) == len(params_b) and all(torch.equal(p, q) for p, q in zip(params_a, params_b))


@pytest.mark.parametrize(("formats", "config"), [
    (MIXED, None),
    # a cast format and a float input among them
    ({"query": ("int8", "bf16"), "key": ("int8", "int4"), "value": ("int8", "none")}, None),
    (MIXED, QuantConfig("int8", "int8", per_token=True)),
    (MIXED, QuantConfig("int8", "int8", act_range_percentile=-1.0)),  # MSE clipping: a range per format
    (MIXED, QuantConfig("int8", "int8", act_range_percentile=99.0)),  # clipped: the STE masks too
])
def test_recomputed_inputs_give_the_saved_paths_values_bit_for_bit(switches, backward_calls, formats, config):
    x = torch.randn(2, 5, 8) * 3
    model, _ = attention(formats, config)
    input_share.set_recompute_mode("off")
    saved = steps(model, x)
    assert not any(backward_calls)
    input_share.set_recompute_mode("mixed")
    recomputed = steps(model, x)
    assert_identical(recomputed, saved)
    # Once per format and pass (which layers read one input was learnt in the passes before).
    formats_used = {formats[name][1] for name in ("query", "key", "value")} - {"none"}
    assert sum(backward_calls) == 2 * len(formats_used)


def test_the_quantized_inputs_are_gone_after_the_forward(switches):
    model, _ = attention(MIXED)
    share = model.__dict__["_fliqs_input_share"]
    real = share.quantize
    outputs: dict[str, list] = {"query": [], "key": [], "value": [], "out": []}
    names = {module: name for name, module in model.named_modules()}
    share.quantize = lambda layer, x: outputs[names[layer]].append(weakref.ref(real(layer, x))) or outputs[
        names[layer]][-1]()
    x = torch.randn(2, 5, 8, requires_grad=True)
    during: list[dict[str, bool]] = []  # when the output layer starts, after the three projections
    model.out.register_forward_pre_hook(lambda module, args: during.append(
        {name: refs[-1]() is not None for name, refs in outputs.items() if name != "out"}))
    for mode in ("mixed", "off", "all"):
        input_share.set_recompute_mode(mode)
        for _ in range(2):
            out = model(x * 1.0)
            gc.collect()
            alive = {name: refs[-1]() is not None for name, refs in outputs.items()}
            out.sum().backward()
        # The second forward's: with `mixed` the projections' inputs (three formats of one x) were
        # not kept, even within the forward once the last of them had read it, the output layer's
        # (its own input, one format) was; `off` kept all, `all` none.
        kept = mode == "off"
        assert alive == {"query": kept, "key": kept, "value": kept, "out": mode != "all"}
        assert during[-1] == {"query": kept, "key": kept, "value": kept}


def test_agreeing_formats_and_the_first_forward_save_tensors(switches, backward_calls):
    model, layers = attention()  # every layer int8: one shared tensor, nothing to recompute
    steps(model, torch.randn(5, 8))
    assert not any(backward_calls)
    set_layer_formats(layers, MIXED)
    steps(model, torch.randn(5, 8), count=1)
    assert sum(backward_calls) == 3  # the readers were learnt while their formats agreed
    set_layer_formats(layers, {"key": ("int4", "int8"), "value": ("int4", "int8")})  # activations agree again
    backward_calls.clear()
    steps(model, torch.randn(5, 8), count=1)
    assert not any(backward_calls)


def test_an_input_changed_in_place_after_the_forward_raises(switches):
    model, _ = attention(MIXED)
    x = torch.randn(5, 8, requires_grad=True)
    model(x * 1.0).sum().backward()  # learns the readers
    hidden = x * 1.0
    out = model(hidden)
    hidden.add_(1.0)
    with pytest.raises(RuntimeError, match=r"the input of query was modified by an in-place operation after the "
                                           r"forward.*FLIQS_RECOMPUTE_INPUTS=off"):
        out.sum().backward()


def test_inside_other_saved_tensor_hooks_the_tensors_are_saved(switches, backward_calls):
    """Non-reentrant checkpointing and save_on_cpu own the saves: the layers leave them alone."""
    model, _ = attention(MIXED)
    x = torch.randn(5, 8)
    expected = steps(model, x)
    backward_calls.clear()
    with torch.autograd.graph.save_on_cpu():
        got = steps(model, x)
    assert not any(backward_calls)
    assert_identical(got, expected)


def test_second_order_gradients_and_a_retained_graph_match_the_saved_path(switches):
    x = torch.randn(4, 8) * 2
    model, _ = attention(MIXED)
    results = []
    for recompute in (False, True):
        input_share.set_recompute_mode("mixed" if recompute else "off")
        leaf = x.clone().requires_grad_(True)
        model(leaf * 1.0).sum().backward()  # learns the readers
        model.zero_grad(set_to_none=True)
        leaf.grad = None
        out = model(leaf * 1.0)
        (grad_x,) = torch.autograd.grad(out.square().sum(), leaf, create_graph=True)
        penalty = grad_x.square().sum()
        penalty.backward(retain_graph=True)
        first = [p.grad.clone() for p in model.parameters()]
        penalty.backward()  # a second backward through the same graph recomputes again
        results.append((grad_x.detach(), first, [p.grad.clone() for p in model.parameters()]))
    (grad_a, first_a, second_a), (grad_b, first_b, second_b) = results
    assert torch.equal(grad_a, grad_b)
    assert all(torch.equal(p, q) for p, q in zip(first_a + second_a, first_b + second_b))


def test_bert_and_resnet_recompute_and_match(switches, backward_calls):
    torch.manual_seed(0)
    bert = build_model("bert", num_labels=3, from_scratch=True, vocab_size=50, pad_token_id=0,
                       config_overrides={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                         "intermediate_size": 64})
    resnet = build_model("resnet18", num_labels=3, from_scratch=True, image_size=32,
                         config_overrides={"embedding_size": 8, "hidden_sizes": [8, 16, 16, 16]})
    cases = ((bert, (nn.Linear,), "attention.self.key", {"input_ids": torch.randint(1, 50, (2, 7))}, 2 * 2),
             (resnet, (nn.Conv2d, nn.Linear), "shortcut", {"pixel_values": torch.randn(2, 3, 32, 32)}, 3 * 2))
    # BERT, per block: query/value at int8, key at int4; ResNet, per shortcut: it at int4, the
    # block's first conv at int8.
    for model, kinds, mixed, batch, recomputes in cases:
        names = tuple(n for n, m in model.named_modules() if isinstance(m, kinds))
        model, layers = quantize_model(model, QuantSpec(names, QuantConfig("int8", "int8")))
        set_layer_formats(layers, {n: ("int4", "int4") for n in names if mixed in n})
        model.eval()  # no dropout, fixed BatchNorm statistics: the passes see the same numbers

        def run() -> list:
            results = []
            for _ in range(2):
                logits = model(**batch).logits
                logits.square().sum().backward()
                results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
                model.zero_grad(set_to_none=True)
            return results

        backward_calls.clear()
        input_share.set_recompute_mode("mixed")
        recomputed = run()
        assert sum(backward_calls) == recomputes
        input_share.set_recompute_mode("off")
        for (logits_a, grads_a), (logits_b, grads_b) in zip(recomputed, run(), strict=True):
            assert torch.equal(logits_a, logits_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_recomputed_inputs_give_the_saved_paths_values_bit_for_bit(switches, backward_calls):
    """On a GPU the recomputation is the fused kernel from the forward's range."""
    x = torch.randn(64, 8, device="cuda") * 3
    model, _ = attention(MIXED)
    model.cuda()
    input_share.set_recompute_mode("off")
    saved = steps(model, x)
    input_share.set_recompute_mode("mixed")
    recomputed = steps(model, x)
    assert sum(backward_calls) == 2 * 3
    assert_identical(recomputed, saved)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_under_hf_gradient_checkpointing_the_gradients_match(switches, backward_calls, use_reentrant):
    """Reentrant checkpointing runs the forward without gradients and recomputes the layers
    outside the model's forward; non-reentrant owns the saves: neither recomputes an input here."""
    torch.manual_seed(0)
    model = build_model("bert", num_labels=3, from_scratch=True, vocab_size=50, pad_token_id=0,
                        config_overrides={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                          "intermediate_size": 64, "hidden_dropout_prob": 0.0,
                                          "attention_probs_dropout_prob": 0.0})
    names = tuple(n for n, m in model.named_modules() if isinstance(m, nn.Linear))
    model, layers = quantize_model(model, QuantSpec(names, QuantConfig("int8", "int8")))
    set_layer_formats(layers, {n: ("int4", "int4") for n in names if "attention.self.key" in n})
    batch = {"input_ids": torch.randint(1, 50, (2, 7)), "labels": torch.tensor([0, 2])}

    def run() -> list[torch.Tensor]:
        for _ in range(2):  # the second pass is the one that would recompute
            model(**batch).loss.backward()
            grads = [p.grad.clone() for p in model.parameters()]
            model.zero_grad(set_to_none=True)
        return grads

    key_forwards: list[int] = []
    layers["bert.encoder.layer.0.attention.self.key"].register_forward_pre_hook(
        lambda module, args: key_forwards.append(1))
    expected = run()
    assert sum(backward_calls) == 2 * 2 and len(key_forwards) == 2  # int8 and int4 per block
    backward_calls.clear()
    key_forwards.clear()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    got = run()
    assert len(key_forwards) == 4  # each pass runs the layer again in its backward: checkpointing is on
    assert not any(backward_calls)
    for a, b in zip(got, expected, strict=True):  # the input's gradient sums may be added in another order
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("precision", ["bfloat16 model", "bfloat16 autocast"])
def test_lower_precision_matches_the_saved_path(switches, precision):
    """A bf16 model recomputes in bf16; under autocast the matmul saves its own bf16 copy (no
    recipe then): both as the saved path."""
    x = torch.randn(2, 5, 8) * 3
    model, _ = attention(MIXED)
    if precision == "bfloat16 model":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    results = []
    for recompute in (False, True):
        input_share.set_recompute_mode("mixed" if recompute else "off")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.endswith("autocast")):
            results.append(steps(model, x))
    assert_identical(results[1], results[0])


def test_mode_all_recomputes_every_quantized_input_from_the_first_forward(switches, backward_calls):
    """`all`: also a fixed-format model, at every input (one recomputation per input and format)."""
    x = torch.randn(2, 5, 8) * 3
    model, _ = attention()  # every layer int8
    input_share.set_recompute_mode("off")
    saved = steps(model, x)
    input_share.set_recompute_mode("all")
    model, _ = attention()  # a fresh model: nothing learnt about its readers
    recomputed = steps(model, x)
    assert_identical(recomputed, saved)
    assert sum(backward_calls) == 2 * 2  # per pass: the projections' shared input, the output layer's


def test_mode_all_on_resnet_matches_and_recomputes_each_conv_input(switches, backward_calls):
    torch.manual_seed(0)
    resnet = build_model("resnet18", num_labels=3, from_scratch=True, image_size=32,
                         config_overrides={"embedding_size": 8, "hidden_sizes": [8, 16, 16, 16]})
    names = tuple(n for n, m in resnet.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    model, layers = quantize_model(resnet, QuantSpec(names, QuantConfig("int8", "int8")))
    model.eval()
    pixels = torch.randn(2, 3, 32, 32)
    results = []
    for mode in ("off", "all"):
        input_share.set_recompute_mode(mode)
        logits = model(pixel_values=pixels).logits
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (logits_a, grads_a), (logits_b, grads_b) = results
    assert torch.equal(logits_a, logits_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert sum(backward_calls) == len(layers) - 3  # each shortcut shares its block's first conv's input


def test_recompute_modes_parse_and_a_bad_one_is_refused(switches):
    from quant.input_share import RecomputeMode, parse_recompute_mode

    assert [parse_recompute_mode(v) for v in ("off", "0", "MIXED", "1", " all ", RecomputeMode.ALL)] == [
        RecomputeMode.OFF, RecomputeMode.OFF, RecomputeMode.MIXED, RecomputeMode.MIXED, RecomputeMode.ALL,
        RecomputeMode.ALL]
    with pytest.raises(ValueError, match=r"recompute mode 'sometimes' is not one of off, mixed \(the default\), all"):
        input_share.set_recompute_mode("sometimes")
    assert input_share.recompute_mode() is RecomputeMode.MIXED  # unchanged by the refused value


def test_a_bad_environment_value_fails_at_import_naming_it():
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLIQS_RECOMPUTE_INPUTS": "sometimes"}
    done = subprocess.run([sys.executable, "-c", "import quant.input_share"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "FLIQS_RECOMPUTE_INPUTS 'sometimes' is not one of off, mixed (the default), all" in done.stderr


def test_a_view_of_a_larger_tensor_is_not_kept_for_its_layer(switches, backward_calls):
    """BERT's pooler reads the first token of the last hidden states: keeping that view would keep
    every token, so its quantized input is kept instead."""
    torch.manual_seed(0)
    model, _ = quantize_model(nn.Sequential(nn.Linear(8, 8)), QuantSpec(("0",), QuantConfig("int8", "int8")))
    input_share.set_recompute_mode("all")
    hidden = torch.randn(4, 6, 8, requires_grad=True)
    model(hidden[:, 0]).sum().backward()  # a view: 1/6 of its storage
    assert not any(backward_calls)
    model(hidden * 1.0).sum().backward()  # a whole tensor
    assert sum(backward_calls) == 1
