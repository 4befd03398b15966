"""Compile the Triton kernels for an NVIDIA GPU on a machine without one, and report their resource usage.

    python -m ghostkernels.triton.compile_check [--arch 90] [--configs first|all] [--case NAME ...]
        [--kernels ghost|bn|all]

Triton compiles for a target given by its driver; this tool installs a stand-in driver that names the target
(sm_<arch>) and compiles each kernel through JITFunction.run(warmup=True), which compiles without launching.
ptxas (shipped with triton) runs for real, so what this reports is what the GPU would load: registers per thread,
spill stack, shared memory. It catches code that the interpreter accepts but the compiler rejects, and register
blow-ups (a kernel over 128 registers at 4 warps runs at most 4 programs per SM). It also reads the PTX for the
widths of the x tile's global loads (tile_math.primary_conv_region's `xt = tl.load(...)`): 16-byte accesses (ld.global.v4
or the pipeliner's 16-byte cp.async) are what a channels_last 16-bit x must get, 2-byte ones mean the vector hints
did not hold.

It must run without TRITON_INTERPRET=1 (the interpreter replaces the compiler). It uses triton's driver hook and
JITFunction.run, internal APIs that exist in triton 3.6 and 3.7. ``--kernels bn`` compiles the train-mode
BatchNorm passes' kernels (bn_train_kernels) instead, with the launch arguments their host code computes.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time

# name: (dtype, C, init, H, W, M, k, out_channels, channels_last) -- GhostNet-like shapes plus the contract's
# corners (float32 NCHW, bfloat16, k = 7, ratio 3).
CASES = {
    "fp16-cl-72to24-56": ("float16", 72, 12, 56, 56, 1, 3, 24, True),
    "fp16-cl-160to960-7": ("float16", 160, 480, 7, 7, 1, 3, 960, True),
    "fp32-nchw-72to24-56": ("float32", 72, 12, 56, 56, 1, 3, 24, False),
    "bf16-cl-k5-ratio3-28": ("bfloat16", 40, 40, 28, 28, 2, 5, 120, True),
    "fp16-nchw-k7-112": ("float16", 16, 8, 112, 112, 1, 7, 16, False),
}


class _TargetOnlyDriver:
    """Answers the driver queries JITFunction.run makes before compiling; launching is never asked for."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def _resource_usage(cubin: bytes) -> str:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "REG:" in line:
            return " ".join(tok for tok in line.split() if tok.split(":")[0] in ("REG", "STACK"))
    return "resource usage unavailable"


_PTX_LOC = re.compile(r"^\s*\.loc\s.*//\s*([\w.]+\.py):(\d+):")
_PTX_LD = re.compile(r"\bld\.global(?:\.\w+)*?(?:\.v(\d))?\.[bufs](\d+)\b")
_PTX_CP = re.compile(r"\bcp\.async\.c[ag]\.shared\.global\s*\[[^]]*\],\s*\[[^]]*\],\s*(0x[0-9a-f]+|\d+)")


def x_tile_line() -> int:
    """Line of tile_math.py that loads the x tile of the 1x1 conv."""
    from . import tile_math

    with open(inspect.getsourcefile(tile_math)) as f:
        return next(i for i, text in enumerate(f, 1) if text.strip().startswith("xt = tl.load("))


def global_load_widths(ptx: str, file: str, line: int) -> dict[int, int]:
    """{bytes per access: count} of the global loads (ld.global and cp.async global -> shared) that the PTX
    attributes to file:line."""
    widths = collections.Counter()
    here = None
    for text in ptx.splitlines():
        m = _PTX_LOC.match(text)
        if m:
            here = (m.group(1), int(m.group(2)))
            continue
        if here != (file, line):
            continue
        m = _PTX_LD.search(text)
        if m:
            widths[int(m.group(1) or 1) * int(m.group(2)) // 8] += 1
            continue
        m = _PTX_CP.search(text)
        if m:
            widths[int(m.group(1), 0)] += 1
    return dict(widths)


def _case_tensors(dtype_name, C, init, H, W, M, k, oc, channels_last):
    import torch

    dt = getattr(torch, dtype_name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(2, C, H, W, dtype=dt, memory_format=fmt)
    weights = (torch.empty(init, C, 1, 1, dtype=dt), torch.empty(init, dtype=dt),
               torch.empty(init * M, 1, k, k, dtype=dt), torch.empty(init * M, dtype=dt))
    out = torch.empty(2, oc, H, W, dtype=dt, memory_format=fmt)
    return x, weights, out, fmt


def _gate_tensors(x, oc):
    """GhostNetV2's gate for a case: its weights (5-tap (1, k) and (k, 1) convs) and its map."""
    import torch

    C, H, W = x.shape[1:]
    weights = (torch.empty(oc, C, 1, 1, dtype=x.dtype), torch.empty(oc, dtype=x.dtype),
               torch.empty(oc, 1, 1, 5, dtype=x.dtype), torch.empty(oc, dtype=x.dtype),
               torch.empty(oc, 1, 5, 1, dtype=x.dtype), torch.empty(oc, dtype=x.dtype))
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    gate = torch.empty(x.shape[0], oc, H // 2, W // 2, dtype=x.dtype, memory_format=fmt)
    return weights, gate


class _RecordingLauncher:
    """Stands in for wrap_triton: ``launcher(kernel)[grid](*args, **consts)`` records (kernel, args, consts) instead
    of launching, so the train-mode BatchNorm host code (bn_train_kernels), which launches as it goes, yields the
    exact arguments of its kernels. Its reductions then run on the never-written partials, harmlessly."""

    def __init__(self):
        self.launches = []

    def __call__(self, kernel):
        record = self.launches

        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **consts: record.append((kernel, args, consts))

        return _Grid()


def bn_train_launches(x, wp, wc, out, act_id: int, fmt):
    """(kernel, args, consts) of every train-mode BatchNorm kernel (bn_train_kernels' six) for a case's tensors."""
    import torch

    from . import bn_train_kernels as bk
    from . import configs

    n, c, h, w = x.shape
    init, cheap = wp.shape[0], wc.shape[0]
    f32 = dict(dtype=torch.float32)
    w1, w2 = torch.empty(init, c, 1, 1, **f32), torch.empty(cheap, 1, wc.shape[2], wc.shape[3], **f32)
    z1 = torch.empty(n, init, h, w, dtype=x.dtype).contiguous(memory_format=fmt)
    stage1 = tuple(torch.empty(init, **f32) for _ in range(4))
    stage2 = tuple(torch.empty(cheap, **f32) for _ in range(4))
    rec = _RecordingLauncher()
    block_i = configs.choose_block_i(init)
    bk.conv1x1_stats(rec, x, w1, block_i, False, "ieee", z1)
    bk.cheap_stats(rec, z1, stage1, w2, act_id, block_i, False)
    bk.forward_out(rec, z1, stage1, w2, stage2, out, act_id, block_i, False)
    bk.backward_reduce(rec, out, z1, stage1, w2, stage2, act_id, block_i, False)
    bk.backward(rec, out, x, z1, w1, stage1, stage1[0], stage1[1], w2, stage2, stage2[0], stage2[1], act_id, block_i,
                False, fmt)
    return rec.launches


def compile_kernels(arch: int, configs_mode: str, case_names, act_id: int = 3, kernels: str = "all"):
    """Compile every (case, kernel, config) of the kernel set ``kernels`` ("ghost": the Ghost module's and the DFC
    gate's; "bn": the train-mode BatchNorm passes'; "all"); return a list of (description, ok, detail)."""
    import triton
    from triton.runtime.driver import driver

    from . import configs
    from .backward_kernels import backward_launch_plan, ghost_backward_kernel
    from .forward_kernels import forward_launch_plan, ghost_forward_kernel
    from .gate_kernels import dfc_gate_launch_plans

    previous = driver._active  # reset_active() would look for a real driver, which fails without a GPU
    driver.set_active(_TargetOnlyDriver(arch))
    try:
        results = []
        cfgs = configs.autotune_configs(triton)
        if configs_mode == "first":
            cfgs = cfgs[:1]
        for name in case_names:
            case = CASES[name]
            x, (wp, bp, wc, bc), out, fmt = _case_tensors(*case)
            oc = case[7]
            if kernels in ("bn", "all"):  # not autotuned: one compile each, at 4 warps
                for kernel, args, consts in bn_train_launches(x, wp, wc, out, act_id, fmt):
                    results.append(_compile(f"{name} {kernel.fn.__name__}", kernel, args, consts, 4, 2))
            if kernels == "bn":
                continue
            gate_weights, gate = _gate_tensors(x, oc)
            plans = (("forward", ghost_forward_kernel, forward_launch_plan(x, wp, bp, wc, bc, out, oc, act_id)[1:3]),
                     ("forward-gated", ghost_forward_kernel,
                      forward_launch_plan(x, wp, bp, wc, bc, out, oc, act_id, gate)[1:3]),
                     ("backward", ghost_backward_kernel,
                      backward_launch_plan(out, x, wp, bp, wc, bc, oc, act_id, fmt)[1:3]))
            for kname, kernel, (args, consts) in plans:
                for cfg in cfgs:
                    desc = (f"{name} {kname} BLOCK_C={cfg.kwargs['BLOCK_C']} warps={cfg.num_warps} "
                            f"stages={cfg.num_stages}")
                    results.append(_compile(desc, kernel.fn, args, dict(consts, **cfg.kwargs), cfg.num_warps,
                                            cfg.num_stages, x_tile=True))
            # The DFC map's two kernels are not autotuned: one compile each.
            for kernel, _, args, consts in dfc_gate_launch_plans(x, *gate_weights, gate,
                                                                 configs.dot_precision(x.dtype)):
                results.append(_compile(f"{name} {kernel.fn.__name__}", kernel, args, consts, 4, 2))
        return results
    finally:
        driver._active = previous


def _compile(desc, kernel, args, consts, num_warps, num_stages, x_tile: bool = False):
    """(desc, ok, detail) of compiling one kernel without launching it; with ``x_tile`` (the Ghost-module kernels,
    whose 1x1 conv loads x through tile_math's x tile) the detail also lists that tile's global load widths."""
    t0 = time.time()
    try:
        compiled = kernel.run(*args, grid=(1,), warmup=True, num_warps=num_warps, num_stages=num_stages, **consts)
    except Exception as e:  # report every failure, keep compiling the rest
        return desc, False, f"{type(e).__name__}: {e}"
    detail = f"{_resource_usage(compiled.asm['cubin'])} smem={compiled.metadata.shared}"
    if x_tile:
        widths = global_load_widths(compiled.asm["ptx"], "tile_math.py", x_tile_line())
        detail += " x-tile loads [" + (" ".join(f"{b}Bx{n}" for b, n in sorted(widths.items())) or "none") + "]"
    return desc, True, f"{detail} ({time.time() - t0:.1f}s)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability as an integer (90 = H100)")
    parser.add_argument("--configs", choices=("first", "all"), default="all")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: every case")
    parser.add_argument("--kernels", choices=("ghost", "bn", "all"), default="all",
                        help="the Ghost module's and DFC gate's kernels, the train-mode BatchNorm passes', or both")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("compile_check: unset TRITON_INTERPRET; the interpreter does not compile", file=sys.stderr)
        return 2
    results = compile_kernels(args.arch, args.configs, args.case or list(CASES), kernels=args.kernels)
    for desc, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} sm_{args.arch} {desc}: {detail}", flush=True)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
