"""Supported model types: their hub checkpoints and built-in configs of the same architecture.

`--from_scratch` builds these with random weights and no network, so the architecture (and
therefore memory and BOPs) is the same as the pretrained checkpoint's. The values are those of
the checkpoints' `config.json` (or of the HF conversion scripts that wrote them); fields that
do not change the architecture (dropout, eps, activation) are written out as in the checkpoint
too. Every factory returns a fresh config, safe to modify.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from transformers import (
    BertConfig,
    EfficientNetConfig,
    GPT2Config,
    MobileNetV2Config,
    PretrainedConfig,
    ResNetConfig,
    RobertaConfig,
    ViTConfig,
)

BERT_VOCAB_SIZE = 30522  # WordPiece vocabulary of bert-base-uncased (shared by prajjwal1/bert-*)
ROBERTA_VOCAB_SIZE = 50265  # byte-level BPE of roberta-base
GPT2_VOCAB_SIZE = 50257  # byte-level BPE of gpt2 (eos/bos id 50256)


def bert_config(num_hidden_layers: int, hidden_size: int, num_attention_heads: int,
                intermediate_size: int) -> PretrainedConfig:
    """BERT uncased (google-bert/bert-base-uncased and the prajjwal1/bert-{tiny,mini,small,medium}
    distillations, which keep BERT's vocabulary, 512 positions and 2 token types)."""
    return BertConfig(
        vocab_size=BERT_VOCAB_SIZE,
        num_hidden_layers=num_hidden_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )


def roberta_base_config() -> PretrainedConfig:
    """FacebookAI/roberta-base: 514 positions (512 + padding offset), one token type."""
    return RobertaConfig(
        vocab_size=ROBERTA_VOCAB_SIZE,
        num_hidden_layers=12,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def gpt2_config(n_layer: int, n_embd: int, n_head: int) -> PretrainedConfig:
    """openai-community/gpt2{,-medium,-large}: 1024 positions, MLP width 4 * n_embd."""
    return GPT2Config(
        vocab_size=GPT2_VOCAB_SIZE,
        n_positions=1024,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        bos_token_id=GPT2_VOCAB_SIZE - 1,
        eos_token_id=GPT2_VOCAB_SIZE - 1,
    )


def resnet_config(depths: list[int], hidden_sizes: list[int], layer_type: str) -> PretrainedConfig:
    """microsoft/resnet-{18,50}: ResNet v1.5 (stride in the 3x3 conv), 64-channel 7x7 stem."""
    return ResNetConfig(
        num_channels=3,
        embedding_size=64,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type=layer_type,
        hidden_act="relu",
        downsample_in_first_stage=False,
    )


# (hidden_dim, width_coefficient, depth_coefficient, image_size, dropout_rate, depthwise_padding):
# the values the HF conversion script wrote into google/efficientnet-b0 .. b7.
EFFICIENTNET_VARIANTS: dict[str, tuple[int, float, float, int, float, tuple[int, ...]]] = {
    "b0": (1280, 1.0, 1.0, 224, 0.2, ()),
    "b1": (1280, 1.0, 1.1, 240, 0.2, (16,)),
    "b2": (1408, 1.1, 1.2, 260, 0.3, (5, 8, 16)),
    "b3": (1536, 1.2, 1.4, 300, 0.3, (5, 18)),
    "b4": (1792, 1.4, 1.8, 380, 0.4, (6,)),
    "b5": (2048, 1.6, 2.2, 456, 0.4, (13, 27)),
    "b6": (2304, 1.8, 2.6, 528, 0.5, (31,)),
    "b7": (2560, 2.0, 3.1, 600, 0.5, (18,)),
}


def efficientnet_config(variant: str) -> PretrainedConfig:
    """google/efficientnet-{variant}; the stage layout (kernels, strides, repeats, expand
    ratios, SE ratio 0.25) is the transformers default, which is EfficientNet's."""
    if variant not in EFFICIENTNET_VARIANTS:
        raise ValueError(f"unknown EfficientNet variant {variant!r}; valid: {', '.join(EFFICIENTNET_VARIANTS)}")
    hidden_dim, width, depth, image_size, dropout, dw_padding = EFFICIENTNET_VARIANTS[variant]
    return EfficientNetConfig(
        num_channels=3,
        image_size=image_size,
        width_coefficient=width,
        depth_coefficient=depth,
        depth_divisor=8,
        kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
        in_channels=[32, 16, 24, 40, 80, 112, 192],
        out_channels=[16, 24, 40, 80, 112, 192, 320],
        depthwise_padding=list(dw_padding),
        strides=[1, 2, 2, 2, 1, 2, 1],
        num_block_repeats=[1, 2, 2, 3, 3, 4, 1],
        expand_ratios=[1, 6, 6, 6, 6, 6, 6],
        squeeze_expansion_ratio=0.25,
        hidden_act="swish",
        hidden_dim=hidden_dim,  # equals round_filters(1280): the classifier's input width
        dropout_rate=dropout,
    )


def mobilenet_v2_config() -> PretrainedConfig:
    """google/mobilenet_v2_1.0_224: depth multiplier 1.0, TF 'SAME' padding, eps 1e-3."""
    return MobileNetV2Config(
        num_channels=3,
        image_size=224,
        depth_multiplier=1.0,
        depth_divisible_by=8,
        min_depth=8,
        expand_ratio=6.0,
        output_stride=32,
        first_layer_is_expansion=True,
        finegrained_output=True,
        hidden_act="relu6",
        tf_padding=True,
        layer_norm_eps=1e-3,
    )


def deit_config(hidden_size: int, num_attention_heads: int) -> PretrainedConfig:
    """facebook/deit-{tiny,small,base}-patch16-224. These non-distilled checkpoints are stored as
    ViT (`model_type: vit`, ViTForImageClassification: CLS token only, no distillation token),
    so the built-in config is a ViTConfig: 12 layers, MLP ratio 4, 16x16 patches at 224 px."""
    return ViTConfig(
        hidden_size=hidden_size,
        num_hidden_layers=12,
        num_attention_heads=num_attention_heads,
        intermediate_size=4 * hidden_size,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
        image_size=224,
        patch_size=16,
        num_channels=3,
        qkv_bias=True,
    )


MODALITIES = ("text", "vision")
# checkpoint `model_type` values each family accepts from a local directory or the hub
FAMILY_MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "bert": ("bert",),
    "roberta": ("roberta",),
    "gpt2": ("gpt2",),
    "resnet": ("resnet",),
    "efficientnet": ("efficientnet",),
    "mobilenetv2": ("mobilenet_v2",),
    "deit": ("vit", "deit"),  # non-distilled DeiT checkpoints are stored as ViT
}


@dataclass(frozen=True)
class ModelSpec:
    """One supported model type: its hub checkpoint and a factory for the same architecture.
    `hub_id=None`: a size with no checkpoint, only ever built from scratch (--from_scratch)."""

    name: str
    family: str
    modality: str
    hub_id: str | None
    builtin_config: Callable[[], PretrainedConfig]

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"ModelSpec {self.name!r}: modality {self.modality!r} must be one of {MODALITIES}")
        if self.family not in FAMILY_MODEL_TYPES:
            raise ValueError(f"ModelSpec {self.name!r}: family {self.family!r} must be one of "
                             f"{', '.join(FAMILY_MODEL_TYPES)}")
        if self.hub_id is not None and (not isinstance(self.hub_id, str) or not self.hub_id.strip()):
            raise ValueError(f"ModelSpec {self.name!r}: hub_id {self.hub_id!r} must be a hub id like 'org/name', or "
                             f"None for a model only built from scratch")

    @property
    def checkpoint_model_types(self) -> tuple[str, ...]:
        return FAMILY_MODEL_TYPES[self.family]


def _specs() -> list[ModelSpec]:
    specs = [
        ModelSpec("bert-tiny", "bert", "text", "prajjwal1/bert-tiny", partial(bert_config, 2, 128, 2, 512)),
        ModelSpec("bert-mini", "bert", "text", "prajjwal1/bert-mini", partial(bert_config, 4, 256, 4, 1024)),
        ModelSpec("bert-small", "bert", "text", "prajjwal1/bert-small", partial(bert_config, 4, 512, 8, 2048)),
        ModelSpec("bert-medium", "bert", "text", "prajjwal1/bert-medium", partial(bert_config, 8, 512, 8, 2048)),
        ModelSpec("bert", "bert", "text", "google-bert/bert-base-uncased", partial(bert_config, 12, 768, 12, 3072)),
        ModelSpec("roberta", "roberta", "text", "FacebookAI/roberta-base", roberta_base_config),
        ModelSpec("gpt2", "gpt2", "text", "openai-community/gpt2", partial(gpt2_config, 12, 768, 12)),
        ModelSpec("gpt2-medium", "gpt2", "text", "openai-community/gpt2-medium", partial(gpt2_config, 24, 1024, 16)),
        ModelSpec("gpt2-large", "gpt2", "text", "openai-community/gpt2-large", partial(gpt2_config, 36, 1280, 20)),
        ModelSpec("resnet18", "resnet", "vision", "microsoft/resnet-18",
                  partial(resnet_config, [2, 2, 2, 2], [64, 128, 256, 512], "basic")),
        ModelSpec("resnet50", "resnet", "vision", "microsoft/resnet-50",
                  partial(resnet_config, [3, 4, 6, 3], [256, 512, 1024, 2048], "bottleneck")),
    ]
    specs += [ModelSpec(f"efficientnet-{v}", "efficientnet", "vision", f"google/efficientnet-{v}",
                        partial(efficientnet_config, v)) for v in EFFICIENTNET_VARIANTS]
    specs += [
        ModelSpec("mobilenetv2", "mobilenetv2", "vision", "google/mobilenet_v2_1.0_224", mobilenet_v2_config),
        ModelSpec("deit-tiny", "deit", "vision", "facebook/deit-tiny-patch16-224", partial(deit_config, 192, 3)),
        ModelSpec("deit-small", "deit", "vision", "facebook/deit-small-patch16-224", partial(deit_config, 384, 6)),
        ModelSpec("deit-base", "deit", "vision", "facebook/deit-base-patch16-224", partial(deit_config, 768, 12)),
    ]
    return specs


MODEL_REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _specs()}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(MODEL_REGISTRY)


def supports_gradient_checkpointing(spec: ModelSpec) -> bool:
    """Whether transformers can checkpoint the activations of this model type's classification
    model (ResNet, EfficientNet and MobileNetV2 cannot): known from the class, without a model."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    )

    text = spec.modality == "text"
    mapping = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING if text else MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING
    return bool(getattr(mapping[type(spec.builtin_config())], "supports_gradient_checkpointing", False))


def no_checkpoint_message(spec: ModelSpec) -> str:
    """Why a model type without a hub checkpoint cannot load pretrained weights, and what to pass."""
    return (f"model type {spec.name!r} has no hub checkpoint (its ModelSpec has hub_id=None): it is built from "
            f"scratch only; pass --from_scratch, or --model_name_or_path DIR with a checkpoint of it")


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model type {name!r}; valid model types: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return MODEL_REGISTRY[name]
