"""Model registry, built-in configs (parameter counts), offline fail-fast loading, overrides in
build_model (their parsing: tests/eval/test_config_overrides.py)."""
from __future__ import annotations

import time
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from eval import hub, models
from eval.hub import HubUnreachableError
from eval.model_configs import MODEL_REGISTRY, ModelSpec, resnet_config
from eval.models import (
    SUPPORTED_MODEL_TYPES,
    architecture_config,
    build_model,
    get_model_spec,
    load_pretrained_processor,
    vit_patch_size_for,
)

torch.set_num_threads(2)

# Shrunken configs for forward passes, one per family (also used by test_eval_partitions).
TINY_TRANSFORMER = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
TINY_OVERRIDES: dict[str, dict] = {
    "bert": TINY_TRANSFORMER,
    "roberta": TINY_TRANSFORMER,
    "gpt2": {"n_layer": 2, "n_embd": 32, "n_head": 2},
    "resnet18": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
    "resnet50": {"embedding_size": 8, "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1]},
    # width 0.25 makes the head conv round_filters(1280 * 0.25) = 320 wide; one block per stage
    "efficientnet-b0": {"width_coefficient": 0.25, "num_block_repeats": [1] * 7, "hidden_dim": 320},
    "mobilenetv2": {"depth_multiplier": 0.25},
    "deit-tiny": TINY_TRANSFORMER,
}
TINY_VOCAB = 64
TINY_PAD = 1  # the project's tokenizers choose their pad id; GPT-2's eos (50256) is outside 64 tokens
TINY_IMAGE = 32


def build_tiny(model_type: str, num_labels: int = 3, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    extra = {"vocab_size": TINY_VOCAB, "pad_token_id": TINY_PAD} if get_model_spec(model_type).modality == "text" else {"image_size": TINY_IMAGE}
    return build_model(model_type, num_labels=num_labels, from_scratch=True,
                       config_overrides=TINY_OVERRIDES[model_type], **(extra | kwargs))


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_lists_every_model_type_with_its_hub_checkpoint():
    assert {name: spec.hub_id for name, spec in MODEL_REGISTRY.items()} == {
        "bert-tiny": "prajjwal1/bert-tiny", "bert-mini": "prajjwal1/bert-mini",
        "bert-small": "prajjwal1/bert-small", "bert-medium": "prajjwal1/bert-medium",
        "bert": "google-bert/bert-base-uncased", "roberta": "FacebookAI/roberta-base",
        "gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
        "gpt2-large": "openai-community/gpt2-large",
        "resnet18": "microsoft/resnet-18", "resnet50": "microsoft/resnet-50",
        **{f"efficientnet-b{i}": f"google/efficientnet-b{i}" for i in range(8)},
        "mobilenetv2": "google/mobilenet_v2_1.0_224",
        "deit-tiny": "facebook/deit-tiny-patch16-224", "deit-small": "facebook/deit-small-patch16-224",
        "deit-base": "facebook/deit-base-patch16-224",
    }
    assert SUPPORTED_MODEL_TYPES == tuple(MODEL_REGISTRY)
    assert [s.name for s in MODEL_REGISTRY.values() if s.modality == "text"] == [
        "bert-tiny", "bert-mini", "bert-small", "bert-medium", "bert", "roberta", "gpt2", "gpt2-medium", "gpt2-large"]
    assert get_model_spec("deit-small").checkpoint_model_types == ("vit", "deit")


def test_unknown_model_type_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model type 'bert-huge'; valid model types: bert-tiny, .*deit-base"):
        get_model_spec("bert-huge")
    with pytest.raises(ValueError, match="unknown model type 'resnet-18'"):
        build_model("resnet-18", num_labels=2, from_scratch=True)


@pytest.mark.parametrize("name, fields", [
    ("bert-tiny", {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512,
                   "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2}),
    ("bert-medium", {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 2048}),
    ("roberta", {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1, "pad_token_id": 1,
                 "layer_norm_eps": 1e-5}),
    ("gpt2-medium", {"n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257, "n_positions": 1024,
                     "n_inner": None, "eos_token_id": 50256}),
    ("resnet50", {"depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048], "layer_type": "bottleneck",
                  "embedding_size": 64, "downsample_in_first_stage": False}),
    ("efficientnet-b3", {"width_coefficient": 1.2, "depth_coefficient": 1.4, "image_size": 300, "hidden_dim": 1536,
                         "dropout_rate": 0.3, "depthwise_padding": [5, 18]}),
    ("mobilenetv2", {"depth_multiplier": 1.0, "image_size": 224, "tf_padding": True, "layer_norm_eps": 1e-3}),
    ("deit-small", {"model_type": "vit", "hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536,
                    "num_hidden_layers": 12, "patch_size": 16, "image_size": 224, "qkv_bias": True}),
])
def test_builtin_configs_match_the_checkpoints(name, fields):
    config = get_model_spec(name).builtin_config()
    assert {key: getattr(config, key) for key in fields} == fields


# ---------------------------------------------------------------------------------------------
# parameter counts of the full-size built-in configs (1000 classes for vision, 2 for text)

def bert_params(vocab: int, positions: int, types: int, hidden: int, layers: int, inner: int, labels: int) -> int:
    """BERT/RoBERTa by hand: embeddings + LayerNorm, per layer q/k/v/o + FFN + 2 LayerNorms,
    pooler (RoBERTa: the head's dense, same size), classifier."""
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + (hidden * inner + inner) + (inner * hidden + hidden) + 4 * hidden
    return embeddings + layers * layer + (hidden * hidden + hidden) + (hidden * labels + labels)


def gpt2_params(vocab: int, positions: int, hidden: int, layers: int, labels: int) -> int:
    """GPT-2 by hand: wte + wpe, per layer 2 LayerNorms + c_attn + c_proj + c_fc + mlp c_proj,
    final LayerNorm, bias-free score head."""
    layer = 4 * hidden + (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden) \
        + (hidden * 4 * hidden + 4 * hidden) + (4 * hidden * hidden + hidden)
    return (vocab + positions) * hidden + layers * layer + 2 * hidden + hidden * labels


def vit_params(hidden: int, layers: int, patch: int, image: int, labels: int) -> int:
    """ViT/DeiT by hand: patch conv, CLS token, positions (patches + CLS), layers (MLP 4x), final
    LayerNorm, classifier."""
    num_patches = (image // patch) ** 2
    embeddings = 3 * patch * patch * hidden + hidden + hidden + (num_patches + 1) * hidden
    inner = 4 * hidden
    layer = 4 * (hidden * hidden + hidden) + (hidden * inner + inner) + (inner * hidden + hidden) + 4 * hidden
    return embeddings + layers * layer + 2 * hidden + (hidden * labels + labels)


def resnet_params(depths: list[int], widths: list[int], bottleneck: bool, labels: int) -> int:
    """ResNet v1.5 by hand: 7x7 stem + BN; per residual layer its convs + BN (2 per channel) and a
    1x1 shortcut + BN where channels or stride change; classifier."""
    total = 3 * 64 * 49 + 2 * 64
    in_ch = 64
    for stage, (depth, out_ch) in enumerate(zip(depths, widths)):
        for i in range(depth):
            stride = 2 if stage > 0 and i == 0 else 1
            if bottleneck:
                mid = out_ch // 4
                total += in_ch * mid + 2 * mid + mid * mid * 9 + 2 * mid + mid * out_ch + 2 * out_ch
            else:
                total += in_ch * out_ch * 9 + 2 * out_ch + out_ch * out_ch * 9 + 2 * out_ch
            if in_ch != out_ch or stride != 1:
                total += in_ch * out_ch + 2 * out_ch
            in_ch = out_ch
    return total + in_ch * labels + labels


# Published counts (HF model cards, torchvision and timm docs) that the hand counts reproduce.
FULL_SIZE_PARAMS = {
    "bert-tiny": (4_386_178, bert_params(30522, 512, 2, 128, 2, 512, 2)),
    "bert-mini": (11_171_074, bert_params(30522, 512, 2, 256, 4, 1024, 2)),
    "bert-small": (28_764_674, bert_params(30522, 512, 2, 512, 4, 2048, 2)),
    "bert-medium": (41_374_210, bert_params(30522, 512, 2, 512, 8, 2048, 2)),
    "bert": (109_483_778, bert_params(30522, 512, 2, 768, 12, 3072, 2)),  # BertModel 109,482,240 + head
    "roberta": (124_647_170, bert_params(50265, 514, 1, 768, 12, 3072, 2)),  # RobertaModel 124,645,632 + out_proj
    "gpt2": (124_441_344, gpt2_params(50257, 1024, 768, 12, 2)),  # GPT2Model 124,439,808 + score
    "gpt2-medium": (354_825_216, gpt2_params(50257, 1024, 1024, 24, 2)),  # 354,823,168 + score
    "gpt2-large": (774_032_640, gpt2_params(50257, 1024, 1280, 36, 2)),  # 774,030,080 + score
    "resnet18": (11_689_512, resnet_params([2, 2, 2, 2], [64, 128, 256, 512], False, 1000)),
    "resnet50": (25_557_032, resnet_params([3, 4, 6, 3], [256, 512, 1024, 2048], True, 1000)),
    "efficientnet-b0": (5_288_548, None), "efficientnet-b1": (7_794_184, None),
    "efficientnet-b2": (9_109_994, None), "efficientnet-b3": (12_233_232, None),
    "efficientnet-b4": (19_341_616, None), "efficientnet-b5": (30_389_784, None),
    "efficientnet-b6": (43_040_704, None), "efficientnet-b7": (66_347_960, None),
    "mobilenetv2": (3_504_872, None),
    "deit-tiny": (5_717_416, vit_params(192, 12, 16, 224, 1000)),
    "deit-small": (22_050_664, vit_params(384, 12, 16, 224, 1000)),
    "deit-base": (86_567_656, vit_params(768, 12, 16, 224, 1000)),
}
# 1.4 GB / 3.1 GB of fp32 weights and 6-18 s of random init on CPU: build on the meta device.
META_BUILD = {"gpt2-medium", "gpt2-large"}


def test_parameter_table_covers_every_model_type():
    assert tuple(FULL_SIZE_PARAMS) == SUPPORTED_MODEL_TYPES


@pytest.mark.parametrize("name", SUPPORTED_MODEL_TYPES)
def test_full_size_from_scratch_matches_published_parameter_count(name):
    published, by_hand = FULL_SIZE_PARAMS[name]
    if by_hand is not None:
        assert by_hand == published
    num_labels = 2 if get_model_spec(name).modality == "text" else 1000
    device = "meta" if name in META_BUILD else "cpu"
    with torch.device(device):
        model = build_model(name, num_labels=num_labels, from_scratch=True)
    assert sum(p.numel() for p in model.parameters()) == published
    assert all(p.device.type == device and p.dtype == torch.float32 for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# forward passes of tiny models


@pytest.mark.parametrize("name", ["bert", "roberta", "gpt2"])
def test_tiny_text_forward_loss_and_padding(name):
    model = build_tiny(name).eval()
    pad = model.config.pad_token_id
    ids = torch.tensor([[5, 9, 17, 33], [7, 8, pad, pad]])
    mask = (torch.arange(4) < torch.tensor([[4], [2]])).long()
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        alone = model(input_ids=ids[1:, :2], attention_mask=mask[1:, :2]).logits
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    # right padding is invisible: the padded row scores like the unpadded 2-token sequence
    torch.testing.assert_close(out.logits[1:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "efficientnet-b0", "mobilenetv2", "deit-tiny"])
def test_tiny_vision_forward_loss(name):
    model = build_tiny(name).eval()
    pixels = torch.randn(2, 3, TINY_IMAGE, TINY_IMAGE, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))


@pytest.mark.parametrize("name", list(TINY_OVERRIDES))
def test_every_parameter_gets_a_gradient(name):
    """Multi-GPU runs tell DDP that no parameter is unused (eval/run_trainer.py): true of every family."""
    model = build_tiny(name).train()
    if get_model_spec(name).modality == "text":
        ids = torch.tensor([[5, 9, 17, 33], [7, 8, 3, 2]])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([2, 0]))
    else:
        pixels = torch.randn(2, 3, TINY_IMAGE, TINY_IMAGE, generator=torch.Generator().manual_seed(1))
        out = model(pixel_values=pixels, labels=torch.tensor([1, 2]))
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_num_labels_one_is_regression_with_mse_loss():
    model = build_tiny("bert", num_labels=1).eval()
    assert model.config.problem_type == "regression"
    targets = torch.tensor([0.5, 3.0])
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]]), labels=targets)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), targets))


def test_same_seed_same_weights():
    first, second = build_tiny("gpt2", seed=3), build_tiny("gpt2", seed=3)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_gpt2_pads_with_eos_unless_told():
    assert build_model("gpt2", num_labels=2, from_scratch=True,
                       config_overrides=TINY_OVERRIDES["gpt2"]).config.pad_token_id == 50256
    assert build_tiny("gpt2", pad_token_id=7).config.pad_token_id == 7


def test_special_tokens_outside_a_smaller_vocabulary_are_dropped():
    # GPT-2's eos/bos (50256) in a 64-word vocabulary: transformers warned on every run.
    full = build_model("gpt2", num_labels=2, from_scratch=True, config_overrides=TINY_OVERRIDES["gpt2"]).config
    assert (full.bos_token_id, full.eos_token_id) == (50256, 50256)
    small = build_tiny("gpt2").config
    assert (small.vocab_size, small.pad_token_id, small.bos_token_id, small.eos_token_id) == (64, 1, None, None)


def test_deit_on_small_images_picks_a_dividing_patch_size():
    model = build_tiny("deit-tiny")
    assert (model.config.image_size, model.config.patch_size) == (32, 8)
    # CLS + (32 / 8)^2 patches
    assert model.vit.embeddings.position_embeddings.shape == (1, 17, 32)
    assert [vit_patch_size_for(s, 16) for s in (224, 32, 28, 30, 8, 3)] == [16, 8, 7, 6, 2, 1]
    assert vit_patch_size_for(32, 4) == 4  # an explicit smaller patch size is kept


def test_text_vocab_size_shrinks_the_embedding():
    model = build_tiny("roberta")
    assert model.roberta.embeddings.word_embeddings.weight.shape == (TINY_VOCAB, 32)


# ---------------------------------------------------------------------------------------------
# loading: offline fail-fast and local directories


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2", "resnet18", "efficientnet-b0", "deit-tiny"])
def test_offline_hub_load_fails_fast_naming_both_ways_out(name):
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match=rf"'{get_model_spec(name).hub_id}'.*--from_scratch.*"
                                                  r"--model_name_or_path DIR"):
        build_model(name, num_labels=2, from_scratch=False)
    assert time.monotonic() - start < 10


def test_unreachable_hub_without_offline_flag_fails_fast(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    hub.hub_reachable.cache_clear()
    try:
        start = time.monotonic()
        with pytest.raises(HubUnreachableError, match="cannot be reached.*--from_scratch.*--model_name_or_path"):
            build_model("bert-mini", num_labels=2, from_scratch=False)
        assert time.monotonic() - start < 10
    finally:
        hub.hub_reachable.cache_clear()


def test_local_directory_loads_weights_and_resizes_the_head(tmp_path):
    saved = build_tiny("bert", num_labels=2)
    saved.save_pretrained(tmp_path)
    loaded = build_model("bert", num_labels=5, from_scratch=False, model_name_or_path=str(tmp_path))
    assert loaded.classifier.out_features == 5 and loaded.config.num_labels == 5
    want = saved.state_dict()
    for name, tensor in loaded.state_dict().items():
        if not name.startswith("classifier."):
            torch.testing.assert_close(tensor, want[name], msg=name)


def test_local_vision_directory_round_trip(tmp_path):
    saved = build_tiny("resnet18", num_labels=4)
    saved.save_pretrained(tmp_path)
    loaded = build_model("resnet18", num_labels=4, from_scratch=False, model_name_or_path=str(tmp_path))
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, saved.state_dict()[name], msg=name)


def test_from_scratch_with_a_local_config_reuses_architecture_not_weights(tmp_path):
    saved = build_tiny("gpt2", num_labels=2)
    saved.save_pretrained(tmp_path)
    torch.manual_seed(123)
    fresh = build_model("gpt2", num_labels=2, from_scratch=True, model_name_or_path=str(tmp_path))
    assert fresh.config.n_embd == 32 and fresh.config.vocab_size == TINY_VOCAB
    assert not torch.equal(fresh.transformer.wte.weight, saved.transformer.wte.weight)


def test_local_directory_of_another_family_is_rejected(tmp_path):
    build_tiny("resnet18").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a 'resnet' model, but model type 'bert' expects model_type 'bert'"):
        build_model("bert", num_labels=2, from_scratch=False, model_name_or_path=str(tmp_path))


def test_missing_local_path_is_rejected():
    with pytest.raises(ValueError, match=r"model_name_or_path './no/such/dir' is not a directory"):
        build_model("bert", num_labels=2, from_scratch=False, model_name_or_path="./no/such/dir")


def test_pretrained_vocab_and_image_size_must_match_the_checkpoint(tmp_path):
    build_tiny("bert").save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="vocab_size 100 differs from the checkpoint's 64"):
        build_model("bert", num_labels=2, from_scratch=False, model_name_or_path=str(tmp_path / "bert"), vocab_size=100)
    build_tiny("deit-tiny").save_pretrained(tmp_path / "deit")
    with pytest.raises(ValueError, match="position embeddings are for 32 px images, not 64"):
        build_model("deit-tiny", num_labels=3, from_scratch=False, model_name_or_path=str(tmp_path / "deit"),
                    image_size=64)


def test_processors_load_from_local_directories(tmp_path):
    from transformers import BertTokenizer, GPT2Tokenizer, ViTImageProcessor

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello"]))
    BertTokenizer(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "bert")
    (tmp_path / "vocab.json").write_text('{"<|endoftext|>": 0, "h": 1, "i": 2, "hi": 3}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh i\n")
    GPT2Tokenizer(vocab_file=str(tmp_path / "vocab.json"),
                  merges_file=str(tmp_path / "merges.txt")).save_pretrained(tmp_path / "gpt2")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")

    bert_tok = load_pretrained_processor("bert-tiny", str(tmp_path / "bert"))
    assert (bert_tok.pad_token_id, bert_tok.cls_token_id) == (0, 2)
    gpt2_tok = load_pretrained_processor("gpt2", str(tmp_path / "gpt2"))
    assert (gpt2_tok.pad_token, gpt2_tok.pad_token_id) == ("<|endoftext|>", 0)  # pad = eos
    processor = load_pretrained_processor("deit-tiny", str(tmp_path / "vit"))
    assert (processor.size["height"], processor.size["width"]) == (32, 32)


def test_image_processor_without_auto_class(tmp_path, monkeypatch):
    """transformers 5.17 without torchvision gates AutoImageProcessor; the checkpoint's class works."""
    from transformers import CLIPImageProcessor, ConvNextImageProcessor

    class GatedAuto:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise ImportError("AutoImageProcessor requires the Torchvision library")

    monkeypatch.setattr(models, "AutoImageProcessor", GatedAuto)
    ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=0.5).save_pretrained(tmp_path / "resnet")
    processor = load_pretrained_processor("resnet50", str(tmp_path / "resnet"))
    assert type(processor).__name__.startswith("ConvNextImageProcessor")
    assert (processor.size["shortest_edge"], processor.crop_pct) == (40, 0.5)
    CLIPImageProcessor().save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match=r"image processor 'CLIPImageProcessor' .* pip install torchvision"):
        load_pretrained_processor("deit-tiny", str(tmp_path / "clip"))


def test_offline_processor_load_fails_fast():
    start = time.monotonic()
    with pytest.raises(HubUnreachableError, match=r"tokenizer 'FacebookAI/roberta-base'.*--from_scratch.*"
                                                  r"--model_name_or_path"):
        load_pretrained_processor("roberta")
    with pytest.raises(HubUnreachableError, match="image processor 'microsoft/resnet-50'"):
        load_pretrained_processor("resnet50")
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------------------------------------
# argument errors


@pytest.mark.parametrize("kwargs, message", [
    ({"num_labels": 0}, r"num_labels must be an int >= 1 \(1 means regression\), got 0"),
    ({"problem_type": "ranking"}, r"problem_type 'ranking' must be one of regression"),
    ({"num_labels": 1, "problem_type": "single_label_classification"}, "needs num_labels >= 2"),
    ({"image_size": 32}, "image_size applies to vision models; bert-tiny is a text model"),
    ({"vocab_size": 0}, "vocab_size must be a positive int, got 0"),
    ({"pad_token_id": 30522}, "pad_token_id 30522 is outside the vocabulary of size 30522"),
    ({"config_overrides": {"hidden_sizee": 3}}, "unknown config key 'hidden_sizee' for BertConfig"),
    ({"config_overrides": {"vocab_size": 3}}, "'vocab_size' is not allowed"),
])
def test_build_model_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("bert-tiny", **({"num_labels": 2, "from_scratch": True} | kwargs))


def test_vision_rejects_text_arguments_and_inconsistent_efficientnet_width():
    with pytest.raises(ValueError, match="vocab_size applies to text models; resnet18 is a vision model"):
        build_model("resnet18", num_labels=2, from_scratch=True, vocab_size=100)
    with pytest.raises(ValueError, match="hidden_dim 1280 must equal the head conv width 320 .*add hidden_dim=320"):
        build_model("efficientnet-b0", num_labels=2, from_scratch=True, config_overrides={"width_coefficient": 0.25})


# ---------------------------------------------------------------------------------------------
# a model size with no hub checkpoint (hub_id=None): from scratch only

RESNET_NO_HUB = ModelSpec("resnet-nohub", "resnet", "vision", None,
                          partial(resnet_config, [1, 1, 1, 1], [8, 8, 8, 8], "basic"))
NO_CHECKPOINT = ("model type 'resnet-nohub' has no hub checkpoint (its ModelSpec has hub_id=None): it is built from "
                 "scratch only; pass --from_scratch, or --model_name_or_path DIR with a checkpoint of it")


def test_a_model_without_a_hub_checkpoint_builds_from_scratch_and_refuses_pretrained(monkeypatch, tmp_path):
    monkeypatch.setitem(MODEL_REGISTRY, RESNET_NO_HUB.name, RESNET_NO_HUB)
    model = build_model("resnet-nohub", num_labels=3, from_scratch=True, image_size=32)
    assert model.config.hidden_sizes == [8, 8, 8, 8] and model.config.num_labels == 3
    start = time.monotonic()
    for load in (lambda: build_model("resnet-nohub", num_labels=3, from_scratch=False),
                 lambda: load_pretrained_processor("resnet-nohub"),
                 lambda: architecture_config("resnet-nohub", from_scratch=False)):
        with pytest.raises(ValueError) as error:  # one line, before any hub lookup
            load()
        assert str(error.value) == NO_CHECKPOINT
    assert time.monotonic() - start < 1
    model.save_pretrained(tmp_path / "ckpt")  # a checkpoint of it loads as any local directory does
    loaded = build_model("resnet-nohub", num_labels=3, from_scratch=False, model_name_or_path=str(tmp_path / "ckpt"))
    assert loaded.config.hidden_sizes == [8, 8, 8, 8]


@pytest.mark.parametrize("hub_id", ["", "  ", 7])
def test_model_spec_hub_id_is_an_id_or_none(hub_id):
    with pytest.raises(ValueError) as error:
        ModelSpec("x", "resnet", "vision", hub_id, partial(resnet_config, [1], [8], "basic"))
    assert str(error.value) == (f"ModelSpec 'x': hub_id {hub_id!r} must be a hub id like 'org/name', or None for a "
                                f"model only built from scratch")
