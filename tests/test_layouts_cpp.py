"""The C++ side's ABI tables (csrc/op_layouts.h) as ghostkernels::_layouts returns them: valid JSON of the documented
shape, the chain's step layouts equal to the registered schemas of the ops the steps run (the non-tensor and tensor
arguments after x, in schema order; Tensor? exactly where a step's tensor may be None), and the tables being the
ones the C++ code actually reads (its error messages list the table's names)."""

from __future__ import annotations

import json
import re

import pytest
import torch

# The ops a chain step runs, by step name; mean_hw has no op of its own (it takes no integers and no tensors).
STEP_OPS = {"conv2d_act": "conv2d_act", "ghost_bottleneck": "ghost_bottleneck", "linear_act": "linear_act",
            "ghost_bottleneck_gated": "ghost_bottleneck_gated"}


@pytest.fixture(scope="module")
def layouts() -> dict:
    text = torch.ops.ghostkernels._layouts()
    assert isinstance(text, str)
    return json.loads(text)


def _is_tensor(t) -> bool:
    return isinstance(t, torch._C.TensorType)


def _is_optional_tensor(t) -> bool:
    return isinstance(t, torch._C.OptionalType) and _is_tensor(t.getElementType())


def test_layouts_json_has_the_documented_shape(layouts):
    assert list(layouts) == ["acts", "chain_steps"]
    assert layouts["acts"] == ["identity", "relu", "relu6", "silu", "hardswish"]
    assert [s["opcode"] for s in layouts["chain_steps"]] == list(range(len(layouts["chain_steps"])))
    assert [s["name"] for s in layouts["chain_steps"]] == ["conv2d_act", "ghost_bottleneck", "mean_hw", "linear_act",
                                                           "ghost_bottleneck_gated"]
    for step in layouts["chain_steps"]:
        assert list(step) == ["opcode", "name", "ints", "tensors", "optional"], step
        assert all(isinstance(n, str) and n for n in step["ints"] + step["tensors"]), step
        assert set(step["optional"]) <= set(step["tensors"]), step
        optional_in_order = [t for t in step["tensors"] if t in step["optional"]]
        assert step["optional"] == optional_in_order, step


def test_layouts_json_is_written_as_json_dumps_writes_it(layouts):
    """One canonical text, so that a comparison of texts (not only of parsed values) holds too."""
    assert torch.ops.ghostkernels._layouts() == json.dumps(layouts)


@pytest.mark.parametrize("step_name", sorted(STEP_OPS))
def test_chain_step_matches_the_op_schema(layouts, step_name):
    (step,) = [s for s in layouts["chain_steps"] if s["name"] == step_name]
    schema = getattr(torch.ops.ghostkernels, STEP_OPS[step_name]).default._schema
    args = schema.arguments
    assert args[0].name == "x" and _is_tensor(args[0].type), schema
    rest = args[1:]
    tensors = [a.name for a in rest if _is_tensor(a.type) or _is_optional_tensor(a.type)]
    ints = [a.name for a in rest if not (_is_tensor(a.type) or _is_optional_tensor(a.type))]
    optional = [a.name for a in rest if _is_optional_tensor(a.type)]
    assert step["tensors"] == tensors, schema
    assert step["ints"] == ints, schema
    assert step["optional"] == optional, schema


def test_ghost_bottleneck_layout_is_the_documented_one(layouts):
    (step,) = [s for s in layouts["chain_steps"] if s["name"] == "ghost_bottleneck"]
    assert step["opcode"] == 1
    assert step["ints"] == ["mid_channels", "act", "stride", "out_channels"]
    assert len(step["tensors"]) == 18
    assert step["optional"] == ["dw_w", "dw_b", "se_reduce_w", "se_reduce_b", "se_expand_w", "se_expand_b",
                                "shortcut_dw_w", "shortcut_dw_b", "shortcut_pw_w", "shortcut_pw_b"]


def test_mean_hw_step_takes_nothing(layouts):
    (step,) = [s for s in layouts["chain_steps"] if s["name"] == "mean_hw"]
    assert step == {"opcode": 2, "name": "mean_hw", "ints": [], "tensors": [], "optional": []}


def test_act_parsing_reads_the_table(layouts):
    """parse_act (csrc/ghost_module_check.cpp) accepts the table's names and lists them when it rejects one."""
    x, w, b = torch.randn(2, 3), torch.randn(4, 3), torch.randn(4)
    for act in layouts["acts"]:
        torch.ops.ghostkernels.linear_act(x, w, b, act)
    expected = re.escape("expected one of " + ", ".join(layouts["acts"]))
    with pytest.raises(ValueError, match=expected):
        torch.ops.ghostkernels.linear_act(x, w, b, "gelu")


def test_chain_decoder_reads_the_table(layouts):
    """The chain's decoder (csrc/cpu/op_chain.cpp) names the table's steps and activations in its messages, and takes
    each step's integers and tensors as the table counts them."""
    steps = layouts["chain_steps"]
    listed = ", ".join(f"{s['opcode']} ({s['name']})" for s in steps[:-1])
    listed += f" or {steps[-1]['opcode']} ({steps[-1]['name']})"
    with pytest.raises(ValueError, match=re.escape(f"has opcode {len(steps)}; expected {listed}")):
        torch.ops.ghostkernels.chain(torch.randn(1, 3, 4, 4), [], [len(steps)])
    acts = layouts["acts"]
    listed_acts = ", ".join(f"{i} ({a})" for i, a in enumerate(acts[:-1])) + f" or {len(acts) - 1} ({acts[-1]})"
    (linear,) = [s for s in steps if s["name"] == "linear_act"]
    w, b = torch.randn(4, 3), torch.randn(4)
    program = [linear["opcode"]] + [len(acts) if n == "act" else 0 for n in linear["ints"]]
    with pytest.raises(ValueError, match=re.escape(f"has activation code {len(acts)}; expected {listed_acts}")):
        torch.ops.ghostkernels.chain(torch.randn(2, 3), [w, b], program)
    # A well-formed one-step program runs: as many integers and tensors as the table says.
    ok = [linear["opcode"]] + [acts.index("relu") if n == "act" else 0 for n in linear["ints"]]
    assert len(linear["tensors"]) == 2
    x = torch.randn(2, 3)
    torch.testing.assert_close(torch.ops.ghostkernels.chain(x, [w, b], ok), torch.relu(x @ w.t() + b))
