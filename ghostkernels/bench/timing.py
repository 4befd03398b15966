"""Timing one benchmark step: warm-up, then repeated timed calls; median with 20th/80th percentiles.

CPU: each call is timed with time.perf_counter on the calling thread, at the thread count the harness set
(torch.set_num_threads). Inputs are not rotated on CPU: inside a network the previous layer has just written the
input, so it is as warm in the caches as here, and every provider sees the same state.

GPU: each call is bracketed by two CUDA events (the time the GPU spent from the first to the last kernel of the
call, including the gaps where it waited for the host, which is what a latency-bound batch-1 call really costs).
The inputs are rotated over enough copies that together they exceed twice the L2 cache, so no call finds its input
left in L2 by the previous one (the weights, a few hundred KB, do stay in L2, as they would in a network).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

# Upper bounds on the rotated input copies (GPU): bytes, so a batch-256 float32 case stays affordable, and count, so
# that tiny inputs (the smoke tests' 12x12 maps, under ~25 KB) do not need tens of thousands of copies; only those
# tiny inputs end up with copies smaller than 2x L2.
MAX_ROTATION_BYTES = 2 << 30
MAX_ROTATION_COPIES = 4096


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TimingBudget:
    """How long to warm up and to measure one case. min_reps/max_reps bound the number of timed calls."""

    warmup_s: float = 0.1
    min_time_s: float = 0.5
    min_reps: int = 10
    max_reps: int = 2000


def l2_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        return int(size) or 50 << 20  # 50 MB (H100) when torch does not report it
    return 0


def rotation_copies(bytes_per_input_set: int, device: torch.device) -> int:
    """How many copies of the inputs to rotate through so that they exceed 2x the L2 cache (1 on CPU)."""
    if device.type != "cuda" or bytes_per_input_set <= 0:
        return 1
    want = math.ceil(2 * l2_cache_bytes(device) / bytes_per_input_set) + 1
    affordable = max(1, MAX_ROTATION_BYTES // bytes_per_input_set)
    return max(2, min(want, affordable, MAX_ROTATION_COPIES))


def _summarize(samples_ms: Sequence[float]) -> Timing:
    p20, p50, p80 = np.percentile(np.asarray(samples_ms, dtype=np.float64), [20, 50, 80])
    return Timing(median_ms=float(p50), p20_ms=float(p20), p80_ms=float(p80), reps=len(samples_ms))


def time_step(step: Callable, inputs: Sequence[tuple], device: torch.device,
              budget: TimingBudget = TimingBudget()) -> Timing:
    """Time `step(*inputs[i % len(inputs)])`: warm up for budget.warmup_s (at least 2 calls), then time calls
    until both budget.min_time_s and budget.min_reps are reached (or budget.max_reps)."""
    if not inputs:
        raise ValueError("ghostkernels.bench: time_step needs at least one input set")
    if device.type == "cuda":
        return _time_cuda(step, inputs, device, budget)
    return _time_cpu(step, inputs, budget)


def _time_cpu(step, inputs, budget: TimingBudget) -> Timing:
    n = len(inputs)
    i = 0
    t_end = time.perf_counter() + budget.warmup_s
    while i < 2 or time.perf_counter() < t_end:
        step(*inputs[i % n])
        i += 1
    samples: list[float] = []
    t_stop = time.perf_counter() + budget.min_time_s
    while len(samples) < budget.max_reps and (len(samples) < budget.min_reps or time.perf_counter() < t_stop):
        t0 = time.perf_counter()
        step(*inputs[i % n])
        samples.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return _summarize(samples)


def _time_cuda(step, inputs, device: torch.device, budget: TimingBudget) -> Timing:
    n = len(inputs)
    i = 0
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        t_end = time.perf_counter() + budget.warmup_s
        while i < 2 or time.perf_counter() < t_end:
            step(*inputs[i % n])
            i += 1
            torch.cuda.synchronize()  # warm-up timing must see the GPU's time, not just the launches
        # Events are recorded in chunks and read back after one synchronize per chunk, so the host never blocks
        # between timed calls (which would add a launch gap that real back-to-back calls do not have).
        samples: list[float] = []
        chunk = 16
        t_stop = time.perf_counter() + budget.min_time_s
        while len(samples) < budget.max_reps and (len(samples) < budget.min_reps or time.perf_counter() < t_stop):
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(chunk)]
            for start, end in events:
                start.record()
                step(*inputs[i % n])
                end.record()
                i += 1
            torch.cuda.synchronize()
            samples.extend(start.elapsed_time(end) for start, end in events)
    return _summarize(samples[:budget.max_reps])


def rotating_call(step: Callable, inputs: Sequence[tuple], device: torch.device) -> Callable[[], object]:
    """A no-argument call running `step` on the next input set each time (for pytest-benchmark, which times a
    callable itself); on GPU it synchronizes, so that the GPU's work is inside the time taken."""
    state = {"i": 0}
    n = len(inputs)

    def call():
        out = step(*inputs[state["i"] % n])
        state["i"] += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call
