"""An exported model's example inputs, and whether the installed onnxruntime runs it (quant/onnx_runtime.py)."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from eval.models import build_model
from quant.onnx_runtime import example_inputs_for, onnxruntime_load_problem
from quant.quant_module import QuantConfig
from tests.quant.test_onnx_export import TINY_BERT, assert_agrees, cli_export, ort_outputs, tiny, torch_outputs

torch.set_num_threads(1)


def test_token_type_ids_follow_the_tokenizer_and_the_forward():
    from eval.text_tokenizer import build_word_level_tokenizer

    bert, _ = tiny("bert", QuantConfig("int8", "int8"))
    assert list(example_inputs_for(bert)) == ["input_ids", "attention_mask", "token_type_ids"]  # 2 types, no tokenizer
    plain = build_word_level_tokenizer(["a b"], token_type_ids=False)
    assert list(example_inputs_for(bert, plain)) == ["input_ids", "attention_mask"]
    torch.manual_seed(0)
    roberta = build_model("roberta", num_labels=2, from_scratch=True, config_overrides=TINY_BERT, vocab_size=64,
                          pad_token_id=1)
    assert list(example_inputs_for(roberta)) == ["input_ids", "attention_mask"]  # type_vocab_size 1
    gpt2 = build_model("gpt2", num_labels=2, from_scratch=True, config_overrides={"n_layer": 1, "n_embd": 32,
                                                                                  "n_head": 2},
                       vocab_size=64, pad_token_id=1)
    assert list(example_inputs_for(gpt2)) == ["input_ids", "attention_mask"]
    # An older run's tokenizer fed GPT-2 token_type_ids (all 0) in training: its export takes them too.
    old = example_inputs_for(gpt2, build_word_level_tokenizer(["a b"]))
    assert list(old) == ["input_ids", "attention_mask", "token_type_ids"] and old["token_type_ids"].sum() == 0


def test_which_formats_the_installed_onnxruntime_runs(tmp_path_factory):
    """onnxruntime 1.32 (CPU) runs INT2 Q/DQ at opset 25 but has no FLOAT4E2M1 kernel: the FP4
    model is valid ONNX that it refuses to load, and the problem is one line with the ways out.
    The models: the CLI's exports (export_onnx's, its report printed) that
    tests/quant/test_onnx_export.py checks the notes of, exported once."""
    int2 = cli_export(tmp_path_factory, "int2", "int2")
    assert f"{int2.out / 'model.onnx'}: opset 25, " in int2.stdout  # export_onnx's report
    assert {o.version for o in onnx.load(str(int2.out / "model.onnx")).opset_import if o.domain == ""} == {25}
    assert onnxruntime_load_problem(int2.out / "model.onnx") is None
    assert_agrees(ort_outputs(int2.out / "model.onnx", int2.inputs), torch_outputs(int2.model, int2.inputs))
    fp4 = cli_export(tmp_path_factory, "fp4", "int8")
    assert f"{fp4.out / 'model.onnx'}: opset 23, " in fp4.stdout
    onnx.checker.check_model(str(fp4.out / "model.onnx"))
    problem = onnxruntime_load_problem(fp4.out / "model.onnx", shown_as="deploy/model.onnx")
    assert problem is not None and "\n" not in problem
    node = problem.split("(node ")[1].split(")")[0]
    assert problem == (f"onnxruntime {ort.__version__} cannot run deploy/model.onnx: its CPU provider has no "
                       f"DequantizeLinear (opset 23) kernel for FLOAT4E2M1 (node {node}); export again with --opset 22 "
                       f"--onnx_unsupported float (its fp4_e2m1 layers, and any other format newer than opset 22, in "
                       f"float), or run it with a runtime that implements DequantizeLinear on FLOAT4E2M1")


def test_example_inputs():
    bert, _ = tiny("bert", QuantConfig("int8", "int8"))
    text = example_inputs_for(bert, seq_len=5)
    # a batch of two: torch.export would fix a dimension of size 1 in the ONNX model
    assert text["input_ids"].tolist() == [[0, 1, 2, 3, 4]] * 2 and text["attention_mask"].tolist() == [[1] * 5] * 2
    with pytest.raises(ValueError, match="seq_len must be >= 2 .*got 1"):
        example_inputs_for(bert, seq_len=1)
    resnet, _ = tiny("resnet18", QuantConfig("int8", "int8"))
    assert example_inputs_for(resnet, image_size=24)["pixel_values"].shape == (2, 3, 24, 24)

    class Processor:
        crop_size = {"height": 40, "width": 40}

    assert example_inputs_for(resnet, Processor())["pixel_values"].shape == (2, 3, 40, 40)
    with pytest.raises(ValueError, match="cannot tell the image size of ResNetForImageClassification.*--image_size N"):
        example_inputs_for(resnet)
