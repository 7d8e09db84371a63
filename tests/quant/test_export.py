"""Low-bit checkpoints: bit-exact round trips, what is on disk, atomic writes, the CLI."""
from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import re

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import ViTImageProcessor

from eval.eval_partitions import LayerSelection, select_layers
from eval.models import build_model
from quant.eval_autocast import eval_autocast_dtype, set_eval_autocast
from quant.checkpoint_load import load_quantized_checkpoint, read_quantization_config
from quant.export import WEIGHTS_NAME, ExportReport, export_quantized_checkpoint
from quant.export_cli import main
from quant.formats import parse_format
from quant.quant_module import QuantConfig
from quant.surgery import QuantSpec, quantize_model, quantized_layers, record_geometry

torch.set_num_threads(1)

TINY = {
    "bert": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 2},
    "resnet18": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
}
MIXED = ["int4", "fp8_e4m3", "int8", "fp4", "fp6_e2m3", "e3m4", "int3", "int12", "bf16", "none", "e2m5", "fp8_e5m2"]


def tiny_model(model_type: str, config: QuantConfig, layer_formats: dict | None = None, seed: int = 0):
    """A from-scratch tiny model, every selected layer quantized, geometry recorded; and its inputs."""
    torch.manual_seed(seed)
    if model_type == "resnet18":
        model = build_model(model_type, num_labels=3, from_scratch=True, config_overrides=TINY[model_type],
                            image_size=32)
        inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    else:
        model = build_model(model_type, num_labels=3, from_scratch=True, config_overrides=TINY[model_type],
                            vocab_size=64, pad_token_id=1)
        inputs = {"input_ids": torch.randint(0, 64, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    names = select_layers(model, LayerSelection())
    if layer_formats == "mixed":
        layer_formats = {name: (MIXED[i % len(MIXED)], MIXED[(i + 5) % len(MIXED)]) for i, name in enumerate(names)}
    quantize_model(model, QuantSpec(names, config, layer_formats=layer_formats or {}))
    model.eval()
    record_geometry(model, inputs)
    return model, inputs


def outputs(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("model_type, config, layer_formats", [
    ("bert", QuantConfig("int4", "int8"), None),
    ("gpt2", QuantConfig("fp8_e4m3", "int8", per_channel=True), None),
    ("resnet18", QuantConfig("int4", "fp8_e5m2", per_channel=True), None),
    ("bert", QuantConfig(per_channel=True, per_token=True), "mixed"),
    ("resnet18", QuantConfig(per_channel=True, weight_range_percentile=99.0), "mixed"),
], ids=["bert-int4", "gpt2-fp8-per-channel", "resnet-int4-per-channel", "bert-mixed-per-channel", "resnet-mixed-p99"])
def test_loaded_checkpoint_reproduces_the_model_bit_for_bit(tmp_path, model_type, config, layer_formats):
    model, inputs = tiny_model(model_type, config, layer_formats)
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    loaded = load_quantized_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(outputs(loaded, inputs), outputs(model, inputs))
    original, restored = quantized_layers(model), quantized_layers(loaded)
    assert list(restored) == list(original)
    for name, layer in restored.items():
        assert layer.weight_prequantized and layer.quant_config == original[name].quant_config
        assert layer.macs_per_sample == original[name].macs_per_sample
        assert torch.equal(layer.quantized_weight(), original[name].quantized_weight())
    float_keys = set(model.state_dict()) - {f"{name}.weight" for name in original}
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in float_keys)


def test_mixed_checkpoint_uses_mse_clipping_too(tmp_path):
    model, inputs = tiny_model("bert", QuantConfig(per_channel=True), "mixed")
    for layer in list(quantized_layers(model).values())[::2]:
        layer.weight_range_percentile = -1.0  # MSE-optimal clipping
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    assert torch.equal(outputs(load_quantized_checkpoint(tmp_path / "ckpt"), inputs), outputs(model, inputs))


def test_config_json_and_stored_tensors(tmp_path):
    model, _ = tiny_model("bert", QuantConfig("int4", "fp8_e4m3", per_channel=True),
                          {"bert.encoder.layer.0.attention.self.query": ("fp6_e2m3", "int8")})
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["model_type"] == "bert"
    quant = read_quantization_config(tmp_path / "ckpt")
    assert quant["quant_method"] == "fliqs" and quant["model_dtype"] == "float32" and quant["tied_parameters"] == {}
    assert quant["autocast_dtype"] is None  # a float32 run's model
    assert quant["layers"]["bert.encoder.layer.0.attention.self.query"] == {
        "weight_format": "fp6_e2m3", "act_format": "int8", "weight_granularity": "per_channel",
        "act_granularity": "per_tensor", "weight_range_percentile": 100.0, "act_range_percentile": 100.0,
        "weight_shape": [32, 32], "weight_dtype": "float32", "weight_storage": "uint8", "macs_per_sample": 7 * 32 * 32}
    tensors = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    query = "bert.encoder.layer.0.attention.self.query"
    codes = tensors[f"{query}.weight_codes"]
    assert codes.dtype == torch.uint8 and codes.numel() == 32 * 32 * 6 // 8  # fp6: 4 weights in 3 bytes
    assert tensors[f"{query}.weight_scale"].shape == (32, 1) and f"{query}.weight" not in tensors
    key = "bert.encoder.layer.0.attention.self.key"
    codes = tensors[f"{key}.weight_codes"]
    assert codes.dtype == torch.uint8 and codes.numel() == 32 * 32 // 2  # int4: 2 weights per byte
    assert torch.equal(tensors["bert.embeddings.word_embeddings.weight"], model.bert.embeddings.word_embeddings.weight)
    assert torch.equal(tensors[f"{key}.bias"], model.get_submodule(key).bias)


def test_report_file_size_agrees_with_the_search_memory_cost(tmp_path):
    model, _ = tiny_model("bert", QuantConfig("int4", "int8"), {"classifier": ("int12", "int8")})
    report = export_quantized_checkpoint(model, tmp_path / "ckpt")
    layers = quantized_layers(model)
    int4_weights = sum(layer.weight.numel() for name, layer in layers.items() if name != "classifier")
    assert report.num_quantized_layers == len(layers) == 14
    # int4: two per byte; int12: stored in int16, 4 bits of padding per weight (classifier 3 x 32)
    assert report.code_bytes == int4_weights // 2 + 96 * 2
    assert report.padding_bytes == 96 * 2 - math.ceil(96 * 12 / 8) == 48
    assert report.scale_bytes == 4 * 14  # one float32 per layer (per tensor)
    assert report.memory_cost_mib == pytest.approx((int4_weights * 4 + 96 * 12) / 8 / 2**20, rel=1e-12)
    assert report.code_bytes - report.padding_bytes == report.memory_cost_mib * 2**20
    assert report.quantized_weight_mib - report.memory_cost_mib == pytest.approx((56 + 48) / 2**20, rel=1e-9)
    assert report.file_bytes == os.path.getsize(tmp_path / "ckpt" / WEIGHTS_NAME)
    assert "14 quantized layers" in report.summary() and f"{report.quantized_weight_bytes} bytes" in report.summary()
    assert report.to_dict() == {
        "path": str(tmp_path / "ckpt"), "file_bytes": report.file_bytes, "code_bytes": report.code_bytes,
        "scale_bytes": 56, "padding_bytes": 48, "memory_cost_mib": report.memory_cost_mib, "num_quantized_layers": 14,
        "quantized_weight_bytes": report.code_bytes + 56, "quantized_weight_mib": (report.code_bytes + 56) / 2**20,
        "file_mib": report.file_bytes / 2**20}
    json.dumps(report.to_dict())  # results.json embeds it


def test_per_channel_scales_and_bit_packed_rounding(tmp_path):
    model, _ = tiny_model("resnet18", QuantConfig("fp6_e3m2", "int8", per_channel=True))
    report = export_quantized_checkpoint(model, tmp_path / "ckpt")
    layers = quantized_layers(model)
    channels = sum(layer.weight.shape[0] for layer in layers.values())
    assert report.scale_bytes == 4 * channels
    assert report.code_bytes == sum(math.ceil(layer.weight.numel() * 6 / 8) for layer in layers.values())
    assert 0 <= report.code_bytes - report.memory_cost_mib * 2**20 < len(layers)  # < 1 byte of rounding per layer


def test_processor_is_saved_and_reexport_of_a_loaded_model_is_identical(tmp_path):
    model, inputs = tiny_model("resnet18", QuantConfig("int4", "int8", per_channel=True))
    export_quantized_checkpoint(model, tmp_path / "a", ViTImageProcessor(size={"height": 32, "width": 32}))
    assert ViTImageProcessor.from_pretrained(str(tmp_path / "a")).size == {"height": 32, "width": 32}
    export_quantized_checkpoint(load_quantized_checkpoint(tmp_path / "a"), tmp_path / "b")
    first = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
    second = load_file(str(tmp_path / "b" / WEIGHTS_NAME))
    assert list(first) == list(second) and all(torch.equal(first[k], second[k]) for k in first)


class FailingProcessor:
    def save_pretrained(self, path: str) -> None:
        with open(os.path.join(path, "partial.json"), "w") as handle:
            handle.write("{")
        raise OSError("disk full")


def test_failed_export_leaves_nothing_and_existing_output_is_protected(tmp_path):
    model, inputs = tiny_model("bert", QuantConfig("int4", "int8"))
    with pytest.raises(OSError) as error:
        export_quantized_checkpoint(model, tmp_path / "ckpt", FailingProcessor())
    assert str(error.value) == f"cannot write {tmp_path / 'ckpt'} (the FailingProcessor files): disk full; pass another --out"
    assert os.listdir(tmp_path) == []
    (tmp_path / "kept").mkdir()  # the parents it creates go too, those that were there stay
    with pytest.raises(OSError, match="disk full"):
        export_quantized_checkpoint(model, tmp_path / "kept" / "new" / "newer" / "ckpt", FailingProcessor())
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []
    (tmp_path / "kept").rmdir()
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match=r"already exists; choose another directory or replace it \(--overwrite, "
                       r"overwrite=True in Python\)"):
        export_quantized_checkpoint(model, tmp_path / "ckpt")
    model.classifier.set_formats(parse_format("int4"), parse_format("int4"))
    export_quantized_checkpoint(model, tmp_path / "ckpt", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert read_quantization_config(tmp_path / "ckpt")["layers"]["classifier"]["act_format"] == "int4"
    assert torch.equal(outputs(load_quantized_checkpoint(tmp_path / "ckpt"), inputs), outputs(model, inputs))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_mixed_precision_model_reloads_under_its_autocast(tmp_path, dtype):
    """A --bf16 / --fp16 run evaluates under torch.autocast; its checkpoint records the dtype and the
    loaded model runs under it, with float32 outputs, as the Trainer's evaluation."""
    import copy

    model, inputs = tiny_model("bert", QuantConfig("int4", "int8", per_channel=True))
    inputs = {**inputs, "labels": torch.tensor([0, 2])}
    with torch.no_grad(), torch.autocast("cpu", dtype=getattr(torch, dtype)):
        out = model(**inputs)
    expected_logits, expected_loss = out.logits.float(), out.loss.float()
    float32 = outputs(model, inputs)
    assert not torch.equal(expected_logits, float32)  # the two can be told apart
    assert set_eval_autocast(model, dtype) is model and eval_autocast_dtype(model) == dtype
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    assert read_quantization_config(tmp_path / "ckpt")["autocast_dtype"] == dtype
    loaded = load_quantized_checkpoint(tmp_path / "ckpt")
    assert eval_autocast_dtype(loaded) == dtype
    with torch.no_grad():
        got = loaded(**inputs)
    assert got.logits.dtype == torch.float32 and torch.equal(got.logits, expected_logits)
    assert torch.equal(got.loss, expected_loss)
    assert not torch.is_autocast_enabled("cpu")  # only for the forward
    assert torch.equal(outputs(copy.deepcopy(loaded), inputs), expected_logits)
    with pytest.raises(IndexError):
        loaded(input_ids=torch.full((1, 3), 10**6))  # a forward that raises leaves autocast off too
    assert not torch.is_autocast_enabled("cpu")
    assert torch.equal(outputs(set_eval_autocast(loaded, None), inputs), float32)
    assert eval_autocast_dtype(loaded) is None


def test_autocast_dtype_given_explicitly_and_bad_values(tmp_path):
    model, _ = tiny_model("bert", QuantConfig("int4", "int8"))
    export_quantized_checkpoint(model, tmp_path / "ckpt", autocast_dtype="bfloat16")
    assert read_quantization_config(tmp_path / "ckpt")["autocast_dtype"] == "bfloat16"
    assert eval_autocast_dtype(load_quantized_checkpoint(tmp_path / "ckpt")) == "bfloat16"
    set_eval_autocast(model, "bfloat16")
    export_quantized_checkpoint(model, tmp_path / "f32", autocast_dtype=None)  # the caller knows better
    assert read_quantization_config(tmp_path / "f32")["autocast_dtype"] is None
    with pytest.raises(ValueError, match=r"^autocast_dtype 'bf16' is not one of bfloat16, float16 \(or None for "
                                         r"float32\)$"):
        export_quantized_checkpoint(model, tmp_path / "bad", autocast_dtype="bf16")
    with pytest.raises(ValueError, match=r"^autocast dtype 'float32' is not one of bfloat16, float16 \(or None"):
        set_eval_autocast(model, "float32")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["quantization_config"]["autocast_dtype"] = "half"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: quantization_config autocast_dtype 'half' is not one of "
                                         r"bfloat16, float16 or null; write it again with quant.export$"):
        load_quantized_checkpoint(tmp_path / "ckpt")
    assert not (tmp_path / "bad").exists()


def test_bad_inputs_are_rejected(tmp_path):
    plain = build_model("bert", num_labels=2, from_scratch=True, config_overrides=TINY["bert"], vocab_size=64,
                        pad_token_id=1)
    with pytest.raises(ValueError, match="has no quantized layers; quantize it with quant.surgery first"):
        export_quantized_checkpoint(plain, tmp_path / "x")
    plain.save_pretrained(tmp_path / "float")
    with pytest.raises(ValueError, match="has no quantization_config with quant_method 'fliqs'"):
        load_quantized_checkpoint(tmp_path / "float")
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        load_quantized_checkpoint(tmp_path / "nowhere")
    float_run, _ = tiny_model("bert", QuantConfig("none", "none"))  # what a --bits 0 run holds
    with pytest.raises(ValueError, match=r"^every quantized layer of BertForSequenceClassification is at format none "
                                         r"\(a float model\): there is no low-bit model to export; save it with "
                                         r"save_pretrained instead$"):
        export_quantized_checkpoint(float_run, tmp_path / "float_run")
    with pytest.raises(ValueError, match=r"is at format none \(a float model\)"):  # before the ONNX export
        main([str(tmp_path / "run"), "--out", str(tmp_path / "float_run"), "--onnx"],
             load_run=lambda run_dir: (float_run, None))
    assert sorted(os.listdir(tmp_path)) == ["float"]  # no checkpoint, no ONNX temporary
    model, _ = tiny_model("bert", QuantConfig("int8", "int8"))
    model.bert.pooler.dense.weight = model.bert.encoder.layer[0].attention.self.query.weight  # tied
    with pytest.raises(ValueError, match=r"^quantized layers' weights 'bert.encoder.layer.0.attention.self.query.weight' "
                                         r"and 'bert.pooler.dense.weight' share storage \(tied weights\), and each "
                                         r"layer stores its own low-bit codes; untie them before quantizing"):
        export_quantized_checkpoint(model, tmp_path / "tied")
    model, _ = tiny_model("bert", QuantConfig("int8", "int8"))
    model.bert.embeddings.word_embeddings.weight = model.bert.pooler.dense.weight  # a float module's weight
    with pytest.raises(ValueError, match=r"^'bert.pooler.dense.weight' is a quantized layer's weight, stored as "
                                         r"low-bit codes, and shares storage with "
                                         r"'bert.embeddings.word_embeddings.weight' \(tied weights\), which would "
                                         r"lose its float values; untie them before quantizing"):
        export_quantized_checkpoint(model, tmp_path / "tied")
    assert not (tmp_path / "tied").exists()
    model, _ = tiny_model("bert", QuantConfig("int4", "int8"))
    with torch.no_grad():
        model.bert.pooler.dense.weight[0, :3] = float("nan")
    with pytest.raises(ValueError, match=r"layer 'bert.pooler.dense': the weight has 3 NaN/inf values \(a diverged "
                                         r"training run\?\); it has no low-bit form"):
        export_quantized_checkpoint(model, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


def test_cli_exports_the_run_model(tmp_path, capsys):
    model, inputs = tiny_model("gpt2", QuantConfig("int4", "int8", per_channel=True))
    seen = []

    def load_run(run_dir: str):
        seen.append(run_dir)
        return model, None

    report = main([str(tmp_path / "run"), "--out", str(tmp_path / "out")], load_run=load_run)
    assert seen == [str(tmp_path / "run")] and isinstance(report, ExportReport)
    assert report.summary() in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", WEIGHTS_NAME]
    assert torch.equal(outputs(load_quantized_checkpoint(tmp_path / "out"), inputs), outputs(model, inputs))
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run")], load_run=load_run)  # --out is required
    assert "--out" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match=r"out already exists; choose another directory or replace it "
                       r"\(--overwrite, overwrite=True in Python\)"):
        main([str(tmp_path / "run2"), "--out", str(tmp_path / "out")], load_run=load_run)
    with pytest.raises(ValueError, match=r"opset 99 is outside \[18, "):
        main([str(tmp_path / "run2"), "--out", str(tmp_path / "out2"), "--onnx", "--opset", "99"], load_run=load_run)
    with pytest.raises(ValueError, match=r"^--onnx_unsupported, --seq_len only apply to the ONNX export: add --onnx, "
                                         r"or drop them$"):
        main([str(tmp_path / "run2"), "--out", str(tmp_path / "out2"), "--onnx_unsupported", "float", "--seq_len",
              "8"], load_run=load_run)
    with pytest.raises(ValueError, match=r"^--opset only applies to the ONNX export: add --onnx, or drop it$"):
        main([str(tmp_path / "run2"), "--out", str(tmp_path / "out2"), "--opset", "22"], load_run=load_run)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match=r"file is a file; give a directory to create \(or an existing one "
                                              r"to replace with --overwrite\)$"):
        main([str(tmp_path / "run2"), "--out", str(tmp_path / "file"), "--overwrite"], load_run=load_run)
    assert seen == [str(tmp_path / "run")]  # all refused before loading the run


def _raise(error: BaseException):
    def writer(*args, **kwargs):
        raise error
    return writer


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a full disk raises, without a file name


@pytest.mark.parametrize("error, message", [
    (ENOSPC, "No space left on device (errno 28); free space or pass another --out"),
    # safetensors (Rust) reports its I/O errors as SafetensorError, not OSError
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "No space left on device (errno 28); free space or pass another --out"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied (errno 13); pass an --out you can write to"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error (errno 5); pass another --out"),
])
def test_a_write_error_names_the_file_and_the_way_out(tmp_path, capsys, monkeypatch, error, message):
    """It was `error: OSError: [Errno 28] No space left on device`: no path, and a type prefix."""
    import eval.eval_run
    import quant.export
    from quant.export_cli import cli

    model, _ = tiny_model("gpt2", QuantConfig("int4", "int8"))
    monkeypatch.setattr(eval.eval_run, "load_run_model", lambda run_dir: (model, None))
    monkeypatch.setattr(quant.export, "save_file", _raise(error))
    out = tmp_path / "deploy" / "ckpt"
    assert cli([str(tmp_path / "run"), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"python -m quant.export: error: cannot write {out / WEIGHTS_NAME}: {message}\n"
    assert os.listdir(tmp_path) == []  # cleanup: neither the temporary folder nor the parent it created


def test_a_full_disk_while_writing_the_onnx_model_names_it(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    import quant.onnx_export
    from quant.export import ExportWriteError

    model, _ = tiny_model("resnet18", QuantConfig("int8", "int8"))
    monkeypatch.setattr(quant.onnx_export.onnx, "save_model", _raise(ENOSPC))
    with pytest.raises(ExportWriteError) as error:  # named where it would be, not in the temporary folder
        main([str(tmp_path / "run"), "--out", str(tmp_path / "ckpt"), "--onnx", "--image_size", "32"],
             load_run=lambda run_dir: (model, None))
    assert str(error.value) == (f"cannot write {tmp_path / 'ckpt' / 'model.onnx'}: No space left on device (errno "
                                "28); free space or pass another --out")
    assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(tmp_path / "ckpt" / "model.onnx"))
    assert os.listdir(tmp_path) == []


PYTHON_DASH_M = "test_python_dash_m_names_the_onnx_file_too"


@pytest.fixture(scope="module", autouse=True)
def python_dash_m_export(request, tmp_path_factory):
    """The process of test_python_dash_m_names_the_onnx_file_too, started with this module's first
    test when that test is selected: it runs on the other core while the tests before it run here.
    (its output directory, the process) or None."""
    import subprocess
    import sys

    if importlib.util.find_spec("onnxscript") is None or not any(
            item.name == PYTHON_DASH_M and getattr(item, "module", None) is request.module for item in request.session.items):
        yield None
        return
    tmp_path = tmp_path_factory.mktemp("python_dash_m")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = (
        "import errno, os, runpy, sys\n"
        "import eval.eval_run, quant.onnx_export\n"
        "from quant.quant_module import QuantConfig\n"
        "from tests.quant.test_export import tiny_model\n"
        "model, _ = tiny_model('resnet18', QuantConfig('int8', 'int8'))\n"
        "eval.eval_run.load_run_model = lambda run_dir: (model, None)\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "quant.onnx_export.onnx.save_model = full\n"
        "sys.argv = ['quant.export', *sys.argv[1:]]\n"
        "runpy.run_module('quant.export', run_name='__main__', alter_sys=True)\n")
    process = subprocess.Popen([sys.executable, "-c", script, "run", "--out", str(tmp_path / "ckpt"), "--onnx",
                                "--image_size", "32"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"})
    yield tmp_path, process
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_python_dash_m_names_the_onnx_file_too(python_dash_m_export):
    """`python -m quant.export` runs the module as __main__, a second copy whose ExportWriteError is
    not the one quant.onnx_export raises: the message came out as `error: ExportWriteError: cannot
    write OUT/.ckpt.onnx-XXXX/model.onnx ...`, the temporary folder's path with a type prefix."""
    pytest.importorskip("onnxscript")
    tmp_path, process = python_dash_m_export  # started with the module's first test
    _, stderr = process.communicate(timeout=300)
    assert (process.returncode, stderr.splitlines()[-1]) == (
        1, f"python -m quant.export: error: cannot write {tmp_path / 'ckpt' / 'model.onnx'}: No space left on device "
        "(errno 28); free space or pass another --out"), stderr
    assert os.listdir(tmp_path) == []


def test_other_errors_of_a_writer_pass_unchanged(tmp_path, monkeypatch):
    import quant.export

    model, _ = tiny_model("gpt2", QuantConfig("int4", "int8"))
    monkeypatch.setattr(quant.export, "save_file", _raise(SafetensorError("Error while serializing: bad dtype")))
    with pytest.raises(SafetensorError, match="^Error while serializing: bad dtype$"):
        export_quantized_checkpoint(model, tmp_path / "ckpt")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--out", "a", "--out", "b"], "--out given twice (a and b): give it once"),
    (["--out=a", "--ou", "b"], "--out given twice (--out=a and --ou b): give it once"),  # argparse's prefixes
    (["--out", "a", "--onnx", "--onnx"], "--onnx given twice: give it once"),
    (["--out", "a", "--onnx", "--opset", "18", "--opset", "21"], "--opset given twice (18 and 21): give it once"),
])
def test_a_flag_given_twice_is_refused(tmp_path, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "run"), *args], load_run=lambda run_dir: pytest.fail("loaded the run"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m quant.export: error: {message}"


def test_errors_name_the_command_as_typed(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    from quant.export_cli import cli

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fliqs-export"])
    assert cli([str(tmp_path / "run"), "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == (f"fliqs-export: error: {tmp_path / 'file'} is a file; give a directory to "
                                       "create (or an existing one to replace with --overwrite)\n")
    # The wrapper pip writes for the console script, and python -m.
    script = tmp_path / "fliqs-export"
    script.write_text("import re, sys\nfrom quant.export_cli import cli\nif __name__ == '__main__':\n"
                      "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    sys.exit(cli())\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    commands = (([str(script)], "fliqs-export"), (["-m", "quant.export"], "python -m quant.export"))
    # Both started at once (independent processes, one per core).
    started = [subprocess.Popen([sys.executable, *command, "run", "--out", "a", "--onnx", "--onnx"], cwd=repo, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for command, _ in commands]
    try:
        finished = [(process.communicate(timeout=300)[1], process.returncode) for process in started]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for (_, name), (stderr, returncode) in zip(commands, finished):
        done = subprocess.CompletedProcess([], returncode, "", stderr)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.splitlines()[0].startswith(f"usage: {name} [-h]")
        assert done.stderr.splitlines()[-1] == f"{name}: error: --onnx given twice: give it once"


@pytest.mark.slow
def test_cli_on_a_tiny_real_run(tmp_path):
    import shutil
    import subprocess
    import sys

    from eval.eval_run import main as run_main

    # The run in this process (what is exported is the run directory it leaves, not the process).
    assert run_main(["--task", "digits", "--model_type", "resnet18", "--config_overrides",
                     "depths=[1,1,1,1],hidden_sizes=[8,8,8,8],embedding_size=8", "--max_steps", "3",
                     "--max_train_samples", "64", "--max_eval_samples", "32", "--weight_bits", "4", "--activation_bits",
                     "8", "--device", "cpu", "--report_to", "none", "--output_root_dir", str(tmp_path / "runs")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (run_dir,) = (tmp_path / "runs" / "digits").iterdir()
    # Any failure of the command is one line, not a traceback (here the weights file's reader: a
    # file that is no safetensors). Started now, it runs on the other core while this process checks
    # the export below.
    shutil.copytree(run_dir, tmp_path / "no_weights")
    for weights in (tmp_path / "no_weights" / "final_model").glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    failing = subprocess.Popen([sys.executable, "-m", "quant.export", str(tmp_path / "no_weights"), "--out",
                                str(tmp_path / "out3")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        _check_export_of_a_tiny_real_run(run_dir, tmp_path / "out")
        _, failed_stderr = failing.communicate(timeout=300)
    finally:
        if failing.poll() is None:
            failing.kill()
            failing.communicate()
    errors = [line for line in failed_stderr.splitlines() if line.startswith("python -m quant.export: error: ")]
    assert failing.returncode == 1 and "Traceback" not in failed_stderr and len(errors) == 1, failed_stderr
    assert re.match(r"python -m quant.export: error: \w+Error: \S", errors[0]), errors[0]
    assert not (tmp_path / "out3").exists()


def _check_export_of_a_tiny_real_run(run_dir, out) -> None:
    """The CLI's export of the run: its report is the run's memory cost, the checkpoint reloads
    the run's model bit for bit, onnxruntime agrees with it."""
    import numpy as np
    import onnxruntime as ort

    from eval.eval_run import load_run_model

    report = main([str(run_dir), "--out", str(out), "--onnx"])
    results = json.loads((run_dir / "results.json").read_text())
    assert report.memory_cost_mib == pytest.approx(results["cost"]["memory_mib"], rel=1e-12)
    assert report.code_bytes == report.memory_cost_mib * 2**20  # every int4 conv has an even weight count
    run_model, _ = load_run_model(run_dir)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = outputs(run_model, {"pixel_values": pixels})
    assert torch.equal(outputs(load_quantized_checkpoint(out), {"pixel_values": pixels}), expected)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"pixel_values": pixels.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=1e-4)


def _trainer_evaluation(model, setup, batch_size: int) -> tuple[float, float]:
    """Accuracy and loss over the validation split in the run's batches, the loss averaged as the
    Trainer does (each batch's float32 loss once per example, one numpy mean)."""
    import numpy as np

    dataset, correct, losses = setup.eval_dataset, 0, []
    for start in range(0, len(dataset), batch_size):
        batch = setup.data_collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        with torch.no_grad():
            out = model(**batch)
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
        losses.append(out.loss.float().repeat(len(batch["labels"])).numpy())
    return correct / len(dataset), float(np.concatenate(losses).mean())


def test_cli_export_of_a_bf16_gpt2_run_keeps_its_geometry_and_its_evaluation(tmp_path, capsys):
    """The CLI rebuilds the run's model with the run's input geometry (GPT-2 at its 128 tokens, not
    the ONNX example's 16; with or without --onnx), and the checkpoint of a --bf16 run reproduces
    the run's recorded evaluation bit for bit. Its word-level tokenizer gives GPT-2 no token types."""
    import argparse

    import onnx

    from eval.eval_run import main as run_main
    from eval.run_setup import load_data_and_model

    assert run_main(["--task", "synth-sentiment", "--model_type", "gpt2", "--config_overrides", "n_layer=1,n_embd=32,"
                     "n_head=2", "--weight_bits", "4", "--activation_bits", "8", "--per_channel", "--bf16",
                     "--max_steps", "4", "--max_train_samples", "64", "--max_eval_samples", "32", "--train_batch_size",
                     "16", "--device", "cpu", "--report_to", "none", "--exp_name", "g", "--output_root_dir",
                     str(tmp_path / "runs"), "--export_dir", str(tmp_path / "during")]) == 0
    run_dir = tmp_path / "runs" / "synth-sentiment" / "g"
    results = json.loads((run_dir / "results.json").read_text())
    recorded = {name: layer["macs_per_sample"] for name, layer in results["layers"].items()}
    assert results["args"]["max_seq_length"] == 128 and recorded["transformer.h.0.attn.c_attn"] == 128 * 32 * 96
    main([str(run_dir), "--out", str(tmp_path / "plain")])
    main([str(run_dir), "--out", str(tmp_path / "with_onnx"), "--onnx"])
    for out in ("during", "plain", "with_onnx"):
        layers = read_quantization_config(tmp_path / out)["layers"]
        assert {name: entry["macs_per_sample"] for name, entry in layers.items()} == recorded, out
    assert [i.name for i in onnx.load(str(tmp_path / "with_onnx" / "model.onnx")).graph.input] == \
        ["input_ids", "attention_mask"]

    args = argparse.Namespace(**{**results["args"], "model_name_or_path": str(run_dir / "final_model"),
                                 "load_config": None})
    setup = load_data_and_model(args)
    assert sorted(setup.eval_dataset[0]) == ["attention_mask", "input_ids", "labels"]  # no token_type_ids
    metrics = results["metrics"]
    for out in ("during", "plain", "with_onnx"):  # --export_dir during the run too
        assert read_quantization_config(tmp_path / out)["autocast_dtype"] == "bfloat16"
        loaded = load_quantized_checkpoint(tmp_path / out)
        assert sum(layer.compute_cost() for layer in quantized_layers(loaded).values()) == results["cost"]["gbops"]
        found = _trainer_evaluation(loaded, setup, results["args"]["eval_batch_size"])
        assert found == (metrics["eval_accuracy"], metrics["eval_loss"]), out
    float32 = _trainer_evaluation(set_eval_autocast(loaded, None), setup, results["args"]["eval_batch_size"])
    assert float32[1] != metrics["eval_loss"]  # in float32 it is another model


def test_a_model_of_your_own_exports_and_loads_once_its_classes_are_registered(tmp_path):
    """A user's own PreTrainedModel (not a transformers model type): the export works as for any;
    loading needs its classes registered, and without them says so (transformers' own error
    suggests upgrading transformers)."""
    from torch import nn
    from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

    class TinyMlpConfig(PretrainedConfig):
        model_type = "fliqs_test_tiny_mlp"

        def __init__(self, width: int = 8, num_labels: int = 2, **kwargs) -> None:
            super().__init__(num_labels=num_labels, **kwargs)
            self.width = width

    class TinyMlpForSequenceClassification(PreTrainedModel):
        config_class = TinyMlpConfig

        def __init__(self, config: TinyMlpConfig) -> None:
            super().__init__(config)
            self.fc = nn.Linear(4, config.width)
            self.head = nn.Linear(config.width, config.num_labels)
            self.post_init()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.head(torch.relu(self.fc(x)))}  # (B, num_labels)

    torch.manual_seed(0)
    model = TinyMlpForSequenceClassification(TinyMlpConfig())
    quantize_model(model, QuantSpec(("fc", "head"), QuantConfig("int4", "int8")))
    x = torch.randn(5, 4)
    expected = model.eval()(x)["logits"]
    export_quantized_checkpoint(model, tmp_path / "mine")
    config_path = tmp_path / "mine" / "config.json"
    with pytest.raises(ValueError, match=rf"^{config_path} has model_type 'fliqs_test_tiny_mlp', which transformers "
                                         r"does not know: a model of your own; register its classes in this process "
                                         r"before loading, AutoConfig.register\('fliqs_test_tiny_mlp', YourConfig\) "
                                         r"and, for its head, e.g. AutoModelForSequenceClassification.register\("
                                         r"YourConfig, YourModel\)$"):
        load_quantized_checkpoint(tmp_path / "mine")
    AutoConfig.register("fliqs_test_tiny_mlp", TinyMlpConfig, exist_ok=True)
    with pytest.raises(ValueError, match=r"^config.json names architecture 'TinyMlpForSequenceClassification', which "
                                         r"no transformers Auto class builds for TinyMlpConfig; buildable: none \(a "
                                         r"model of your own: register it before loading, e.g. "
                                         r"AutoModelForSequenceClassification.register\(TinyMlpConfig, "
                                         r"TinyMlpForSequenceClassification\)\)$"):
        load_quantized_checkpoint(tmp_path / "mine")
    AutoModelForSequenceClassification.register(TinyMlpConfig, TinyMlpForSequenceClassification, exist_ok=True)
    loaded = load_quantized_checkpoint(tmp_path / "mine")
    assert torch.equal(loaded(x)["logits"], expected)
    plain = nn.Sequential(nn.Linear(4, 8))
    quantize_model(plain, QuantSpec(("0",), QuantConfig("int4", "int8")))
    with pytest.raises(ValueError, match=r"^Sequential has no transformers config; the export writes a transformers "
                                         r"checkpoint \(config.json and weights\), so it needs a PreTrainedModel: "
                                         r"define your model as a transformers.PreTrainedModel subclass with a "
                                         r"PretrainedConfig \(docs/extending.md, 'A model of your own'\)$"):
        export_quantized_checkpoint(plain, tmp_path / "plain")


@pytest.mark.parametrize("fmt, dtype, stored, got", [("int4", "uint8", 1024, 512), ("int8", "int8", 2048, 1024),
                                                     ("fp8_e4m3", "float8_e4m3fn", 2048, 1024)])
def test_codes_of_another_shape_than_config_json_name_the_layer(tmp_path, fmt, dtype, stored, got):
    """A config.json edited (or mixed with another export) by hand: one error naming the layer."""
    model, _ = tiny_model("bert", QuantConfig(fmt, "int8"))
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"]["layers"]["bert.pooler.dense"]["weight_shape"] = [32, 64]  # it is (32, 32)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"^layer 'bert.pooler.dense': 2048 {fmt} values \(shape \(32, 64\)\) are "
                                         rf"stored in {stored} torch.{dtype} elements, got {got}: the data and the shape "
                                         rf"do not belong together; the checkpoint's files disagree, export it again$"):
        load_quantized_checkpoint(tmp_path / "ckpt")


def test_overwriting_the_current_directory_is_refused_and_a_failed_swap_puts_the_old_export_back(tmp_path, monkeypatch):
    """--out . --overwrite failed with 'Device or resource busy' and left a hidden ..old- folder;
    a failure between the two renames of an overwrite lost the old export."""
    import quant.export

    model, _ = tiny_model("gpt2", QuantConfig("int4", "int8"))
    export_quantized_checkpoint(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / WEIGHTS_NAME).read_bytes()
    monkeypatch.chdir(tmp_path / "ckpt")
    for out, what in ((".", "the current directory"), ("..", "a directory that holds the current one")):
        for overwrite in (True, False):  # without --overwrite too: 'already exists ... (--overwrite)' misled
            with pytest.raises(FileExistsError, match=rf"^{re.escape(out)} is {what}; replace another directory, or "
                                                      r"write a new one$"):
                export_quantized_checkpoint(model, out, overwrite=overwrite)
    monkeypatch.chdir(tmp_path)
    real_replace = os.replace

    def second_rename_fails(source, target):
        if ".tmp-" in str(source):  # the new export into place, after the old one was moved aside
            raise OSError(errno.EIO, "Input/output error")
        real_replace(source, target)

    monkeypatch.setattr(quant.export.os, "replace", second_rename_fails)
    other, _ = tiny_model("gpt2", QuantConfig("int8", "int8"), seed=1)
    with pytest.raises(Exception, match="Input/output error"):
        export_quantized_checkpoint(other, tmp_path / "ckpt", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no .ckpt.tmp- or .ckpt.old- folder left
    assert (tmp_path / "ckpt" / WEIGHTS_NAME).read_bytes() == before


def test_two_exports_of_a_model_are_the_same_bytes(tmp_path):
    """safetensors wrote its two metadata keys in a random order: the files differed at byte 27."""
    model, _ = tiny_model("bert", QuantConfig("int4", "int8", per_channel=True))
    for out in ("a", "b", "c"):
        export_quantized_checkpoint(model, tmp_path / out)
    for out in ("b", "c"):
        for name in (WEIGHTS_NAME, "config.json"):
            assert (tmp_path / out / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), (out, name)
    # What makes it so: one metadata key (two come out in either order, so equal bytes above can be luck).
    with open(tmp_path / "a" / WEIGHTS_NAME, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    assert header["__metadata__"] == {"format": "pt"}


def test_an_interrupted_export_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import eval.eval_run
    import quant.export
    from quant.export_cli import cli

    model, _ = tiny_model("gpt2", QuantConfig("int4", "int8"))
    monkeypatch.setattr(eval.eval_run, "load_run_model", lambda run_dir: (model, None))
    monkeypatch.setattr(quant.export, "save_file", _raise(KeyboardInterrupt()))
    assert cli([str(tmp_path / "run"), "--out", str(tmp_path / "deploy" / "ckpt")]) == 130
    assert capsys.readouterr().err == "python -m quant.export: interrupted; its temporary files were removed\n"
    assert os.listdir(tmp_path) == []
