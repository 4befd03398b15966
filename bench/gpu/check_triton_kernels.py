"""Correctness of the Triton backend on a GPU in seconds: 8 cases against float64, forward and all gradients.

  GHOSTKERNELS_TRITON_AUTOTUNE=one python3 bench/gpu/check_triton_kernels.py [--warm]

The cases cover float16 / bfloat16 / float32 (TF32 off and on), channels_last and NCHW, k in {1, 3, 5, 7}, ratio 2
and 3, an out_channels slice and channel counts that do and do not allow the vector hints (VEC). With
GHOSTKERNELS_TRITON_AUTOTUNE=one each kernel compiles once per shape instead of once per autotune configuration.
--warm only runs the cases (compiling the kernels into Triton's cache) and checks nothing: the GPU session runs it
while the op library builds. Prints one line per case; exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import ghostkernels
from ghostkernels.ops.reference import ghost_module_reference

DEV = torch.device("cuda")
# (dtype, channels_last, N, C, H, W, init, ratio, k, out_channels, act, tf32)
CASES = [
    (torch.float16, True, 4, 24, 28, 28, 36, 2, 3, 72, "relu", False),
    (torch.float16, False, 2, 16, 17, 19, 8, 2, 5, 16, "silu", False),
    (torch.bfloat16, True, 2, 40, 14, 14, 60, 2, 3, 120, "identity", False),
    (torch.bfloat16, False, 2, 12, 9, 11, 6, 3, 7, 15, "hardswish", False),
    (torch.float32, True, 2, 16, 20, 20, 8, 2, 1, 16, "relu6", False),
    (torch.float32, False, 2, 24, 13, 13, 12, 2, 3, 20, "relu", False),
    (torch.float32, True, 2, 32, 14, 14, 24, 2, 3, 48, "silu", True),
    (torch.float16, True, 2, 160, 7, 7, 480, 2, 3, 960, "relu", False),
]
LIMIT = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
TF32_LIMIT = 6e-3


def run_case(case, check: bool) -> tuple[bool, str]:
    dtype, cl, n, c, h, w, init, ratio, k, oc, act, tf32 = case
    gen = torch.Generator(device=DEV).manual_seed(hash(case) % (2 ** 31))

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=gen, device=DEV) * scale).to(dtype)

    x = r(n, c, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    params = [r(init, c, 1, 1, scale=3 / c ** 0.5), r(init, scale=0.5), r(init * (ratio - 1), 1, k, k, scale=1.2 / k),
              r(init * (ratio - 1), scale=0.5)]
    leaves = [t.requires_grad_() for t in [x] + params]
    torch.backends.cudnn.allow_tf32 = tf32
    out = ghostkernels.ops.ghost_module(*leaves, oc, act, backend="triton")
    grad_out = r(n, oc, h, w)
    grads = torch.autograd.grad(out, leaves, grad_out)
    torch.backends.cudnn.allow_tf32 = False
    if not check:
        return True, "compiled"
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref = ghost_module_reference(*ref_leaves, oc, act)
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())

    def err(a, e):
        a = a.detach().double()
        return float("nan") if torch.isnan(a).any() else ((a - e).norm() / e.norm().clamp_min(1e-30)).item()

    e_f = err(out, ref)
    e_b = max(err(g, e) for g, e in zip(grads, ref_grads))
    limit = TF32_LIMIT if tf32 else LIMIT[dtype]
    ok = e_f < limit and e_b < 2 * limit
    return ok, f"fwd {e_f:.1e} bwd {e_b:.1e} (limit {limit:.0e})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warm", action="store_true", help="compile (run) the cases without checking them")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    failed = 0
    for case in CASES:
        t0 = time.perf_counter()
        try:
            ok, msg = run_case(case, check=not args.warm)
        except Exception as e:  # report and go on with the next case
            ok, msg = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        failed += not ok
        dtype, cl, n, c, h, w, init, ratio, k, oc, act, tf32 = case
        print(f"[{'PASS' if ok else 'FAIL'}] {str(dtype).removeprefix('torch.')} {'cl' if cl else 'nchw'} "
              f"N{n} C{c} {h}x{w} init={init} ratio={ratio} k={k} oc={oc} {act}{' tf32' if tf32 else ''} "
              f"{time.perf_counter() - t0:5.1f}s: {msg}", flush=True)
    print(f"check_triton_kernels: {len(CASES) - failed}/{len(CASES)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
