"""The CUDA forward's plans for GhostNet's shapes and the bytes each moves, computed without a GPU.

    python3 bench/gpu/plan_report.py [--model ghostnet_100] [--batch 256] [--dtype float16] [--nchw]
                                     [--min-hw 0] [--max-hw 14] [--hbm-tbs 3.0] [--l2-tbs 5.5] [--json PATH]

The planner is host code (csrc/cuda/ghost_cuda_plan.cu); the host emulator (csrc/cuda/emulation) links it and,
with --plan, prints what it chooses on an H100 (it answers the device queries as one: 132 SMs, 227 KB of shared
memory per block, 228 KB per SM). Per Ghost-module shape of the model at the batch, two plans:
  before  32-channel units with x streamed per unit, one unit per block (the kernel up to entry 35 of NOTES);
  after   the planner's own choice (unit height, x resident, overlapped copies, persistent grid).
and per plan:
  smem    shared memory per block; blk/SM = blocks per SM by the occupancy rule (2 by the launch bounds'
          registers, fewer when shared memory runs out: 228 KB per SM, 1 KB reserved per block)
  x_L2    bytes of x the blocks read from L2: every in-image pixel of a unit's GEMM rect x C, once per unit that
          loads x (with x resident: once per tile, plus once per block whose run starts inside a tile)
  w_L2    bytes of W1 the blocks read: each unit its rows x C
  hbm     the ideal device-memory bytes: x once, the output once, the weights once
  t_pred  max(hbm / --hbm-tbs, (x_L2 + w_L2 + output) / --l2-tbs) in microseconds: the two streams the fused
          kernel cannot avoid, with an H100's copy rate (3.0 TB/s) and a lead for its L2 read rate (5.5 TB/s;
          both to be measured on the GPU, NOTES); latency and instruction issue are not in it
The emulator binary is cached by a hash of its sources (GHOSTKERNELS_SASS_CACHE, as sass_report.py).
tests/test_cuda_compile.py uses emulator_header() and plan_of() for its planner tests.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sass_report  # noqa: E402  (the cache folder)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_DIR = os.path.join(REPO, "csrc", "cuda")
EMULATOR_SRC = os.path.join(CUDA_DIR, "emulation", "ghost_cuda_emulator.cpp")

ACT_CODE = {"identity": 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4}
DTYPE_CODE = {"float32": 0, "float16": 1, "bfloat16": 2}
H100 = {"sm_count": 132, "smem_per_sm": 228 * 1024, "reserved_per_block": 1024, "blocks_by_regs": 2}


def emulator_header(backward: bool, dtype: str, tf32: bool, channels_last: bool, act: str, shape, oc: int,
                    groups: int = 1, plan=(0, 0, 0, 0)) -> bytes:
    """The emulator's input header (ghost_cuda_emulator.cpp): shape = (N, C, H, W, init, M, k); plan = (forward
    blocks, rows, mode, stages), 0 for the launcher's / planner's own choice."""
    n, c, h, w, init, m, k = shape
    return struct.pack("<4s18q", b"GKEM", int(backward), DTYPE_CODE[dtype], int(tf32), int(channels_last),
                       ACT_CODE[act], n, c, h, w, init, m, k, oc, groups, *plan)


def plan_fields(stdout: str) -> dict:
    """The key=value fields of the emulator's "plan ..." line, numbers as int."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("plan "))
    out = {}
    for tok in line.split()[1:]:
        key, _, val = tok.partition("=")
        out[key] = int(val) if val.lstrip("-").isdigit() else val
    return out


def find_cuda_include() -> str | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            for inc in (os.path.join(root, "include"), os.path.join(root, "targets", "x86_64-linux", "include")):
                if os.path.isfile(os.path.join(inc, "cuda_runtime_api.h")) and os.path.isfile(
                        os.path.join(inc, "cuda_fp16.h")):
                    return inc
    nvcc = shutil.which("nvcc")
    if nvcc:
        inc = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
        if os.path.isfile(os.path.join(inc, "cuda_fp16.h")):
            return inc
    return None


def build_emulator(cxx: str | None = None, include: str | None = None) -> str:
    """Path of the emulator binary, compiled once per hash of csrc/ (the kernels, the planner, the emulator)."""
    cxx = cxx or shutil.which(os.environ.get("CXX", "c++"))
    include = include or find_cuda_include()
    if not cxx or not include:
        raise RuntimeError("plan_report: needs a C++ compiler and the CUDA headers (cuda_fp16.h)")
    h = hashlib.sha256(repr((cxx, include)).encode())
    for path in sorted(glob.glob(os.path.join(REPO, "csrc", "**", "*"), recursive=True)):
        if path.endswith((".h", ".cuh", ".cu", ".cpp")):
            h.update(os.path.relpath(path, REPO).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    exe = os.path.join(sass_report.cache_dir(), f"ghost_cuda_emulator-{h.hexdigest()[:16]}")
    if os.path.isfile(exe):
        return exe
    # One build across processes: pytest-xdist workers reach their first emulated test at about the same time, and
    # each used to compile the same binary (~40 s of a core) side by side. The second now waits for the first's.
    import fcntl

    with open(f"{exe}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not os.path.isfile(exe):
            tmp = f"{exe}.tmp{os.getpid()}"
            cmd = [cxx, "-std=c++17", "-O1", "-Wno-attributes", f"-I{include}", EMULATOR_SRC, "-o", tmp]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"building the emulator failed:\n{' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
            os.replace(tmp, exe)
    return exe


def plan_of(exe: str, shape, oc: int, dtype: str = "float16", channels_last: bool = True, tf32: bool = False,
            act: str = "relu", plan=(0, 0, 0, 0), backward: bool = False) -> dict:
    """The planner's choice for one shape (N, C, H, W, init, M, k), as plan_fields."""
    with tempfile.NamedTemporaryFile(suffix=".gkem", delete=False) as f:
        f.write(emulator_header(backward, dtype, tf32, channels_last, act, shape, oc, 1, plan))
        path = f.name
    try:
        r = subprocess.run([exe, "--plan", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        raise RuntimeError(f"the emulator's planner refused {shape}: {r.stdout}{r.stderr}")
    return plan_fields(r.stdout)


def blocks_per_sm(smem: int) -> int:
    by_smem = H100["smem_per_sm"] // (smem + H100["reserved_per_block"])
    return max(0, min(H100["blocks_by_regs"], by_smem))


def _in_image(lo: int, size: int, extent: int) -> int:
    return max(0, min(lo + size, extent) - max(lo, 0))


def rect_pixels_read(H: int, W: int, p: dict) -> int:
    """In-image pixels of the GEMM rects of all tiles of one image (the pixels whose x a unit copies)."""
    halo = p["halo"]
    total = 0
    for ty in range(p["tiles"][0]):
        rows = _in_image(ty * p["th"] - halo, p["rect"][0], H)
        for tx in range(p["tiles"][1]):
            total += rows * _in_image(tx * p["tw"] - halo, p["rect"][1], W)
    return total


def traffic(shape, oc: int, p: dict, es: int) -> dict:
    """Bytes of one call under plan p (see the module docstring)."""
    n, c, h, w, init, m, k = shape
    rows, chunks = p["rows"], p["chunks"]
    units = n * p["tiles"][0] * p["tiles"][1] * chunks
    x_per_unit = rect_pixels_read(h, w, p) // (p["tiles"][0] * p["tiles"][1]) * c * es  # mean over tiles
    tiles = n * p["tiles"][0] * p["tiles"][1]
    if p["xres"]:
        blocks = min(units, H100["sm_count"] * blocks_per_sm(p["smem"]))
        x_loads = min(units, tiles + blocks)
    else:
        x_loads = units
    w_rows = sum(min(rows, init - ch * rows) for ch in range(chunks))
    out_bytes = n * oc * h * w * es
    weights = (init * c + init + init * m * (k * k + 1)) * es
    return {"units": units, "x_L2": x_loads * x_per_unit, "w_L2": tiles * w_rows * c * es,
            "hbm": n * c * h * w * es + out_bytes + weights, "out": out_bytes}


def _parse_plan(raw: dict) -> dict:
    th, tw = raw["th"], raw["tw"]
    ty, tx = (int(v) for v in raw["tiles"].split("x"))
    rh, rw = (int(v) for v in raw["rect"].split("x"))
    return {"th": th, "tw": tw, "tiles": (ty, tx), "rect": (rh, rw), "halo": raw["halo"], "rows": raw["rows"],
            "chunks": raw["chunks"], "xres": raw["xres"], "overlap": raw["overlap"], "stages": raw["stages"],
            "smem": raw["smem"]}


def report(exe: str, shapes, batch: int, dtype: str, channels_last: bool, hbm_tbs: float, l2_tbs: float) -> list:
    """shapes: (ghostkernels.bench.cases.GhostShape, uses in the model) pairs -> one record per shape."""
    es = 4 if dtype == "float32" else 2
    tf32 = dtype == "float32"
    rows = []
    for s, count in shapes:
        shape = (batch, s.in_channels, s.height, s.width, s.init_channels, s.ratio - 1, s.dw_size)
        act = "relu" if s.relu else "identity"
        rec = {"shape": s.label, "count": count}
        for name, req in (("before", (1 << 30, 32, 1, 0)), ("after", (0, 0, 0, 0))):
            p = _parse_plan(plan_of(exe, shape, s.out_channels, dtype, channels_last, tf32, act, req))
            t = traffic(shape, s.out_channels, p, es)
            t_pred = max(t["hbm"] / (hbm_tbs * 1e6), (t["x_L2"] + t["w_L2"] + t["out"]) / (l2_tbs * 1e6))
            rec[name] = {**p, **t, "blocks_per_sm": blocks_per_sm(p["smem"]), "t_pred_us": round(t_pred, 2)}
        rows.append(rec)
    return rows


def format_rows(rows: list) -> str:
    head = (f"{'shape':30s} {'plan before -> after':44s} {'smem KB':>11s} {'blk/SM':>6s} {'x_L2 MB':>13s} "
            f"{'w_L2 MB':>11s} {'hbm MB':>7s} {'t_pred us':>11s}")
    lines = [head]
    for r in rows:
        b, a = r["before"], r["after"]

        def desc(p):
            return (f"{p['rows']}r x{p['chunks']}" + (" xres" if p["xres"] else "") + (" ovl" if p["overlap"] else "")
                    + f" S{p['stages']}")

        lines.append(f"{r['shape']:30s} {desc(b) + ' -> ' + desc(a):44s} "
                     f"{b['smem'] / 1024:5.1f}>{a['smem'] / 1024:5.1f} {b['blocks_per_sm']:>2d}>{a['blocks_per_sm']:<3d} "
                     f"{b['x_L2'] / 1e6:6.1f}>{a['x_L2'] / 1e6:6.1f} {b['w_L2'] / 1e6:5.1f}>{a['w_L2'] / 1e6:5.1f} "
                     f"{a['hbm'] / 1e6:7.1f} {b['t_pred_us']:5.1f}>{a['t_pred_us']:5.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ghostnet_100")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="float16", choices=sorted(DTYPE_CODE))
    ap.add_argument("--nchw", action="store_true", help="NCHW tensors (default channels_last)")
    ap.add_argument("--min-hw", type=int, default=0, help="only shapes at least this wide")
    ap.add_argument("--max-hw", type=int, default=1 << 30, help="only shapes at most this wide")
    ap.add_argument("--hbm-tbs", type=float, default=3.0)
    ap.add_argument("--l2-tbs", type=float, default=5.5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("GHOSTKERNELS_DEFER_LOAD", "1")  # the model's shapes need no op library
    sys.path.insert(0, REPO)
    from ghostkernels.bench import cases

    seen = {}
    for s in cases.model_shapes(args.model):
        if args.min_hw <= s.height <= args.max_hw:
            seen.setdefault(s, 0)
            seen[s] += 1
    rows = report(build_emulator(), list(seen.items()), args.batch, args.dtype, not args.nchw, args.hbm_tbs, args.l2_tbs)
    print(f"{args.model}, batch {args.batch}, {args.dtype} {'NCHW' if args.nchw else 'channels_last'}, "
          f"H100 planner; t_pred at {args.hbm_tbs} TB/s HBM, {args.l2_tbs} TB/s L2")
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
