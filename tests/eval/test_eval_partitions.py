"""Layer roles, layer selection and block partitions on tiny models of every family."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from torch import nn
from transformers.pytorch_utils import Conv1D

from eval.eval_partitions import (
    LayerRole,
    LayerSelection,
    classify_layers,
    partition_layers,
    select_layers,
)
from tests.eval.test_models import build_tiny

# Hand counts for the tiny configs of tests/eval/test_models.py:
# bert/roberta/deit: 2 layers x (q, k, v, attention output, intermediate, output) + head;
# resnet18 (depths 1,1,1,1; widths 8,16,32,64 after an 8-channel stem): 2 convs per stage, a
# shortcut where the width changes (stages 2-4); resnet50 (widths 16..128): 3 convs per stage and
# a shortcut in every stage (8 -> 16 too); efficientnet-b0 (one block per stage): 7 blocks, the
# first without expansion (ratio 1), each with 2 SE convs; mobilenetv2: stem conv + the stem's
# t=1 inverted residual (depthwise, projection) + 16 blocks (expansion, depthwise, projection) +
# the 1x1 head conv.
ROLE_COUNTS = {
    "bert": {"query": 2, "key": 2, "value": 2, "attention_output": 2, "intermediate": 2, "output": 2,
             "pooler": 1, "classifier": 1},
    "roberta": {"query": 2, "key": 2, "value": 2, "attention_output": 2, "intermediate": 2, "output": 2,
                "pooler": 1, "classifier": 1},
    "gpt2": {"c_attn": 2, "attention_output": 2, "intermediate": 2, "output": 2, "classifier": 1},
    "deit-tiny": {"embedding": 1, "query": 2, "key": 2, "value": 2, "attention_output": 2, "intermediate": 2,
                  "output": 2, "classifier": 1},
    "resnet18": {"stem": 1, "stage_conv": 8, "shortcut": 3, "classifier": 1},
    "resnet50": {"stem": 1, "stage_conv": 12, "shortcut": 4, "classifier": 1},
    "efficientnet-b0": {"stem": 1, "expansion": 6, "depthwise": 7, "squeeze_excite": 14, "projection": 7,
                        "head": 1, "classifier": 1},
    "mobilenetv2": {"stem": 1, "expansion": 16, "depthwise": 17, "projection": 17, "head": 1, "classifier": 1},
}
PARTITION_KEYS = {
    "bert": ["query", "key", "value", "attention_output", "intermediate", "output", "pooler", "classifier"],
    "roberta": ["query", "key", "value", "attention_output", "intermediate", "output", "pooler", "classifier"],
    "gpt2": ["c_attn", "attention_output", "intermediate", "output", "classifier"],
    "deit-tiny": ["query", "key", "value", "attention_output", "intermediate", "output", "classifier"],
    "resnet18": ["stem", "stage1", "stage2", "stage3", "stage4", "classifier"],
    "resnet50": ["stem", "stage1", "stage2", "stage3", "stage4", "classifier"],
    "efficientnet-b0": ["stem", "expansion", "depthwise", "squeeze_excite", "projection", "head", "classifier"],
    "mobilenetv2": ["stem", "expansion", "depthwise", "projection", "head", "classifier"],
}


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, nn.Module]:
    return {name: build_tiny(name) for name in ROLE_COUNTS}


@pytest.mark.parametrize("name", ROLE_COUNTS)
def test_role_counts(tiny_models, name):
    infos = classify_layers(tiny_models[name])
    assert dict(Counter(info.role.value for info in infos.values())) == ROLE_COUNTS[name]
    quantizable = [n for n, m in tiny_models[name].named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, Conv1D))]
    assert list(infos) == quantizable  # every quantizable layer, in named_modules order


@pytest.mark.parametrize("name", ROLE_COUNTS)
def test_partitions_cover_each_selected_layer_once(tiny_models, name):
    model = tiny_models[name]
    selected = select_layers(model, LayerSelection())
    partitions = partition_layers(model, selected)
    assert list(partitions) == PARTITION_KEYS[name]
    flat = [layer for layers in partitions.values() for layer in layers]
    assert sorted(flat) == sorted(selected) and len(flat) == len(set(flat))
    assert partition_layers(model, selected[::-1]) == partitions  # input order does not matter


def test_bert_roles_blocks_and_partitions_by_name(tiny_models):
    model = tiny_models["bert"]
    infos = classify_layers(model)
    layer = "bert.encoder.layer.{}.".format
    assert [(i.role, i.block) for i in infos.values()][:7] == [
        (LayerRole.QUERY, 0), (LayerRole.KEY, 0), (LayerRole.VALUE, 0), (LayerRole.ATTENTION_OUTPUT, 0),
        (LayerRole.INTERMEDIATE, 0), (LayerRole.OUTPUT, 0), (LayerRole.QUERY, 1)]
    assert partition_layers(model, select_layers(model, LayerSelection())) == {
        "query": [layer(0) + "attention.self.query", layer(1) + "attention.self.query"],
        "key": [layer(0) + "attention.self.key", layer(1) + "attention.self.key"],
        "value": [layer(0) + "attention.self.value", layer(1) + "attention.self.value"],
        "attention_output": [layer(0) + "attention.output.dense", layer(1) + "attention.output.dense"],
        "intermediate": [layer(0) + "intermediate.dense", layer(1) + "intermediate.dense"],
        "output": [layer(0) + "output.dense", layer(1) + "output.dense"],
        "pooler": ["bert.pooler.dense"],
        "classifier": ["classifier"],
    }


def test_roberta_head_dense_plays_the_pooler(tiny_models):
    infos = classify_layers(tiny_models["roberta"])
    assert (infos["classifier.dense"].role, infos["classifier.out_proj"].role) == (LayerRole.POOLER,
                                                                                  LayerRole.CLASSIFIER)


def test_resnet_partitions_put_shortcuts_with_their_stage(tiny_models):
    model = tiny_models["resnet18"]
    stage = "resnet.encoder.stages.{}.layers.0.".format
    assert partition_layers(model, select_layers(model, LayerSelection())) == {
        "stem": ["resnet.embedder.embedder.convolution"],
        "stage1": [stage(0) + "layer.0.convolution", stage(0) + "layer.1.convolution"],
        **{f"stage{i + 1}": [stage(i) + "shortcut.convolution", stage(i) + "layer.0.convolution",
                             stage(i) + "layer.1.convolution"] for i in (1, 2, 3)},
        "classifier": ["classifier.1"],
    }
    infos = classify_layers(model)
    assert [infos[stage(i) + "shortcut.convolution"].block for i in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.parametrize("name", ["efficientnet-b0", "mobilenetv2"])
def test_depthwise_and_squeeze_excite_convs_are_found(tiny_models, name):
    model = tiny_models[name]
    infos = classify_layers(model)
    modules = dict(model.named_modules())
    depthwise = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels]
    assert [n for n, i in infos.items() if i.role == LayerRole.DEPTHWISE] == depthwise
    squeeze_excite = [n for n, i in infos.items() if i.role == LayerRole.SQUEEZE_EXCITE]
    if name == "efficientnet-b0":
        assert squeeze_excite == [f"efficientnet.encoder.blocks.{b}.squeeze_excite.{conv}"
                                  for b in range(7) for conv in ("reduce", "expand")]
        assert infos["efficientnet.encoder.top_conv"].role == LayerRole.HEAD
    else:
        assert squeeze_excite == []
        # MobileNetV2's stem module holds the first (t=1) inverted residual
        assert [(infos[f"mobilenet_v2.conv_stem.{c}.convolution"].role, infos[f"mobilenet_v2.conv_stem.{c}.convolution"]
                 .block) for c in ("first_conv", "conv_3x3", "reduce_1x1")] == [
            (LayerRole.STEM, None), (LayerRole.DEPTHWISE, None), (LayerRole.PROJECTION, None)]
        assert [infos[f"mobilenet_v2.layer.15.{c}.convolution"].role for c in ("expand_1x1", "conv_3x3", "reduce_1x1")] \
            == [LayerRole.EXPANSION, LayerRole.DEPTHWISE, LayerRole.PROJECTION]


# flag switched off -> roles that leave the selection, and the hand-counted selection size
BERT_FLAGS = [
    ("self_attention", {"query", "key", "value"}, 8),
    ("self_output", {"attention_output"}, 12),
    ("intermediate", {"intermediate"}, 12),
    ("output", {"output"}, 12),
    ("pooler", {"pooler"}, 13),
    ("classifier", {"classifier"}, 13),
]


@pytest.mark.parametrize("flag, removed, size", BERT_FLAGS)
def test_each_selection_flag_switches_off_exactly_its_layers(tiny_models, flag, removed, size):
    model = tiny_models["bert"]
    selected = select_layers(model, LayerSelection(**{flag: False}))
    assert len(selected) == size
    assert selected == [n for n, i in classify_layers(model).items() if i.role.value not in removed]


def test_selection_on_gpt2_deit_and_cnns(tiny_models):
    assert len(select_layers(tiny_models["gpt2"], LayerSelection())) == 9
    assert len(select_layers(tiny_models["gpt2"], LayerSelection(self_attention=False))) == 7  # c_attn x2 off
    assert len(select_layers(tiny_models["gpt2"], LayerSelection(pooler=False))) == 9  # GPT-2 has none
    deit = select_layers(tiny_models["deit-tiny"], LayerSelection())
    assert len(deit) == 13 and "vit.embeddings.patch_embeddings.projection" not in deit
    nothing = LayerSelection(self_attention=False, self_output=False, intermediate=False, output=False,
                             pooler=False, classifier=False)
    for name, convs in (("resnet18", 12), ("resnet50", 17), ("efficientnet-b0", 36), ("mobilenetv2", 52)):
        model = tiny_models[name]
        assert select_layers(model, nothing) == [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        assert len(select_layers(model, nothing)) == convs
    assert partition_layers(tiny_models["bert"], select_layers(
        tiny_models["bert"], LayerSelection(self_attention=False, self_output=False, intermediate=False,
                                            output=False, pooler=False))) == {"classifier": ["classifier"]}


class QuantLinear(nn.Linear):
    pass


class QuantConv2d(nn.Conv2d):
    pass


class QuantConv1D(Conv1D):
    pass


@pytest.mark.parametrize("name", ["bert", "gpt2", "efficientnet-b0", "deit-tiny"])
def test_roles_survive_quantized_subclasses(name):
    model = build_tiny(name)
    before = classify_layers(model)
    for module in model.modules():  # what model surgery does, without touching weights
        for base, quant in ((Conv1D, QuantConv1D), (nn.Linear, QuantLinear), (nn.Conv2d, QuantConv2d)):
            if isinstance(module, base):
                module.__class__ = quant
                break
    assert classify_layers(model) == before


# ---------------------------------------------------------------------------------------------
# errors


def test_partition_errors_name_the_layer(tiny_models):
    bert, deit = tiny_models["bert"], tiny_models["deit-tiny"]
    with pytest.raises(ValueError, match=r"'bert.embeddings.word_embeddings' is not a quantizable layer"):
        partition_layers(bert, ["bert.embeddings.word_embeddings"])
    with pytest.raises(ValueError, match=r"'no.such.layer' is not a quantizable layer .*select_layers"):
        partition_layers(bert, ["classifier", "no.such.layer"])
    with pytest.raises(ValueError, match=r"layer 'classifier' is listed twice"):
        partition_layers(bert, ["classifier", "bert.pooler.dense", "classifier"])
    with pytest.raises(ValueError, match=r"'vit.embeddings.patch_embeddings.projection' has role 'embedding', "
                                         r"which no encoder block partition covers"):
        partition_layers(deit, ["vit.embeddings.patch_embeddings.projection"])


def test_unsupported_model_type():
    model = nn.Sequential(nn.Linear(2, 2))
    model.config = SimpleNamespace(model_type="t5")
    with pytest.raises(ValueError, match=r"no layer roles for model_type 't5' \(Sequential\); supported model "
                                         r"types: bert, roberta, vit"):
        classify_layers(model)


def test_unknown_layer_in_a_block_is_named():
    model = build_tiny("bert")
    model.bert.encoder.layer[0].extra = nn.Linear(32, 32)
    with pytest.raises(ValueError, match=r"cannot determine the role of quantizable layer "
                                         r"'bert.encoder.layer.0.extra' \(Linear\) in BertForSequenceClassification"):
        classify_layers(model)


def test_block_with_a_duplicate_role_is_rejected():
    model = build_tiny("bert")
    model.bert.encoder.layer[1].attention.self.query2 = nn.Linear(32, 32)  # an attention layer with no known role
    with pytest.raises(ValueError, match=r"block 1 must hold exactly one each of query, key, value, "
                                         r"attention_output, intermediate, output; found .*query2: attention_output"):
        classify_layers(model)


def test_layers_outside_the_known_structure_are_named():
    gpt2 = build_tiny("gpt2")
    gpt2.transformer.extra = nn.Linear(32, 32)
    with pytest.raises(ValueError, match=r"'transformer.extra' .*after the transformer blocks"):
        classify_layers(gpt2)
    resnet = build_tiny("resnet18")
    resnet.resnet.extra = nn.Conv2d(64, 64, 1)
    with pytest.raises(ValueError, match=r"'resnet.extra' .*one stem conv before the stages and none after them"):
        classify_layers(resnet)
    effnet = build_tiny("efficientnet-b0")
    effnet.efficientnet.encoder.blocks[2].extra = nn.Conv2d(8, 8, 3, groups=8)  # a second depthwise conv
    with pytest.raises(ValueError, match=r"'efficientnet.encoder.blocks.2.expansion.expand_conv' .*block 2 is not "
                                         r"an inverted residual"):
        classify_layers(effnet)


def test_model_without_block_list():
    model = nn.Sequential(nn.Linear(2, 2))
    model.config = SimpleNamespace(model_type="bert", num_hidden_layers=1)
    with pytest.raises(ValueError, match="no nn.ModuleList of repeated blocks"):
        classify_layers(model)


def test_layer_selection_flags_must_be_bools():
    with pytest.raises(ValueError, match=r"LayerSelection.pooler must be True or False, got 'yes'"):
        LayerSelection(pooler="yes")
