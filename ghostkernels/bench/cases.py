"""The benchmark cases: every Ghost-module shape of GhostNet, read off the models with forward hooks.

Shapes are never typed in: each model is built, run once on a random 224x224 image, and every GhostModule records
the shape it actually saw (input channels and resolution from its input, out_channels from its output, init, ratio
and the depthwise kernel from its layers). Identical shapes are merged, keeping how often each model uses them, so
that per-model averages can weight a shape by its number of occurrences.

Scopes (how much of that to run):
  full   every shape of every selected model, at its real resolution;
  quick  a handful of GhostNet 1.0x shapes spread over the network (the CLI's default);
  smoke  three shapes (a ReLU one, an identity one, a GhostNet 0.5x one whose init is not a multiple of 8) at a
         spatial size capped to SMOKE_MAX_HW: every code path runs, nothing costs time (CI).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

MODELS = ("ghostnet_050", "ghostnet_100", "ghostnet_130")
# End to end also GhostNetV2 1.0x, whose Ghost modules are GhostNet's shapes (14 of them gated): the Ghost-module
# microbenchmarks take their shapes from MODELS only.
E2E_MODELS = MODELS + ("ghostnetv2_100",)
QUICK_MODEL = "ghostnet_100"
QUICK_SHAPES = 6
SMOKE_MAX_HW = 12
SCOPES = ("smoke", "quick", "full")


@dataclasses.dataclass(frozen=True)
class DTypeConfig:
    """A dtype and the memory format its inputs (and the eager module's conv weights) use."""

    dtype: torch.dtype
    channels_last: bool

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def label(self) -> str:
        return f"{self.name}-{'channels_last' if self.channels_last else 'nchw'}"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


# The configurations: CPU float32 and bfloat16 (NCHW, PyTorch's default layout on CPU); GPU float16 and
# bfloat16 channels_last (the layout tensor cores want) and float32 NCHW.
DEFAULT_CONFIGS = {
    "cpu": (DTypeConfig(torch.float32, False), DTypeConfig(torch.bfloat16, False)),
    "cuda": (DTypeConfig(torch.float16, True), DTypeConfig(torch.bfloat16, True), DTypeConfig(torch.float32, False)),
}
THROUGHPUT_BATCH = {"cpu": 8, "cuda": 256}
# train = forward+backward with frozen (eval-mode) BatchNorm; train-bn = forward+backward with the BatchNorms in
# training (batch statistics, running statistics updated on every call: what a training step does).
MODES = ("forward", "train", "train-bn")


def parse_dtype_config(text: str, device_type: str) -> DTypeConfig:
    """'float32', 'bfloat16', 'float16', optionally with ':cl'/':channels_last' or ':nchw'; without a layout the
    device's default for that dtype (DEFAULT_CONFIGS) is used, else NCHW."""
    name, _, layout = text.strip().partition(":")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"ghostkernels.bench: unknown dtype {name!r}; expected float32, bfloat16 or float16")
    if layout in ("cl", "channels_last"):
        return DTypeConfig(dtype, True)
    if layout in ("nchw", "contiguous"):
        return DTypeConfig(dtype, False)
    if layout:
        raise ValueError(f"ghostkernels.bench: unknown memory format {layout!r} in {text!r}; expected cl or nchw")
    for cfg in DEFAULT_CONFIGS.get(device_type, ()):
        if cfg.dtype == dtype:
            return cfg
    return DTypeConfig(dtype, False)


@dataclasses.dataclass(frozen=True)
class GhostShape:
    """One Ghost-module configuration at one input resolution (what a microbenchmark needs to build it)."""

    in_channels: int
    out_channels: int
    ratio: int
    dw_size: int
    relu: bool
    height: int
    width: int

    @property
    def init_channels(self) -> int:
        return math.ceil(self.out_channels / self.ratio)

    @property
    def cheap_channels(self) -> int:
        return self.init_channels * (self.ratio - 1)

    @property
    def label(self) -> str:
        act = "relu" if self.relu else "id"
        return f"{self.in_channels}->{self.out_channels} k{self.dw_size} {act} @{self.height}x{self.width}"

    def build(self) -> nn.Module:
        """A GhostModule of this shape, built with the official constructor (ghostkernels.models.GhostModule)."""
        from ghostkernels.models import GhostModule

        return GhostModule(self.in_channels, self.out_channels, kernel_size=1, ratio=self.ratio,
                           dw_size=self.dw_size, stride=1, relu=self.relu)

    def weight_elements(self) -> int:
        """Elements of the folded weights and biases the fused op reads: 1x1 conv + bias, depthwise k x k + bias."""
        init, cheap = self.init_channels, self.cheap_channels
        return init * self.in_channels + init + cheap * self.dw_size * self.dw_size + cheap

    def with_max_hw(self, max_hw: int) -> GhostShape:
        return dataclasses.replace(self, height=min(self.height, max_hw), width=min(self.width, max_hw))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["init_channels"] = self.init_channels
        return d


@dataclasses.dataclass
class ShapeCase:
    """A unique shape and how many times each model uses it."""

    shape: GhostShape
    counts: dict[str, int]


def build_model(name: str) -> nn.Module:
    """ghostkernels.models.<name>() with randomized BatchNorm statistics (see randomize_batchnorm), in eval mode."""
    if name not in E2E_MODELS:
        raise ValueError(f"ghostkernels.bench: unknown model {name!r}; expected one of {', '.join(E2E_MODELS)}")
    from ghostkernels import models

    torch.manual_seed(0)
    model = getattr(models, name)()
    randomize_batchnorm(model)
    return model.eval()


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    A freshly built BN is the identity in eval mode (mean 0, var 1, weight 1, bias 0); folding it into the convs would
    then be untested by the output checks, and a wrong fold would pass unnoticed. Values stay near 1 so activations
    neither explode nor vanish through 60 layers.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.affine:
                    m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                    m.running_var.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=g))
    return module


def ghost_module_types() -> tuple[type, ...]:
    from ghostkernels.models import GhostModule

    return (GhostModule,)


def _shape_of(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> GhostShape:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 2:
        raise RuntimeError(f"ghostkernels.bench: expected a GhostModule with 2 convolutions, found {len(convs)}")
    primary, cheap = convs
    if primary.kernel_size != (1, 1) or primary.stride != (1, 1):
        raise RuntimeError("ghostkernels.bench: only GhostModules with a 1x1 stride-1 primary conv can be fused, "
                           f"found kernel {primary.kernel_size} stride {primary.stride}")
    init, cheap_out = primary.out_channels, cheap.out_channels
    relu = any(isinstance(m, nn.ReLU) for m in module.modules())
    return GhostShape(in_channels=x.shape[1], out_channels=out.shape[1], ratio=cheap_out // init + 1,
                      dw_size=cheap.kernel_size[0], relu=relu, height=x.shape[2], width=x.shape[3])


@functools.lru_cache(maxsize=None)  # a forward pass at 224x224 per model: read the shapes once per process
def model_shapes(name: str, resolution: int = 224) -> tuple[GhostShape, ...]:
    """Every GhostModule call of one forward pass of model `name` at resolution x resolution, in execution order."""
    model = build_model(name)
    types = ghost_module_types()
    seen: list[GhostShape] = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(_shape_of(mod, args[0], out)))
               for m in model.modules() if isinstance(m, types)]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)))
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise RuntimeError(f"ghostkernels.bench: no GhostModule ran in {name}; is ghostkernels.models.GhostModule "
                           "the class the model uses?")
    return tuple(seen)


def collect_cases(models: Iterable[str], resolution: int = 224) -> list[ShapeCase]:
    """Unique shapes over `models`, in order of first appearance, with per-model occurrence counts."""
    by_shape: dict[GhostShape, ShapeCase] = {}
    for name in models:
        for shape in model_shapes(name, resolution):
            case = by_shape.setdefault(shape, ShapeCase(shape, {}))
            case.counts[name] = case.counts.get(name, 0) + 1
    return list(by_shape.values())


def select_cases(scope: str, models: Sequence[str] = MODELS) -> list[ShapeCase]:
    """The shape cases of a scope (see the module docstring)."""
    if scope not in SCOPES:
        raise ValueError(f"ghostkernels.bench: unknown scope {scope!r}; expected one of {', '.join(SCOPES)}")
    if scope == "full":
        return collect_cases([m for m in models if m in MODELS])
    if scope == "quick":
        cases = collect_cases([QUICK_MODEL])
        n = min(QUICK_SHAPES, len(cases))
        picks = sorted({round(i * (len(cases) - 1) / max(n - 1, 1)) for i in range(n)})
        return [cases[i] for i in picks]
    return _smoke_cases()


def _smoke_cases() -> list[ShapeCase]:
    """Three shapes that together reach every branch of the kernels: ReLU, identity, init not a multiple of 8."""
    cases = collect_cases(["ghostnet_100"])
    picks = [next(c for c in cases if c.shape.relu), next(c for c in cases if not c.shape.relu)]
    odd = next((c for c in collect_cases(["ghostnet_050"]) if c.shape.init_channels % 8), None)
    if odd is not None:
        picks.append(odd)
    out: list[ShapeCase] = []
    for c in picks:
        small = c.shape.with_max_hw(SMOKE_MAX_HW)
        if all(o.shape != small for o in out):
            out.append(ShapeCase(small, dict(c.counts)))
    return out
