"""Timing one benchmark step: warm-up, then repeated timed calls; median with 20th/80th percentiles.

CPU: each call is timed with time.perf_counter on the calling thread, at the thread count the harness set
(torch.set_num_threads). Inputs are not rotated on CPU: inside a network the previous layer has just written the
input, so it is as warm in the caches as here, and every provider sees the same state.

GPU: each call is bracketed by two CUDA events (the time the GPU spent from the first to the last kernel of the
call, including the gaps where it waited for the host, which is what a latency-bound batch-1 call really costs).
The inputs are rotated over enough copies that together they exceed twice the L2 cache, so no call finds its input
left in L2 by the previous one (the weights, a few hundred KB, do stay in L2, as they would in a network).

Several providers of one case (time_in_rounds, used end to end): they take turns in rounds, each turn a pause (CPU),
a few untimed calls and a slice of the timed ones, and each provider's figure is the median over all its slices.
On a shared machine the speed changes over tens of seconds (bench/NOTES.md entry 26: stretches in which a forward
takes 1.5x as long); timed one after the other, minutes apart (a model compile takes a minute), two providers could
land on different sides of such a change, while in rounds a few seconds long they see the same ones.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

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


@dataclasses.dataclass(frozen=True)
class Rounds:
    """How the providers of one case take turns in time_in_rounds.

    rounds: turns per provider; the budget's min_time_s, min_reps and max_reps are split evenly over them.
    dropped: untimed calls at the start of each turn: they find the caches holding the previous provider's data
      (and, on CPU, its idle threads possibly still spinning).
    pause_s: CPU only, a sleep before each turn, so that the previous provider's thread pool (ONNX Runtime's and
      OpenMP's both spin for a while when idle) has gone to sleep and does not compete for the cores.
    """

    rounds: int = 5
    dropped: int = 2
    pause_s: float = 0.02


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


def summarize(samples_ms: Sequence[float]) -> Timing:
    """Median and 20th/80th percentiles of per-call times (ms)."""
    p20, p50, p80 = np.percentile(np.asarray(samples_ms, dtype=np.float64), [20, 50, 80])
    return Timing(median_ms=float(p50), p20_ms=float(p20), p80_ms=float(p80), reps=len(samples_ms))


def time_step(step: Callable, inputs: Sequence[tuple], device: torch.device,
              budget: TimingBudget = TimingBudget()) -> Timing:
    """Time `step(*inputs[i % len(inputs)])`: warm up for budget.warmup_s (at least 2 calls), then time calls
    until both budget.min_time_s and budget.min_reps are reached (or budget.max_reps)."""
    if not inputs:
        raise ValueError("ghostkernels.bench: time_step needs at least one input set")
    start = _warm_up(step, inputs, device, 0, budget.warmup_s)
    samples, _ = _timed_calls(step, inputs, device, start, budget.min_reps, budget.min_time_s, budget.max_reps)
    return summarize(samples)


def time_in_rounds(steps: Mapping[str, Callable], inputs: Sequence[tuple], device: torch.device,
                   budget: TimingBudget = TimingBudget(), turns: Rounds = Rounds(),
                   strict: bool = True) -> dict[str, list[list[float]] | Exception]:
    """Time several providers' steps on the same inputs in turns (see the module docstring and Rounds).

    Each step is warmed up (budget.warmup_s, at least 2 calls) first; then `turns.rounds` rounds, the providers'
    order reversed every other round, each turn at least ceil(min_reps / rounds) timed calls lasting at least
    min_time_s / rounds (at most ceil(max_reps / rounds)). Returns, per provider, its per-call times (ms) per
    round, or, unless `strict`, the exception its step raised (that provider then sits out the later rounds)."""
    if not inputs:
        raise ValueError("ghostkernels.bench: time_in_rounds needs at least one input set")
    if isinstance(turns.rounds, bool) or not isinstance(turns.rounds, int) or turns.rounds < 1:
        raise ValueError(f"ghostkernels.bench: rounds must be an int >= 1, got {turns.rounds!r}")
    if isinstance(turns.dropped, bool) or not isinstance(turns.dropped, int) or turns.dropped < 0:
        raise ValueError(f"ghostkernels.bench: dropped must be an int >= 0, got {turns.dropped!r}")
    if not turns.pause_s >= 0:
        raise ValueError(f"ghostkernels.bench: the pause must be >= 0 seconds, got {turns.pause_s!r}")
    n = turns.rounds
    min_reps, max_reps = math.ceil(budget.min_reps / n), max(1, math.ceil(budget.max_reps / n))
    out: dict[str, list[list[float]] | Exception] = {}
    position: dict[str, int] = {}

    def guarded(name: str, run: Callable[[], None]) -> None:
        try:
            run()
        except Exception as e:  # noqa: BLE001 - returned to the caller, which records it; re-raised when strict
            if strict:
                raise
            out[name] = e

    for name, step in steps.items():
        out[name] = []

        def warm(name=name, step=step):
            position[name] = _warm_up(step, inputs, device, 0, budget.warmup_s)

        guarded(name, warm)
    order = list(steps)
    for r in range(n):
        for name in order if r % 2 == 0 else reversed(order):
            if isinstance(out[name], Exception):
                continue
            step = steps[name]

            def turn(name=name, step=step):
                if device.type != "cuda" and turns.pause_s > 0:
                    time.sleep(turns.pause_s)
                start = _warm_up(step, inputs, device, position[name], 0.0, turns.dropped)
                samples, position[name] = _timed_calls(step, inputs, device, start, min_reps,
                                                       budget.min_time_s / n, max_reps)
                out[name].append(samples)

            guarded(name, turn)
    return out


def _warm_up(step, inputs, device: torch.device, start: int, warmup_s: float, min_calls: int = 2) -> int:
    """Untimed calls for warmup_s seconds and at least min_calls; returns the next input index."""
    n, i = len(inputs), start
    t_end = time.perf_counter() + warmup_s
    while i - start < min_calls or time.perf_counter() < t_end:
        step(*inputs[i % n])
        i += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # warm-up timing must see the GPU's time, not just the launches
    return i


def _timed_calls(step, inputs, device: torch.device, start: int, min_reps: int, min_time_s: float,
                 max_reps: int) -> tuple[list[float], int]:
    """Per-call times (ms) of calls until min_reps and min_time_s are both reached, or max_reps; returns them and
    the next input index."""
    if device.type == "cuda":
        return _timed_calls_cuda(step, inputs, device, start, min_reps, min_time_s, max_reps)
    n, i = len(inputs), start
    samples: list[float] = []
    t_stop = time.perf_counter() + min_time_s
    while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() < t_stop):
        t0 = time.perf_counter()
        step(*inputs[i % n])
        samples.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return samples, i


def _timed_calls_cuda(step, inputs, device: torch.device, start: int, min_reps: int, min_time_s: float,
                      max_reps: int) -> tuple[list[float], int]:
    n, i = len(inputs), start
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        # Events are recorded in chunks and read back after one synchronize per chunk, so the host never blocks
        # between timed calls (which would add a launch gap that real back-to-back calls do not have).
        samples: list[float] = []
        chunk = 16
        t_stop = time.perf_counter() + min_time_s
        while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() < t_stop):
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(min(chunk, max_reps - len(samples)))]
            for begin, end in events:
                begin.record()
                step(*inputs[i % n])
                end.record()
                i += 1
            torch.cuda.synchronize()
            samples.extend(begin.elapsed_time(end) for begin, end in events)
    return samples, i


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
