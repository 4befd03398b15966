"""One benchmark run: the module microbenchmarks, end-to-end models and training memory, with progress lines.

The CLI (__main__) only parses options into a RunOptions; everything it runs is here, so that a script can run the
same thing: ``results = run(RunOptions.quick(torch.device("cpu")))``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from . import cases as cases_mod
from . import environment, memory, results as results_mod
from .cases import DEFAULT_CONFIGS, E2E_MODELS, QUICK_MODEL, THROUGHPUT_BATCH, DTypeConfig, build_model
from .end_to_end import PEER_DTYPES, EndToEndCase, EndToEndRunner, end_to_end_providers
from .microbench import ModuleCase, run_module_case
from .providers import fused_backends, module_providers
from .timing import Rounds, TimingBudget
from .training_step import TRAIN_STEP_BATCH, TrainStepCase, run_train_step_case, train_step_providers


@dataclasses.dataclass
class RunOptions:
    device: torch.device
    scope: str                       # "quick" or "full" (shape selection, see cases.select_cases)
    models: Sequence[str]
    modes: Sequence[str]
    batches: Sequence[int]
    configs: Sequence[DTypeConfig]
    threads: int
    budget: TimingBudget
    providers: Sequence[str] | None = None  # keep only these providers (None: every available one)
    module_cases: bool = True        # the Ghost-module microbenchmarks
    end_to_end: bool = True
    e2e_compile: bool = True         # torch.compile providers end-to-end (a model compile takes ~1 min on 2 cores)
    onnx: bool = True
    training_memory: bool = True
    training_step: bool = True       # a whole training step with batch-statistics BN (training_step.py)
    strict: bool = False             # raise on the first failing provider instead of recording the error
    e2e_turns: Rounds = Rounds()     # how a case's end-to-end providers take turns (timing.time_in_rounds)

    @classmethod
    def quick(cls, device: torch.device, threads: int | None = None) -> RunOptions:
        """A handful of GhostNet 1.0x shapes, forward, the device's first dtype, throughput batch and batch 1, and
        ghostnet_100 end-to-end without the minute-long compiles and ONNX export."""
        return cls(device=device, scope="quick", models=[QUICK_MODEL], modes=["forward"],
                   batches=[THROUGHPUT_BATCH[device.type], 1], configs=[DEFAULT_CONFIGS[device.type][0]],
                   threads=threads or environment.usable_cores(), budget=TimingBudget(warmup_s=0.05, min_time_s=0.2),
                   e2e_compile=False, onnx=False, training_memory=False, training_step=False)

    @classmethod
    def full(cls, device: torch.device, threads: int | None = None) -> RunOptions:
        return cls(device=device, scope="full", models=list(E2E_MODELS), modes=list(cases_mod.MODES),
                   batches=[1, THROUGHPUT_BATCH[device.type]], configs=list(DEFAULT_CONFIGS[device.type]),
                   threads=threads or environment.usable_cores(), budget=TimingBudget(warmup_s=0.1, min_time_s=0.5))


def _keep(names: list[str], wanted: Sequence[str] | None) -> list[str]:
    return names if wanted is None else [n for n in names if n in wanted or n == "eager"]


class _Progress:
    """Numbered progress lines; adds each record's speedup over the eager record of the same case."""

    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.log, self.done = total, log, 0
        self._eager: dict[str, float] = {}

    def __call__(self, what: str, rec: dict) -> None:
        self.done += 1
        if rec["provider"] == "eager" and "median_ms" in rec:
            self._eager[what] = rec["median_ms"]
        head = f"[{self.done:>4}/{self.total}] {what:<58} {rec['provider']:<20}"
        if "error" in rec:
            self.log(f"{head} ERROR {rec['error']}")
            return
        line = f"{head} {rec['median_ms']:9.3f} ms (p20 {rec['p20_ms']:.3f}, p80 {rec['p80_ms']:.3f})"
        if what in self._eager:
            line += f"  {self._eager[what] / rec['median_ms']:.2f}x vs eager"
        if "images_per_s" in rec:
            line += f", {rec['images_per_s']:.0f} images/s"
        self.log(line)


def _print(s: str) -> None:
    print(s, flush=True)


def run(opts: RunOptions, log: Callable[[str], None] = _print,
        checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Run everything `opts` asks for and return the results dict (finalized, "complete": true; not saved).

    `checkpoint(results)` is called with the finalized partial results after every case (the CLI saves them, so
    that a run cut short by a time limit keeps what it measured; such a file has "complete": false).
    """
    dev = opts.device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("ghostkernels.bench: --device cuda was asked for, but torch sees no CUDA device")
        torch.backends.cudnn.benchmark = True  # the strongest eager baseline: cuDNN picks its fastest algorithms
    elif dev.type != "cpu":
        raise ValueError(f"ghostkernels.bench: unsupported device {dev}; expected cpu or cuda")
    torch.set_num_threads(opts.threads)
    from ghostkernels import ops

    ops.load_library()  # before any torch.compile: the fused op must exist when dynamo traces it

    providers, skipped = module_providers(dev)
    providers = _keep(providers, opts.providers)
    backends = fused_backends(dev)[0]
    if opts.providers is not None:
        backends = [b for b in backends
                    if any(f"fused-{b}{suffix}" in opts.providers for suffix in ("", "+compile", "-modules", "-frozen"))]
    e2e_names, e2e_skipped = end_to_end_providers(dev, backends, opts.e2e_compile, opts.onnx)
    e2e_names = _keep(e2e_names, opts.providers) if opts.end_to_end else []
    if opts.end_to_end:
        skipped += e2e_skipped

    env = environment.describe(dev, opts.threads)
    settings = {
        "scope": opts.scope, "models": list(opts.models), "modes": list(opts.modes), "batches": list(opts.batches),
        "configs": [c.label for c in opts.configs], "module_providers": providers,
        "end_to_end_providers": e2e_names, "training_memory": opts.training_memory,
        "training_step": opts.training_step,
        "timing": dataclasses.asdict(opts.budget), "end_to_end_turns": dataclasses.asdict(opts.e2e_turns),
        "skipped": skipped,
        "timing_method": ("CUDA events per call, inputs rotated past 2x L2" if dev.type == "cuda"
                          else "time.perf_counter per call, fixed thread count"),
    }
    res = results_mod.new_results(env, settings)
    log(f"ghostkernels.bench ({opts.scope}) on {env['device_name']} [{dev.type}], {opts.threads} threads, "
        f"torch {env['torch']}")
    log(f"  Ghost-module providers: {', '.join(providers)}")
    if e2e_names:
        log(f"  end-to-end providers:   {', '.join(e2e_names)}")
    for s in skipped:
        log(f"  note: {s}")
    busy = environment.busy_warning()
    if busy is not None:
        log(f"  WARNING: {busy}")

    res["complete"] = False

    def add(section: str, records: list[dict]) -> None:
        results_mod.add_records(res, section, records)
        if checkpoint is not None:
            checkpoint(results_mod.finalize(res))

    if opts.module_cases:
        _run_modules(opts, providers, add, log)
    if e2e_names:
        _run_end_to_end(opts, e2e_names, add, log)
    if opts.training_memory:
        _run_training_memory(opts, ["eager"] + [f"fused-{b}" for b in backends], add, log)
    if opts.training_step:
        _run_training_step(opts, _keep(train_step_providers(backends, opts.e2e_compile), opts.providers), add, log)
    res["environment"]["memory_copy_gbs_at_end"] = environment.memory_copy_gbs(dev)
    res["complete"] = True
    return results_mod.finalize(res)


def _run_modules(opts: RunOptions, providers: list[str], add: Callable, log: Callable[[str], None]) -> None:
    shape_cases = cases_mod.select_cases(opts.scope, opts.models)
    # The dtypes innermost: a shape's float32 and bfloat16 cases run back to back, so their ratio (a target of its
    # own) does not take in the drift of a VM whose speed moves over the minutes between the two (bench/NOTES.md,
    # entry 21: with the dtypes outermost, one run's bfloat16 cases ran ~10 minutes after their float32 twins).
    module_cases = [ModuleCase(sc, mode, batch, cfg) for mode in opts.modes for batch in opts.batches
                    for sc in shape_cases for cfg in opts.configs]
    log(f"\n{len(shape_cases)} Ghost-module shapes of {', '.join(opts.models)} x {len(opts.modes)} modes x "
        f"{len(opts.batches)} batches x {len(opts.configs)} dtypes = {len(module_cases)} cases")
    progress = _Progress(len(module_cases) * len(providers), log)
    t0 = time.perf_counter()
    for case in module_cases:
        records = run_module_case(case, providers, opts.device, opts.budget, opts.strict,
                                  on_result=lambda rec, case=case: progress(case.label, rec))
        add("module_cases", records)
    log(f"Ghost modules done in {time.perf_counter() - t0:.0f} s")


def _run_end_to_end(opts: RunOptions, providers: list[str], add: Callable, log: Callable[[str], None]) -> None:
    models = opts.models if opts.scope == "full" else [QUICK_MODEL]
    e2e_cases = [EndToEndCase(m, b, cfg) for m in models for b in opts.batches for cfg in opts.configs]
    per_case = {c: [p for p in providers if p not in PEER_DTYPES or c.config.dtype in PEER_DTYPES[p]]
                for c in e2e_cases}
    log(f"\nend-to-end: {', '.join(models)} x {len(opts.batches)} batches x {len(opts.configs)} dtypes")
    progress = _Progress(sum(len(v) for v in per_case.values()), log)
    runner = EndToEndRunner(opts.device, opts.threads, opts.budget, opts.strict, opts.e2e_turns)
    t0 = time.perf_counter()
    try:
        for case in e2e_cases:
            records = runner.run(case, per_case[case], on_result=lambda rec, case=case: progress(case.label, rec))
            add("end_to_end", records)
    finally:
        runner.close()
    log(f"end-to-end done in {time.perf_counter() - t0:.0f} s")


def _run_training_memory(opts: RunOptions, providers: list[str], add: Callable,
                         log: Callable[[str], None]) -> None:
    dev, batch = opts.device, THROUGHPUT_BATCH[opts.device.type]
    log(f"\ntraining memory (forward+backward, frozen BN), batch {batch}")
    for m in opts.models:
        base = build_model(m)
        for cfg in opts.configs:
            for p in providers:
                what = f"{m} {cfg.label} b{batch} {p}"
                try:
                    rec = memory.training_memory(m, base, p, dev, cfg, batch)
                except Exception as e:  # noqa: BLE001 - recorded and reported like the timings
                    if opts.strict:
                        raise
                    rec = {"model": m, "resolution": 224, "batch": batch, "dtype": cfg.name,
                           "memory_format": "channels_last" if cfg.channels_last else "nchw", "provider": p,
                           "error": f"{type(e).__name__}: {e}"}
                    log(f"  {what}: ERROR {rec['error']}")
                else:
                    log(f"  {what:<50} peak {rec['peak_bytes'] / 2**20:8.1f} MiB, saved for backward "
                        f"{rec['saved_bytes'] / 2**20:8.1f} MiB ({rec['saved_bytes_ghost'] / 2**20:.1f} MiB inside "
                        f"Ghost modules)")
                add("training_memory", [rec])


def _run_training_step(opts: RunOptions, providers: list[str], add: Callable, log: Callable[[str], None]) -> None:
    dev, batch = opts.device, TRAIN_STEP_BATCH[opts.device.type]
    models = opts.models if opts.scope == "full" else [QUICK_MODEL]
    log(f"\ntraining step (forward+backward, batch-statistics BN), batch {batch}: {', '.join(providers)}")
    t0 = time.perf_counter()
    for m in models:
        base = build_model(m)
        for cfg in opts.configs:
            case = TrainStepCase(m, batch, cfg)
            progress, what = _Progress(len(providers), log), f"train step {case.label}"
            add("training_step", run_train_step_case(case, base, providers, dev, strict=opts.strict,
                                                     turns=opts.e2e_turns,
                                                     on_result=lambda rec, what=what: progress(what, rec)))
    log(f"training step done in {time.perf_counter() - t0:.0f} s")


def errors(res: dict) -> list[str]:
    """One line per failed record."""
    out = []
    for section in results_mod.SECTIONS:
        for r in res.get(section, []):
            if "error" in r:
                what = r.get("label") or r.get("model")
                out.append(f"{section}: {what} {r.get('mode', '')} {r['dtype']} b{r['batch']} {r['provider']}: "
                           f"{r['error']}")
    return out
