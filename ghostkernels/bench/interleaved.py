"""`python -m ghostkernels.bench.interleaved`: two end-to-end providers compared in one process, in alternating
bursts of calls, for comparisons that separate processes cannot settle.

Why: on a shared (virtual) machine a process's timings depend on when it runs; on the 2-core VM of bench/NOTES.md
there are stretches of 30-60 s in which a forward takes 1.5x as long, and they decided more of the batch-1 pairs
of separate processes (fuse + freeze against ONNX Runtime) than the engines did (entry 26). Here both providers
live in one process and take turns: each burst is a pause, a few calls whose first ones are dropped (they find
the caches holding the other provider's data and its threads still awake), and the remaining calls timed. Both
providers see the same stretches, and each burst gives one paired comparison.

The pause matters: without one, the previous provider's idle threads still spin (ONNX Runtime's pool and
OpenMP's both do) and compete with the next provider's threads for the cores, which measures that contention.
With it, neither provider finds its weights in the last-level cache at the start of a burst, so this compares
bursts of inference after an idle gap (a server between requests), not an endless back-to-back loop; the median
of separate processes (the end-to-end benchmark) remains the back-to-back figure.

Each provider's logits are checked against the float64 eager model first (as in the end-to-end benchmark).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from .cases import E2E_MODELS, DTypeConfig
from .end_to_end import EndToEndCase, EndToEndRunner, end_to_end_providers
from .timing import Rounds, TimingBudget

DEFAULT_PROVIDERS = ("fused-cpu-frozen", "onnxruntime")


def compare(providers, model: str = "ghostnet_100", batch: int = 1, resolution: int = 224, bursts: int = 30,
            calls: int = 12, dropped: int = 2, pause_s: float = 0.05, threads: int | None = None) -> dict:
    """Time the two CPU float32 `providers` (names as in the end-to-end benchmark) in `bursts` alternating bursts
    of `calls` calls each (the first `dropped` of a burst not counted), `pause_s` seconds before each burst.

    Returns {"providers", "median_ms" (per provider, over all counted calls), "burst_medians_ms" (per provider,
    one per burst), "first_faster_bursts" (bursts where providers[0]'s median was lower), "ratio" (median of
    providers[0] / median of providers[1]), and the settings}."""
    if len(providers) != 2 or providers[0] == providers[1]:
        raise ValueError(f"ghostkernels.bench.interleaved: give two different providers, got {list(providers)}")
    known, skipped = end_to_end_providers(torch.device("cpu"), ["cpu"])
    for p in providers:
        if p not in known:
            raise ValueError(f"ghostkernels.bench.interleaved: unknown end-to-end provider {p!r}; expected one of "
                             f"{', '.join(known)}" + "".join(f" ({s})" for s in skipped))
    if model not in E2E_MODELS:
        raise ValueError(f"ghostkernels.bench.interleaved: unknown model {model!r}; expected one of "
                         f"{', '.join(E2E_MODELS)}")
    for name, value, least in (("batch", batch, 1), ("resolution", resolution, 32), ("bursts", bursts, 1),
                               ("calls", calls, dropped + 1), ("dropped", dropped, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"ghostkernels.bench.interleaved: {name} must be an int >= {least}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"ghostkernels.bench.interleaved: threads must be an int >= 1, got {threads!r}")
    if not pause_s >= 0:
        raise ValueError(f"ghostkernels.bench.interleaved: the pause must be >= 0 seconds, got {pause_s!r}")
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    runner = EndToEndRunner(device, torch.get_num_threads(), TimingBudget(), strict=True)
    case = EndToEndCase(model, batch, DTypeConfig(torch.float32, False), resolution)
    timed = calls - dropped
    try:
        x = runner.inputs(case)[0]
        reference = runner.reference(case, x)
        torch._dynamo.reset()  # once: two compiled providers must both stay compiled (EndToEndRunner.run)
        steps = {p: runner.checked_step(p, case, x, reference, fresh_dynamo=False)[0] for p in providers}
        # Two warm-up calls each (JIT builds, first-touch pages, the ORT session's arena), then exactly `timed`
        # timed calls per burst.
        budget = TimingBudget(warmup_s=0.0, min_time_s=0.0, min_reps=timed * bursts, max_reps=timed * bursts)
        per_burst = runner.time_steps(steps, [(x,)], budget, Rounds(bursts, dropped, pause_s))
    finally:
        runner.close()
    burst_medians = {p: [statistics.median(turn) for turn in per_burst[p]] for p in providers}
    samples = {p: [t for turn in per_burst[p] for t in turn] for p in providers}
    first, second = providers
    medians = {p: statistics.median(v) for p, v in samples.items()}
    return {"providers": list(providers), "model": model, "batch": batch, "resolution": resolution,
            "threads": torch.get_num_threads(), "bursts": bursts, "calls": calls, "dropped": dropped,
            "pause_s": pause_s, "median_ms": medians, "burst_medians_ms": burst_medians,
            "first_faster_bursts": sum(a < b for a, b in zip(burst_medians[first], burst_medians[second])),
            "ratio": medians[first] / medians[second]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ghostkernels.bench.interleaved", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--providers", default=",".join(DEFAULT_PROVIDERS),
                        help="two end-to-end providers, comma-separated (default %(default)s)")
    parser.add_argument("--model", default="ghostnet_100", choices=list(E2E_MODELS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--calls", type=int, default=12, help="calls per burst (default %(default)s)")
    parser.add_argument("--dropped", type=int, default=2, help="calls not counted at a burst's start")
    parser.add_argument("--pause-ms", type=float, default=50.0, help="pause before each burst")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        r = compare([p.strip() for p in args.providers.split(",")], args.model, args.batch, args.resolution,
                    args.bursts, args.calls, args.dropped, args.pause_ms / 1e3, args.threads)
    except ValueError as e:
        parser.error(str(e))
    a, b = r["providers"]
    print(f"{r['model']} batch {r['batch']} @{r['resolution']}, {r['threads']} threads, {r['bursts']} bursts of "
          f"{r['calls']} calls ({r['dropped']} dropped), {r['pause_s'] * 1e3:g} ms pause before each")
    for p in (a, b):
        print(f"  {p:20s} median {r['median_ms'][p]:8.3f} ms")
    print(f"  {a} / {b}: {r['ratio']:.3f}; {a} faster in {r['first_faster_bursts']} of {r['bursts']} bursts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
