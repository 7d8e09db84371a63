import pytest
import torch

from cost.model_cost import CostType, LayerCost
from quant.formats import parse_format, parse_format_list
from trainer.search_space import DecisionCostTable, SearchSpace

INT2, INT4, INT8 = (parse_format(t) for t in ("int2", "int4", "int8"))
LAYERS = ["a", "b", "c"]
COSTS = [LayerCost("a", 8 * 2**20, 10**9), LayerCost("b", 2**20, 10**9), LayerCost("c", 2**20, 2 * 10**9)]


def test_granularities():
    formats = parse_format_list("2,4,8")
    assert SearchSpace.build(LAYERS, formats, "layer").decisions == {"a": ("a",), "b": ("b",), "c": ("c",)}
    assert SearchSpace.build(LAYERS, formats, "single").decisions == {"model": ("a", "b", "c")}
    block = SearchSpace.build(LAYERS, formats, "block", partitions={"x": ["a", "c"], "y": ["b"], "empty": []})
    assert block.decisions == {"x": ("a", "c"), "y": ("b",)}
    assert block.assignment([2, 0]) == {"a": (INT8, INT8), "c": (INT8, INT8), "b": (INT2, INT2)}
    assert block.option_names == ["int2", "int4", "int8"] and block.num_decisions == 2


def test_weight_only_keeps_the_activation_format():
    space = SearchSpace.build(LAYERS, (INT2, INT4), "single", weight_only=True, fixed_act_format=INT8)
    assert space.assignment(torch.tensor([0])) == {name: (INT2, INT8) for name in LAYERS}


def test_cost_table_is_exact():
    space = SearchSpace.build(LAYERS, (INT2, INT4, INT8), "block", partitions={"x": ["a", "c"], "y": ["b"]})
    memory = DecisionCostTable(space, COSTS, CostType.MEMORY)
    # x holds 9 Mi weights, y 1 Mi: bytes = weights * bits / 8.
    assert memory.table.tolist() == [[9 * 2 / 8, 9 * 4 / 8, 9 * 8 / 8], [2 / 8, 4 / 8, 8 / 8]]
    assert memory.cost(torch.tensor([1, 2])) == 4.5 + 1.0
    assert memory.min_cost() == 2.25 + 0.25 and memory.max_cost() == 9.0 + 1.0
    assert memory.uniform_cost(1) == 5.0
    mask = torch.tensor([[False, True, True], [True, True, False]])
    assert memory.min_cost(mask) == 4.5 + 0.25 and memory.max_cost(mask) == 9.0 + 0.5
    compute = DecisionCostTable(space, COSTS, CostType.COMPUTE)
    assert compute.table.tolist()[1] == [4.0, 16.0, 64.0]  # 1e9 MACs x w bits x a bits / 1e9
    assert compute.cost(torch.tensor([0, 0])) == 3 * 4.0 + 4.0


def test_search_space_errors():
    formats = (INT2, INT4)
    with pytest.raises(ValueError, match="at least one format"):
        SearchSpace.build(LAYERS, (), "layer")
    with pytest.raises(ValueError, match="duplicate formats"):
        SearchSpace((INT2, INT2), {"a": ("a",)})
    with pytest.raises(ValueError, match="no quantized layer was selected"):
        SearchSpace.build([], formats, "single")
    with pytest.raises(ValueError, match="'a' is in two decisions: 'x' and 'y'"):
        SearchSpace(formats, {"x": ("a",), "y": ("a", "b")})
    with pytest.raises(ValueError, match=r"missing \['c'\]"):
        SearchSpace.build(LAYERS, formats, "block", partitions={"x": ["a", "b"]})
    with pytest.raises(ValueError, match="needs the block partitions"):
        SearchSpace.build(LAYERS, formats, "block")
    with pytest.raises(ValueError, match="expected 3 option indices, got 2"):
        SearchSpace.build(LAYERS, formats, "layer").assignment([0, 1])
    with pytest.raises(ValueError, match=r"no cost information for layers \['c'\]"):
        DecisionCostTable(SearchSpace.build(LAYERS, formats, "layer"), COSTS[:2], CostType.MEMORY)
    with pytest.raises(ValueError, match=r"^unknown granularity 'channel'; valid: layer, block, single$"):
        SearchSpace.build(LAYERS, formats, "channel")


def test_cost_table_takes_the_cost_type_by_name():
    space = SearchSpace.build(LAYERS, (INT2, INT4, INT8), "block", partitions={"x": ["a", "c"], "y": ["b"]})
    memory = DecisionCostTable(space, COSTS, "memory")  # was priced in GBOPs
    assert memory.cost_type is CostType.MEMORY
    assert memory.table.tolist() == [[9 * 2 / 8, 9 * 4 / 8, 9 * 8 / 8], [2 / 8, 4 / 8, 8 / 8]]
    with pytest.raises(ValueError, match=r"^unknown cost type 'flops'; valid: \['memory', 'compute'\]$"):
        DecisionCostTable(space, COSTS, "flops")


def test_formats_are_parsed_from_a_string_tokens_or_formats():
    # "4,8" used to become the formats ('4', ',', '8'), and tokens failed at the first step.
    for given in ("4,8", "int4, int8", ["int4", "int8"], [4, "int8"], (INT4, INT8), ["int4", INT8]):
        space = SearchSpace.build(LAYERS, given, "layer")
        assert space.formats == (INT4, INT8), given
    assert SearchSpace(("int2",), {"a": ("a",)}, fixed_act_format="int8").fixed_act_format == INT8
    space = SearchSpace.build(LAYERS, "2,4", "single", weight_only=True, fixed_act_format="int8")
    assert space.assignment([1]) == {name: (INT4, INT8) for name in LAYERS}
    with pytest.raises(ValueError, match=r"^unknown format 'int9x'; valid forms: "):
        SearchSpace.build(LAYERS, "int4,int9x", "layer")
    with pytest.raises(ValueError, match=r"^duplicate format 'int4' \(int4\) in search space '4,int4'"):
        SearchSpace.build(LAYERS, "4,int4", "layer")
    with pytest.raises(ValueError, match=r"^unknown format 'int3x'; valid forms: "):
        SearchSpace.build(LAYERS, "4", "layer", fixed_act_format="int3x")


def test_granularity_is_parsed_by_name():
    assert SearchSpace.build(LAYERS, "2,4", " Single ").decisions == {"model": ("a", "b", "c")}
    with pytest.raises(ValueError, match=r"^unknown granularity 'blocks'; valid: layer, block, single$"):
        SearchSpace.build(LAYERS, "2,4", "blocks")


@pytest.mark.parametrize("indices, shown", [([0, -1, 0], "-1"), ([0, 5, 0], "5"), ([0, 1.0, 0], "1.0"),
                                             ([True, 0, 0], "True"), (torch.tensor([0, 1, -3]), "-3")])
def test_assignment_refuses_an_index_outside_the_options(indices, shown):
    # -1 used to pick the last option silently, 5 raised a bare IndexError.
    space = SearchSpace.build(LAYERS, "2,4", "layer")
    message = (rf"^option index {shown} is not an option of this search space: each index must be an integer in "
               r"\[0, 1\] \(one of \['int2', 'int4'\]\)$")
    with pytest.raises(ValueError, match=message):
        space.assignment(indices)
    with pytest.raises(ValueError, match=r"^expected 3 option indices, got 4$"):
        space.assignment([0, 0, 0, 0])


@pytest.mark.parametrize("granularity", ["layer", "single"])
def test_repeated_layer_names_are_refused(granularity):
    # The layer granularity used to merge them into one decision silently.
    with pytest.raises(ValueError, match=r"^layer names must be unique; repeated: \['a'\]$"):
        SearchSpace.build(["a", "b", "a"], "2,4", granularity)
    with pytest.raises(ValueError, match=r"^layer 'a' is listed twice in decision 'x': list each layer once$"):
        SearchSpace((INT2,), {"x": ("a", "a")})
