"""The ops' named argument layouts (ghostkernels.ops.layouts) against the registered schemas (csrc/ghost_module.cpp)
and the chain program's encoding against the C++ table (csrc/op_layouts.h, read through ghostkernels::_layouts)."""

from __future__ import annotations

import json

import pytest
import torch

from ghostkernels.nn import FusedGhostBottleneck
from ghostkernels.ops import layouts
from ghostkernels.ops.reference import ACTS


def _schema(name: str):
    return getattr(torch.ops.ghostkernels, name).default._schema


def _kind(arg) -> str:
    t = arg.type
    if isinstance(t, torch._C.OptionalType) and isinstance(t.getElementType(), torch._C.TensorType):
        return "Tensor?"
    if isinstance(t, torch._C.TensorType):
        return "Tensor"
    return "other"


@pytest.mark.parametrize("op", sorted(layouts.OP_LAYOUTS))
def test_each_layout_names_its_ops_arguments_in_schema_order(op):
    layout = layouts.OP_LAYOUTS[op]
    args = _schema(op).arguments
    assert layout._fields == tuple(a.name for a in args)
    tensors = set(layouts.tensor_fields(layout))
    optional = set(layouts.optional_fields(layout))
    for a in args:
        kind = _kind(a)
        if op == "chain" and a.name == "tensors":
            continue  # a Tensor?[] list: neither a tensor argument nor an integer of a step
        assert (a.name in tensors) == (kind in ("Tensor", "Tensor?")), a.name
        assert (a.name in optional) == (kind == "Tensor?"), a.name


def test_triton_op_has_the_ghost_module_layout():
    pytest.importorskip("triton")
    for op, layout in (("ghost_module_triton", layouts.GhostModuleArgs),
                       ("ghost_module_triton_backward", layouts.GhostModuleBackwardArgs)):
        assert layout._fields == tuple(a.name for a in _schema(op).arguments)


def test_chain_steps_agree_with_the_cpp_table():
    table = json.loads(torch.ops.ghostkernels._layouts())
    assert tuple(table["acts"]) == ACTS
    cpp = [(s["opcode"], s["name"], tuple(s["ints"]), tuple(s["tensors"]), tuple(s["optional"]))
           for s in table["chain_steps"]]
    assert cpp == [tuple(step) for step in layouts.CHAIN_STEPS]


def test_bottleneck_groups_round_trip():
    t = [torch.full((1,), float(i)) for i in range(18)]
    args = layouts.GhostBottleneckArgs.from_groups("x", t[0:4], 8, t[10:14], 16, act="relu", stride=2, dw=t[4:6],
                                                   se=t[6:10], shortcut=t[14:18])
    assert args.ghost1 == tuple(t[0:4]) and args.dw == tuple(t[4:6]) and args.se == tuple(t[6:10])
    assert args.ghost2 == tuple(t[10:14]) and args.shortcut == tuple(t[14:18])
    assert (args.mid_channels, args.act, args.stride, args.out_channels) == (8, "relu", 2, 16)
    bare = layouts.GhostBottleneckArgs.from_groups("x", t[0:4], 8, t[10:14], 16, act="relu", stride=1)
    assert bare.dw == (None, None) and bare.se == (None,) * 4 and bare.shortcut == (None,) * 4


def test_a_fused_blocks_chain_step_encodes_to_its_op_arguments():
    block = FusedGhostBottleneck(8, 16, 12, dw_kernel_size=3, stride=2, se_ratio=0.25).eval()
    with torch.no_grad():  # cached folds: both calls see the same tensors
        args = block.op_arguments()
        step = block.chain_step()
    tensors, program = layouts.encode_chain([step])
    assert program == [1, 16, ACTS.index("relu"), 2, 12]
    layout = layouts.CHAIN_STEP_BY_NAME["ghost_bottleneck"]
    assert [t is getattr(args, f) for t, f in zip(tensors, layout.tensors)] == [True] * 18


@pytest.mark.parametrize("step, match", [
    (layouts.ChainStep("pool", (), ()), "expected one of"),
    (layouts.ChainStep("linear_act", ("relu", 1), (None, None)), "takes 1 integers and 2 tensors"),
    (layouts.ChainStep("linear_act", ("gelu",), (None, None)), "act 'gelu'"),
])
def test_encode_chain_rejects_bad_steps(step, match):
    with pytest.raises(ValueError, match=match):
        layouts.encode_chain([step])


def test_chain_step_of_another_layout_is_a_type_error():
    with pytest.raises(TypeError, match="no chain step runs GhostModuleArgs"):
        layouts.chain_step(layouts.GhostModuleArgs(None, None, None, None, None, 1, "relu"))
