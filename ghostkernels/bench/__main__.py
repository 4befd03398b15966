"""`python -m ghostkernels.bench` / `ghostkernels-bench`: benchmark the fused Ghost module on this machine.

Quick mode (default, about a minute on 2 CPU cores): six GhostNet 1.0x Ghost-module shapes, forward, float32 (CPU)
or float16 channels_last (GPU), the throughput batch and batch 1, against eager and torch.compile, then ghostnet_100
end-to-end (eager against fuse(model), and on CPU fuse(model, blocks=False)). Prints progress while it runs and the
tables at the end; writes nothing unless --save.

--full: every Ghost-module shape of GhostNet 0.5x/1.0x/1.3x, forward, forward+backward with frozen BN and with
batch-statistics BN (train-bn), every dtype of the device, batch 1 and the throughput batch; end-to-end with
torch.compile and ONNX Runtime; training memory; a whole training step with batch-statistics BN (batch 32 on CPU,
eager, torch.compile and fused, with peak and activation memory). Writes
bench/results/<device>.json, .png (plot) and .md (README tables). Takes one to two hours on 2 CPU cores; the filters
(--models, --modes, --dtype, --batch, --providers) with --merge run it in pieces into the same file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import environment, plot, results, runner, table
from .cases import E2E_MODELS, MODES, THROUGHPUT_BATCH, parse_dtype_config
from .timing import TimingBudget

CHECKPOINT_S = 20.0


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ghostkernels-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--full", action="store_true", help="everything (see below); implies --save")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default=None,
                   help="comma list of float32, bfloat16, float16, each optionally :cl or :nchw "
                        "(default: the device's configurations; quick mode: the first)")
    p.add_argument("--batch", default=None,
                   help=f"comma list of batch sizes (default: 1 and the throughput batch, {THROUGHPUT_BATCH['cpu']} "
                        f"on CPU, {THROUGHPUT_BATCH['cuda']} on GPU)")
    p.add_argument("--models", default=None, help=f"comma list of {', '.join(E2E_MODELS)} (the Ghost-module "
                                                  "shapes come from the GhostNets; ghostnetv2_100 is end-to-end only)")
    p.add_argument("--modes", default=None, help=f"comma list of {', '.join(MODES)} (train = forward+backward, "
                                                 "frozen BN; train-bn = forward+backward, batch-statistics BN)")
    p.add_argument("--providers", default=None,
                   help="comma list of providers to keep (eager always runs as the baseline): compile, fused-cpu, "
                        "fused-cuda, fused-triton, fused-<b>+compile, fused-cpu-frozen, fused-cpu-modules, onnxruntime, "
                        "openvino")
    p.add_argument("--threads", type=int, default=None,
                   help=f"CPU threads for PyTorch and ONNX Runtime (default: all usable cores, "
                        f"{environment.usable_cores()} here)")
    p.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per case (quick 0.2, "
                                                                  "full 0.5)")
    p.add_argument("--no-modules", action="store_true", help="skip the Ghost-module microbenchmarks")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end models")
    p.add_argument("--no-memory", action="store_true", help="skip the training-memory measurement")
    p.add_argument("--no-train-step", action="store_true",
                   help="skip the whole-model training step with batch-statistics BN (full runs only)")
    p.add_argument("--no-compile", action="store_true", help="skip every torch.compile provider")
    p.add_argument("--save", action="store_true", help="write the JSON, PNG and markdown (default in --full)")
    p.add_argument("--merge", action="store_true",
                   help="merge into an existing results file of the same device instead of replacing it")
    p.add_argument("--output", default=None,
                   help="results JSON path (default: bench/results/<device>.json in a source checkout, else "
                        "./ghostkernels-bench-results/<device>.json); the .png and .md go beside it")
    p.add_argument("--strict", action="store_true", help="stop at the first failing provider")
    p.add_argument("--markdown", metavar="JSON", default=None,
                   help="print the README tables of a saved results file and exit")
    return p


def options_from_args(args: argparse.Namespace) -> runner.RunOptions:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in THROUGHPUT_BATCH:
        raise SystemExit(f"ghostkernels-bench: unsupported --device {args.device!r}; expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ghostkernels-bench: --device cuda, but torch sees no CUDA device "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"ghostkernels-bench: --threads must be >= 1, got {args.threads}")
    opts = (runner.RunOptions.full if args.full else runner.RunOptions.quick)(device, args.threads)
    try:
        if args.dtype:
            opts.configs = [parse_dtype_config(t, device.type) for t in _csv(args.dtype)]
        if args.batch:
            opts.batches = [int(b) for b in _csv(args.batch)]
        if args.models:
            opts.models = _csv(args.models)
        if args.modes:
            opts.modes = _csv(args.modes)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    bad = [m for m in opts.models if m not in E2E_MODELS] + [m for m in opts.modes if m not in MODES]
    bad += [str(b) for b in opts.batches if b < 1]
    if bad:
        raise SystemExit(f"ghostkernels-bench: unknown or invalid values: {', '.join(bad)} (models: "
                         f"{', '.join(E2E_MODELS)}; modes: {', '.join(MODES)}; batches >= 1)")
    if not args.full and args.models and args.models != "ghostnet_100":
        opts.scope = "full"  # the quick shape subset is GhostNet 1.0x's; other models mean all their shapes
    if args.providers:
        opts.providers = _csv(args.providers)
    if args.no_compile:
        opts.providers = [p for p in (opts.providers or _all_provider_names()) if "compile" not in p]
        opts.e2e_compile = False
    if args.min_time is not None:
        opts.budget = TimingBudget(warmup_s=opts.budget.warmup_s, min_time_s=args.min_time)
    opts.module_cases = not args.no_modules
    opts.end_to_end = not args.no_e2e
    opts.training_memory = opts.training_memory and not args.no_memory
    opts.training_step = opts.training_step and not args.no_train_step
    opts.strict = args.strict
    return opts


def _all_provider_names() -> list[str]:
    names = ["eager", "compile", "onnxruntime", "openvino"]
    for b in ("cpu", "cuda", "triton"):
        names += [f"fused-{b}", f"fused-{b}+compile"]
    return names + ["fused-cpu-frozen", "fused-cpu-modules"]


def save_json(res: dict, json_path: str, base: dict | None) -> tuple[dict, str]:
    """Write the results (merged into `base`, the file's content before this run, when given)."""
    if base is not None:
        res = results.merge(base, res)
    return res, results.save(res, json_path)


def save_outputs(res: dict, json_path: str, base: dict | None) -> list[str]:
    """Write the JSON, the markdown tables and the plot; return the paths."""
    res, path = save_json(res, json_path, base)
    written = [path]
    stem = os.path.splitext(json_path)[0]
    with open(stem + ".md", "w") as f:
        f.write(table.report(res, markdown=True))
    written.append(stem + ".md")
    reason = plot.unavailable_reason()
    if reason is None:
        written.append(plot.plot(res, stem + ".png"))
    else:
        print(f"ghostkernels-bench: no plot: {reason}", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.markdown:
        try:
            saved = results.load(args.markdown)
        except (OSError, ValueError) as e:
            raise SystemExit(f"ghostkernels-bench: cannot read {args.markdown}: {e}") from None
        print(table.report(saved, markdown=True), end="")
        return 0
    opts = options_from_args(args)
    out, base, checkpoint = None, None, None
    if args.save or args.full:
        out = args.output or os.path.join(results.default_output_dir(),
                                          environment.device_slug(opts.device) + ".json")
        if args.merge and os.path.exists(out):
            try:
                base = results.load(out)
            except (OSError, ValueError) as e:
                raise SystemExit(f"ghostkernels-bench: cannot merge into {out}: {e}") from None

        last = [time.monotonic()]

        def checkpoint(partial: dict) -> None:
            # A run cut short (a time limit, Ctrl-C) keeps what it measured, in a file marked "complete": false;
            # at most every CHECKPOINT_S seconds, so that a long run does not spend its time rewriting the file.
            if time.monotonic() - last[0] >= CHECKPOINT_S:
                save_json(partial, out, base)
                last[0] = time.monotonic()

    res = runner.run(opts, checkpoint=checkpoint)
    print(table.report(res))
    failures = runner.errors(res)
    if out is not None:
        for path in save_outputs(res, out, base):
            print(f"wrote {path}")
    if failures:
        print(f"\n{len(failures)} case(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
