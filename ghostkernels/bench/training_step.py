"""A whole GhostNet training step with batch-statistics BatchNorm: eager, torch.compile and fuse(model).

The step: the model in train mode (every BatchNorm normalizes with the batch's statistics and updates its running
statistics; dropout set to 0 so that every provider computes the same function), the forward of an image batch, and
the backward of a fixed random gradient of the logits to every parameter (torch.autograd.grad, so nothing
accumulates in .grad). No optimizer step: it costs every provider the same.

Providers: eager (the model itself), compile (torch.compile(model, fullgraph=True), compiled before timing),
fused-<backend> (ghostkernels.fuse(model, strict=True): every Ghost module on ghostkernels::ghost_module_bn_train,
the bottlenecks' other layers eager). Each provider's logits and parameter gradients are checked against the
float64 eager model on the same batch before it is timed; the providers of a case are timed in turns
(timing.time_in_rounds), as end to end.

Memory, per provider (see ghostkernels.bench.memory): peak_bytes of one step, and for eager and fused the bytes
autograd saves for backward, with the part saved inside Ghost modules (saved_bytes_ghost: the activation memory of
the Ghost modules, the issue's memory target). Not for compile: the compiled graph's saved tensors cannot be
attributed to modules (the module hooks are traced away).
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import checks, memory
from .cases import DTypeConfig
from .end_to_end import EndToEndCase
from .providers import fused_backend_of, fused_model, place, set_mode
from .timing import Rounds, TimingBudget, summarize, time_in_rounds

# The batch of the step per device (the CPU batch 32).
TRAIN_STEP_BATCH = {"cpu": 32, "cuda": 256}
# A step takes about a second on 2 cores: fewer timed calls than the harness's default, still in 5 rounds.
TRAIN_STEP_BUDGET = TimingBudget(warmup_s=0.0, min_time_s=2.0, min_reps=5, max_reps=50)


# How far a provider's parameter gradients may be from float64, relative to eager's own in the same dtype. A whole
# model's gradients go through every layer's rounding: in bfloat16, GhostNetV2's ~70 batch-statistics BatchNorms
# and 14 sigmoid gates put eager itself at 0.32 (relative L2, 2026-12-03), beyond the per-module tolerance.
EAGER_GRAD_SLACK = 1.25


def grad_limit(dtype: torch.dtype, eager_err: float | None, provider: str) -> float:
    """The largest parameter-gradient error accepted for ``provider``: the dtype's tolerance, or EAGER_GRAD_SLACK x
    eager's error where that is larger (a fused step may be as inexact as eager, not more). Eager itself, the
    baseline, is held to the dtype's tolerance only where it is the float32 reference of a bug-free harness:
    in 16-bit types its error is recorded, not judged (it is what PyTorch computes)."""
    tol = checks.GRAD_TOLERANCE[dtype]
    if provider == "eager":
        return tol if dtype == torch.float32 else float("inf")
    if eager_err is None:  # eager failed to run: no baseline, the dtype's tolerance alone
        return tol
    return max(tol, EAGER_GRAD_SLACK * eager_err)


def train_step_providers(backends: Sequence[str], with_compile: bool = True) -> list[str]:
    return ["eager"] + (["compile"] if with_compile else []) + [f"fused-{b}" for b in backends]


# A case is what an end-to-end case is: model, batch, dtype configuration, resolution.
TrainStepCase = EndToEndCase


def train_mode_model(base: nn.Module, provider: str, device: torch.device, config: DTypeConfig) -> nn.Module:
    """The provider's model (the uncompiled one for compile) in train mode, parameters requiring grad, no dropout."""
    if provider in ("eager", "compile"):
        model = place(base, device, config)
    elif provider.startswith("fused-"):
        model = fused_model(base, fused_backend_of(provider), device, config)
    else:
        raise ValueError(f"ghostkernels.bench: unknown training-step provider {provider!r}")
    model = set_mode(model, "train-bn")
    if hasattr(model, "dropout"):
        model.dropout = 0.0  # GhostNet's classifier dropout: random in train mode
    return model


@dataclasses.dataclass
class TrainStep:
    """One provider's step: forward through `forward` (the model, or its compiled wrapper), gradients of `params`."""

    model: nn.Module
    forward: Callable
    params: tuple

    def __call__(self, x: torch.Tensor, grad_out: torch.Tensor):
        return torch.autograd.grad(self.forward(x), self.params, grad_out)


def build_step(base: nn.Module, provider: str, device: torch.device, config: DTypeConfig) -> TrainStep:
    model = train_mode_model(base, provider, device, config)
    forward = torch.compile(model, fullgraph=True) if provider == "compile" else model
    return TrainStep(model, forward, tuple(p for p in model.parameters() if p.requires_grad))


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.detach().double().reshape(-1) for g in grads])


def case_inputs(case: TrainStepCase, device: torch.device, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(case.batch, 3, case.resolution, case.resolution, generator=gen, device=device)
    x = x.to(dtype=case.config.dtype, memory_format=case.config.memory_format)
    grad_out = torch.randn(case.batch, num_classes, generator=gen, device=device).to(case.config.dtype)
    return x, grad_out


def run_train_step_case(case: TrainStepCase, base: nn.Module, providers: Sequence[str], device: torch.device,
                        budget: TimingBudget = TRAIN_STEP_BUDGET, turns: Rounds = Rounds(), strict: bool = False,
                        on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Check, measure the memory of, and time every provider on one case; one record per provider."""
    x, grad_out = case_inputs(case, device, base.classifier.out_features)
    ref = build_step(base, "eager", device, DTypeConfig(torch.float64, False))
    ref_out = ref.forward(x.double())
    ref_grads = _flat(torch.autograd.grad(ref_out, ref.params, grad_out.double()))
    ref_out = ref_out.detach()
    del ref
    records: dict[str, dict] = {}
    steps: dict[str, Callable] = {}
    eager_grad_err = None
    torch._dynamo.reset()
    for provider in providers:
        rec = {"model": case.model, "resolution": case.resolution, "batch": case.batch, "dtype": case.config.name,
               "memory_format": "channels_last" if case.config.channels_last else "nchw", "provider": provider,
               "bn": "batch-statistics"}
        try:
            step = build_step(base, provider, device, case.config)
            out = step.forward(x)
            rec["rel_err"], ok = checks.check(out, ref_out, case.config.dtype, checks.MODEL_TOLERANCE)
            rec["grad_rel_err"] = checks.relative_error(_flat(torch.autograd.grad(out, step.params, grad_out)),
                                                        ref_grads)
            del out
            if provider == "eager":
                eager_grad_err = rec["grad_rel_err"]
            limit = grad_limit(case.config.dtype, eager_grad_err, provider)
            if not ok or rec["grad_rel_err"] > limit:
                raise AssertionError(f"{provider} on the training step of {case.label}: logits off by {rec['rel_err']:.3g}, gradients "
                                     f"by {rec['grad_rel_err']:.3g} (relative L2 against float64 eager; limit "
                                     f"{limit:.3g})")
            rec["peak_bytes"] = memory.peak_bytes(lambda step=step: step(x, grad_out), device)
            if provider != "compile":
                saved = memory.saved_tensor_bytes(step.model, x, grad_out)
                rec.update(saved_bytes=saved.total_bytes, saved_bytes_ghost=saved.ghost_bytes,
                           saved_tensors=saved.tensors)
            steps[provider] = step
        except Exception as e:  # noqa: BLE001 - recorded, reported, and re-raised in strict mode
            if strict:
                raise
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc(limit=4)
        records[provider] = rec
    with torch._dynamo.config.patch(error_on_recompile=True):
        timed = time_in_rounds(steps, [(x, grad_out)], device, budget, turns, strict=strict)
    for provider, rec in records.items():
        result = timed.get(provider)
        if isinstance(result, Exception):
            rec["error"] = f"{type(result).__name__}: {result}"
        elif result is not None:
            rec.update(summarize([t for turn in result for t in turn]).to_json())
            rec["rounds"] = len(result)
            rec["images_per_s"] = case.batch / (rec["median_ms"] * 1e-3)
        if on_result is not None:
            on_result(rec)
    return list(records.values())
