"""The things being compared, and the step each one runs.

A provider turns the same eval-mode module (a GhostModule, or a whole GhostNet) into something callable:
  eager          the module itself, PyTorch eager;
  compile        torch.compile(module, fullgraph=True); for inference compiled under no_grad with inductor's
                 freezing on (weights become constants, BN is folded into the conv); torch._dynamo.reset() before
                 every compile, so the recompile limit is never reached and a case never silently runs eager;
  fused-<b>      the module with its Ghost modules replaced by the fused op on backend b (cpu, cuda, triton):
                 ghostkernels.FusedGhostModule.from_module for one module, ghostkernels.fuse for a model;
  fused-<b>+compile  (models only) the fused model under torch.compile as above;
  fused-<b>-frozen   (models only, CPU) the fused model after ghostkernels.freeze(model): weights promised constant,
                 as compile's freezing and ONNX Runtime assume, so the folded weights are used without checking
                 their sources and a fused GhostNet runs its whole forward as one ghostkernels::chain call;
  fused-<b>-modules  (models only, CPU) ghostkernels.fuse(model, blocks=False): the Ghost modules fused, the rest
                 of each bottleneck left to eager PyTorch (what fuse() did before the whole-block op), to show what
                 each of the two steps brings.

Modes:
  forward  inference: eval mode, under torch.no_grad();
  train    forward + backward with frozen BatchNorm: eval mode (running statistics, which is what "frozen" means),
           parameters and the input require grad, and torch.autograd.grad computes the gradients of the input and
           every parameter from a fixed random grad_output (autograd.grad rather than .backward() so that no .grad
           accumulates between calls).
  train-bn forward + backward as in train, but in train mode: every BatchNorm normalizes with the batch's statistics
           and updates its running statistics on each call (the fused module runs ghostkernels::ghost_module_bn_train).
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable

import torch
from torch import nn

from .cases import DTypeConfig


def fused_backends(device: torch.device) -> tuple[list[str], list[str]]:
    """(backends of the fused op that can run on `device`, a message for each one that cannot)."""
    from ghostkernels import ops

    ops.load_library()
    if device.type == "cpu":
        return ["cpu"], []
    if device.type != "cuda":
        return [], [f"no fused backend runs on {device.type}"]
    usable, skipped = [], []
    if ops.cuda_kernels_available():
        usable.append("cuda")
    else:
        skipped.append("fused-cuda skipped: the op library was built without CUDA kernels")
    reason = triton_unavailable_reason()
    if reason is None:
        usable.append("triton")
    else:
        skipped.append(f"fused-triton skipped: {reason}")
    return usable, skipped


def triton_unavailable_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        from ghostkernels.triton import ghost_module_triton  # noqa: F401
    except ImportError as e:
        return f"ghostkernels.triton cannot be imported ({e})"
    return None


def module_providers(device: torch.device) -> tuple[list[str], list[str]]:
    backends, skipped = fused_backends(device)
    return ["eager", "compile"] + [f"fused-{b}" for b in backends], skipped


def fused_backend_of(provider: str) -> str:
    return provider.removeprefix("fused-").removesuffix("+compile").removesuffix("-modules").removesuffix("-frozen")


def place(module: nn.Module, device: torch.device, config: DTypeConfig) -> nn.Module:
    """A copy of `module` on `device` in config's dtype, its conv weights in config's memory format."""
    m = copy.deepcopy(module).to(device=device, dtype=config.dtype)
    if config.channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m.eval()


def fused_ghost_module(module: nn.Module, backend: str, device: torch.device, config: DTypeConfig) -> nn.Module:
    """FusedGhostModule.from_module of a float32 copy (BN is folded in float32, then cast), in config's dtype."""
    from ghostkernels import FusedGhostModule

    f32 = copy.deepcopy(module).to(device=device, dtype=torch.float32).eval()
    return FusedGhostModule.from_module(f32, backend=backend).to(dtype=config.dtype).eval()


def fused_model(model: nn.Module, backend: str, device: torch.device, config: DTypeConfig,
                blocks: bool = True) -> nn.Module:
    """ghostkernels.fuse of a float32 copy of `model` (strict: a model not completely fused fails instead of being
    timed), then cast to config (dtype, memory format)."""
    from ghostkernels import fuse

    f32 = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    fused = fuse(f32, backend=backend, strict=True, blocks=blocks).to(dtype=config.dtype)
    if config.channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused.eval()


def make_step(module: Callable, mode: str) -> Callable:
    """The timed call: step(x, grad_out) -> outputs (forward) or gradients (train), see the module docstring."""
    if mode == "forward":
        def forward_step(x, grad_out=None):
            with torch.no_grad():
                return module(x)

        return forward_step
    if mode in ("train", "train-bn"):
        params = tuple(p for p in _parameters_of(module) if p.requires_grad)

        def train_step(x, grad_out):
            out = module(x)
            return torch.autograd.grad(out, (x, *params), grad_out)

        return train_step
    raise ValueError(f"ghostkernels.bench: unknown mode {mode!r}; expected forward, train or train-bn")


def _parameters_of(module) -> list[torch.Tensor]:
    # torch.compile returns an OptimizedModule whose parameters are the original module's.
    return list(module.parameters()) if isinstance(module, nn.Module) else []


def set_mode(module: nn.Module, mode: str) -> nn.Module:
    """Eval mode (frozen BN), except train mode for train-bn; parameters require grad only for training."""
    module.train(mode == "train-bn")
    module.requires_grad_(mode != "forward")
    return module


def compile_module(module: nn.Module, mode: str, example: tuple, reset: bool = True) -> Callable:
    """torch.compile the module (fullgraph: a graph break raises instead of running eager) and compile it now,
    by running the step twice on `example`; returns the compiled step. `reset`: dynamo's caches are cleared first
    (so that earlier cases' graphs never count towards the recompile limit); that also drops every other compiled
    step's graphs, so callers that keep several compiled steps alive reset once themselves and pass False.

    The compilation happens on the first call, so that call runs inside the freezing patch and, for inference,
    under no_grad (freezing applies only to inference graphs).
    """
    if reset:
        torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    step = make_step(compiled, mode)
    # make_step took the parameters from the compiled wrapper, which shares them with `module`.
    with torch._inductor.config.patch(freezing=(mode == "forward")):
        step(*example)
        step(*example)
    return step


def prepare_module_step(provider: str, base: nn.Module, device: torch.device, config: DTypeConfig, mode: str,
                        example: tuple) -> Callable:
    """The step of `provider` for one GhostModule `base` (float32, eval, CPU), compiled and warmed if needed."""
    if provider in ("eager", "compile"):
        module = set_mode(place(base, device, config), mode)
        if provider == "compile":
            return compile_module(module, mode, example)
        return make_step(module, mode)
    if provider.startswith("fused-"):
        module = set_mode(fused_ghost_module(base, fused_backend_of(provider), device, config), mode)
        return make_step(module, mode)
    raise ValueError(f"ghostkernels.bench: unknown module provider {provider!r}")
