"""ONNX export with Q/DQ: onnxruntime agrees with the PyTorch fake-quant model; clear errors."""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from eval.eval_partitions import LayerSelection, select_layers
from eval.models import build_model
from quant.checkpoint_load import load_quantized_checkpoint
from quant.export_cli import main
from quant.formats import NO_QUANT, parse_format
from quant.onnx_export import OnnxFormatError, export_onnx
from quant.onnx_runtime import example_inputs_for, onnxruntime_load_problem
from quant.quant_conv2d import QuantConv2d
from quant.quant_module import QuantConfig
from quant.surgery import QuantSpec, quantize_model, quantized_layers

torch.set_num_threads(1)
T = onnx.TensorProto
TINY_BERT = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}
# Smaller still where a test's checks do not need every stage (each export traces the whole model,
# ~0.3 s a layer): 7 layers, the stem, a stride-1 stage and a stride-2 stage with its shortcut conv.
SMALL_RESNET = {"hidden_sizes": [8, 16], "depths": [1, 1]}
ONE_LAYER = {"num_hidden_layers": 1}  # a BERT of one encoder layer: 8 quantized layers
# Measured: max |ORT - PyTorch| is ~1e-7 on logits of size ~0.5 (ResNet) and ~1e-8 on ~0.02 (BERT):
# float summation order in the MatMul/Conv kernels. A single activation code flipping (x / scale
# vs x * (1 / scale) on opposite sides of a rounding boundary) would show as ~scale * |w| ~ 1e-3.
ATOL, RTOL = 1e-5, 1e-4
# (weight, activation) formats ONNX expresses at opset <= 21, cycled over the layers
SUPPORTED = [("int8", "int8"), ("int4", "fp8_e4m3"), ("fp8_e4m3", "int4"), ("fp8_e5m2", "fp8_e5m2"), ("int16", "bf16"),
             ("bf16", "int16"), ("fp16", "fp16"), ("none", "int8"), ("int8", "none")]


def tiny(model_type: str, config: QuantConfig, formats: list[tuple[str, str]] | None = None, seed: int = 0,
         overrides: dict | None = None):
    """overrides: on top of TINY_RESNET / TINY_BERT (SMALL_RESNET, ONE_LAYER)."""
    torch.manual_seed(seed)
    if model_type == "resnet18":
        model = build_model(model_type, num_labels=3, from_scratch=True,
                            config_overrides={**TINY_RESNET, **(overrides or {})}, image_size=32)
        inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    else:
        model = build_model(model_type, num_labels=3, from_scratch=True,
                            config_overrides={**TINY_BERT, **(overrides or {})}, vocab_size=64, pad_token_id=1)
        inputs = {"input_ids": torch.randint(0, 64, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    names = select_layers(model, LayerSelection())
    layer_formats = {name: formats[i % len(formats)] for i, name in enumerate(names)} if formats else {}
    quantize_model(model, QuantSpec(names, config, layer_formats=layer_formats))
    return model.eval(), inputs


def torch_outputs(model, inputs) -> np.ndarray:
    with torch.no_grad():
        return model(**inputs).logits.numpy()


def ort_outputs(path, inputs) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]


def assert_agrees(onnx_logits: np.ndarray, torch_logits: np.ndarray) -> None:
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=ATOL, rtol=RTOL)
    assert not np.array_equal(torch_logits, np.zeros_like(torch_logits))


def dq_input_types(path) -> set[int]:
    model = onnx.load(str(path))
    types = {t.name: t.data_type for t in model.graph.initializer}
    return {types[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in types}


@dataclass(frozen=True)
class CliExport:
    out: Path  # the CLI's --out: config.json, fliqs_model.safetensors, model.onnx
    model: torch.nn.Module  # the model it exported
    inputs: dict[str, torch.Tensor]  # tiny's inputs for it (a batch of two 32x32 images)
    stdout: str
    stderr: str


_CLI_EXPORTS: dict[tuple[str, ...], CliExport] = {}


def cli_export(tmp_path_factory, weight: str, act: str, *options: str) -> CliExport:
    """`python -m quant.export RUN --out OUT --onnx --image_size 32 OPTIONS` on the SMALL_RESNET
    quantized (weight, act) per channel, run once a session: the tests that only read what it
    wrote and printed (here and tests/quant/test_onnx_runtime.py) share it."""
    key = (weight, act, *options)
    if key not in _CLI_EXPORTS:
        model, inputs = tiny("resnet18", QuantConfig(weight, act, per_channel=True), overrides=SMALL_RESNET)
        out = tmp_path_factory.mktemp("cli") / "out"
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main([str(out.parent / "run"), "--out", str(out), "--onnx", "--image_size", "32", *options],
                 load_run=lambda run_dir: (model, None))
        _CLI_EXPORTS[key] = CliExport(out, model, inputs, stdout.getvalue(), stderr.getvalue())
    return _CLI_EXPORTS[key]


def test_resnet_with_every_expressible_format_matches_onnxruntime(tmp_path):
    model, inputs = tiny("resnet18", QuantConfig(per_channel=True), SUPPORTED)
    report = export_onnx(model, inputs, tmp_path / "m.onnx")
    assert report.opset == 21 and report.float_layers == {} and len(report.qdq_layers) == 13
    assert report.qdq_layers["resnet.embedder.embedder.convolution"] == ("int8", "int8")
    # weights are stored as low-bit initializers feeding DequantizeLinear
    assert dq_input_types(tmp_path / "m.onnx") == {T.INT8, T.INT4, T.FLOAT8E4M3FN, T.FLOAT8E5M2, T.INT16}
    initializer_types = {t.data_type for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert {T.BFLOAT16, T.FLOAT16} <= initializer_types
    assert report.num_quantize_linear > 0 and report.file_bytes == os.path.getsize(tmp_path / "m.onnx")
    assert_agrees(ort_outputs(tmp_path / "m.onnx", inputs), torch_outputs(model, inputs))
    assert isinstance(model.resnet.embedder.embedder.convolution, QuantConv2d)  # the model is restored


def test_bert_per_token_and_dynamic_shapes_match_onnxruntime(tmp_path):
    formats = [("int8", "int8"), ("int4", "int8"), ("fp8_e4m3", "fp8_e4m3"), ("int4", "int4")]
    model, inputs = tiny("bert", QuantConfig(per_channel=True, per_token=True), formats, overrides=ONE_LAYER)
    report = export_onnx(model, inputs, tmp_path / "m.onnx")
    assert report.opset == 21 and len(report.qdq_layers) == 8  # each format on two layers
    assert sorted(report.qdq_layers.values()) == sorted(formats * 2)
    assert_agrees(ort_outputs(tmp_path / "m.onnx", inputs), torch_outputs(model, inputs))
    other = {"input_ids": torch.randint(0, 64, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
    other["attention_mask"][0, 6:] = 0
    assert_agrees(ort_outputs(tmp_path / "m.onnx", other), torch_outputs(model, other))


@pytest.mark.parametrize("model_type, overrides", [
    ("mobilenetv2", {"depth_multiplier": 0.25}),
    ("deit-tiny", {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}),
])
def test_vision_families_export_and_match_onnxruntime(tmp_path, model_type, overrides):
    # MobileNetV2's TF padding reads the conv's stride and kernel_size, which the export's stand-in
    # layer lacked (AttributeError); a DeiT's position embeddings fix its image size.
    torch.manual_seed(0)
    model = build_model(model_type, num_labels=3, from_scratch=True, config_overrides=overrides, image_size=32)
    if model_type == "mobilenetv2":
        # Its first 3 of 16 inverted residual blocks (a strided one, a residual one, a strided one after
        # the stem), then its 1x1 conv from their channels: all 16 took ~10 s to export, as many layers.
        from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import MobileNetV2ConvLayer

        net = model.mobilenet_v2
        net.layer = net.layer[:3]
        assert [block.use_residual for block in net.layer] == [False, True, False]
        assert [block.conv_3x3.convolution.stride for block in net.layer] == [(2, 2), (1, 1), (2, 2)]
        net.conv_1x1 = MobileNetV2ConvLayer(model.config, in_channels=net.layer[-1].reduce_1x1.convolution.out_channels,
                                            out_channels=net.conv_1x1.convolution.out_channels, kernel_size=1)
    names = select_layers(model, LayerSelection())
    quantize_model(model, QuantSpec(names, QuantConfig("int8", "int8", per_channel=True)))
    model.eval()
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    export_onnx(model, inputs, tmp_path / "m.onnx")
    assert_agrees(ort_outputs(tmp_path / "m.onnx", inputs), torch_outputs(model, inputs))
    (pixels,) = onnx.load(str(tmp_path / "m.onnx")).graph.input
    dims = [d.dim_value or d.dim_param for d in pixels.type.tensor_type.shape.dim]
    assert dims[1:] == ([3, 32, 32] if model_type == "deit-tiny" else [3, dims[2], dims[3]])
    if model_type == "mobilenetv2":
        assert all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))  # batch and image size free
        other = {"pixel_values": torch.randn(3, 3, 40, 40)}
        assert_agrees(ort_outputs(tmp_path / "m.onnx", other), torch_outputs(model, other))


def test_fp4_exports_at_opset_23_and_matches_the_onnx_reference(tmp_path):
    # onnxruntime 1.32's CPU provider has no FLOAT4E2M1 Q/DQ kernels, so the ONNX reference evaluator runs it
    model, inputs = tiny("resnet18", QuantConfig("fp4", "fp4", per_channel=True), overrides=SMALL_RESNET)
    report = export_onnx(model, inputs, tmp_path / "m.onnx")
    assert report.opset == 23 and dq_input_types(tmp_path / "m.onnx") == {T.FLOAT4E2M1}
    got = ReferenceEvaluator(str(tmp_path / "m.onnx")).run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, torch_outputs(model, inputs), atol=ATOL, rtol=RTOL)


def test_unsupported_formats_are_listed():
    model, inputs = tiny("bert", QuantConfig("int8", "int8"))
    layers = quantized_layers(model)
    layers["bert.encoder.layer.0.attention.self.query"].set_formats(parse_format("fp6_e2m3"), parse_format("int8"))
    layers["bert.encoder.layer.0.attention.self.key"].set_formats(parse_format("int8"), parse_format("e3m4"))
    layers["bert.encoder.layer.1.output.dense"].set_formats(parse_format("int3"), parse_format("e2m5"))
    layers["classifier"].act_range_percentile = 99.0
    with pytest.raises(OnnxFormatError) as error:
        export_onnx(model, inputs, "unused.onnx")
    message = str(error.value)
    assert message.startswith("4 quantized layers cannot be exported to ONNX (no ONNX form):\n")
    assert "  bert.encoder.layer.0.attention.self.query: weight format fp6_e2m3 has no ONNX type\n" in message
    assert "  bert.encoder.layer.0.attention.self.key: activation format fp8_e3m4 has no ONNX type\n" in message
    assert ("  bert.encoder.layer.1.output.dense: weight format int3 has no ONNX type; activation format e2m5 has no "
            "ONNX type\n") in message
    assert "  classifier: act_range_percentile 99.0 (dynamic Q/DQ computes abs-max scales only)\n" in message
    assert "int4 (opset 21)" in message and "pass unsupported='float' (--onnx_unsupported float)" in message
    with pytest.raises(OnnxFormatError, match=r"cannot be exported to ONNX at opset 19:\n  bert.*: needs opset 21"):
        export_onnx(tiny("bert", QuantConfig("int4", "int8"))[0], inputs, "unused.onnx", opset=19)
    with pytest.raises(ValueError, match="unsupported must be 'raise' or 'float', got 'skip'"):
        export_onnx(model, inputs, "unused.onnx", unsupported="skip")
    with pytest.raises(ValueError, match=r"opset 99 is outside \[18, "):
        export_onnx(tiny("bert", QuantConfig("int8", "int8"))[0], inputs, "unused.onnx", opset=99)


def test_float_fallback_exports_the_dequantized_weights_with_float_activations(tmp_path):
    model, inputs = tiny("resnet18", QuantConfig(per_channel=True), [("int8", "int8"), ("fp6_e3m2", "int8"),
                                                                      ("int4", "e3m4")], overrides=SMALL_RESNET)
    report = export_onnx(model, inputs, tmp_path / "m.onnx", unsupported="float")
    assert len(report.float_layers) == 4 and len(report.qdq_layers) == 3
    assert report.float_layers["resnet.encoder.stages.0.layers.0.layer.0.convolution"] == \
        "weight format fp6_e3m2 has no ONNX type"
    assert "4 layers exported in float" in report.summary()
    for name in report.float_layers:  # the reference: the same model without those activation quantizers
        layer = quantized_layers(model)[name]
        layer.set_formats(layer.weight_format, NO_QUANT)
    assert_agrees(ort_outputs(tmp_path / "m.onnx", inputs), torch_outputs(model, inputs))


def test_bert_sentence_pairs_keep_their_token_types_in_onnx(tmp_path):
    """token_type_ids are an input of a BERT export whose tokenizer gives them: the second
    segment's type-1 embedding is in the graph, as in the run."""
    from eval.text_tokenizer import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer(["the food was good", "not bad at all", "a bad movie"])
    torch.manual_seed(0)
    model = build_model("bert", num_labels=3, from_scratch=True, config_overrides={**TINY_BERT, **ONE_LAYER},
                        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    quantize_model(model, QuantSpec(select_layers(model, LayerSelection()), QuantConfig("int8", "int8")))
    model.eval()
    example = example_inputs_for(model, tokenizer, seq_len=6)
    assert list(example) == ["input_ids", "attention_mask", "token_type_ids"]
    assert example["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1]] * 2
    export_onnx(model, example, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    pairs = dict(tokenizer(["the food", "a movie was bad"], ["not bad at all", "good"], padding=True,
                           return_tensors="pt"))
    assert pairs["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1, 0]]
    assert_agrees(ort_outputs(tmp_path / "m.onnx", pairs), torch_outputs(model, pairs))
    single_segment = {**pairs, "token_type_ids": torch.zeros_like(pairs["token_type_ids"])}
    assert np.abs(torch_outputs(model, single_segment) - torch_outputs(model, pairs)).max() > 1e-4  # types matter


def test_export_leaves_the_recorded_geometry_alone(tmp_path):
    model, inputs = tiny("bert", QuantConfig("int8", "int8"), overrides=ONE_LAYER)
    layers = quantized_layers(model)
    assert {layer.macs_per_sample for layer in layers.values()} == {None}
    # One export covers both: every other layer (and the classifier) holds the run's geometry, the rest none.
    recorded = {name for i, name in enumerate(layers) if i % 2} | {"classifier"}
    for name in recorded:
        layers[name].set_input_shape((2, 128, layers[name].weight.shape[1]))  # the run's 128 tokens
    before = {name: layer.macs_per_sample for name, layer in layers.items()}
    assert before["classifier"] == 128 * 32 * 3
    assert {name for name, macs in before.items() if macs is None} == set(layers) - recorded != set()
    export_onnx(model, example_inputs_for(model, seq_len=16), tmp_path / "m.onnx")
    # none stays none (not the example's 16 tokens), the recorded stays the run's
    assert {name: layer.macs_per_sample for name, layer in layers.items()} == before


def test_a_mixed_precision_model_exports_its_float32_graph(tmp_path):
    from quant.eval_autocast import eval_autocast_dtype, set_eval_autocast

    model, inputs = tiny("resnet18", QuantConfig("int8", "int8", per_channel=True), overrides=SMALL_RESNET)
    float32 = torch_outputs(model, inputs)
    set_eval_autocast(model, "bfloat16")
    assert not np.array_equal(torch_outputs(model, inputs), float32)
    export_onnx(model, inputs, tmp_path / "m.onnx")
    assert_agrees(ort_outputs(tmp_path / "m.onnx", inputs), float32)
    assert eval_autocast_dtype(model) == "bfloat16" and not np.array_equal(torch_outputs(model, inputs), float32)


def test_formats_past_an_explicit_opset_go_float_on_request(tmp_path):
    """onnxruntime 1.32 cannot run FP4 (opset 23): --opset 22 --onnx_unsupported float exports
    those layers (and INT2, opset 25) in float, and onnxruntime runs the rest."""
    formats = [("int8", "int8"), ("fp4", "int8"), ("int2", "int8"), ("int4", "fp4"), ("int8", "int2")]
    model, inputs = tiny("resnet18", QuantConfig(per_channel=True), formats, overrides=SMALL_RESNET)
    listed = r"^5 quantized layers cannot be exported to ONNX at opset 22:\n  resnet.encoder.stages.0.layers.0.layer.0"
    with pytest.raises(OnnxFormatError, match=listed + r".convolution: needs opset 23\n"):
        export_onnx(model, inputs, tmp_path / "m.onnx", opset=22)
    report = export_onnx(model, inputs, tmp_path / "m.onnx", opset=22, unsupported="float")
    assert report.opset == 22 and len(report.qdq_layers) == 2 and len(report.float_layers) == 5
    assert report.float_layers["resnet.encoder.stages.0.layers.0.layer.0.convolution"] == "needs opset 23"
    assert report.float_layers["resnet.encoder.stages.0.layers.0.layer.1.convolution"] == "needs opset 25"
    assert onnxruntime_load_problem(tmp_path / "m.onnx") is None
    for name in report.float_layers:  # the reference: those layers without their activation quantizers
        layer = quantized_layers(model)[name]
        layer.set_formats(layer.weight_format, NO_QUANT)
    assert_agrees(ort_outputs(tmp_path / "m.onnx", inputs), torch_outputs(model, inputs))


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_loaded_checkpoint_exports_to_onnx(tmp_path, per_channel):
    """Its layers carry their scales as `weight_scale` buffers, which the export's stand-ins name
    their own scales too (it failed: "attribute 'weight_scale' already exists")."""
    from quant.export import export_quantized_checkpoint

    model, inputs = tiny("bert", QuantConfig("int4", "int8", per_channel=per_channel), overrides=ONE_LAYER)
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    loaded = load_quantized_checkpoint(tmp_path / "ckpt")
    export_onnx(loaded, inputs, tmp_path / "m.onnx")
    assert_agrees(ort_outputs(tmp_path / "m.onnx", inputs), torch_outputs(loaded, inputs))
    np.testing.assert_array_equal(torch_outputs(loaded, inputs), torch_outputs(model, inputs))


def test_cli_writes_checkpoint_and_onnx_together(tmp_path, capsys):
    # TINY_RESNET: a SMALL_RESNET's config, overridden after it was built, keeps four stage names, which
    # its checkpoint's config cannot be loaded with (out_features ['stage4'])
    model, inputs = tiny("resnet18", QuantConfig("int4", "int8", per_channel=True))
    main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--onnx", "--image_size", "32"],
         load_run=lambda run_dir: (model, None))
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "fliqs_model.safetensors", "model.onnx"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directories left
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'out' / 'model.onnx'}: opset 21, 13 layers with Q/DQ" in printed
    loaded = load_quantized_checkpoint(tmp_path / "out")
    np.testing.assert_allclose(ort_outputs(tmp_path / "out" / "model.onnx", inputs), torch_outputs(loaded, inputs),
                               atol=ATOL, rtol=RTOL)
    # Batch and image size stay free in the CLI's export (its example batch is two 32x32 images),
    # the channels are fixed.
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    pixel_dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(pixel_dims[0], str) and pixel_dims[1] == 3 and all(isinstance(d, str) for d in pixel_dims[2:])
    assert isinstance(graph.output[0].type.tensor_type.shape.dim[0].dim_param, str)
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param != ""
    other = {"pixel_values": torch.randn(3, 3, 40, 40)}
    np.testing.assert_allclose(ort_outputs(tmp_path / "out" / "model.onnx", other), torch_outputs(loaded, other),
                               atol=ATOL, rtol=RTOL)
    model.resnet.embedder.embedder.convolution.set_formats(parse_format("e3m4"), parse_format("int8"))
    with pytest.raises(OnnxFormatError, match="1 quantized layers cannot be exported"):
        main([str(tmp_path / "run"), "--out", str(tmp_path / "out2"), "--onnx", "--image_size", "32"],
             load_run=lambda run_dir: (model, None))
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the ONNX failure left no checkpoint behind
    with pytest.raises(OnnxFormatError, match="1 quantized layers cannot be exported"):
        main([str(tmp_path / "run"), "--out", str(tmp_path / "new1" / "new2" / "out2"), "--onnx", "--image_size",
              "32"], load_run=lambda run_dir: (model, None))
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nor the parent directories it created


def test_cli_notes_a_model_the_installed_onnxruntime_cannot_run(tmp_path_factory):
    fp4 = cli_export(tmp_path_factory, "fp4", "int8")
    assert f"{fp4.out / 'model.onnx'}: opset 23, 7 layers with Q/DQ" in fp4.stdout
    (note,) = fp4.stderr.splitlines()
    assert note.startswith(f"python -m quant.export: note: onnxruntime {ort.__version__} cannot run "
                           f"{fp4.out / 'model.onnx'}: its CPU provider has no DequantizeLinear (opset 23) "
                           f"kernel for FLOAT4E2M1")
    assert sorted(os.listdir(fp4.out)) == ["config.json", "fliqs_model.safetensors", "model.onnx"]
    fp4_float = cli_export(tmp_path_factory, "fp4", "int8", "--opset", "22", "--onnx_unsupported", "float")
    assert f"{fp4_float.out / 'model.onnx'}: opset 22, 0 layers with Q/DQ" in fp4_float.stdout
    assert fp4_float.stderr == ""
    int2 = cli_export(tmp_path_factory, "int2", "int2")  # opset 25, which onnxruntime runs
    assert f"{int2.out / 'model.onnx'}: opset 25, 7 layers with Q/DQ" in int2.stdout
    assert int2.stderr == ""


def test_export_with_grouped_weights_on_traces_no_group_hook(tmp_path):
    """With the grouped weight hooks active (mode "always" stands in for a GPU), the export
    pauses them: the same graph as without, the same outputs, and the group back afterwards."""
    from quant import weight_group

    before = weight_group.get_mode()
    weight_group.set_mode("always")
    try:
        model, inputs = tiny("resnet18", QuantConfig(), [("int8", "int8"), ("int4", "fp8_e4m3")],
                             overrides=SMALL_RESNET)
        model.train()  # grad on: the group would join every layer in a trace
        report = export_onnx(model, inputs, tmp_path / "grouped.onnx")
        # the hooks stay: the weight group's and the input share's (quant/input_share.py)
        assert "_fliqs_weight_group" in model.__dict__ and len(model._forward_pre_hooks) == 2
        weight_group.set_mode("off")
        plain = export_onnx(model, inputs, tmp_path / "plain.onnx")
    finally:
        weight_group.set_mode(before)
    nodes = [n.op_type for n in onnx.load(str(tmp_path / "grouped.onnx")).graph.node]
    assert nodes == [n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node]
    assert report.num_quantize_linear == plain.num_quantize_linear
    np.testing.assert_array_equal(ort_outputs(tmp_path / "grouped.onnx", inputs), ort_outputs(tmp_path / "plain.onnx", inputs))


def test_the_summary_counts_q_dq_cast_and_plain_layers_apart_and_nodes_carry_no_source_metadata(tmp_path):
    """Layers at bf16/fp16 are Casts and layers at none nothing: 'layers with Q/DQ' counted them
    all. The exporter's per-node metadata (stack traces with this machine's paths) is dropped."""
    model, inputs = tiny("resnet18", QuantConfig(), [("int8", "int8"), ("bf16", "fp16"), ("none", "none")],
                         overrides=SMALL_RESNET)
    report = export_onnx(model, inputs, tmp_path / "m.onnx")
    kinds = sorted(report.qdq_layers.values())
    layers_with = {"Q/DQ": sum(1 for w, a in kinds if "int8" in (w, a)), "casts": kinds.count(("bf16", "fp16")),
                   "none": kinds.count(("none", "none"))}
    assert layers_with["Q/DQ"] and layers_with["casts"] and layers_with["none"]
    assert report.summary() == (
        f"{tmp_path / 'm.onnx'}: opset {report.opset}, {layers_with['Q/DQ']} layers with Q/DQ "
        f"({report.num_quantize_linear} QuantizeLinear, {report.num_dequantize_linear} DequantizeLinear), "
        f"{layers_with['casts']} with casts only, {layers_with['none']} at format none on both sides, "
        f"{report.file_bytes} bytes")
    proto = onnx.load(tmp_path / "m.onnx")
    assert proto.graph.node and not [node.name for node in proto.graph.node if len(node.metadata_props)]
