"""Layer roles, layer selection and block partitions of the supported model families.

A quantizable layer is any `nn.Linear`, `nn.Conv2d` or HF GPT-2 `Conv1D` (isinstance, so the
Quant* subclasses count too). Roles are derived from the module tree, not from one transformers
version's class names: the repeated-block list is the first `nn.ModuleList` of the base model
holding quantizable layers; layers before it, inside it (block = index in the list) and after it,
and layers outside the base model (the task head), follow the rules of their layout:

- encoder (BERT, RoBERTa, ViT/DeiT): q/k/v by attribute name (query or q_proj, ...); inside a
  block another layer under an "attention"/"attn" module is the attention output, else
  intermediate ("intermediate" module, fc1, up_proj) or output ("output" module, fc2, down_proj)
  or, if names do not tell, by shape against `config.intermediate_size`. (transformers 5.17+
  ViT uses attention.{q,k,v,o}_proj and mlp.fc{1,2}; BERT keeps attention.self.query ...) Every block must hold each of
  the six roles once. The patch-embedding conv of ViT/DeiT has role `embedding` and is never
  selected (like the other embeddings). Head layers: the last is the classifier; for text models
  earlier head layers (RoBERTa's dense + tanh on <s>) play BERT's pooler and get role `pooler`.
- decoder (GPT-2): c_attn, c_fc by name, c_proj by its parent (attn -> attention_output,
  mlp -> output), with a shape fallback; the head (`score`) is the classifier.
- resnet: the conv before the stages is the stem; in stage i (block i) convs under a
  "shortcut"/"downsample" module are shortcuts, the rest stage convs; the head is the classifier.
- mbconv (EfficientNet, MobileNetV2): within an inverted-residual block, by position around the
  one depthwise conv (groups == in_channels > 1): convs before it are the expansion, the last conv
  after it is the projection, convs in between are squeeze-excite. The first conv before the
  blocks is the stem (MobileNetV2's stem module also holds the first inverted residual, whose convs
  get these roles with block None); convs after the blocks are the head conv.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields
from enum import Enum

from torch import nn

try:  # GPT-2's transposed linear; its module path has been stable, but stay importable without it
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - depends on the installed transformers
    class Conv1D(nn.Module):  # type: ignore[no-redef]
        """Placeholder that no module is an instance of."""

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, Conv1D)


class LayerRole(str, Enum):
    QUERY = "query"
    KEY = "key"
    VALUE = "value"
    C_ATTN = "c_attn"  # GPT-2 fused q/k/v
    ATTENTION_OUTPUT = "attention_output"
    INTERMEDIATE = "intermediate"
    OUTPUT = "output"
    POOLER = "pooler"
    CLASSIFIER = "classifier"
    EMBEDDING = "embedding"  # ViT/DeiT patch embedding: never quantized
    STEM = "stem"
    STAGE_CONV = "stage_conv"
    SHORTCUT = "shortcut"
    EXPANSION = "expansion"
    DEPTHWISE = "depthwise"
    SQUEEZE_EXCITE = "squeeze_excite"
    PROJECTION = "projection"
    HEAD = "head"


class Layout(str, Enum):
    ENCODER = "encoder"
    DECODER = "decoder"
    RESNET = "resnet"
    MBCONV = "mbconv"


LAYOUT_BY_MODEL_TYPE: dict[str, Layout] = {
    "bert": Layout.ENCODER, "roberta": Layout.ENCODER, "vit": Layout.ENCODER, "deit": Layout.ENCODER,
    "gpt2": Layout.DECODER, "resnet": Layout.RESNET,
    "efficientnet": Layout.MBCONV, "mobilenet_v2": Layout.MBCONV,
}
R = LayerRole
ENCODER_BLOCK_ROLES = (R.QUERY, R.KEY, R.VALUE, R.ATTENTION_OUTPUT, R.INTERMEDIATE, R.OUTPUT)
DECODER_BLOCK_ROLES = (R.C_ATTN, R.ATTENTION_OUTPUT, R.INTERMEDIATE, R.OUTPUT)
# partition order per layout (ResNet's stage partitions are "stage1".."stageN", numbered from blocks)
PARTITION_ORDER: dict[Layout, tuple[str, ...]] = {
    Layout.ENCODER: tuple(r.value for r in ENCODER_BLOCK_ROLES + (R.POOLER, R.CLASSIFIER)),
    Layout.DECODER: tuple(r.value for r in DECODER_BLOCK_ROLES + (R.CLASSIFIER,)),
    Layout.RESNET: ("stem", "stages", "classifier"),
    Layout.MBCONV: tuple(r.value for r in (R.STEM, R.EXPANSION, R.DEPTHWISE, R.SQUEEZE_EXCITE, R.PROJECTION,
                                           R.HEAD, R.CLASSIFIER)),
}


@dataclass(frozen=True)
class LayerInfo:
    name: str
    role: LayerRole
    block: int | None  # index in the model's repeated-block list (layer, stage, MBConv block)


@dataclass
class LayerSelection:
    """Which transformer layers to quantize; vision CNNs always quantize every conv."""

    self_attention: bool = True  # query/key/value, GPT-2 c_attn
    self_output: bool = True  # attention output projection
    intermediate: bool = True
    output: bool = True
    pooler: bool = True
    classifier: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"LayerSelection.{f.name} must be True or False, got {getattr(self, f.name)!r}")


SELECTION_FLAG: dict[LayerRole, str] = {
    R.QUERY: "self_attention", R.KEY: "self_attention", R.VALUE: "self_attention", R.C_ATTN: "self_attention",
    R.ATTENTION_OUTPUT: "self_output", R.INTERMEDIATE: "intermediate", R.OUTPUT: "output",
    R.POOLER: "pooler", R.CLASSIFIER: "classifier",
}
CNN_ROLES = frozenset({R.STEM, R.STAGE_CONV, R.SHORTCUT, R.EXPANSION, R.DEPTHWISE, R.SQUEEZE_EXCITE,
                       R.PROJECTION, R.HEAD})


def is_quantizable(module: nn.Module) -> bool:
    return isinstance(module, QUANTIZABLE_TYPES)


def model_layout(model: nn.Module) -> Layout:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUT_BY_MODEL_TYPE:
        raise ValueError(f"no layer roles for model_type {model_type!r} ({type(model).__name__}); supported "
                         f"model types: {', '.join(LAYOUT_BY_MODEL_TYPE)}")
    return LAYOUT_BY_MODEL_TYPE[model_type]


def _role_error(name: str, module: nn.Module, model: nn.Module, why: str) -> ValueError:
    return ValueError(f"cannot determine the role of quantizable layer {name!r} ({type(module).__name__}) in "
                      f"{type(model).__name__} (model_type {model.config.model_type!r}): {why}")


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, Conv1D):  # weight is (in, out)
        return module.weight.shape[0], module.weight.shape[1]
    return module.weight.shape[1], module.weight.shape[0]


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _encoder_block_role(path: list[str], module: nn.Module, config) -> LayerRole | None:
    leaf = path[-1]
    by_leaf = {"query": R.QUERY, "q_proj": R.QUERY, "key": R.KEY, "k_proj": R.KEY, "value": R.VALUE, "v_proj": R.VALUE}
    if leaf in by_leaf:
        return by_leaf[leaf]
    if any("attention" in p or "attn" in p for p in path[:-1]):
        return R.ATTENTION_OUTPUT
    if "intermediate" in path or leaf in ("fc1", "up_proj"):
        return R.INTERMEDIATE
    if "output" in path or leaf in ("fc2", "down_proj"):
        return R.OUTPUT
    hidden, inner = config.hidden_size, getattr(config, "intermediate_size", None)
    if inner is not None and inner != hidden and isinstance(module, nn.Linear):
        return {(hidden, inner): R.INTERMEDIATE, (inner, hidden): R.OUTPUT}.get(_in_out(module))
    return None


def _decoder_block_role(path: list[str], module: nn.Module, config) -> LayerRole | None:
    leaf = path[-1]
    if leaf == "c_attn":
        return R.C_ATTN
    if leaf == "c_fc":
        return R.INTERMEDIATE
    if leaf == "c_proj" and any("attn" in p or "attention" in p for p in path[:-1]):
        return R.ATTENTION_OUTPUT
    if leaf == "c_proj" and "mlp" in path:
        return R.OUTPUT
    hidden = config.hidden_size
    inner = getattr(config, "n_inner", None) or 4 * hidden
    shapes = {(hidden, 3 * hidden): R.C_ATTN, (hidden, hidden): R.ATTENTION_OUTPUT}
    if inner != hidden:
        shapes |= {(hidden, inner): R.INTERMEDIATE, (inner, hidden): R.OUTPUT}
    return shapes.get(_in_out(module))


def _mbconv_roles(convs: list[tuple[str, nn.Module]]) -> dict[str, LayerRole] | None:
    """Roles of one inverted-residual block's convs (in module order) around its depthwise conv."""
    depthwise = [i for i, (_, m) in enumerate(convs) if _is_depthwise(m)]
    if len(depthwise) != 1 or depthwise[0] > 1 or depthwise[0] == len(convs) - 1:
        return None  # need: at most one expansion, one depthwise, a projection after it
    d = depthwise[0]
    roles = {name: R.EXPANSION for name, _ in convs[:d]}
    roles[convs[d][0]] = R.DEPTHWISE
    roles |= {name: R.SQUEEZE_EXCITE for name, _ in convs[d + 1:-1]}
    roles[convs[-1][0]] = R.PROJECTION
    return roles


def _find_block_list(model: nn.Module, base_name: str) -> str:
    prefix = f"{base_name}." if base_name else ""
    for name, module in model.named_modules():
        if name.startswith(prefix) and isinstance(module, nn.ModuleList) and any(
                is_quantizable(m) for m in module.modules()):
            return name
    raise ValueError(f"{type(model).__name__}: no nn.ModuleList of repeated blocks with quantizable layers "
                     f"found in its base model, so layer roles cannot be derived")


def _check_block_count(model: nn.Module, layout: Layout, blocks_name: str, num_blocks: int) -> None:
    config = model.config
    expected = {Layout.ENCODER: getattr(config, "num_hidden_layers", None),
                Layout.DECODER: getattr(config, "num_hidden_layers", None),
                Layout.RESNET: len(getattr(config, "depths", []) or []) or None}.get(layout)
    if expected is not None and expected != num_blocks:
        raise ValueError(f"{type(model).__name__}: block list {blocks_name!r} has {num_blocks} entries but the "
                         f"config says {expected}; this module tree is not one this code understands")


Layers = list[tuple[str, nn.Module]]
BlockLayers = dict[int, list[tuple[str, nn.Module, list[str]]]]  # block -> (name, module, path in block)
Assigned = list[tuple[str, LayerRole, int | None]]  # (name, role, block)


def _transformer_roles(model: nn.Module, layout: Layout, pre: Layers, blocks: BlockLayers, post: Layers) -> Assigned:
    rule, required = ((_encoder_block_role, ENCODER_BLOCK_ROLES) if layout == Layout.ENCODER
                      else (_decoder_block_role, DECODER_BLOCK_ROLES))
    assigned: Assigned = []
    for block, layers in blocks.items():
        roles = {}
        for name, module, path in layers:
            role = rule(path, module, model.config)
            if role is None:
                raise _role_error(name, module, model, f"no {layout.value} block role matches its path or shape")
            roles[name] = role
        counts = Counter(roles.values())
        if any(counts[r] != 1 for r in required) or len(roles) != len(required):
            found = ", ".join(f"{n}: {r.value}" for n, r in roles.items())
            raise ValueError(f"{type(model).__name__} block {block} must hold exactly one each of "
                             f"{', '.join(r.value for r in required)}; found {found}")
        assigned += [(name, role, block) for name, role in roles.items()]
    for name, module in pre:
        if layout != Layout.ENCODER or not isinstance(module, nn.Conv2d):
            raise _role_error(name, module, model, "quantizable layer before the transformer blocks")
        assigned.append((name, R.EMBEDDING, None))  # ViT/DeiT patch embedding
    for name, module in post:
        if layout != Layout.ENCODER or "pooler" not in name.split("."):
            raise _role_error(name, module, model, "quantizable layer after the transformer blocks")
        assigned.append((name, R.POOLER, None))
    return assigned


def _resnet_roles(model: nn.Module, pre: Layers, blocks: BlockLayers, post: Layers) -> Assigned:
    for name, module in pre[1:] + post:
        raise _role_error(name, module, model, "ResNet has one stem conv before the stages and none after them")
    assigned: Assigned = [(name, R.STEM, None) for name, _ in pre]
    for block, layers in blocks.items():
        for name, _, path in layers:
            shortcut = any(p in ("shortcut", "downsample") for p in path)
            assigned.append((name, R.SHORTCUT if shortcut else R.STAGE_CONV, block))
    return assigned


def _mbconv_model_roles(model: nn.Module, pre: Layers, blocks: BlockLayers, post: Layers) -> Assigned:
    assigned: Assigned = [(name, R.STEM, None) for name, _ in pre[:1]]
    if len(pre) > 1:  # MobileNetV2's stem module also holds the first inverted residual
        stem_roles = _mbconv_roles(pre[1:])
        if stem_roles is None:
            raise _role_error(pre[1][0], pre[1][1], model, "stem convs after the first do not form an "
                              "inverted residual (expansion?, one depthwise, projection)")
        assigned += [(name, role, None) for name, role in stem_roles.items()]
    for block, layers in blocks.items():
        roles = _mbconv_roles([(name, module) for name, module, _ in layers])
        if roles is None:
            name, module, _ = layers[0]
            raise _role_error(name, module, model, f"block {block} is not an inverted residual "
                              "(expansion?, one depthwise, squeeze-excite*, projection)")
        assigned += [(name, role, block) for name, role in roles.items()]
    for name, module in post:
        if not isinstance(module, nn.Conv2d):
            raise _role_error(name, module, model, "only the head conv may follow the blocks")
        assigned.append((name, R.HEAD, None))
    return assigned


def classify_layers(model: nn.Module) -> dict[str, LayerInfo]:
    """Role and block of every quantizable layer, in `named_modules` order."""
    layout = model_layout(model)
    base = getattr(model, "base_model", model)
    base_name = next(n for n, m in model.named_modules() if m is base)
    blocks_name = _find_block_list(model, base_name)
    _check_block_count(model, layout, blocks_name, len(model.get_submodule(blocks_name)))
    blocks_prefix = f"{blocks_name}."
    module_order = {name: i for i, (name, _) in enumerate(model.named_modules())}

    head: Layers = []
    pre: Layers = []
    post: Layers = []
    blocks: BlockLayers = {}
    for name, module in model.named_modules():
        if not is_quantizable(module):
            continue
        if base_name and not name.startswith(f"{base_name}."):
            head.append((name, module))
        elif name.startswith(blocks_prefix):
            index, _, rest = name[len(blocks_prefix):].partition(".")
            blocks.setdefault(int(index), []).append((name, module, rest.split(".")))
        elif module_order[name] < module_order[blocks_name]:
            pre.append((name, module))
        else:
            post.append((name, module))

    if layout in (Layout.ENCODER, Layout.DECODER):
        assigned = _transformer_roles(model, layout, pre, blocks, post)
    elif layout == Layout.RESNET:
        assigned = _resnet_roles(model, pre, blocks, post)
    else:
        assigned = _mbconv_model_roles(model, pre, blocks, post)
    # the head: the last layer classifies; earlier head layers of a text encoder pool (RoBERTa)
    is_text = getattr(model, "main_input_name", "input_ids") == "input_ids"
    pools = layout == Layout.ENCODER and is_text
    assigned += [(name, R.POOLER if pools and name != head[-1][0] else R.CLASSIFIER, None) for name, _ in head]

    infos = {name: LayerInfo(name, role, block) for name, role, block in assigned}
    return {name: infos[name] for name, _ in model.named_modules() if name in infos}


def select_layers(model: nn.Module, selection: LayerSelection) -> list[str]:
    """Names of the layers to quantize: the transformer roles whose flag is on, every CNN conv
    (depthwise and squeeze-excite included), the classifier if `selection.classifier`."""
    chosen = []
    for name, info in classify_layers(model).items():
        if info.role in CNN_ROLES or (info.role in SELECTION_FLAG and getattr(selection, SELECTION_FLAG[info.role])):
            chosen.append(name)
    return chosen


def _partition_key(layout: Layout, info: LayerInfo) -> str | None:
    if layout == Layout.RESNET and info.role in (R.STAGE_CONV, R.SHORTCUT):
        return f"stage{info.block + 1}"
    order = PARTITION_ORDER[layout]
    return info.role.value if info.role.value in order else None


def partition_layers(model: nn.Module, layer_names: list[str]) -> dict[str, list[str]]:
    """Block partitions for --block_search: partition name -> its layers (model order).

    encoder: query, key, value, attention_output, intermediate, output, pooler, classifier;
    decoder: c_attn, attention_output, intermediate, output, classifier; resnet: stem,
    stage1..stageN (shortcuts with their stage), classifier; mbconv: stem, expansion, depthwise,
    squeeze_excite, projection, head, classifier. Partitions with no layer are dropped.
    """
    layout = model_layout(model)
    infos = classify_layers(model)
    keys: dict[str, str] = {}
    for name in layer_names:
        if name in keys:
            raise ValueError(f"layer {name!r} is listed twice, so it would land in two partitions")
        if name not in infos:
            raise ValueError(f"{name!r} is not a quantizable layer (nn.Linear, nn.Conv2d, Conv1D) of "
                             f"{type(model).__name__}; take layer names from select_layers()")
        key = _partition_key(layout, infos[name])
        if key is None:
            raise ValueError(f"layer {name!r} has role {infos[name].role.value!r}, which no {layout.value} block "
                             f"partition covers; leave it unquantized")
        keys[name] = key
    order = {key: i for i, key in enumerate(PARTITION_ORDER[layout])}
    stage_rank = order.get("stages", 0)

    def rank(key: str) -> tuple[int, int]:
        return (stage_rank, int(key[len("stage"):])) if key not in order else (order[key], 0)

    partitions: dict[str, list[str]] = {}
    for name in infos:  # model order within each partition
        if name in keys:
            partitions.setdefault(keys[name], []).append(name)
    return {key: partitions[key] for key in sorted(partitions, key=rank)}
