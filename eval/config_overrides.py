"""`--config_overrides`: "k=v,k2=v2" from the command line, checked against a model's config.

`parse_config_overrides` reads the text into {key: value}, each value converted to the type of the
config's current value; `apply_config_overrides` sets them on a config (eval/models.py builds
every model through it). Unknown keys (with close matches named), keys the run sets itself
(`RESERVED_OVERRIDE_KEYS`) and values that do not convert are ValueErrors.
"""
from __future__ import annotations

import difflib
from typing import Any

from transformers import PretrainedConfig

# Config keys the run sets itself (overriding them too would be ambiguous): key -> where its value comes from.
RESERVED_OVERRIDE_KEYS = {
    "num_labels": "the task's labels (build_model's num_labels)", "id2label": "the task's labels",
    "label2id": "the task's labels", "problem_type": "the task (build_model's problem_type)",
    "vocab_size": "the tokenizer (build_model's vocab_size)", "pad_token_id": "the tokenizer (build_model's pad_token_id)",
    "image_size": "--image_size (build_model's image_size)",
}


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so list values like `depths=[1,1]` stay whole."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"config overrides {text!r}: unbalanced ']'")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"config overrides {text!r}: unbalanced '['")
    items.append(text[start:])
    return [item.strip() for item in items]


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _infer_value(raw: str) -> Any:
    """Value for a key whose current value is None: none, bool, int, float, else the string."""
    low = raw.lower()
    if low in {"none", "null"}:
        return None
    if low in {"true", "false"}:
        return low == "true"
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    return raw


def _convert_value(key: str, raw: str, current: Any) -> Any:
    """`raw` converted to the type of the config's current value for `key`."""
    expected = type(current).__name__
    try:
        if isinstance(current, bool):  # before int: bool is an int subclass
            if raw.lower() not in _TRUE | _FALSE:
                raise ValueError
            return raw.lower() in _TRUE
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, str):
            return raw
        if current is None:
            return _infer_value(raw)
        if isinstance(current, (list, tuple)):
            if not (raw.startswith("[") and raw.endswith("]")):
                raise ValueError
            inner = raw[1:-1].strip()
            elements = [] if not inner else [e.strip() for e in inner.split(",")]
            template = current[0] if len(current) else None
            return type(current)(_convert_value(key, e, template) for e in elements)
    except ValueError:
        hint = " written as [a,b,...]" if isinstance(current, (list, tuple)) else ""
        raise ValueError(f"config override {key}={raw!r}: expected {expected}{hint} "
                         f"(current value {current!r})") from None
    raise ValueError(f"config override {key!r}: values of type {expected} cannot be set from the "
                     f"command line; change the model's config.json instead")


def _check_override_key(config: PretrainedConfig, key: str) -> None:
    if key in RESERVED_OVERRIDE_KEYS:
        raise ValueError(f"config override {key!r} is not allowed: it is set from {RESERVED_OVERRIDE_KEYS[key]}")
    valid = (set(config.to_dict()) | set(getattr(config, "attribute_map", {}))) - set(RESERVED_OVERRIDE_KEYS)
    if key not in valid:
        close = difflib.get_close_matches(key, sorted(valid), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown config key {key!r} for {type(config).__name__}{hint}; "
                         f"valid keys: {', '.join(sorted(valid))}")


def parse_config_overrides(text: str, config: PretrainedConfig) -> dict[str, Any]:
    """Parse "k=v,k2=v2" into {k: v} with each value converted to the type of `config.k`.

    Lists are written in brackets (`depths=[1,1,1,1]`); for attributes that are currently None
    the value is read as none/bool/int/float/string. Unknown keys, keys with a dedicated
    build_model argument, and values that do not convert raise ValueError.
    """
    overrides: dict[str, Any] = {}
    if not text.strip():
        return overrides
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ValueError(f"config override {item!r} is not key=value; write e.g. "
                             f"'num_hidden_layers=2,hidden_size=64'")
        if key in overrides:
            raise ValueError(f"config override {key!r} is given twice in {text!r}")
        _check_override_key(config, key)
        overrides[key] = _convert_value(key, raw, getattr(config, key))
    return overrides


def apply_config_overrides(config: PretrainedConfig, overrides: dict[str, Any] | None) -> None:
    """Set `overrides` (e.g. from parse_config_overrides) on `config`, each key checked as there."""
    for key in overrides or {}:
        _check_override_key(config, key)
    if overrides:
        config.update(dict(overrides))
        _realign_stages(config, overrides)


# Derived by a backbone-style config's constructor from its depths (ResNet: "stem", "stage1", ...;
# the output stage defaults to the last one); update() does not derive them again.
_STAGE_KEYS = ("stage_names", "out_features", "out_indices")


def _realign_stages(config: PretrainedConfig, overrides: dict[str, Any]) -> None:
    """After `depths` changed the number of stages, the stage names and output stages its class
    derives for it (given out_features/out_indices overrides kept): left for the old count, the
    saved config.json failed to load (`out_features must be a subset of stage_names`)."""
    if "depths" not in overrides or getattr(config, "stage_names", None) is None:
        return
    fresh = type(config).from_dict({key: value for key, value in config.to_dict().items() if key not in _STAGE_KEYS})
    config.stage_names = fresh.stage_names
    config.set_output_features_output_indices(out_features=overrides.get("out_features"),
                                              out_indices=overrides.get("out_indices"))
