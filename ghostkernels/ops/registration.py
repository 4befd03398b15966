"""Fake kernels and autograd for the ops defined in csrc/ghost_module.cpp.

Registered once, right after the op library is loaded (the ops must exist first), as torchvision does with its
meta registrations. The fakes make torch.compile(fullgraph=True) and torch.export trace through the ops without
running them; the autograd formula is itself an op (ghost_module_backward), so it is traced and exported too.
"""

from __future__ import annotations

import torch

from . import train_bn
from .layouts import CHAIN_STEPS, GhostBottleneckArgs, GhostBottleneckGatedArgs, GhostModuleBnTrainBackwardArgs
from .reference import ACTS
from .validation import (BN_CHEAP_NAMES, BN_PRIMARY_NAMES, bn_stats_dtype, check_bn_backward_inputs,
                         check_bn_conv1x1_inputs, check_bn_grad_out, check_bn_train_inputs,
                         check_bn_z1_inputs, check_bottleneck_inputs, check_depthwise_inputs, check_dfc_gate_inputs,
                         check_gated_inputs, check_ghost_inputs, output_memory_format)

_registered = False


def _ghost_module_fake(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act):
    check_ghost_inputs("ghostkernels::ghost_module", x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    n, _, h, w = x.shape
    return torch.empty((n, out_channels, h, w), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def _ghost_module_backward_fake(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act):
    op = "ghostkernels::ghost_module_backward"
    check_ghost_inputs(op, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    n, _, h, w = x.shape
    if tuple(grad_out.shape) != (n, out_channels, h, w):
        raise ValueError(f"{op}: grad_out must be [{n}, {out_channels}, {h}, {w}], got {tuple(grad_out.shape)}")
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return (grad_x,) + tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device)
                             for t in (w_primary, b_primary, w_cheap, b_cheap))


def _dfc_gate_fake(x, w_reduce, b_reduce, w_h, b_h, w_v, b_v):
    o, hg, wg = check_dfc_gate_inputs("ghostkernels::dfc_gate", x, w_reduce, b_reduce, w_h, b_h, w_v, b_v)
    return torch.empty((x.shape[0], o, hg, wg), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def _dfc_gate_backward_fake(grad_gate, gate, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v):
    op = "ghostkernels::dfc_gate_backward"
    o, hg, wg = check_dfc_gate_inputs(op, x, w_reduce, b_reduce, w_h, b_h, w_v, b_v)
    for name, t in (("grad_gate", grad_gate), ("gate", gate)):
        if tuple(t.shape) != (x.shape[0], o, hg, wg):
            raise ValueError(f"{op}: grad_gate and gate must be [{x.shape[0]}, {o}, {hg}, {wg}], got "
                             f"{tuple(t.shape)}")
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return (grad_x,) + tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device)
                             for t in (w_reduce, b_reduce, w_h, b_h, w_v, b_v))


def _ghost_module_gated_fake(x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate):
    check_gated_inputs("ghostkernels::ghost_module_gated", x, w_primary, b_primary, w_cheap, b_cheap, out_channels,
                       act, gate)
    n, _, h, w = x.shape
    return torch.empty((n, out_channels, h, w), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def _ghost_module_gated_backward_fake(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate):
    grads = _ghost_module_backward_fake(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act)
    check_gated_inputs("ghostkernels::ghost_module_gated_backward", x, w_primary, b_primary, w_cheap, b_cheap,
                       out_channels, act, gate)
    return grads + (torch.empty(gate.shape, dtype=gate.dtype, device=gate.device),)


def _ghost_bottleneck_fake(*args):
    a = GhostBottleneckArgs(*args)
    ho, wo = check_bottleneck_inputs("ghostkernels::ghost_bottleneck", a.x, a.ghost1, a.mid_channels, a.act, a.dw,
                                     a.stride, a.se, a.ghost2, a.out_channels, a.shortcut)
    return torch.empty((a.x.shape[0], a.out_channels, ho, wo), dtype=a.x.dtype, device=a.x.device,
                       memory_format=output_memory_format(a.x))


def _ghost_bottleneck_gated_fake(*args):
    a = GhostBottleneckGatedArgs(*args)
    ho, wo = check_bottleneck_inputs("ghostkernels::ghost_bottleneck_gated", a.x, a.ghost1, a.mid_channels, a.act,
                                     a.dw, a.stride, a.se, a.ghost2, a.out_channels, a.shortcut, gate=a.gate)
    return torch.empty((a.x.shape[0], a.out_channels, ho, wo), dtype=a.x.dtype, device=a.x.device,
                       memory_format=output_memory_format(a.x))


def _depthwise_conv2d_fake(x, w, b, stride, act):
    ho, wo = check_depthwise_inputs("ghostkernels::_depthwise_conv2d", "the convolution", x, w, b, stride)
    return torch.empty((x.shape[0], x.shape[1], ho, wo), dtype=x.dtype, device=x.device)


def _conv2d_act_fake(x, w, b, stride, act):
    op = "ghostkernels::conv2d_act"
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if w.dim() != 4 or w.shape[1] != x.shape[1] or w.shape[2] != w.shape[3] or w.shape[2] % 2 != 1:
        raise ValueError(f"{op}: w must be [out, {x.shape[1]}, k, k] with k odd, got shape {tuple(w.shape)}")
    if b.dim() != 1 or b.shape[0] != w.shape[0]:
        raise ValueError(f"{op}: b must be [{w.shape[0]}], got shape {tuple(b.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"{op}: stride must be 1 or 2, got {stride}")
    k = w.shape[2]
    ho, wo = ((s + 2 * (k // 2) - k) // stride + 1 for s in x.shape[2:])
    return torch.empty((x.shape[0], w.shape[0], ho, wo), dtype=x.dtype, device=x.device)


def _linear_act_fake(x, w, b, act):
    op = "ghostkernels::linear_act"
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be 2-D [N, K], got shape {tuple(x.shape)}")
    if w.dim() != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: w must be [out, {x.shape[1]}], got shape {tuple(w.shape)}")
    if b.dim() != 1 or b.shape[0] != w.shape[0]:
        raise ValueError(f"{op}: b must be [{w.shape[0]}], got shape {tuple(b.shape)}")
    return x.new_empty((x.shape[0], w.shape[0]))


def _chain_fake(x, tensors, program):
    """Walks the program with the steps' own fakes (the same shape checks), so the output shape is the chain's. The
    structural checks and their messages are those of the C++ decoder (csrc/cpu, op_chain)."""
    op = "ghostkernels::chain"
    tensors, program = list(tensors), list(program)
    if not program:
        raise ValueError(f"{op}: the program is empty")
    opcodes = ", ".join(f"{s.opcode} ({s.name})" for s in CHAIN_STEPS)
    y, pc, t, step = x, 0, 0, 0
    while pc < len(program):
        code = program[pc]
        if not 0 <= code < len(CHAIN_STEPS):
            raise ValueError(f"{op}: step {step} (program[{pc}]) has opcode {code}; expected one of {opcodes}")
        layout = CHAIN_STEPS[code]
        name, n_ints, n_tensors = layout.name, len(layout.ints), len(layout.tensors)
        ints, ts = program[pc + 1:pc + 1 + n_ints], tensors[t:t + n_tensors]
        if len(ints) < n_ints:
            raise ValueError(f"{op}: step {step} ({name}) needs {n_ints} integer(s) after its opcode; the program "
                             f"ends after {len(ints)}")
        if len(ts) < n_tensors:
            raise ValueError(f"{op}: step {step} ({name}) needs {n_tensors} tensor(s); only {len(ts)} of "
                             f"{len(tensors)} are left")
        for k, (field, tensor) in enumerate(zip(layout.tensors, ts)):
            if tensor is None and field not in layout.optional:
                raise ValueError(f"{op}: step {step} ({name}) tensor {k} (tensors[{t + k}]) is None where a tensor "
                                 f"is required")
        named = dict(zip(layout.ints, ints))
        if "act" in named:
            if not 0 <= named["act"] < len(ACTS):
                raise ValueError(f"{op}: step {step} ({name}) has activation code {named['act']}")
            named["act"] = ACTS[named["act"]]
        named.update(zip(layout.tensors, ts))
        if name == "conv2d_act":
            y = _conv2d_act_fake(y, named["w"], named["b"], named["stride"], named["act"])
        elif name == "ghost_bottleneck":
            y = _ghost_bottleneck_fake(*GhostBottleneckArgs(x=y, **named))
        elif name == "ghost_bottleneck_gated":
            y = _ghost_bottleneck_gated_fake(*GhostBottleneckGatedArgs(x=y, **named))
        elif name == "mean_hw":
            if y.dim() != 4:
                raise ValueError(f"mean_hw: x must be 4-D [N, C, H, W], got shape {tuple(y.shape)}")
            y = y.new_empty((y.shape[0], y.shape[1]))
        else:
            y = _linear_act_fake(y, named["w"], named["b"], named["act"])
        pc, t, step = pc + 1 + n_ints, t + n_tensors, step + 1
    if t != len(tensors):
        raise ValueError(f"{op}: the program's {step} steps take {t} tensors, but {len(tensors)} were given")
    return y  # every step's fake returns a new tensor, with the layout the kernel gives its output


# ---------------------------------------------------------------------------------------------------------------
# Training with batch-statistics BatchNorm: the passes (ghost_bn_*) and the composite op with autograd
# ---------------------------------------------------------------------------------------------------------------

_PRIMARY, _CHEAP = BN_PRIMARY_NAMES, BN_CHEAP_NAMES


def _vectors(z1, n: int, count: int = 1):
    return tuple(z1.new_empty((n,), dtype=bn_stats_dtype(z1.dtype)) for _ in range(count))


def _bn_conv1x1_stats_fake(x, w_primary):
    init = check_bn_conv1x1_inputs("ghostkernels::ghost_bn_conv1x1_stats", x, w_primary)
    n, _, h, w = x.shape
    z1 = torch.empty((n, init, h, w), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return (z1,) + _vectors(x, init, 2)


def _bn_cheap_stats_fake(z1, mean1, invstd1, weight1, bias1, w_cheap, act):
    init, mult = check_bn_z1_inputs("ghostkernels::ghost_bn_cheap_stats", z1, w_cheap, -1, act,
                                    primary=zip(_PRIMARY, (mean1, invstd1, weight1, bias1)))
    return _vectors(z1, init * mult, 2)


def _bn_forward_out_fake(z1, mean1, invstd1, weight1, bias1, w_cheap, mean2, invstd2, weight2, bias2, out_channels,
                         act):
    check_bn_z1_inputs("ghostkernels::ghost_bn_forward_out", z1, w_cheap, out_channels, act,
                       primary=zip(_PRIMARY, (mean1, invstd1, weight1, bias1)),
                       cheap=zip(_CHEAP, (mean2, invstd2, weight2, bias2)))
    n, _, h, w = z1.shape
    return torch.empty((n, out_channels, h, w), dtype=z1.dtype, device=z1.device,
                       memory_format=output_memory_format(z1))


def _bn_backward_reduce_fake(grad_out, z1, mean1, invstd1, weight1, bias1, w_cheap, mean2, invstd2, weight2, bias2,
                             out_channels, act):
    op = "ghostkernels::ghost_bn_backward_reduce"
    init, mult = check_bn_z1_inputs(op, z1, w_cheap, out_channels, act,
                                    primary=zip(_PRIMARY, (mean1, invstd1, weight1, bias1)),
                                    cheap=zip(_CHEAP, (mean2, invstd2, weight2, bias2)))
    check_bn_grad_out(op, grad_out, z1, out_channels)
    sd = bn_stats_dtype(z1.dtype)
    return z1.new_empty((2, init), dtype=sd), z1.new_empty((8, init * mult), dtype=sd)


def _bn_backward_fake(grad_out, x, z1, w_primary, mean1, invstd1, weight1, bias1, mean_dy1, mean_dy_xhat1, w_cheap,
                      mean2, invstd2, weight2, bias2, mean_dy2, mean_dy_xhat2, out_channels, act):
    check_bn_backward_inputs("ghostkernels::ghost_bn_backward", grad_out, x, z1, w_primary,
                             (mean1, invstd1, weight1, bias1, mean_dy1, mean_dy_xhat1), w_cheap,
                             (mean2, invstd2, weight2, bias2, mean_dy2, mean_dy_xhat2), out_channels, act)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    return grad_x, torch.empty_like(w_primary), torch.empty_like(w_cheap)


def make_bn_train_fakes(op: str):
    """(fake, backward fake) of a ghost_module_bn_train op named ``op`` (the C++ one, or a backend's twin with the
    same schema, ghostkernels.triton's), whose backward op is ``op`` + "_backward"."""

    def fake(x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary, w_cheap, b_cheap,
             bn_weight_cheap, bn_bias_cheap, eps_cheap, out_channels, act, group):
        check_bn_train_inputs(op, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap,
                              bn_weight_cheap, bn_bias_cheap, out_channels, act, group)
        shapes = train_bn.output_shapes(x, w_primary, w_cheap, out_channels)
        sd = bn_stats_dtype(x.dtype)
        out = torch.empty(shapes[0], dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
        stats = tuple(x.new_empty(s, dtype=sd) for s in shapes[1:6])
        z1 = (torch.empty(shapes[6], dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
              if len(shapes[6]) == 4 else x.new_empty(shapes[6]))
        return (out,) + stats + (z1,)

    def backward_fake(grad_out, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, eps_primary, w_cheap,
                      b_cheap, bn_weight_cheap, bn_bias_cheap, eps_cheap, mean_primary, var_primary, mean_cheap,
                      var_cheap, count, saved_z1, out_channels, act, group):
        bop = op + "_backward"
        check_bn_train_inputs(bop, x, w_primary, b_primary, bn_weight_primary, bn_bias_primary, w_cheap, b_cheap,
                              bn_weight_cheap, bn_bias_cheap, out_channels, act, group)
        n, _, h, w = x.shape
        if tuple(grad_out.shape) != (n, out_channels, h, w):
            raise ValueError(f"{bop}: grad_out must be [{n}, {out_channels}, {h}, {w}], got {list(grad_out.shape)}")
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))

        def like(t, channels, weight):
            return torch.empty_like(t) if t is not None else weight.new_empty((channels,))

        init, cheap = w_primary.shape[0], w_cheap.shape[0]
        return (grad_x, torch.empty_like(w_primary), like(b_primary, init, w_primary),
                like(bn_weight_primary, init, w_primary), like(bn_bias_primary, init, w_primary),
                torch.empty_like(w_cheap), like(b_cheap, cheap, w_cheap), like(bn_weight_cheap, cheap, w_cheap),
                like(bn_bias_cheap, cheap, w_cheap))

    return fake, backward_fake


_bn_train_fake, _bn_train_backward_fake = make_bn_train_fakes("ghostkernels::ghost_module_bn_train")


def _bn_train_local_fake(*args):
    """ghost_bn_train_local: ghost_module_bn_train's outputs for group "", saved_z1 as keep_z1 says."""
    *fwd_args, keep_z1 = args
    out = _bn_train_fake(*fwd_args, "")
    x = args[0]
    z1_shape = (x.shape[0], args[1].shape[0], x.shape[2], x.shape[3]) if keep_z1 else (0,)
    z1 = (torch.empty(z1_shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
          if keep_z1 else x.new_empty(z1_shape))
    return out[:-1] + (z1,)


def _bn_train_local_backward_fake(*args):
    """ghost_bn_train_local_backward: the gradients of x, the conv weights (in the stats dtype) and the BN affine
    parameters (per channel, stats dtype)."""
    grads = _bn_train_backward_fake(*args, "")
    x, w_primary, w_cheap = args[1], args[2], args[7]
    sd = bn_stats_dtype(x.dtype)
    per_channel = (lambda w: x.new_empty((w.shape[0],), dtype=sd))
    return (grads[0], x.new_empty(w_primary.shape, dtype=sd), per_channel(w_primary), per_channel(w_primary),
            x.new_empty(w_cheap.shape, dtype=sd), per_channel(w_cheap), per_channel(w_cheap))


def _bn_update_running_stats_fake(running_mean, running_var, num_batches_tracked, mean, var, count, momentum):
    """ghost_bn_update_running_stats: updates its buffers in place, returns nothing."""
    return None


def _bn_train_kernel(*args):
    return train_bn.native_forward(*args)


def _bn_train_backward_kernel(*args):
    return train_bn.native_backward(*args)


# ghost_module_bn_train's inputs that are tensors, by position (the others: eps, out_channels, act, group).
_BN_TRAIN_TENSORS = (0, 1, 2, 3, 4, 6, 7, 8, 9)


def bn_train_setup_context(ctx, inputs, output):
    """Keeps x, the layers' tensors and the small statistics; z1 only where the forward kept it
    (train_bn.keep_z1): everything else is recomputed. The statistics outputs are not differentiable (the running
    statistics are buffers)."""
    _, mean1, var1, mean2, var2, count, saved_z1 = output
    ctx.mark_non_differentiable(mean1, var1, mean2, var2, count, saved_z1)
    ctx.save_for_backward(*(inputs[i] for i in _BN_TRAIN_TENSORS), mean1, var1, mean2, var2, count, saved_z1)
    ctx.scalars = (inputs[5], inputs[10], inputs[11], inputs[12], inputs[13])  # eps x2, out_channels, act, group


def make_bn_train_backward(backward_op):
    """The autograd formula of a ghost_module_bn_train op (saved by bn_train_setup_context) whose gradients come
    from ``backward_op`` (the schema of ghostkernels::ghost_module_bn_train_backward)."""

    def backward(ctx, grad_out, *unused):
        if grad_out is None:  # only the statistics were used
            return (None,) * 14
        saved = ctx.saved_tensors
        x, w1, b1, g1, be1, w2, b2, g2, be2 = saved[:9]
        mean1, var1, mean2, var2, count, saved_z1 = saved[9:]
        eps1, eps2, out_channels, act, group = ctx.scalars
        grads = backward_op(*GhostModuleBnTrainBackwardArgs(
            grad_out, x, w1, b1, g1, be1, eps1, w2, b2, g2, be2, eps2, mean1, var1, mean2, var2, count, saved_z1,
            out_channels, act, group))
        result = [None] * 14
        for pos, grad, tensor in zip(_BN_TRAIN_TENSORS, grads, saved[:9]):
            if tensor is not None and ctx.needs_input_grad[pos]:
                result[pos] = grad
        return tuple(result)

    return backward


def _register_bn_train() -> None:
    for name, fake in (("ghost_bn_conv1x1_stats", _bn_conv1x1_stats_fake),
                       ("ghost_bn_cheap_stats", _bn_cheap_stats_fake), ("ghost_bn_forward_out", _bn_forward_out_fake),
                       ("ghost_bn_backward_reduce", _bn_backward_reduce_fake), ("ghost_bn_backward", _bn_backward_fake),
                       ("ghost_module_bn_train", _bn_train_fake),
                       ("ghost_module_bn_train_backward", _bn_train_backward_fake),
                       ("ghost_bn_train_local", _bn_train_local_fake),
                       ("ghost_bn_train_local_backward", _bn_train_local_backward_fake),
                       ("ghost_bn_update_running_stats", _bn_update_running_stats_fake)):
        torch.library.register_fake(f"ghostkernels::{name}")(fake)
    for name, kernel in (("ghost_module_bn_train", _bn_train_kernel),
                         ("ghost_module_bn_train_backward", _bn_train_backward_kernel)):
        torch.library.register_kernel(f"ghostkernels::{name}", ("cpu", "cuda"), kernel)
    # ghost_module_bn_train's autograd kernel is C++ (csrc/bn_train_autograd.cpp: the same formula as
    # make_bn_train_backward's, without a Python wrapper per call); Triton's twin op uses the Python one.
    for op in _BN_TRAIN_INTERNAL:
        torch.library.register_autograd(f"ghostkernels::{op}", no_backward(op))


# Why an inference op has no backward, and what to use for training instead.
_NO_BACKWARD_HINT = {
    "ghost_bottleneck": "FusedGhostBottleneck runs it only where nothing needs a gradient and runs the block's own "
                        "layers (with fused Ghost modules) otherwise",
    "ghost_bottleneck_gated": "FusedGhostBottleneck runs it only where nothing needs a gradient and runs the block's "
                              "own layers (with fused Ghost modules) otherwise",
    "_depthwise_conv2d": "it exists for the tests of the CPU depthwise kernel; use torch.nn.functional.conv2d",
    "conv2d_act": "FusedStemConv and FusedConvBnAct run it only where nothing needs a gradient and run their "
                  "layers otherwise",
    "linear_act": "FusedConvHead and FusedClassifier run it only where nothing needs a gradient and run their "
                  "layers otherwise",
    "chain": "a frozen network (ghostkernels.freeze) runs it only where nothing needs a gradient and runs its own "
             "forward otherwise",
}
_BN_TRAIN_INTERNAL = ("ghost_bn_conv1x1_stats", "ghost_bn_cheap_stats", "ghost_bn_forward_out",
                      "ghost_bn_backward_reduce", "ghost_bn_backward", "ghost_bn_train_local",
                      "ghost_bn_train_local_backward", "ghost_module_bn_train_backward")
_BN_PASS_HINT = ("it is a pass of ghostkernels::ghost_module_bn_train, whose autograd formula covers it; call "
                 "ghostkernels.ops.ghost_module_bn_train (or a FusedGhostModule in train mode)")
_NO_BACKWARD_HINT.update({op: _BN_PASS_HINT for op in _BN_TRAIN_INTERNAL[:-2]})
for _op in _BN_TRAIN_INTERNAL[-2:]:
    _NO_BACKWARD_HINT[_op] = "it is a backward formula; double backward is not supported"


def no_backward(op: str, name: str = ""):
    """The autograd formula of op ``op`` (or of ``name``, a backend's twin of it), which has none: it raises, saying
    why."""

    def backward(ctx, *grads):
        what = "" if op in _BN_TRAIN_INTERNAL else "it is an inference op; "
        raise RuntimeError(f"ghostkernels::{name or op} has no backward: {what}{_NO_BACKWARD_HINT[op]}")

    return backward


def setup_context(ctx, inputs, output):
    """Shared by every backend's op: only the inputs are kept, the backward op recomputes x1 and the depthwise
    pre-activation from x."""
    x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act = inputs
    ctx.save_for_backward(x, w_primary, b_primary, w_cheap, b_cheap)
    ctx.out_channels = out_channels
    ctx.act = act


def make_backward(backward_op):
    """The autograd formula of a ghost_module op whose gradients come from ``backward_op`` (same schema as
    ghostkernels::ghost_module_backward)."""

    def backward(ctx, grad_out):
        x, w_primary, b_primary, w_cheap, b_cheap = ctx.saved_tensors
        grads = backward_op(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, ctx.out_channels, ctx.act)
        grads = tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:5]))
        return grads + (None, None)

    return backward


def setup_gated_context(ctx, inputs, output):
    """ghost_module_gated (every backend's op): the inputs only, as for ghost_module; the backward op recomputes the
    ungated output from x."""
    x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act, gate = inputs
    ctx.save_for_backward(x, w_primary, b_primary, w_cheap, b_cheap, gate)
    ctx.out_channels = out_channels
    ctx.act = act


def make_gated_backward(backward_op):
    """The autograd formula of a ghost_module_gated op whose gradients come from ``backward_op`` (the schema of
    ghostkernels::ghost_module_gated_backward)."""

    def backward(ctx, grad_out):
        x, w_primary, b_primary, w_cheap, b_cheap, gate = ctx.saved_tensors
        grads = backward_op(grad_out, x, w_primary, b_primary, w_cheap, b_cheap, ctx.out_channels, ctx.act, gate)
        need = ctx.needs_input_grad
        grads = [g if n else None for g, n in zip(grads[:5], need[:5])] + [grads[5] if need[7] else None]
        return tuple(grads[:5]) + (None, None, grads[5])

    return backward


def setup_dfc_gate_context(ctx, inputs, output):
    """dfc_gate: the inputs and the (quarter-resolution) map, whose sigmoid derivative is map * (1 - map)."""
    ctx.save_for_backward(output, *inputs)


def dfc_gate_backward(ctx, grad_gate):
    gate, *inputs = ctx.saved_tensors
    grads = torch.ops.ghostkernels.dfc_gate_backward(grad_gate, gate, *inputs)
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def register_all() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("ghostkernels::ghost_module")(_ghost_module_fake)
    torch.library.register_fake("ghostkernels::ghost_module_backward")(_ghost_module_backward_fake)
    torch.library.register_autograd(
        "ghostkernels::ghost_module", make_backward(torch.ops.ghostkernels.ghost_module_backward),
        setup_context=setup_context)
    torch.library.register_fake("ghostkernels::dfc_gate")(_dfc_gate_fake)
    torch.library.register_fake("ghostkernels::dfc_gate_backward")(_dfc_gate_backward_fake)
    torch.library.register_autograd("ghostkernels::dfc_gate", dfc_gate_backward, setup_context=setup_dfc_gate_context)
    torch.library.register_fake("ghostkernels::ghost_module_gated")(_ghost_module_gated_fake)
    torch.library.register_fake("ghostkernels::ghost_module_gated_backward")(_ghost_module_gated_backward_fake)
    torch.library.register_autograd(
        "ghostkernels::ghost_module_gated", make_gated_backward(torch.ops.ghostkernels.ghost_module_gated_backward),
        setup_context=setup_gated_context)
    torch.library.register_fake("ghostkernels::ghost_bottleneck")(_ghost_bottleneck_fake)
    torch.library.register_fake("ghostkernels::ghost_bottleneck_gated")(_ghost_bottleneck_gated_fake)
    torch.library.register_fake("ghostkernels::_depthwise_conv2d")(_depthwise_conv2d_fake)
    torch.library.register_fake("ghostkernels::conv2d_act")(_conv2d_act_fake)
    torch.library.register_fake("ghostkernels::linear_act")(_linear_act_fake)
    torch.library.register_fake("ghostkernels::chain")(_chain_fake)
    for op in ("ghost_bottleneck", "ghost_bottleneck_gated", "_depthwise_conv2d", "conv2d_act", "linear_act",
               "chain"):
        torch.library.register_autograd(f"ghostkernels::{op}", no_backward(op))
    _register_bn_train()
    _registered = True
