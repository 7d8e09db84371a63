"""Model builder: every supported `--model_type`, pretrained or from scratch.

`build_model` returns a sequence-classification model for text and an image-classification model
for vision. Pretrained weights come from `model_name_or_path` (a local directory is loaded with no
network) or the registry's hub id (eval/model_configs.py): first the local HF cache, then the hub, which `require_hub`
checks within seconds so that an offline run fails fast naming both ways out (`--from_scratch`,
`--model_name_or_path DIR`). `from_scratch` builds the built-in config of eval/model_configs.py,
the same architecture as the checkpoint, with random weights.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable, TypeVar

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.image_processing_base import ImageProcessingMixin

from eval.config_overrides import apply_config_overrides
from eval.hub import require_hub
from eval.model_configs import (
    SUPPORTED_MODEL_TYPES,
    ModelSpec,
    get_model_spec,
    no_checkpoint_message,
)

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
MIN_PATCH_GRID = 4  # from-scratch ViT on small images keeps at least a 4x4 grid of patches


# ---------------------------------------------------------------------------------------------
# loading: local directory, HF cache, then the hub (fail fast offline)

T = TypeVar("T")


def _ways_out(spec: ModelSpec) -> list[str]:
    return [f"pass --from_scratch to train {spec.name} from random weights with the same architecture "
            f"(built-in config, nothing is downloaded)",
            f"pass --model_name_or_path DIR with a local checkpoint saved by save_pretrained() "
            f"(e.g. {spec.hub_id} downloaded on a machine with network)"]


def weights_source(spec: ModelSpec, model_name_or_path: str | None) -> str:
    """Where pretrained weights, config or processor come from: `model_name_or_path`, else the hub
    checkpoint; a model type without one (hub_id=None) is refused, naming --from_scratch."""
    if model_name_or_path is not None:
        return model_name_or_path
    if spec.hub_id is None:
        raise ValueError(no_checkpoint_message(spec))
    return spec.hub_id


def _resolve_source(source: str) -> tuple[str, bool]:
    """(source, is_local_dir): an existing directory (`~` expanded), else a hub id. Something that
    can only be a path (hub ids are `name` or `org/name`) but is no directory is a ValueError."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return path, True
    looks_like_path = source.startswith(("/", ".", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)
    if os.path.exists(path) or looks_like_path:
        raise ValueError(f"model_name_or_path {source!r} is not a directory; pass a directory written by "
                         f"save_pretrained() or a hub id like 'org/name'")
    return source, False


def _load_local_or_hub(load: Callable[..., T], source: str, spec: ModelSpec, what: str) -> T:
    source, is_local = _resolve_source(source)
    if is_local:
        return load(source, local_files_only=True)
    try:
        return load(source, local_files_only=True)  # already in the HF cache
    except OSError:
        require_hub(f"{what} {source!r}", _ways_out(spec))
    return load(source)


def _load_config(spec: ModelSpec, source: str) -> PretrainedConfig:
    config = _load_local_or_hub(AutoConfig.from_pretrained, source, spec, f"the {spec.name} config")
    if config.model_type not in spec.checkpoint_model_types:
        raise ValueError(f"{source!r} holds a {config.model_type!r} model, but model type {spec.name!r} expects "
                         f"model_type {' or '.join(map(repr, spec.checkpoint_model_types))}; pick the matching "
                         f"--model_type (valid: {', '.join(SUPPORTED_MODEL_TYPES)})")
    return config


# ---------------------------------------------------------------------------------------------
# build

def _resolve_problem_type(num_labels: int, problem_type: str | None) -> str | None:
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be an int >= 1 (1 means regression), got {num_labels!r}")
    if problem_type is None:
        return "regression" if num_labels == 1 else None  # None: HF picks single/multi-label from labels
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type {problem_type!r} must be one of {', '.join(PROBLEM_TYPES)}")
    if num_labels == 1 and problem_type != "regression":
        raise ValueError(f"problem_type {problem_type!r} needs num_labels >= 2; num_labels=1 is regression")
    return problem_type


def _check_modality_args(spec: ModelSpec, vocab_size: int | None, pad_token_id: int | None,
                         image_size: int | None) -> None:
    for arg, value in (("vocab_size", vocab_size), ("pad_token_id", pad_token_id), ("image_size", image_size)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if arg == "pad_token_id" else 1):
            raise ValueError(f"{arg} must be a {'non-negative' if arg == 'pad_token_id' else 'positive'} int, "
                             f"got {value!r}")
        needs = "vision" if arg == "image_size" else "text"
        if spec.modality != needs:
            raise ValueError(f"{arg} applies to {needs} models; {spec.name} is a {spec.modality} model")


def vit_patch_size_for(image_size: int, patch_size: int) -> int:
    """Largest divisor of image_size that is <= patch_size and <= image_size // MIN_PATCH_GRID,
    so small images (e.g. 32 px digits -> 8 px patches) still give a >= 4x4 patch grid."""
    limit = max(1, min(patch_size, image_size // MIN_PATCH_GRID))
    return next(p for p in range(limit, 0, -1) if image_size % p == 0)


def _set_image_size(spec: ModelSpec, config: PretrainedConfig, image_size: int, from_scratch: bool) -> None:
    if spec.family != "deit":  # CNNs take any input size; the field (where present) is informational
        if from_scratch and hasattr(config, "image_size"):
            config.image_size = image_size
        return
    if not from_scratch:
        if image_size != config.image_size:
            raise ValueError(f"{spec.name} checkpoint position embeddings are for {config.image_size} px images, not "
                             f"{image_size}; use {config.image_size} px images (--image_size {config.image_size}) or "
                             "train new ones (--from_scratch)")
        return
    patch = config.patch_size if isinstance(config.patch_size, int) else min(config.patch_size)
    config.update({"image_size": image_size, "patch_size": vit_patch_size_for(image_size, patch)})


def _set_pad_token_id(spec: ModelSpec, config: PretrainedConfig, pad_token_id: int | None) -> None:
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    elif spec.family == "gpt2" and config.pad_token_id is None:
        # GPT-2 has no pad token; the HF convention (and our tokenizer loader) pads with eos
        config.pad_token_id = config.eos_token_id
    if config.pad_token_id is not None and config.pad_token_id >= config.vocab_size:
        raise ValueError(f"pad_token_id {config.pad_token_id} is outside the vocabulary of size {config.vocab_size}; "
                         f"pass pad_token_id from the tokenizer that defines this vocabulary")
    # A vocabulary made smaller (a word-level one, from scratch) has none of the checkpoint's other
    # special tokens (GPT-2's eos/bos 50256): ids past its end would only be wrong.
    for name in ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "mask_token_id"):
        token_id = getattr(config, name, None)
        if isinstance(token_id, int) and token_id >= config.vocab_size:
            setattr(config, name, None)


def _efficientnet_round_filters(config: PretrainedConfig, num_channels: int) -> int:
    """EfficientNet's channel rounding (width multiplier, then nearest multiple of depth_divisor)."""
    divisor = config.depth_divisor
    scaled = num_channels * config.width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _check_config(spec: ModelSpec, config: PretrainedConfig) -> None:
    """Catch override combinations that would only fail later inside forward()."""
    if spec.family == "efficientnet":
        head_width = _efficientnet_round_filters(config, 1280)
        if config.hidden_dim != head_width:
            raise ValueError(f"EfficientNet hidden_dim {config.hidden_dim} must equal the head conv width "
                             f"{head_width} for width_coefficient {config.width_coefficient}; add hidden_dim={head_width} "
                             f"to the config overrides")


def architecture_config(model_type: str, *, from_scratch: bool, model_name_or_path: str | None = None,
                        config_overrides: dict[str, Any] | None = None) -> PretrainedConfig:
    """The model's config before a run's sizes (vocabulary, image size, labels): the built-in one
    (from scratch without `model_name_or_path`) or the checkpoint's, with `config_overrides`."""
    spec = get_model_spec(model_type)
    if from_scratch and model_name_or_path is None:
        config = spec.builtin_config()
    else:
        config = _load_config(spec, weights_source(spec, model_name_or_path))
    apply_config_overrides(config, config_overrides)
    return config


def build_model(model_type: str, *, num_labels: int, from_scratch: bool, model_name_or_path: str | None = None,
                config_overrides: dict[str, Any] | None = None, vocab_size: int | None = None,
                pad_token_id: int | None = None, image_size: int | None = None,
                problem_type: str | None = None, exact_weights: bool = False) -> PreTrainedModel:
    """A sequence-classification (text) or image-classification (vision) model, in float32.

    from_scratch: random weights; the architecture is the built-in config, or the config in
    `model_name_or_path` when that is given. Otherwise weights come from `model_name_or_path` or the
    registry's hub id, with the classification head resized to `num_labels`. `vocab_size` (text,
    from scratch) and `image_size` (vision) override the config; for DeiT from scratch the patch
    size becomes `vit_patch_size_for(image_size, configured patch size)`. `config_overrides` (e.g. from
    `parse_config_overrides`, eval/config_overrides.py) are applied before these. `exact_weights`:
    the checkpoint must hold every weight of the model and nothing else, at the same shapes (a run's
    own final_model/); a missing, extra or resized tensor is an error instead of a freshly
    initialised one.
    """
    spec = get_model_spec(model_type)
    problem_type = _resolve_problem_type(num_labels, problem_type)
    _check_modality_args(spec, vocab_size, pad_token_id, image_size)
    # From scratch without a directory nothing is loaded (a model type without a checkpoint builds).
    source = model_name_or_path if from_scratch else weights_source(spec, model_name_or_path)
    config = architecture_config(model_type, from_scratch=from_scratch, model_name_or_path=model_name_or_path,
                                 config_overrides=config_overrides)
    if vocab_size is not None and vocab_size != config.vocab_size:
        if not from_scratch:
            raise ValueError(f"vocab_size {vocab_size} differs from the checkpoint's {config.vocab_size}; the "
                             f"pretrained embeddings need the checkpoint's tokenizer (or pass --from_scratch)")
        config.vocab_size = vocab_size
    if image_size is not None:
        _set_image_size(spec, config, image_size, from_scratch)
    _check_config(spec, config)
    config.num_labels = num_labels
    config.problem_type = problem_type
    if spec.modality == "text":
        _set_pad_token_id(spec, config, pad_token_id)

    auto_cls = AutoModelForSequenceClassification if spec.modality == "text" else AutoModelForImageClassification
    if from_scratch:
        return auto_cls.from_config(config)
    # float32 master weights whatever dtype the checkpoint was saved in; a new head for num_labels
    if not exact_weights:
        load = partial(auto_cls.from_pretrained, config=config, ignore_mismatched_sizes=True, dtype=torch.float32)
        return _load_local_or_hub(load, source, spec, f"the pretrained {spec.name} weights")
    load = partial(auto_cls.from_pretrained, config=config, dtype=torch.float32, output_loading_info=True)
    model, info = _load_local_or_hub(load, source, spec, f"the {spec.name} weights")
    problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    bad = [f"{kind.replace('_', ' ')}: {', '.join(map(str, keys[:3]))}{' ...' if len(keys) > 3 else ''}"
           for kind, keys in problems.items() if keys]
    if bad:
        raise ValueError(f"{source!r} does not hold the float weights of this {spec.name} model ({'; '.join(bad)}); "
                         f"it must be a save_pretrained checkpoint of the same model")
    return model


# Image processors of the supported checkpoints, for when AutoImageProcessor is unusable: some
# releases (transformers 5.17) gate the whole auto module on torchvision, these classes are not.
IMAGE_PROCESSOR_CLASSES = ("ViTImageProcessor", "DeiTImageProcessor", "ConvNextImageProcessor",
                           "EfficientNetImageProcessor", "MobileNetV2ImageProcessor")


def _load_image_processor(source: str, **kwargs: Any) -> Any:
    try:
        return AutoImageProcessor.from_pretrained(source, **kwargs)
    except ImportError:
        pass
    config_dict, _ = ImageProcessingMixin.get_image_processor_dict(source, **kwargs)
    name = config_dict.get("image_processor_type") or \
        str(config_dict.get("feature_extractor_type", "")).replace("FeatureExtractor", "ImageProcessor")
    if name not in IMAGE_PROCESSOR_CLASSES:
        raise ValueError(f"image processor {name!r} of {source!r} needs AutoImageProcessor, which this transformers "
                         f"install cannot use without torchvision; pip install torchvision (known without it: "
                         f"{', '.join(IMAGE_PROCESSOR_CLASSES)})")
    return getattr(transformers, name).from_pretrained(source, **kwargs)


def load_pretrained_processor(model_type: str, model_name_or_path: str | None = None) -> Any:
    """The checkpoint's tokenizer (text) or image processor (vision), local directory or hub.

    GPT-2 tokenizers have no pad token; they get pad = eos, matching build_model's pad_token_id.
    """
    spec = get_model_spec(model_type)
    source = weights_source(spec, model_name_or_path)
    if spec.modality == "vision":
        return _load_local_or_hub(_load_image_processor, source, spec,
                                  f"the {spec.name} image processor")
    tokenizer = _load_local_or_hub(AutoTokenizer.from_pretrained, source, spec, f"the {spec.name} tokenizer")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
