"""The two numbers of every GhostNet 1.0x Ghost-module shape, and how close the CUDA kernels come to them.

  python3 bench/gpu/kernel_roofline.py [--batch 256] [--json PATH]

First measures the device's two ceilings: device-to-device copy bandwidth (bytes read + written of a 1 GiB copy)
and the float16 tensor-core rate (an 8192^3 matmul), both on random data. Then, per unique shape (read off the
model with forward hooks), float16 channels_last at the given batch:
  ideal bytes  x read once + out written once (+ weights): the forward's memory floor is bytes / copy bandwidth;
  GEMM FLOPs   2 * C * init * N*H*W (the depthwise conv is ~k*k/C of that, on the CUDA cores);
  fused fwd    median time of ghostkernels' CUDA forward; its bandwidth on ideal bytes and % of the copy rate;
  eager fwd    the same math as separate PyTorch ops (conv 1x1 + act, depthwise + act, cat), BN already folded;
  fused train  forward + backward of the op (autograd), against eager forward + backward.
Timing: CUDA events around each call, 5 warm-up calls, median of 20, inputs rotated among buffers (so that shapes
whose tensors fit in L2 are not timed from the cache). Prints a table; --json writes every number.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import ghostkernels
from ghostkernels.bench.cases import model_shapes
from ghostkernels.ops.reference import ghost_module_reference

DEV = torch.device("cuda")


def time_ms(fn, buffers, warmup=5, reps=20) -> float:
    """Median milliseconds of fn(buf) over reps calls, cycling through `buffers`."""
    for i in range(warmup):
        fn(buffers[i % len(buffers)])
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(buffers[i % len(buffers)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.randn(1 << 28, device=DEV)  # 1 GiB of float32
    dst = torch.empty_like(src)
    ms = time_ms(lambda s: dst.copy_(s), [src], warmup=3, reps=10)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def tensor_core_rate() -> float:
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.float16)
    ms = time_ms(lambda t: t @ b, [a], warmup=3, reps=10)
    return 2 * 8192 ** 3 / (ms * 1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ghostkernels.load_library()
    torch.backends.cudnn.benchmark = True  # give eager its best convolution algorithms
    bw, tc = copy_bandwidth(), tensor_core_rate()
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s (read+write), float16 matmul {tc / 1e12:.0f} "
          f"TFLOP/s", flush=True)
    shapes = list(dict.fromkeys(model_shapes("ghostnet_100")))
    counts = {s: 0 for s in shapes}
    for s in model_shapes("ghostnet_100"):
        counts[s] += 1
    rows = []
    dt, es = torch.float16, 2
    gen = torch.Generator().manual_seed(0)
    hdr = (f"{'shape':28s} {'x':>2s} {'floorus':>7s} {'fusedus':>7s} {'%copy':>6s} {'eagerus':>7s} {'xeager':>6s} "
           f"{'gemm%':>6s} {'trainus':>7s} {'eagtrus':>7s} {'xtrain':>6s}")
    print(hdr, flush=True)
    for s in shapes:
        n, c, h, w, init, oc, k = args.batch, s.in_channels, s.height, s.width, s.init_channels, s.out_channels, s.dw_size
        m = s.ratio - 1
        act = "relu" if s.relu else "identity"
        ideal = (n * c * h * w + n * oc * h * w + s.weight_elements()) * es
        flops = 2 * c * init * n * h * w
        rot = max(2, min(8, int(2 * 50e6 // max(ideal, 1)) + 1))  # enough buffers to exceed the L2 several times
        xs = [torch.randn(n, c, h, w, generator=gen).to(DEV, dt).contiguous(memory_format=torch.channels_last)
              for _ in range(rot)]
        w1 = (torch.randn(init, c, 1, 1, generator=gen) * 3 / c ** 0.5).to(DEV, dt)
        b1 = torch.randn(init, generator=gen).to(DEV, dt)
        w2 = (torch.randn(init * m, 1, k, k, generator=gen) / k).to(DEV, dt)
        b2 = torch.randn(init * m, generator=gen).to(DEV, dt)
        w1e = w1.contiguous(memory_format=torch.channels_last)

        def fused(x):
            return ghostkernels.ops.ghost_module(x, w1, b1, w2, b2, oc, act, backend="cuda")

        def eager(x):
            return ghost_module_reference(x, w1e, b1, w2, b2, oc, act)

        with torch.no_grad():
            t_fused = time_ms(fused, xs)
            t_eager = time_ms(eager, xs)
        g = torch.randn(n, oc, h, w, generator=gen).to(DEV, dt).contiguous(memory_format=torch.channels_last)
        params = [t.clone().requires_grad_() for t in (w1, b1, w2, b2)]
        params_e = [params[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()] + [
            p.detach().clone().requires_grad_() for p in params[1:]]
        xs_g = [x.requires_grad_() for x in xs]

        def fused_train(x):
            ghostkernels.ops.ghost_module(x, *params, oc, act, backend="cuda").backward(g)

        def eager_train(x):
            ghost_module_reference(x, *params_e, oc, act).backward(g)

        t_ft = time_ms(fused_train, xs_g)
        t_et = time_ms(eager_train, xs_g)
        floor_us = ideal / bw * 1e6
        row = {"shape": s.label, "count": counts[s], "batch": n, "ideal_bytes": ideal, "gemm_flops": flops,
               "floor_us": floor_us, "fused_fwd_us": t_fused * 1e3, "eager_fwd_us": t_eager * 1e3,
               "fused_train_us": t_ft * 1e3, "eager_train_us": t_et * 1e3,
               "fused_fwd_pct_copy": 100 * floor_us / (t_fused * 1e3),
               "fused_fwd_gemm_pct_tc": 100 * flops / (t_fused * 1e-3) / tc}
        rows.append(row)
        print(f"{s.label:28s} {counts[s]:2d} {floor_us:7.1f} {row['fused_fwd_us']:7.1f} {row['fused_fwd_pct_copy']:6.1f} "
              f"{row['eager_fwd_us']:7.1f} {t_eager / t_fused:6.2f} {row['fused_fwd_gemm_pct_tc']:6.1f} "
              f"{row['fused_train_us']:7.1f} {row['eager_train_us']:7.1f} {t_et / t_ft:6.2f}", flush=True)
        del xs, xs_g
    gm = statistics.geometric_mean
    weights = [r["count"] for r in rows]
    fwd = gm([r["eager_fwd_us"] / r["fused_fwd_us"] for r in rows for _ in range(r["count"])])
    trn = gm([r["eager_train_us"] / r["fused_train_us"] for r in rows for _ in range(r["count"])])
    big = sorted(rows, key=lambda r: -r["ideal_bytes"])[:8]
    print(f"geomean over the {sum(weights)} module calls: forward {fwd:.2f}x eager, train {trn:.2f}x eager; "
          f"8 largest shapes reach {min(r['fused_fwd_pct_copy'] for r in big):.0f}-"
          f"{max(r['fused_fwd_pct_copy'] for r in big):.0f}% of the copy bandwidth")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "copy_bytes_per_s": bw, "fp16_matmul_flops": tc, "rows": rows,
                       "geomean_fwd_vs_eager": fwd, "geomean_train_vs_eager": trn}, f, indent=1)


if __name__ == "__main__":
    main()
