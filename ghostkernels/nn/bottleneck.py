"""GhostNet's whole bottleneck as one op: ``FusedGhostBottleneck``.

A GhostBottleneck is ghost1 -> [conv_dw + bn_dw, stride 2] -> [squeeze-excite] -> ghost2, plus a shortcut
(identity, or depthwise conv + BN + 1x1 conv + BN). With only its Ghost modules fused, the rest still runs as about
a dozen eager ops per block; on a CPU, at GhostNet's sizes, those cost more than the fused Ghost modules themselves
(bench/NOTES.md, entry 11). ``FusedGhostBottleneck`` runs the block as ``ghostkernels::ghost_bottleneck`` (one
C++ call: Ghost modules, depthwise convs, squeeze-excite, shortcut and residual add, every BN folded) where the CPU
inference gate (ghostkernels.nn.gate) is open. Everywhere else (training, autograd, GPU tensors, autocast,
tracing, hooks on its layers) it runs the block's own forward, whose Ghost modules are FusedGhostModules, so it
stays exact in training (running statistics, drop-path and all) and fast on a GPU.

Which modules are bottlenecks is decided by ghostkernels.nn.recognize (structure and a probe input): this
package's, the official huawei-noah and timm's GhostBottleneck all pass. GhostNetV2's blocks, whose ghost1 carries
the DFC attention gate (a FusedGatedGhostModule once fused), run as ``ghostkernels::ghost_bottleneck_gated``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..models import GhostBottleneck
from ..ops.layouts import ChainStep, GhostBottleneckArgs, GhostBottleneckGatedArgs, chain_step
from .folding import FoldCache
from .gate import CpuInferenceGate, checked_backend
from .ghost_module import FusedGhostModule
from .recognize import inspect_ghost_bottleneck


class FusedGhostBottleneck(nn.Module):
    """GhostBottleneck (official constructor) whose inference on CPU tensors is one ghostkernels::ghost_bottleneck
    call; see the module docstring for when it runs the op and when the block's own forward.

    Same children, parameters, buffers and state_dict keys as the block it stands for (``ghost1``, ``conv_dw``,
    ``bn_dw``, ``se``, ``ghost2``, ``shortcut``), its Ghost modules being FusedGhostModules. Build one with the
    official arguments, or with ``FusedGhostBottleneck.from_module(block)`` (which shares the block's layers).
    ``backend`` is the Ghost modules' backend; the whole-block op runs where it is "auto" or "cpu".
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 act_layer: type[nn.Module] = nn.ReLU, se_ratio: float = 0.0, mode: str = "original", *,
                 backend: str = "auto"):
        super().__init__()
        block = GhostBottleneck(in_chs, mid_chs, out_chs, dw_kernel_size, stride, act_layer, se_ratio, mode)
        fused = {name: FusedGhostModule.from_module(block._modules[name], backend=backend)
                 for name in ("ghost1", "ghost2")}
        block._modules.update(fused)  # the block is private here: its own forward gets the fused Ghost modules
        self._adopt(block, backend, fused)

    @classmethod
    def from_module(cls, module: nn.Module, *, backend: str = "auto",
                    ghost_modules: dict | None = None) -> "FusedGhostBottleneck":
        """A FusedGhostBottleneck sharing ``module``'s layers (the same Parameter and buffer objects); ``module``
        itself is not changed, and its forward is what runs outside the op (training, autograd, GPU): fuse its
        Ghost modules first, or use ``ghostkernels.fuse``, which does both, for that to be fast too.
        ``ghost_modules`` may give the FusedGhostModules that stand for its ghost1 / ghost2 (fuse() passes the ones
        it installs in the block); others are made here. Raises NotFusableError (ValueError) when the op cannot
        compute ``module``. The training flag is copied."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused._adopt(module, backend, ghost_modules)
        return fused

    def _adopt(self, block: nn.Module, backend: str, fused_ghosts: dict | None = None) -> None:
        """Take ``block``'s layers (see from_module)."""
        layers, spec = inspect_ghost_bottleneck(block)
        # The block's children in the block's order (so the state_dict lists its keys in the same order), its
        # Ghost modules as FusedGhostModules.
        for name, child in block._modules.items():
            if name in ("ghost1", "ghost2"):
                child = (fused_ghosts or {}).get(name, child)
                if not isinstance(child, FusedGhostModule):
                    child = FusedGhostModule.from_module(child, backend=backend)
            self._modules[name] = child
        # The block runs whatever the op does not; a plain attribute, so its layers are not registered twice.
        object.__setattr__(self, "_block", block)
        self.spec = spec
        self.backend = backend
        self.training = block.training
        self._fold_cache = FoldCache()
        self._layers = layers  # the same layer objects as self's children (the block's, shared)
        self._stages = layers.stages()
        self._gate = CpuInferenceGate(self._stages[0].conv, [m for m in self.modules() if m is not self],
                                      traced_as_op=True)
        self._args, self._args_of = None, None
        ops.load_library()

    @property
    def stride(self) -> int:
        return self.spec.stride

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        """Also the backend of its two FusedGhostModules."""
        value = checked_backend("FusedGhostBottleneck", value)
        self.ghost1.backend = value
        self.ghost2.backend = value
        self._backend = value

    @property
    def gated(self) -> bool:
        """ghost1 carries GhostNetV2's DFC gate: the block runs as ghostkernels::ghost_bottleneck_gated."""
        return self._layers.gate is not None

    def op_arguments(self, x=None) -> GhostBottleneckArgs | GhostBottleneckGatedArgs:
        """The arguments of ghostkernels::ghost_bottleneck (ghost_bottleneck_gated for a gated ghost1) for input
        ``x`` (None: only the weights), BatchNorms folded. Cached with the folded weights, except while compiling
        or exporting: the fold is traced then, and attributes must not be assigned."""
        folded = self._fold_cache.get(self._stages)
        compiling = torch.compiler.is_compiling()
        if compiling or self._args_of is not folded:
            args = self._layers.op_arguments(self.spec, folded)
            if compiling:
                return args._replace(x=x)
            self._args, self._args_of = args, folded
        return self._args if x is None else self._args._replace(x=x)

    def chain_step(self) -> ChainStep:
        """The ghostkernels::chain step that runs this block (ghostkernels.freeze builds a network's program from
        these)."""
        return chain_step(self.op_arguments())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._gate.open(x, self.training, self._backend):
            # The op directly, the cached arguments after x: building the argument tuple per call is a tenth of a
            # 7x7 block's time at batch 1.
            # The op looked up per call, not kept on the module: an OpOverload does not pickle (torch.save(model)).
            ns = torch.ops.ghostkernels
            op = ns.ghost_bottleneck_gated.default if self._layers.gate is not None else ns.ghost_bottleneck.default
            return op(x, *self.op_arguments()[1:])
        block = self._block
        block.training = self.training
        return block(x)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.in_channels}->{s.mid_channels}->{s.out_channels}, stride={s.stride}, act={s.act!r}, "
                f"backend={self.backend!r}")


__all__ = ["FusedGhostBottleneck"]
