"""Six representative GhostNet 1.0x Ghost-module shapes on the GPU: forward and forward+backward times of the fused
CUDA op, the fused Triton op, eager PyTorch and torch.compile of eager, with every input made on the GPU.

  python3 bench/gpu/time_shapes.py [--batch 256] [--dtype float16] [--shapes small+spread] [--json PATH]

Shapes: "spread", the unique Ghost-module shapes of ghostnet_100 ordered by input size, six picked evenly from
largest to smallest; "small", the shapes whose CUDA forward plan NOTES entry 37 changed most (7x7 and 14x14 maps
with several channel chunks, and the largest 112x112 map with C <= 32, whose x was one exposed copy), timed for
fused-cuda and eager in forward only (their backward did not change) and listed first, so that a run cut short
keeps them. Per (shape, provider, mode): CUDA events around each call, 3 warm-up calls (torch.compile compiles in the
first), median of 10 timed calls, inputs alternating between two buffers. Writes --json after every shape, so a
run cut short keeps what it measured; prints a table (microseconds) at the end. A provider that fails is recorded
with its error and the others go on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import ghostkernels
from ghostkernels.bench.cases import model_shapes
from ghostkernels.ops.reference import ghost_module_reference

DEV = torch.device("cuda")
PROVIDERS = ("fused-cuda", "fused-triton", "eager", "compile")
MODES = ("forward", "train")


def pick_shapes(count: int = 6):
    shapes = sorted(set(model_shapes("ghostnet_100")), key=lambda s: -(s.in_channels * s.height * s.width))
    idx = sorted({round(i * (len(shapes) - 1) / max(count - 1, 1)) for i in range(count)})
    return [shapes[i] for i in idx]


def small_map_shapes():
    """7x7: the largest init and the largest C; 14x14: the two largest inits and the largest C; 112x112: the largest
    output among C <= 32 (bench/NOTES.md entry 37 predicts each)."""
    shapes = sorted(set(model_shapes("ghostnet_100")), key=lambda s: (s.height, -s.init_channels, -s.in_channels))
    picked = []
    for hw, keys in ((7, ("init", "c")), (14, ("init", "init2", "c")), (112, ("c32",))):
        at = [s for s in shapes if s.height == hw]
        by_init = sorted(at, key=lambda s: -s.init_channels)
        for key in keys:
            if key == "init":
                cand = by_init[0]
            elif key == "init2":
                cand = by_init[1]
            elif key == "c":
                cand = max(at, key=lambda s: s.in_channels)
            else:
                cand = max((s for s in at if s.in_channels <= 32), key=lambda s: s.out_channels)
            if cand not in picked:
                picked.append(cand)
    return picked


def time_us(fn, args_list, warmup=3, reps=10) -> float:
    for i in range(warmup):
        fn(*args_list[i % len(args_list)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args_list[i % len(args_list)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def provider_fn(name: str, oc: int, act: str):
    if name in ("fused-cuda", "fused-triton"):
        backend = name.removeprefix("fused-")
        return lambda x, *p: ghostkernels.ops.ghost_module(x, *p, oc, act, backend=backend)
    eager = lambda x, w1, b1, w2, b2: ghost_module_reference(x, w1, b1, w2, b2, oc, act)  # noqa: E731
    return eager if name == "eager" else torch.compile(eager)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--shapes", default="spread", help="'spread', 'small' or both joined by '+' (small first)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sets = [p.strip() for p in args.shapes.split("+") if p.strip()]
    if not sets or any(p not in ("spread", "small") for p in sets):
        ap.error(f"--shapes {args.shapes!r}: expected 'spread', 'small' or 'small+spread'")
    plan = []  # (shape, providers, modes)
    for part in sorted(sets, key=lambda p: p != "small"):
        if part == "small":
            plan += [(s, ("fused-cuda", "eager"), ("forward",)) for s in small_map_shapes()]
        else:
            plan += [(s, PROVIDERS, MODES) for s in pick_shapes()]
    dtype = getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True  # eager's best convolution algorithms
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch,
               "dtype": args.dtype, "layout": "channels_last", "rows": []}
    for s, providers, modes in plan:
        n, c, h, w, init, oc, k = args.batch, s.in_channels, s.height, s.width, s.init_channels, s.out_channels, s.dw_size
        act = "relu" if s.relu else "identity"
        row = {"shape": s.label, "set": "small" if providers != PROVIDERS else "spread", "times_us": {}, "errors": {}}
        g = torch.Generator(device=DEV).manual_seed(0)

        def r(*size, scale=1.0):
            return (torch.randn(*size, generator=g, device=DEV) * scale).to(dtype)

        xs = [r(n, c, h, w).contiguous(memory_format=torch.channels_last) for _ in range(2)]
        weights = [r(init, c, 1, 1, scale=3 / c ** 0.5).contiguous(memory_format=torch.channels_last),
                   r(init, scale=0.5), r(init * (s.ratio - 1), 1, k, k, scale=1 / k), r(init * (s.ratio - 1))]
        grad = r(n, oc, h, w).contiguous(memory_format=torch.channels_last)
        for prov in providers:
            for mode in modes:
                t0 = time.perf_counter()
                try:
                    fn = provider_fn(prov, oc, act)
                    if mode == "forward":
                        def call(x, *p, fn=fn):
                            with torch.no_grad():
                                return fn(x, *p)
                        arg_sets = [(x, *weights) for x in xs]
                    else:
                        leaves = [[t.detach().clone().requires_grad_() for t in (x, *weights)] for x in xs]

                        def call(*p, fn=fn):
                            fn(*p).backward(grad)
                        arg_sets = leaves
                    row["times_us"][f"{prov}/{mode}"] = round(time_us(call, arg_sets), 1)
                except Exception as e:  # record and go on
                    row["errors"][f"{prov}/{mode}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                key = f"{prov}/{mode}"
                err = f" {row['errors'][key]}" if key in row["errors"] else ""
                print(f"{s.label:30s} {prov:12s} {mode:7s} {row['times_us'].get(key, float('nan')):9.1f} us "
                      f"({time.perf_counter() - t0:.1f} s){err}", flush=True)
        results["rows"].append(row)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        del xs, grad
        torch.cuda.empty_cache()
    cols = [f"{p}/{m}" for m in MODES for p in PROVIDERS]
    print(f"{'shape':30s} " + " ".join(f"{c:>20s}" for c in cols))
    for row in results["rows"]:
        print(f"{row['shape']:30s} " + " ".join(f"{row['times_us'].get(c, float('nan')):20.1f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
