"""Module microbenchmarks: one Ghost-module shape, one mode/batch/dtype, every provider.

Achieved bandwidth counts the ideal bytes of a perfectly fused kernel, so GB/s compares providers on the same
yardstick (an unfused provider moves more bytes than that; its GB/s is "effective", not what the memory bus did):
  forward:  read x once + write the output once + read the folded weights and biases once;
  train, train-bn:  the forward's bytes + read grad_output + read x again (the fused backward recomputes x1 from
            x) + write grad_x + read the weights again + write their gradients (train-bn: the same ideal; the fused
            op's extra passes over its z1 are what it pays for the batch statistics).
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence

import torch

from . import checks
from .cases import DTypeConfig, GhostShape, ShapeCase, randomize_batchnorm
from .providers import make_step, place, prepare_module_step, set_mode
from .timing import TimingBudget, rotation_copies, time_step


@dataclasses.dataclass(frozen=True)
class ModuleCase:
    case: ShapeCase
    mode: str
    batch: int
    config: DTypeConfig

    @property
    def shape(self) -> GhostShape:
        return self.case.shape

    @property
    def label(self) -> str:
        return f"{self.mode} {self.config.label} b{self.batch} {self.shape.label}"


def ideal_bytes(shape: GhostShape, batch: int, element_size: int, mode: str) -> int:
    """See the module docstring."""
    x = batch * shape.in_channels * shape.height * shape.width
    out = batch * shape.out_channels * shape.height * shape.width
    w = shape.weight_elements()
    forward = x + out + w
    if mode == "forward":
        return forward * element_size
    return (forward + out + x + x + w + w) * element_size


def make_inputs(case: ModuleCase, device: torch.device, seed: int = 0) -> list[tuple]:
    """Random (x, grad_out) pairs, rotated over enough copies to defeat the GPU's L2 (one copy on CPU)."""
    s, cfg = case.shape, case.config
    x_shape = (case.batch, s.in_channels, s.height, s.width)
    g_shape = (case.batch, s.out_channels, s.height, s.width)
    elt = torch.empty((), dtype=cfg.dtype).element_size()
    per_set = (x_shape[0] * x_shape[1] * x_shape[2] * x_shape[3]) * elt
    if case.mode != "forward":
        per_set += g_shape[0] * g_shape[1] * g_shape[2] * g_shape[3] * elt
    gen = torch.Generator(device=device).manual_seed(seed)
    sets = []
    for _ in range(rotation_copies(per_set, device)):
        x = torch.randn(x_shape, generator=gen, device=device).to(dtype=cfg.dtype, memory_format=cfg.memory_format)
        g = None
        if case.mode != "forward":
            x.requires_grad_(True)
            g = torch.randn(g_shape, generator=gen, device=device).to(dtype=cfg.dtype,
                                                                      memory_format=cfg.memory_format)
        sets.append((x, g))
    return sets


def reference_result(base: torch.nn.Module, case: ModuleCase, device: torch.device, x, g) -> torch.Tensor:
    """The float64 eager module's output (forward) or input gradient (train, train-bn) on the first input set
    (train-bn: a copy in train mode, so its running statistics move, which the result does not depend on)."""
    f64 = DTypeConfig(torch.float64, False)
    step = make_step(set_mode(place(base, device, f64), case.mode), case.mode)
    x64 = x.detach().to(torch.float64).requires_grad_(case.mode != "forward")
    g64 = None if g is None else g.to(torch.float64)
    return checks.first_tensor(step(x64, g64)).detach()


@dataclasses.dataclass
class PreparedCase:
    """A case's module (float32, eval, BN randomized), its rotated inputs and the float64 reference result."""

    case: ModuleCase
    device: torch.device
    base: torch.nn.Module
    inputs: list[tuple]
    reference: torch.Tensor

    @classmethod
    def build(cls, case: ModuleCase, device: torch.device) -> PreparedCase:
        torch.manual_seed(0)  # the module's conv weights come from the global RNG
        base = randomize_batchnorm(case.shape.build()).eval()
        inputs = make_inputs(case, device)
        return cls(case, device, base, inputs, reference_result(base, case, device, *inputs[0]))

    def checked_step(self, provider: str) -> tuple[Callable, float]:
        """The provider's step (compiled and warmed if needed) and its relative error against the reference;
        raises AssertionError when the error exceeds the dtype's tolerance."""
        case = self.case
        step = prepare_module_step(provider, self.base, self.device, case.config, case.mode, self.inputs[0])
        tolerances = checks.MODULE_TOLERANCE if case.mode == "forward" else checks.GRAD_TOLERANCE
        err, ok = checks.check(checks.first_tensor(step(*self.inputs[0])), self.reference, case.config.dtype,
                               tolerances)
        if not ok:
            raise AssertionError(f"{provider} on {case.label}: relative error {err:.3g} exceeds the "
                                 f"{case.config.name} tolerance {tolerances[case.config.dtype]}")
        return step, err


def run_module_case(case: ModuleCase, providers: Sequence[str], device: torch.device, budget: TimingBudget,
                    strict: bool = False, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Check and time every provider on one case; one record per provider.

    A provider that raises, or whose result fails the check, gets a record with "error" (and no timing) unless
    `strict`, in which case the exception propagates.
    """
    prepared = PreparedCase.build(case, device)
    elt = torch.empty((), dtype=case.config.dtype).element_size()
    nbytes = ideal_bytes(case.shape, case.batch, elt, case.mode)
    records = []
    for provider in providers:
        rec = {
            "shape": case.shape.to_json(), "label": case.shape.label, "model_counts": dict(case.case.counts),
            "mode": case.mode, "batch": case.batch, "dtype": case.config.name,
            "memory_format": "channels_last" if case.config.channels_last else "nchw",
            "provider": provider, "ideal_bytes": nbytes, "input_copies": len(prepared.inputs),
        }
        try:
            step, rec["rel_err"] = prepared.checked_step(provider)
            timing = time_step(step, prepared.inputs, device, budget)
            rec.update(timing.to_json())
            rec["gb_per_s"] = nbytes / (timing.median_ms * 1e-3) / 1e9
        except Exception as e:  # noqa: BLE001 - recorded, reported, and re-raised in strict mode
            if strict:
                raise
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc(limit=4)
        records.append(rec)
        if on_result is not None:
            on_result(rec)
    return records
