"""``freeze(model)`` / ``unfreeze(model)``: weights and structure promised constant, for CPU inference.

freeze() does two things, both undone by unfreeze():

1. Every fold cache of the fused modules is frozen (ghostkernels.nn.folding.FoldCache): with autograd off the folded
   weights are used without checking, per call, that the tensors they were folded from are unchanged. Those checks
   read tensor metadata that misses the caches at batch 1 (bench/NOTES.md, entry 22).

2. Every fused GhostNet in the model (this package's, the official code's, timm's: a module with the children
   conv_stem, bn1, act1, blocks, global_pool, conv_head, act2 and classifier, after fuse() on the CPU) gets a
   whole-network forward: in CPU inference the network is one call of ``ghostkernels::chain``, which runs the stem,
   every bottleneck, the last ConvBnAct, the pooling and the head back to back in C++ (csrc/cpu/op_chain.cpp)
   instead of a Python module call and a dispatcher call per layer (bench/NOTES.md, entry 23). The program is
   built from the fused modules' ``chain_step()`` (their folded weights, their arguments; encoded by
   ghostkernels.ops.layouts) and checked on a probe image against the network's own forward; a network that does
   not match, or has parts fuse() left unfused, keeps its forward.

   The whole-network forward is an instance attribute ``forward`` (a method of this module bound to the network,
   so copy.deepcopy binds it to the copy); it runs the program where the CPU inference gate of ghostkernels.nn.gate
   is open for the whole network (eval mode, nothing needing a gradient, one CPU tensor of the weights' dtype,
   nothing traced or under autocast, no forward hook on any module inside the network: hooks on the network itself
   run as usual) and autograd is off; otherwise it calls the class's forward. Registering a hook anywhere is noticed
   (one integer compared per call); other changes are not:
   after changing weights, dtype, device, submodules or their ``backend`` of a frozen model, call unfreeze() (or
   freeze() again). Pickling keeps the fold caches frozen and drops the whole-network forward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..nn.bottleneck import FusedGhostBottleneck
from ..nn.conv_bn_act import FusedConvBnAct, FusedStemConv
from ..nn.folding import FoldCache
from ..nn.gate import CpuInferenceGate
from ..nn.head import FusedClassifier, FusedConvHead
from ..nn.activations import activation_name
from ..nn.recognize import GHOSTNET_CHILDREN, NotFusableError, ghostnet_parents, probe
from ..ops.layouts import CHAIN_STEP_BY_NAME, encode_chain, mean_hw_step

# ghostkernels::chain's opcodes by step name (the encoding is ghostkernels.ops.layouts.CHAIN_STEPS).
CHAIN_OPCODES = {name: step.opcode for name, step in CHAIN_STEP_BY_NAME.items()}

_PLAN = "_ghostkernels_network_plan"


class ChainNotBuildable(NotFusableError):
    """A network whose forward ghostkernels::chain cannot run; the message says why."""


def _fold_caches(model: nn.Module):
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, FoldCache):
                yield value


class NetworkPlan:
    """ghostkernels::chain's arguments for one network (tensors, program), what a call must match (dtype), and the
    CPU inference gate over every module inside the network."""

    def __init__(self, tensors: list, program: list[int], dtype: torch.dtype, network: nn.Module):
        self.tensors = tensors
        self.program = program
        self.dtype = dtype
        self.gate = CpuInferenceGate(network.conv_stem, [m for m in network.modules() if m is not network])

    def applies(self, network: nn.Module, x) -> bool:
        if torch.is_grad_enabled() or type(x) is not torch.Tensor:
            return False
        return self.gate.open(x, network.training, "auto")

    def __reduce__(self):
        # Pickled as None: an unpickled network runs its own forward (the plan's tensors are the fold caches'
        # folds, which are not state either).
        return _no_plan, ()

    def __deepcopy__(self, memo):
        # A copy of the network gets a plan over its own tensors and modules (copy.deepcopy shares the memo, so the
        # folded tensors stay the ones its fold caches hold).
        copied = NetworkPlan.__new__(NetworkPlan)
        memo[id(self)] = copied
        copied.tensors = copy.deepcopy(self.tensors, memo)
        copied.program = list(self.program)
        copied.dtype = self.dtype
        copied.gate = copy.deepcopy(self.gate, memo)
        return copied


def _no_plan():
    return None


def forward(self, *args, **kwargs):
    """A frozen fused GhostNet's forward (see the module docstring). Named ``forward`` so that pickling the network
    restores the class's own forward in its place."""
    plan = self.__dict__.get(_PLAN)
    if plan is not None and not kwargs and len(args) == 1 and plan.applies(self, args[0]):
        return torch.ops.ghostkernels.chain.default(args[0], plan.tensors, plan.program)
    return type(self).forward(self, *args, **kwargs)


def _check_cpu_backend(what: str, module: nn.Module) -> None:
    if module.backend not in ("auto", "cpu"):
        raise ChainNotBuildable(f"{what} has backend={module.backend!r}; the chain runs the CPU kernels")


def build_plan(net: nn.Module) -> NetworkPlan:
    """The chain program of a fused GhostNet ``net`` (children as in the module docstring), from its fused modules'
    chain steps; raises ChainNotBuildable naming the part that is not fused or not of the expected kind. The
    program is not checked against ``net``'s forward here (install() does that)."""
    kids = net._modules
    missing = [k for k in GHOSTNET_CHILDREN if kids.get(k) is None]
    if missing:
        raise ChainNotBuildable(f"{type(net).__name__} has no {', '.join(missing)}")
    stem = kids["conv_stem"]
    if not isinstance(stem, FusedStemConv):
        raise ChainNotBuildable("conv_stem is not fused (fuse() fuses a CPU network's stem)")
    _check_cpu_backend("conv_stem", stem)
    steps = [stem.chain_step()]
    blocks = kids["blocks"]
    if type(blocks) is not nn.Sequential or not all(type(s) is nn.Sequential for s in blocks):
        raise ChainNotBuildable("blocks is not a Sequential of Sequentials")
    for i, stage in enumerate(blocks):
        for j, block in enumerate(stage):
            where = f"blocks.{i}.{j}"
            if not isinstance(block, (FusedGhostBottleneck, FusedConvBnAct)):
                raise ChainNotBuildable(f"{where} is a {type(block).__name__}, not a fused bottleneck or ConvBnAct")
            _check_cpu_backend(where, block)
            steps.append(block.chain_step())
    head, classifier = kids["conv_head"], kids["classifier"]
    if not isinstance(head, FusedConvHead) or not isinstance(classifier, FusedClassifier):
        raise ChainNotBuildable("conv_head / classifier are not fused (fuse() fuses a CPU network's head)")
    _check_cpu_backend("conv_head", head)
    _check_cpu_backend("classifier", classifier)
    act2 = activation_name(kids["act2"])
    if act2 is None:
        raise ChainNotBuildable(f"act2 is a {type(kids['act2']).__name__}, not an activation of the op's set")
    steps += [mean_hw_step(), head.chain_step(act=act2), classifier.chain_step()]
    tensors, program = encode_chain(steps)
    dtype = stem.weight.dtype
    if any(t is not None and (t.dtype != dtype or t.device.type != "cpu") for t in tensors):
        raise ChainNotBuildable(f"its weights are not all CPU tensors of one dtype ({dtype})")
    return NetworkPlan(tensors, program, dtype, net)


def _check_on_probe(net: nn.Module, plan: NetworkPlan) -> None:
    """Raise ChainNotBuildable unless the program computes what ``net``'s own forward computes on a probe image."""
    probe(net, (2, net.conv_stem.in_channels, 64, 64), net.conv_stem.weight,
          lambda x, got: type(net).forward(net, x),
          actual=lambda x: torch.ops.ghostkernels.chain.default(x, plan.tensors, plan.program),
          error=ChainNotBuildable, what="its forward or the chain",
          mismatch="its forward computes something else than the chain (max deviation {err:.3g} on a probe image)")


def install(net: nn.Module) -> NetworkPlan:
    """Give ``net`` (a fused GhostNet, fold caches frozen) the whole-network forward; return its plan. Raises
    ChainNotBuildable, leaving ``net`` as it was, when the chain cannot stand in for its forward."""
    uninstall(net)
    with torch.no_grad():  # the folds without autograd graphs, as the fold caches keep them
        plan = build_plan(net)
    _check_on_probe(net, plan)
    net.__dict__[_PLAN] = plan
    net.__dict__["forward"] = forward.__get__(net)
    return plan


def uninstall(net: nn.Module) -> None:
    """Remove the whole-network forward from ``net`` (nothing to do if it has none)."""
    if net.__dict__.pop(_PLAN, None) is not None or getattr(net.__dict__.get("forward"), "__func__", None) is forward:
        net.__dict__.pop("forward", None)


def network_plan(net: nn.Module) -> NetworkPlan | None:
    """The whole-network plan freeze() gave ``net``, or None."""
    return net.__dict__.get(_PLAN)


def freeze(model: nn.Module) -> nn.Module:
    """Promise that ``model``'s weights and structure stay as they are, for inference; return ``model``.

    Every fused module keeps its BN-folded weights and, by default, checks on each call that the tensors they were
    folded from are unchanged (identity, version counter, storage). At batch 1 on a CPU those reads miss the caches
    on every call: fuse(ghostnet_100) spent ~0.6 ms of a 3.7 ms forward on them (bench/NOTES.md, entry 22). After
    freeze(), calls with autograd off (torch.no_grad, torch.inference_mode) use the folded weights without
    checking, as torch.compile's freezing and exported graphs do, and every fused GhostNet in ``model`` runs its
    whole forward as one ``ghostkernels::chain`` call in CPU inference (see the module docstring for when; entry
    23). The folds are redone on the next call after freeze() itself, so weights changed before it are picked up.
    Calls with autograd on still check (and fold inside the graph where gradients need it).

    After changing weights, dtype, device or submodules of a frozen model (an optimizer step, load_state_dict,
    ``.to()``), call unfreeze() (or freeze() again): a frozen model would keep computing with the old weights.
    """
    for cache in _fold_caches(model):
        cache._entry = None
        cache.frozen = True
    for _, net in list(ghostnet_parents(model)):
        try:
            install(net)
        except ChainNotBuildable:
            pass  # the network keeps its module-by-module forward (with frozen folds)
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Undo freeze(): every call checks the folded weights' sources again (the default) and every network runs its
    own forward; return ``model``."""
    for cache in _fold_caches(model):
        cache.frozen = False
    for _, net in list(ghostnet_parents(model)):
        uninstall(net)
    return model


__all__ = ["CHAIN_OPCODES", "ChainNotBuildable", "NetworkPlan", "build_plan", "freeze", "install", "network_plan",
           "unfreeze", "uninstall"]
