"""What can be checked about a run's model before any data or weights are loaded.

`check_model_flags` reads the architecture a run will build (the built-in config, or a local
checkpoint's config.json, with --config_overrides applied; a hub id is not read: that would need
the network; for a hub checkpoint the built-in config stands in, which has its architecture) and
checks that
- `--model_name_or_path`, when it is a local path, is a checkpoint directory of this model type;
- the overrides build a model, and for vision models run one: built on the meta device (no memory,
  no weights), whose forward propagates shapes only, so that `depths=[1,1]` on a ResNet fails
  here rather than as a matrix-shape error after the data is loaded;
- `--max_seq_length` fits the text model's positions.
Each failure is a ValueError naming the flag, which the CLI turns into one line and exit code 2.
"""
from __future__ import annotations

import argparse
import copy
import os
import re

import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification, PretrainedConfig

from eval.model_configs import ModelSpec
from eval.config_overrides import apply_config_overrides, parse_config_overrides
from eval.models import _check_config, _load_config, _resolve_source

try:  # the config classes' own validators (strict dataclasses); absent from older huggingface_hub
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # pragma: no cover - nothing raises it there
    class StrictDataclassError(Exception):  # type: ignore[no-redef]
        pass


def local_checkpoint_config(spec: ModelSpec, source: str) -> PretrainedConfig | None:
    """The config of a local checkpoint directory, checked against `spec`; None for a hub id.
    ValueError for a path that is no directory, or a directory with no config.json."""
    path, is_local = _resolve_source(source)
    if not is_local:
        return None
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{source!r} holds no config.json, so it is no checkpoint written by save_pretrained(); "
                         f"pass such a directory (e.g. a run's final_model/)")
    return _load_config(spec, path)


def max_text_positions(config: PretrainedConfig) -> int | None:
    """How many tokens a text model's position embeddings take; None where unknown."""
    if config.model_type == "gpt2":
        return config.n_positions
    if config.model_type == "roberta":  # positions start after the padding index
        return config.max_position_embeddings - config.pad_token_id - 1
    return getattr(config, "max_position_embeddings", None)


def _builds_and_runs(spec: ModelSpec, config: PretrainedConfig) -> None:
    """Build the model of `config` on the meta device; for a vision model also run a forward
    (HF's text models call .item() in their forward, which meta tensors cannot answer)."""
    # A copy as build_model makes one (from_dict would re-run e.g. ResNetConfig's __init__ with
    # out_features of the unmodified stage count).
    config = copy.deepcopy(config)
    config.num_labels = 2
    with torch.device("meta"), torch.no_grad():
        if spec.modality == "text":
            AutoModelForSequenceClassification.from_config(config)
            return
        model = AutoModelForImageClassification.from_config(config).eval()  # BatchNorm takes a batch of 1
        size = getattr(config, "image_size", 224)
        model(pixel_values=torch.zeros(1, 3, size, size))  # the vision tasks' images are RGB


def _validate_config(config: PretrainedConfig) -> None:
    """The config class's own validators (transformers runs them only in save_pretrained, after
    training: layer_type=bogus trained a basic ResNet, then failed), as one ValueError line."""
    try:
        validate = getattr(config, "validate", None)
        if callable(validate):
            validate()
    except StrictDataclassError as error:
        raise ValueError(_last_line(error)) from None


def _last_line(error: BaseException) -> str:
    """The reason of a validator's error ('Class validation error for ...:\n    ValueError: why')."""
    line = str(error).strip().splitlines()[-1].strip()
    line = line.split(": ", 1)[1] if line.split(": ", 1)[0].endswith("Error") and ": " in line else line
    # a field's type: "... doesn't match any type in (<class 'int'>, <class 'NoneType'>). Errors: (each type)"
    return re.sub(r"<class '(\w+)'>", r"\1", line.split(". Errors: ", 1)[0])


def check_model_flags(args: argparse.Namespace, spec: ModelSpec) -> None:
    """--model_name_or_path, --config_overrides and --max_seq_length against the model they
    describe (see the module docstring)."""
    if args.max_seq_length < 2:  # [CLS] and [SEP] (or a token and its successor)
        raise ValueError(f"--max_seq_length must be at least 2, got {args.max_seq_length}")
    base = None
    if args.model_name_or_path is not None:
        try:
            base = local_checkpoint_config(spec, args.model_name_or_path)
        except (ValueError, OSError) as error:
            text = str(error)  # the loaders' messages may start with the argument's name already
            raise ValueError(f"--{text}" if text.startswith("model_name_or_path ") else
                             f"--model_name_or_path: {text}") from None
    else:  # from scratch, or the hub checkpoint, whose architecture the built-in config has
        base = spec.builtin_config()
    if base is None:  # a hub id given as --model_name_or_path: its config is read when the run loads it
        return
    config = copy.deepcopy(base)
    if args.config_overrides:
        try:
            apply_config_overrides(config, parse_config_overrides(args.config_overrides, config))
            _validate_config(config)
            _check_config(spec, config)
            for name in ("num_hidden_layers", "n_layer"):
                if getattr(config, name, 1) < 1:
                    raise ValueError(f"{name}={getattr(config, name)} leaves the model without layers; use at least 1")
        except ValueError as error:
            raise ValueError(f"--config_overrides: {error}") from None
        except StrictDataclassError as error:  # a field's type, checked as the override is set
            raise ValueError(f"--config_overrides: {_last_line(error)}") from None
        try:
            _builds_and_runs(spec, base)
        except Exception:  # noqa: BLE001 - the base architecture cannot be checked this way: skip
            pass
        else:
            try:
                _builds_and_runs(spec, config)
            except Exception as error:  # noqa: BLE001 - whatever HF raises for the combination
                raise ValueError(f"--config_overrides {args.config_overrides!r}: {spec.name} cannot be built or run "
                                 f"with them ({type(error).__name__}: {error}); check the values against the "
                                 f"architecture") from None
    if spec.modality == "text":
        positions = max_text_positions(config)
        if positions is not None and args.max_seq_length > positions:
            raise ValueError(f"--max_seq_length {args.max_seq_length} is more than the {positions} positions of this "
                             f"{spec.name}; use at most {positions}")
