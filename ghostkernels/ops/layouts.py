"""The named argument layouts of the ops: one NamedTuple per multi-tensor op, fields in schema order.

The schemas are defined once, in csrc/ghost_module.cpp; these tuples give their arguments names on the Python side,
so that no caller restates a 23-argument order by position (``GhostBottleneckArgs(...)`` then ``op(*args)``). The
chain program's encoding (which integers and tensors each step takes) is derived from the same tuples, and mirrors
the C++ table in csrc/op_layouts.h; tests/test_layouts.py checks all three against each other (field names and kinds
against the registered schemas, the chain steps against ``torch.ops.ghostkernels._layouts()``).

Annotations are real types here (no ``from __future__ import annotations``): ``typing.get_type_hints`` reads them to
tell tensor arguments (``Tensor``, ``Optional[Tensor]`` for the schema's ``Tensor?``) from integers and strings.
"""

import typing
from typing import NamedTuple, Optional

import torch

from .reference import ACTS

Tensor = torch.Tensor


class GhostModuleArgs(NamedTuple):
    """ghostkernels::ghost_module (and ghost_module_triton)."""

    x: Tensor
    w_primary: Tensor
    b_primary: Tensor
    w_cheap: Tensor
    b_cheap: Tensor
    out_channels: int
    act: str


class GhostModuleBackwardArgs(NamedTuple):
    """ghostkernels::ghost_module_backward (and ghost_module_triton_backward)."""

    grad_out: Tensor
    x: Tensor
    w_primary: Tensor
    b_primary: Tensor
    w_cheap: Tensor
    b_cheap: Tensor
    out_channels: int
    act: str


class GhostModuleBnTrainArgs(NamedTuple):
    """ghostkernels::ghost_module_bn_train: the Ghost module's layers in training (conv, batch-statistics BN, act)."""

    x: Tensor
    w_primary: Tensor
    b_primary: Optional[Tensor]
    bn_weight_primary: Optional[Tensor]
    bn_bias_primary: Optional[Tensor]
    eps_primary: float
    w_cheap: Tensor
    b_cheap: Optional[Tensor]
    bn_weight_cheap: Optional[Tensor]
    bn_bias_cheap: Optional[Tensor]
    eps_cheap: float
    out_channels: int
    act: str
    group: str


def _layout(name: str, doc: str, fields: list) -> type:
    """A NamedTuple layout from (name, type) fields: for the train-mode BN ops, whose layouts share groups of fields
    that are spelled out once here rather than in each class."""
    layout = NamedTuple(name, fields)
    layout.__doc__ = doc
    layout.__module__ = __name__
    return layout


def _fields(layout: type) -> list:
    hints = typing.get_type_hints(layout)
    return [(f, hints[f]) for f in layout._fields]


def _stage(stage: str, *more: str) -> list:
    """One BN stage's per-channel vectors as the passes take them (and `more` of them, e.g. mean_dy)."""
    return [(f"{k}_{stage}", Tensor) for k in ("mean", "invstd", "weight", "bias") + more]


# The forward's layer tensors and eps (its arguments before out_channels), its statistics outputs, then its
# out_channels, act and group.
GhostModuleBnTrainBackwardArgs = _layout(
    "GhostModuleBnTrainBackwardArgs",
    "ghostkernels::ghost_module_bn_train_backward: the forward's arguments and its statistics outputs.",
    [("grad_out", Tensor)] + _fields(GhostModuleBnTrainArgs)[:-3]
    + [(f, Tensor) for f in ("mean_primary", "var_primary", "mean_cheap", "var_cheap", "count", "saved_z1")]
    + _fields(GhostModuleBnTrainArgs)[-3:])

BnTrainLocalArgs = _layout(
    "BnTrainLocalArgs",
    "ghostkernels::ghost_bn_train_local: ghost_module_bn_train without a process group, and whether to keep z1.",
    _fields(GhostModuleBnTrainArgs)[:-1] + [("keep_z1", bool)])

BnTrainLocalBackwardArgs = _layout(
    "BnTrainLocalBackwardArgs",
    "ghostkernels::ghost_bn_train_local_backward: ghost_module_bn_train_backward without a process group.",
    _fields(GhostModuleBnTrainBackwardArgs)[:-1])

BnConv1x1StatsArgs = _layout(
    "BnConv1x1StatsArgs",
    "ghostkernels::ghost_bn_conv1x1_stats: z1 = conv1x1(x, w_primary) and its per-channel mean and variance.",
    [("x", Tensor), ("w_primary", Tensor)])

BnCheapStatsArgs = _layout(
    "BnCheapStatsArgs", "ghostkernels::ghost_bn_cheap_stats: statistics of the depthwise conv of act(BN1(z1)).",
    [("z1", Tensor)] + _stage("primary") + [("w_cheap", Tensor), ("act", str)])

BnForwardOutArgs = _layout(
    "BnForwardOutArgs", "ghostkernels::ghost_bn_forward_out: the module's output from z1 and both stages' statistics.",
    [("z1", Tensor)] + _stage("primary") + [("w_cheap", Tensor)] + _stage("cheap")
    + [("out_channels", int), ("act", str)])

BnBackwardReduceArgs = _layout(
    "BnBackwardReduceArgs",
    "ghostkernels::ghost_bn_backward_reduce: the sums both stages' BN backward reductions come from.",
    [("grad_out", Tensor)] + _fields(BnForwardOutArgs))

BnBackwardArgs = _layout(
    "BnBackwardArgs", "ghostkernels::ghost_bn_backward: the gradients of x and both conv weights.",
    [("grad_out", Tensor), ("x", Tensor), ("z1", Tensor), ("w_primary", Tensor)]
    + _stage("primary", "mean_dy", "mean_dy_xhat") + [("w_cheap", Tensor)] + _stage("cheap", "mean_dy", "mean_dy_xhat")
    + [("out_channels", int), ("act", str)])


class DfcGateArgs(NamedTuple):
    """ghostkernels::dfc_gate (and dfc_gate_triton): GhostNetV2's attention map from x, BatchNorms folded."""

    x: Tensor
    w_reduce: Tensor
    b_reduce: Tensor
    w_h: Tensor
    b_h: Tensor
    w_v: Tensor
    b_v: Tensor


def _extended(layout: type, after: str, extra: tuple[str, ...]) -> list[tuple[str, type]]:
    """The (name, type) fields of ``layout`` with the tensor fields ``extra`` inserted after field ``after`` (at the
    end for "", at the front for None): the layout of an op whose schema is another's plus tensors, without
    restating the other."""
    hints = typing.get_type_hints(layout)
    fields = [(e, Tensor) for e in extra] if after is None else []
    for name in layout._fields:
        fields.append((name, hints[name]))
        if name == after:
            fields += [(e, Tensor) for e in extra]
    return fields + ([(e, Tensor) for e in extra] if after == "" else [])


class DfcGateBackwardArgs(NamedTuple("_DfcGateBackwardFields", _extended(DfcGateArgs, None, ("grad_gate", "gate")))):
    """ghostkernels::dfc_gate_backward: the map's gradient, the map itself (its sigmoid's derivative), dfc_gate's
    arguments."""

    __slots__ = ()


class GhostModuleGatedArgs(NamedTuple("_GhostModuleGatedFields", _extended(GhostModuleArgs, "", ("gate",)))):
    """ghostkernels::ghost_module_gated (and ghost_module_gated_triton): ghost_module's arguments, then the map."""

    __slots__ = ()


class GhostModuleGatedBackwardArgs(NamedTuple("_GhostModuleGatedBackwardFields",
                                              _extended(GhostModuleBackwardArgs, "", ("gate",)))):
    """ghostkernels::ghost_module_gated_backward: ghost_module_backward's arguments, then the map."""

    __slots__ = ()


class _Group:
    """A read-only attribute of a layout: the tuple of its fields named ``<prefix>_...``, in order."""

    def __init__(self, prefix: str):
        self.prefix = prefix + "_"

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return tuple(getattr(obj, f) for f in type(obj)._fields if f.startswith(self.prefix))


class GhostBottleneckArgs(NamedTuple):
    """ghostkernels::ghost_bottleneck: ghost1, [conv_dw], [squeeze-excite], ghost2, [shortcut] (see ops.ghost_bottleneck
    for the math). The optional groups are all None or all tensors."""

    x: Tensor
    ghost1_w_primary: Tensor
    ghost1_b_primary: Tensor
    ghost1_w_cheap: Tensor
    ghost1_b_cheap: Tensor
    mid_channels: int
    act: str
    dw_w: Optional[Tensor]
    dw_b: Optional[Tensor]
    stride: int
    se_reduce_w: Optional[Tensor]
    se_reduce_b: Optional[Tensor]
    se_expand_w: Optional[Tensor]
    se_expand_b: Optional[Tensor]
    ghost2_w_primary: Tensor
    ghost2_b_primary: Tensor
    ghost2_w_cheap: Tensor
    ghost2_b_cheap: Tensor
    out_channels: int
    shortcut_dw_w: Optional[Tensor]
    shortcut_dw_b: Optional[Tensor]
    shortcut_pw_w: Optional[Tensor]
    shortcut_pw_b: Optional[Tensor]

    @classmethod
    def from_groups(cls, x, ghost1, mid_channels: int, ghost2, out_channels: int, *, act: str, stride: int,
                    dw=None, se=None, shortcut=None) -> "GhostBottleneckArgs":
        """From weight groups: ghost1/ghost2 (w_primary, b_primary, w_cheap, b_cheap), dw (w, b), se (reduce_w,
        reduce_b, expand_w, expand_b), shortcut (dw_w, dw_b, pw_w, pw_b); an absent group is None."""
        dw, se, shortcut = dw or (None,) * 2, se or (None,) * 4, shortcut or (None,) * 4
        return cls(x, *ghost1, mid_channels, act, *dw, stride, *se, *ghost2, out_channels, *shortcut)

    # The weight groups, by field-name prefix: args.ghost1 == (ghost1_w_primary, ..., ghost1_b_cheap).
    ghost1 = _Group("ghost1")
    dw = _Group("dw")
    se = _Group("se")
    ghost2 = _Group("ghost2")
    shortcut = _Group("shortcut")


GATE_FIELDS = ("gate_w_reduce", "gate_b_reduce", "gate_w_h", "gate_b_h", "gate_w_v", "gate_b_v")


class GhostBottleneckGatedArgs(NamedTuple("_GhostBottleneckGatedFields",
                                          _extended(GhostBottleneckArgs, "act", GATE_FIELDS))):
    """ghostkernels::ghost_bottleneck_gated: GhostNetV2's block, ghost_bottleneck's arguments with ghost1's DFC gate
    (dfc_gate's weights, GATE_FIELDS) after ``act``."""

    __slots__ = ()

    @classmethod
    def from_groups(cls, x, ghost1, mid_channels: int, ghost2, out_channels: int, *, act: str, stride: int, gate,
                    dw=None, se=None, shortcut=None) -> "GhostBottleneckGatedArgs":
        """As GhostBottleneckArgs.from_groups, with ``gate`` (w_reduce, b_reduce, w_h, b_h, w_v, b_v)."""
        dw, se, shortcut = dw or (None,) * 2, se or (None,) * 4, shortcut or (None,) * 4
        return cls(x, *ghost1, mid_channels, act, *gate, *dw, stride, *se, *ghost2, out_channels, *shortcut)

    ghost1 = _Group("ghost1")
    gate = _Group("gate")
    dw = _Group("dw")
    se = _Group("se")
    ghost2 = _Group("ghost2")
    shortcut = _Group("shortcut")


class Conv2dActArgs(NamedTuple):
    """ghostkernels::conv2d_act: act(conv2d(x, w, b, stride, padding k//2))."""

    x: Tensor
    w: Tensor
    b: Tensor
    stride: int
    act: str


class DepthwiseConv2dArgs(Conv2dActArgs):
    """ghostkernels::_depthwise_conv2d (internal, for the tests of the CPU depthwise kernel): conv2d_act's layout,
    the convolution depthwise (groups = channels)."""

    __slots__ = ()


class LinearActArgs(NamedTuple):
    """ghostkernels::linear_act: act(x @ w.T + b)."""

    x: Tensor
    w: Tensor
    b: Tensor
    act: str


class BnUpdateRunningStatsArgs(NamedTuple):
    """ghostkernels::ghost_bn_update_running_stats: a BatchNorm's buffers (updated in place) and its batch
    statistics."""

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor
    mean: Tensor
    var: Tensor
    count: Tensor
    momentum: Optional[float]


class ChainArgs(NamedTuple):
    """ghostkernels::chain: a program of inference steps run back to back (see CHAIN_STEPS)."""

    x: Tensor
    tensors: list
    program: list


# Every op with more than one tensor argument, by schema name.
OP_LAYOUTS = {
    "ghost_module": GhostModuleArgs,
    "ghost_module_backward": GhostModuleBackwardArgs,
    "ghost_module_gated": GhostModuleGatedArgs,
    "ghost_module_gated_backward": GhostModuleGatedBackwardArgs,
    "dfc_gate": DfcGateArgs,
    "dfc_gate_backward": DfcGateBackwardArgs,
    "ghost_bottleneck": GhostBottleneckArgs,
    "ghost_bottleneck_gated": GhostBottleneckGatedArgs,
    "conv2d_act": Conv2dActArgs,
    "_depthwise_conv2d": DepthwiseConv2dArgs,
    "linear_act": LinearActArgs,
    "chain": ChainArgs,
    "ghost_module_bn_train": GhostModuleBnTrainArgs,
    "ghost_module_bn_train_backward": GhostModuleBnTrainBackwardArgs,
    "ghost_bn_conv1x1_stats": BnConv1x1StatsArgs,
    "ghost_bn_cheap_stats": BnCheapStatsArgs,
    "ghost_bn_forward_out": BnForwardOutArgs,
    "ghost_bn_backward_reduce": BnBackwardReduceArgs,
    "ghost_bn_backward": BnBackwardArgs,
    "ghost_bn_train_local": BnTrainLocalArgs,
    "ghost_bn_train_local_backward": BnTrainLocalBackwardArgs,
    "ghost_bn_update_running_stats": BnUpdateRunningStatsArgs,
}


def tensor_fields(layout: type) -> tuple[str, ...]:
    """The layout's tensor arguments (``Tensor`` or ``Optional[Tensor]``), in order."""
    hints = typing.get_type_hints(layout)
    return tuple(name for name in layout._fields if hints[name] in (Tensor, Optional[Tensor]))


def optional_fields(layout: type) -> tuple[str, ...]:
    """The layout's ``Tensor?`` arguments, in order."""
    hints = typing.get_type_hints(layout)
    return tuple(name for name in layout._fields if hints[name] == Optional[Tensor])


class ChainStepLayout(NamedTuple):
    """What one step of ghostkernels::chain takes: after its opcode the integers ``ints`` (activations coded by
    their index in ACTS), and from the chain's tensor list the tensors ``tensors`` (``optional`` may be None)."""

    opcode: int
    name: str
    ints: tuple[str, ...]
    tensors: tuple[str, ...]
    optional: tuple[str, ...]


def _op_step(opcode: int, name: str, layout: type) -> ChainStepLayout:
    """A step that runs an op: the op's arguments after x, tensors and non-tensors each in schema order."""
    tensors = tuple(f for f in tensor_fields(layout) if f != "x")
    ints = tuple(f for f in layout._fields if f != "x" and f not in tensors)
    return ChainStepLayout(opcode, name, ints, tensors, optional_fields(layout))


CHAIN_STEPS = (
    _op_step(0, "conv2d_act", Conv2dActArgs),
    _op_step(1, "ghost_bottleneck", GhostBottleneckArgs),
    ChainStepLayout(2, "mean_hw", (), (), ()),  # [N, C, H, W] -> [N, C]: global average pool and flatten
    _op_step(3, "linear_act", LinearActArgs),
    _op_step(4, "ghost_bottleneck_gated", GhostBottleneckGatedArgs),
)
CHAIN_STEP_BY_NAME = {step.name: step for step in CHAIN_STEPS}


class ChainStep(NamedTuple):
    """One step of a chain program: the step's name, its integers (``act`` as the activation's name) and tensors,
    named as in its ChainStepLayout."""

    name: str
    ints: tuple
    tensors: tuple


def chain_step(args: NamedTuple) -> ChainStep:
    """The chain step that runs the op of ``args`` (a Conv2dActArgs, GhostBottleneckArgs, GhostBottleneckGatedArgs
    or LinearActArgs; its ``x`` is ignored: a step's input is the step before's output)."""
    name = {Conv2dActArgs: "conv2d_act", GhostBottleneckArgs: "ghost_bottleneck",
            GhostBottleneckGatedArgs: "ghost_bottleneck_gated", LinearActArgs: "linear_act"}.get(type(args))
    if name is None:
        raise TypeError(f"ghostkernels: no chain step runs {type(args).__name__}")
    layout = CHAIN_STEP_BY_NAME[name]
    return ChainStep(name, tuple(getattr(args, f) for f in layout.ints),
                     tuple(getattr(args, f) for f in layout.tensors))


def mean_hw_step() -> ChainStep:
    return ChainStep("mean_hw", (), ())


def encode_chain(steps) -> tuple[list, list[int]]:
    """(tensors, program) of ghostkernels::chain for a list of ChainSteps; raises ValueError for a step whose
    integers or tensors do not fit its layout."""
    tensors: list = []
    program: list[int] = []
    for i, step in enumerate(steps):
        layout = CHAIN_STEP_BY_NAME.get(step.name)
        if layout is None:
            raise ValueError(f"ghostkernels::chain: step {i} is {step.name!r}; expected one of "
                             f"{', '.join(CHAIN_STEP_BY_NAME)}")
        if len(step.ints) != len(layout.ints) or len(step.tensors) != len(layout.tensors):
            raise ValueError(f"ghostkernels::chain: step {i} ({step.name}) takes {len(layout.ints)} integers and "
                             f"{len(layout.tensors)} tensors, got {len(step.ints)} and {len(step.tensors)}")
        program.append(layout.opcode)
        for field, value in zip(layout.ints, step.ints):
            if field == "act":
                if value not in ACTS:
                    raise ValueError(f"ghostkernels::chain: step {i} ({step.name}) has act {value!r}; expected one "
                                     f"of {', '.join(ACTS)}")
                value = ACTS.index(value)
            program.append(int(value))
        tensors += step.tensors
    return tensors, program


__all__ = ["BnBackwardArgs", "BnBackwardReduceArgs", "BnCheapStatsArgs", "BnConv1x1StatsArgs", "BnForwardOutArgs",
           "BnTrainLocalArgs", "BnTrainLocalBackwardArgs", "BnUpdateRunningStatsArgs",
           "CHAIN_STEPS", "CHAIN_STEP_BY_NAME", "ChainArgs", "ChainStep", "ChainStepLayout", "Conv2dActArgs",
           "DepthwiseConv2dArgs", "DfcGateArgs", "DfcGateBackwardArgs", "GhostBottleneckArgs",
           "GhostBottleneckGatedArgs", "GhostModuleArgs", "GhostModuleBackwardArgs", "GhostModuleBnTrainArgs",
           "GhostModuleBnTrainBackwardArgs", "GhostModuleGatedArgs", "GhostModuleGatedBackwardArgs", "LinearActArgs",
           "OP_LAYOUTS", "chain_step", "encode_chain", "mean_hw_step", "optional_fields", "tensor_fields"]
