"""The setup of a run: its data, model, quantized layers, search space and cost target
(`load_data_and_model`), and the quantized model of a finished run (`rebuild_run_model`).
The run's trainer is built in eval/run_trainer.py."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from cost.model_cost import CostType, LayerCost, average_bits_cost, layer_costs
from eval.eval_parse import run_prog
from eval.tasks import TaskSpec, get_task
from quant import input_share
from quant.formats import parse_format, parse_format_list
from quant.quant_module import QuantConfig
from quant.surgery import QuantSpec, quantize_model, record_geometry

if TYPE_CHECKING:
    from eval.eval_partitions import LayerSelection

DIGITS_IMAGE_SIZE = 32  # digits are 8x8: upsampled so CNN/ViT downsampling leaves a spatial map
NATIVE_IMAGE_SIZE = {"digits": DIGITS_IMAGE_SIZE, "cifar10": 32, "cifar100": 32, "imagenet-1k": 224}
DEFAULT_IMAGE_SIZE = 224  # from scratch, a vision task not in NATIVE_IMAGE_SIZE: the models' own size


@dataclass
class RunSetup:
    task: TaskSpec
    model: nn.Module
    processor: Any  # tokenizer or image processor to save with the model (None: image transforms only)
    train_dataset: Any
    eval_dataset: Any
    heldout_dataset: Any
    data_collator: Callable
    layer_costs: list[LayerCost]
    cost_type: CostType
    cost_target: float | None
    search_space: Any = None


def _loaded_config(path: str) -> tuple[dict[str, tuple[str, str]], dict[str, Any]]:
    """Per-layer formats and recorded args of a --load_config results.json (checked at parse time:
    run_inputs.check_load_config)."""
    results = json.loads(Path(path).read_text())
    formats = {name: (layer["weight_format"], layer["act_format"]) for name, layer in results["layers"].items()}
    return formats, results.get("args") or {}


def _layer_selection(flags: dict[str, Any]) -> LayerSelection:
    """The layers the --quantize_* flags in `flags` (a run's args) select."""
    from eval.eval_partitions import LayerSelection

    return LayerSelection(self_attention=flags["quantize_self_attention"], self_output=flags["quantize_self_output"],
                          intermediate=flags["quantize_intermediate"], output=flags["quantize_output"],
                          pooler=flags["quantize_pooler"], classifier=flags["quantize_classifier"])


def _check_loaded_layers(args: argparse.Namespace, model: nn.Module, loaded: list[str],
                         recorded: dict[str, Any]) -> None:
    """The --load_config run's layers are the ones its --quantize_* flags select in this model: a
    model of another shape (other --config_overrides or weights) would run partly in float, or lack
    layers of the assignment."""
    from eval.eval_partitions import select_layers

    flags = {**vars(args), **{key: value for key, value in recorded.items() if key.startswith("quantize_")}}
    expected = select_layers(model, _layer_selection(flags))
    missing, extra = sorted(set(expected) - set(loaded)), sorted(set(loaded) - set(expected))
    if missing or extra:
        def named(names: list[str]) -> str:
            return f"{len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"

        parts = ([f"this model's layers missing from it: {named(missing)}"] if missing else []) + \
            ([f"its layers this model lacks: {named(extra)}"] if extra else [])
        raise ValueError(f"--load_config {args.load_config!r} assigns formats to {len(loaded)} layers of another "
                         f"model than this {args.model_type} ({'; '.join(parts)}); load it into the model it was "
                         f"found on (that run's --config_overrides and weights)")


def _config_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """--config_overrides parsed against the model's built-in config (None without it)."""
    from eval.model_configs import get_model_spec
    from eval.config_overrides import parse_config_overrides

    if not args.config_overrides:
        return None
    return parse_config_overrides(args.config_overrides, get_model_spec(args.model_type).builtin_config())


def _image_size_note(args: argparse.Namespace, task: TaskSpec, train: Any, image_size: int) -> str | None:
    """The note for the user's own images resized to the default size (not one they chose, nor the
    task's own in NATIVE_IMAGE_SIZE): 32x32 files trained at 224 cost 49x the compute, unasked."""
    from eval.vision_utils import first_image_size

    local = args.train_file is not None or args.dataset_path is not None
    if args.image_size is not None or task.name in NATIVE_IMAGE_SIZE or not local:
        return None
    size = first_image_size(train, task.image_column)
    if size is None or size == (image_size, image_size):
        return None
    width, height = size
    return (f"note: the task's images are {width}x{height} (the first training image's header) and are resized to "
            f"{image_size}x{image_size}, the default size of a task not in NATIVE_IMAGE_SIZE: the run computes, and "
            f"records the GBOPs of, {image_size}x{image_size} images; pass --image_size {max(width, height)} to train "
            f"at the files' size")


def _text_processor(args: argparse.Namespace, raw_train, task: TaskSpec, source: str | None):
    from eval.data import training_texts
    from eval.models import architecture_config, load_pretrained_processor
    from eval.text_tokenizer import build_word_level_tokenizer, uses_token_type_ids

    if source is not None and os.path.isdir(source) and (Path(source) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    if args.from_scratch:  # token_type_ids only for a model that embeds them (BERT), as from the hub
        config = architecture_config(args.model_type, from_scratch=True, model_name_or_path=source,
                                     config_overrides=_config_overrides(args))
        return build_word_level_tokenizer(training_texts(raw_train, task), token_type_ids=uses_token_type_ids(config))
    return load_pretrained_processor(args.model_type, source)


def _build_model(args: argparse.Namespace, task: TaskSpec, tokenizer, source: str | None, image_size: int | None):
    from eval.model_configs import get_model_spec
    from eval.models import build_model

    spec = get_model_spec(args.model_type)
    overrides = _config_overrides(args)
    kwargs: dict[str, Any] = {}
    if task.modality == "text" and args.from_scratch and source is None:
        kwargs.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    elif task.modality == "text" and spec.family == "gpt2":
        kwargs.update(pad_token_id=tokenizer.pad_token_id)
    if task.modality == "vision":  # a checkpoint's too: a DeiT's position embeddings fix its size
        kwargs["image_size"] = image_size
    try:
        return build_model(args.model_type, num_labels=task.num_labels, from_scratch=args.from_scratch,
                           model_name_or_path=source, config_overrides=overrides, **kwargs)
    except (KeyError, TypeError, ValueError) as error:
        if not overrides:
            raise
        # e.g. hidden_act=bogus: transformers raises a bare KeyError('bogus') while building
        raise ValueError(f"--config_overrides {args.config_overrides!r}: {args.model_type} cannot be built with it "
                         f"({type(error).__name__}: {error})") from error


def load_data_and_model(args: argparse.Namespace) -> RunSetup:
    from eval.data import build_data_collator, carve_heldout, load_raw_datasets, prepare_text_datasets, \
        prepare_vision_datasets
    from eval.eval_partitions import select_layers
    from eval.model_configs import get_model_spec, no_checkpoint_message
    from eval.models import load_pretrained_processor
    from eval.vision_utils import default_transform_config, transform_config_from_processor

    task = get_task(args.task)
    spec = get_model_spec(args.model_type)
    if not args.from_scratch and args.model_name_or_path is None and spec.hub_id is None:
        raise ValueError(no_checkpoint_message(spec))  # before the data: there are no weights to load
    raw = load_raw_datasets(task, train_file=args.train_file, validation_file=args.validation_file,
                            dataset_path=args.dataset_path, max_train_samples=args.max_train_samples,
                            max_eval_samples=args.max_eval_samples, data_seed=args.data_seed,
                            metric_names=None if args.metric is None else (args.metric,))
    for flag, split, wanted in (("--max_train_samples", "train", args.max_train_samples),
                                ("--max_eval_samples", "validation", args.max_eval_samples)):
        if wanted is not None and len(raw[split]) < wanted:
            print(f"{run_prog()}: note: {flag} {wanted} is more than the {len(raw[split])} rows of the {split} split; "
                  f"using all of them", file=sys.stderr)
    heldout_raw = None
    if args.mode == "search" and args.reward_source == "heldout":
        raw["train"], heldout_raw = carve_heldout(raw["train"], args.heldout_fraction, args.seed)
    source = args.model_name_or_path

    if task.modality == "text":
        processor = _text_processor(args, raw["train"], task, source)
        image_size = None
        model = _build_model(args, task, processor, source, None)
        prepared = prepare_text_datasets(raw, task, processor, args.max_seq_length)
        heldout = prepare_text_datasets({"heldout": heldout_raw}, task, processor, args.max_seq_length)["heldout"] \
            if heldout_raw is not None else None
        example = {"input_ids": torch.full((1, args.max_seq_length), processor.pad_token_id or 0, dtype=torch.long),
                   "attention_mask": torch.ones(1, args.max_seq_length, dtype=torch.long)}
        collator = build_data_collator(task, processor)
    else:
        has_processor = source is None or not os.path.isdir(source) or \
            (Path(source) / "preprocessor_config.json").is_file()
        if args.from_scratch or not has_processor:  # a local run trained from scratch has no processor
            processor = None
            image_size = args.image_size or NATIVE_IMAGE_SIZE.get(task.name, DEFAULT_IMAGE_SIZE)
            transform = default_transform_config(image_size)
            note = _image_size_note(args, task, raw["train"], image_size)
            if note is not None:
                print(f"{run_prog()}: {note}", file=sys.stderr)
        else:
            processor = load_pretrained_processor(args.model_type, source)
            transform = transform_config_from_processor(processor, args.image_size)
            image_size = transform.image_size
        model = _build_model(args, task, None, source, image_size)
        prepared = prepare_vision_datasets(raw, task, transform)
        heldout = prepare_vision_datasets({"heldout": heldout_raw}, task, transform)["heldout"] \
            if heldout_raw is not None else None
        example = {"pixel_values": torch.zeros(1, 3, image_size, image_size)}
        collator = build_data_collator(task)

    # A float run wraps the same layers at format 'none' (bitwise the float layers), so its cost
    # is that of the layers a quantized run would quantize, at 32 bits.
    layer_formats, loaded_args = _loaded_config(args.load_config) if args.load_config is not None else ({}, {})
    if layer_formats:
        layer_names = list(layer_formats)
        _check_loaded_layers(args, model, layer_names, loaded_args)
    else:
        layer_names = select_layers(model, _layer_selection(vars(args)))
    if args.mode == "search" and not layer_names:
        raise ValueError(f"--search found no layer to quantize in {args.model_type} with these --quantize_* flags")
    config = QuantConfig(weight_format=parse_format(args.weight_format or "none"),
                         act_format=parse_format(args.act_format), per_channel=args.per_channel,
                         per_token=args.per_token, weight_range_percentile=args.weight_range_percentile,
                         act_range_percentile=args.act_range_percentile)
    model, layers = quantize_model(model, QuantSpec(layer_names, config, layer_formats))
    if args.recompute_inputs is not None:
        input_share.set_recompute_mode(args.recompute_inputs)
    if layers:
        record_geometry(model, example, layers)
    costs = layer_costs(layers)
    cost_type = CostType(args.cost_type)
    setup = RunSetup(task, model, processor, prepared["train"], prepared["validation"], heldout, collator, costs,
                     cost_type, None)
    if args.mode == "search":
        _add_search_space(args, setup, layer_names)
    return setup


def _add_search_space(args: argparse.Namespace, setup: RunSetup, layer_names: list[str]) -> None:
    from eval.eval_partitions import partition_layers
    from trainer.search_space import SearchSpace

    formats = parse_format_list(",".join(args.search_formats))
    partitions = partition_layers(setup.model, layer_names) if args.granularity == "block" else None
    setup.search_space = SearchSpace.build(layer_names, formats, args.granularity, partitions,
                                           weight_only=args.weight_only_search,
                                           fixed_act_format=parse_format(args.act_format))
    if args.cost_target is not None:
        setup.cost_target = args.cost_target
    else:
        act_bits = parse_format(args.act_format).bits if args.weight_only_search else None
        setup.cost_target = average_bits_cost(setup.layer_costs, setup.cost_type, args.cost_target_bits, act_bits)


def rebuild_run_model(run_dir: Path):
    """The final model of a finished run: final_model/ weights with results.json's formats, each
    layer's input geometry (macs_per_sample, so its compute cost is the run's), and, for a --bf16
    / --fp16 run, its forward under that autocast (quant.eval_autocast.set_eval_autocast), as the run
    evaluated it."""
    from eval.results import load_run
    from eval.results_schema import COMPLETED, RESULTS_NAME

    results_path = run_dir / RESULTS_NAME
    if not results_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no results.json); give a finished run's "
                                f"OUTPUT_ROOT_DIR/TASK/EXP_NAME")
    record = load_run(run_dir)
    if record.status != COMPLETED or record.results is None:
        raise ValueError(f"{run_dir} is not a completed run ({record.status}: {record.reason}); nothing to rebuild")
    if not (run_dir / "final_model").is_dir():
        raise FileNotFoundError(f"{run_dir} has no final_model/ (the run's weights): was it moved or deleted? "
                                f"Rerun it to rebuild its model")
    lacking = [what for what, names in (("config.json", ("config.json",)),
                                         ("weights", ("model.safetensors", "model.safetensors.index.json",
                                                      "pytorch_model.bin", "pytorch_model.bin.index.json")))
               if not any((run_dir / "final_model" / name).is_file() for name in names)]
    if lacking:
        raise FileNotFoundError(f"{run_dir}/final_model has no {' and no '.join(lacking)} (the run's model is "
                                f"incomplete: was part of it moved or deleted?); rerun it to rebuild its model")
    results = record.results
    if not results["layers"]:
        raise ValueError(f"{results_path} lists no quantized layer (a float run); there is no quantized model to "
                         f"rebuild")
    args = argparse.Namespace(**results["args"])
    missing = [key for key in ("task", "model_type", "per_channel", "per_token", "weight_range_percentile",
                               "act_range_percentile") if not hasattr(args, key)]
    if missing:
        raise ValueError(f"{results_path}: args lacks {', '.join(missing)}; was it written by eval_run?")
    task = get_task(args.task)
    source = str(run_dir / "final_model")
    from eval.models import build_model, load_pretrained_processor

    model = build_model(args.model_type, num_labels=task.num_labels, from_scratch=False, model_name_or_path=source,
                        exact_weights=True)
    processor = None
    if (run_dir / "final_model" / "tokenizer.json").is_file() or (run_dir / "final_model" / "preprocessor_config.json").is_file():
        processor = load_pretrained_processor(args.model_type, source)
    formats = {name: (layer["weight_format"], layer["act_format"]) for name, layer in results["layers"].items()}
    config = QuantConfig(per_channel=args.per_channel, per_token=args.per_token,
                         weight_range_percentile=args.weight_range_percentile,
                         act_range_percentile=args.act_range_percentile)
    model, layers = quantize_model(model, QuantSpec(list(formats), config, formats))
    for name, layer in layers.items():  # the run's geometry: its sequence length or image size
        macs = results["layers"].get(name, {}).get("macs_per_sample")
        if macs is not None and (isinstance(macs, bool) or not isinstance(macs, int) or macs < 0):
            raise ValueError(f"{results_path}: layers.{name}.macs_per_sample is {macs!r}, not a count of MACs; was it "
                             f"written by eval_run?")
        layer.macs_per_sample = macs
    from quant.eval_autocast import autocast_dtype_of_run, set_eval_autocast

    set_eval_autocast(model, autocast_dtype_of_run(results["args"]))
    return model.cpu().eval(), processor
