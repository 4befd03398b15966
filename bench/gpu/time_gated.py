"""GhostNetV2's gated Ghost module on the GPU: is the map multiplied in the forward kernel's stores (NOTES entry 44)
cheaper than the kernel followed by a separate multiply pass?

  python3 bench/gpu/time_gated.py [--batch 256] [--dtype float16] [--json PATH]

Per shape (ghostnetv2_100's gated ghost1 modules at 224x224: x [N, C, H, W], out_channels, the map at H/2 x W/2),
forward only, channels_last, the times (microseconds; CUDA events, median of 10 calls after 3 warm-ups,
time_shapes.time_us) of
  ungated    ghostkernels.ops.ghost_module, the kernel without the gate (what the gate adds is gated - ungated);
  gated      ghostkernels.ops.ghost_module_gated on CUDA: one launch, the map read in the stores;
  two-pass   ghost_module then out.mul_(map upsampled): the shape of the CUDA path before entry 44 (its in-place
             multiply kernel read the map through the nearest index, this one reads an upsampled copy, so it is an
             upper bound of that pass). At the commit before entry 44 the `gated` column times the old path itself.
Prints a table and the gated / ungated and two-pass / gated ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from time_shapes import time_us  # noqa: E402

import ghostkernels  # noqa: E402

DEV = torch.device("cuda")
# (C, H, W, out_channels) of ghostnetv2_100's gated ghost1 modules (mid channels; init = ceil(out / 2), k = 3, ReLU)
SHAPES = [(24, 56, 56, 72), (40, 28, 28, 120), (40, 28, 28, 240), (80, 14, 14, 200), (80, 14, 14, 184),
          (80, 14, 14, 480), (112, 14, 14, 672), (160, 7, 7, 960)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    ops = ghostkernels.ops
    rows = []
    print(f"{'shape':28s} {'ungated':>9s} {'gated':>9s} {'two-pass':>9s}  gated/ungated  two-pass/gated")
    for c, h, w, oc in SHAPES:
        n, init = args.batch, (oc + 1) // 2
        g = torch.Generator(device=DEV).manual_seed(0)

        def r(*size, scale=1.0):
            return (torch.randn(*size, generator=g, device=DEV) * scale).to(dtype)

        cl = torch.channels_last
        xs = [r(n, c, h, w).contiguous(memory_format=cl) for _ in range(2)]
        p = [r(init, c, 1, 1, scale=3 / c ** 0.5), r(init, scale=0.5), r(init, 1, 3, 3, scale=1 / 3), r(init)]
        gates = [torch.sigmoid(r(n, oc, h // 2, w // 2)).contiguous(memory_format=cl) for _ in range(2)]
        sets = [(x, gt) for x, gt in zip(xs, gates)]

        def ungated(x, gt):
            return ops.ghost_module(x, *p, oc, "relu", backend="cuda")

        def gated(x, gt):
            return ops.ghost_module_gated(x, *p, oc, "relu", gt, backend="cuda")

        def two_pass(x, gt):
            return ops.ghost_module(x, *p, oc, "relu", backend="cuda").mul_(F.interpolate(gt, size=(h, w)))

        with torch.no_grad():
            t = {name: round(time_us(fn, sets), 1) for name, fn in
                 (("ungated", ungated), ("gated", gated), ("two-pass", two_pass))}
        label = f"{c}->{oc} @{h}x{w} N{n}"
        rows.append({"shape": label, "times_us": t})
        print(f"{label:28s} {t['ungated']:9.1f} {t['gated']:9.1f} {t['two-pass']:9.1f}  "
              f"{t['gated'] / t['ungated']:13.2f}  {t['two-pass'] / t['gated']:14.2f}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "dtype": args.dtype, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
