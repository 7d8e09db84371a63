"""`--config_overrides`: values converted to the config's types, the errors, and the config they leave."""
from __future__ import annotations

import pytest

from eval.config_overrides import parse_config_overrides
from eval.model_configs import get_model_spec


def test_parse_config_overrides_converts_to_the_existing_types():
    bert = get_model_spec("bert").builtin_config()
    assert parse_config_overrides("num_hidden_layers=2, hidden_dropout_prob=0, hidden_act=relu,"
                                  "use_cache=false", bert) == {
        "num_hidden_layers": 2, "hidden_dropout_prob": 0.0, "hidden_act": "relu", "use_cache": False}
    resnet = get_model_spec("resnet18").builtin_config()
    assert parse_config_overrides("depths=[1,1,1,1],hidden_sizes=[8, 16, 32, 64]", resnet) == {
        "depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]}
    gpt2 = get_model_spec("gpt2").builtin_config()
    assert parse_config_overrides("n_inner=64,hidden_size=32", gpt2) == {"n_inner": 64, "hidden_size": 32}
    assert parse_config_overrides("n_inner=none", gpt2) == {"n_inner": None}
    assert parse_config_overrides("  ", gpt2) == {}


@pytest.mark.parametrize("text, message", [
    ("num_hidden_layer=2", r"unknown config key 'num_hidden_layer' for BertConfig \(did you mean num_hidden_layers"),
    ("num_hidden_layers=2.5", r"config override num_hidden_layers='2.5': expected int \(current value 12\)"),
    ("use_cache=maybe", r"use_cache='maybe': expected bool"),
    ("hidden_dropout_prob=high", r"hidden_dropout_prob='high': expected float"),
    ("num_hidden_layers", r"config override 'num_hidden_layers' is not key=value"),
    ("num_hidden_layers=2,num_hidden_layers=3", r"'num_hidden_layers' is given twice"),
    ("vocab_size=100", r"'vocab_size' is not allowed: it is set from the tokenizer \(build_model's vocab_size\)"),
    ("num_labels=3", r"'num_labels' is not allowed: it is set from the task's labels \(build_model's num_labels\)"),
    ("id2label=x", r"'id2label' is not allowed"),
    ("hidden_size=[32", r"unbalanced '\['"),
])
def test_parse_config_overrides_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_config_overrides(text, get_model_spec("bert").builtin_config())


def test_list_override_needs_brackets():
    with pytest.raises(ValueError, match=r"depths='2': expected list written as \[a,b,...\]"):
        parse_config_overrides("depths=2", get_model_spec("resnet18").builtin_config())


@pytest.mark.parametrize("depths", [[1, 1], [1, 1, 1, 1, 1]])
def test_a_model_with_other_stage_counts_loads_back(tmp_path, depths):
    """ResNetConfig derives its stage names and output stage from depths in its constructor: after
    an override of depths they were the old four stages', and the saved config.json failed to load
    (`out_features must be a subset of stage_names`), e.g. for the export of the run."""
    import torch
    from transformers import AutoModelForImageClassification

    from eval.models import build_model

    stages = len(depths)
    model = build_model("resnet18", num_labels=3, from_scratch=True,
                        config_overrides={"depths": depths, "hidden_sizes": [8] * stages, "embedding_size": 8})
    assert model.config.stage_names == ["stem", *(f"stage{i}" for i in range(1, stages + 1))]
    assert (model.config.out_features, model.config.out_indices) == ([f"stage{stages}"], [stages])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(pixel_values=images).logits, loaded(pixel_values=images).logits)
