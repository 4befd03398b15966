"""Correctness of the CUDA backend on a GPU, fast enough to run first in a GPU session (about a minute on an H100).

  python3 bench/gpu/check_cuda_kernels.py [--json PATH] [--cases N] [--checks grid,sweep,...]

Checks, each against float64 eager math on the GPU (ghostkernels.ops.reference) with TF32 off unless stated:
  grid      every dtype x layout x activation x k once (vector and one-element NHWC shapes alternating);
  sweep     random shapes over every dtype (float32/float16/bfloat16), layout (NCHW/channels_last), activation,
            k in {1,3,5,7}, ratio 2..4, out_channels slice, channel counts 1..120, images 1x1..45x45: forward
            output and all five gradients (relative Frobenius error), outputs poisoned with NaN first
            (torch.utils.deterministic.fill_uninitialized_memory), so an unwritten element fails;
  ghostnet  every Ghost-module shape of GhostNet 1.0x (read off the model) at batch 2, float16 channels_last and
            float32 NCHW, forward and backward;
  blocking  GhostNet 1.0x's 7x7 and 14x14 shapes at batch 256, where the planner takes the layouts of NOTES entry
            37 (128-channel units, x resident across a tile's chunks, copies overlapped with the epilogue, a
            persistent grid): forward in float16/bfloat16 channels_last and TF32 NCHW against float64, and its first
            two images bit-identical to a batch-2 call (32-channel units there: the same z1 in another layout);
  gated     GhostNetV2's ghost_module_gated (the map multiplied in the forward kernel's stores, NOTES entry 44):
            its gated ghost1 shapes at batch 2 and 7x7 / 14x14 ones at batch 256 (the tall / resident plans), every
            dtype, both layouts, maps of H/2 x W/2 (7 -> 3 included) and of other sizes, forward against float64
            and the gradients (composed ops) against float64;
  tf32      float32 with torch.backends.cudnn.allow_tf32 on (the kernels then use TF32 tensor cores);
  empty     N = 0 and H*W = 0 give empty outputs and zero weight gradients;
  strided   non-contiguous input (a channel slice) gives the same result as its contiguous copy;
  graph     forward+backward captured in a CUDA graph and replayed on new data equals a direct call;
  compile   torch.compile(fullgraph=True, mode="reduce-overhead") of the op equals a direct call;
  opcheck   torch.library.opcheck on CUDA inputs (schema, fake tensor, autograd registration, AOT dispatch);
  errors    unsupported input raises a clear Python exception (k = 9, float64).
Prints one line per check and a summary; exits with status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback

import torch

import ghostkernels
from ghostkernels.ops.reference import ACTS, ghost_module_gated_reference, ghost_module_reference

DEV = torch.device("cuda")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Relative Frobenius error limits (forward, backward). float32: float32 arithmetic in another order; float16:
# 11-bit mantissa storage of x, weights and the output; bfloat16: 8-bit. Backward goes through one more GEMM and
# low-precision grad_z1, so it gets twice the room.
LIMIT = {torch.float32: (1e-5, 2e-5), torch.float16: (2e-3, 4e-3), torch.bfloat16: (1.5e-2, 3e-2)}
TF32_LIMIT = (3e-3, 6e-3)


def make_inputs(n, c, h, w, init, ratio, k, dtype, channels_last, gen):
    def r(*s):
        return torch.randn(*s, generator=gen)

    x = r(n, c, h, w).to(DEV, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1 = (r(init, c, 1, 1) * 3 / max(c, 1) ** 0.5).to(DEV, dtype)
    b1 = (r(init) * 0.5).to(DEV, dtype)
    w2 = (r(init * (ratio - 1), 1, k, k) * 1.2 / k).to(DEV, dtype)
    b2 = (r(init * (ratio - 1)) * 0.5).to(DEV, dtype)
    return [x, w1, b1, w2, b2]


def rel_err(actual, expected) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    if torch.isnan(a).any():
        return float("nan")
    if e.numel() == 0:
        return 0.0
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def forward_backward(inputs, oc, act, grad_out, backend="cuda"):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    if backend == "reference":
        out = ghost_module_reference(*leaves, oc, act)
    else:
        out = ghostkernels.ops.ghost_module(*leaves, oc, act, backend=backend)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves]


def compare(inputs, oc, act, limits, seed):
    """Max relative error of output and gradients against float64 reference; also checks layouts."""
    gen = torch.Generator().manual_seed(seed + 1)
    n, _, h, w = inputs[0].shape
    grad_out = torch.randn(n, oc, h, w, generator=gen).to(DEV, inputs[0].dtype)
    out, grads = forward_backward(inputs, oc, act, grad_out)
    ref_out, ref_grads = forward_backward([t.double() for t in inputs], oc, act, grad_out.double(), "reference")
    fmt = torch.channels_last if (not inputs[0].is_contiguous() and
                                  inputs[0].is_contiguous(memory_format=torch.channels_last)) else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt), "output is not in the input's memory format"
    assert grads[0].is_contiguous(memory_format=fmt), "grad x is not in the input's memory format"
    e_fwd = rel_err(out, ref_out)
    e_bwd = max(rel_err(g, rg) for g, rg in zip(grads, ref_grads))
    ok = e_fwd < limits[0] and e_bwd < limits[1]  # NaN compares False
    return ok, e_fwd, e_bwd


def check_sweep(count, rng):
    failures, worst = [], {}
    for i in range(count):
        dtype = DTYPES[i % 3]
        cl = bool((i // 3) % 2)
        act = ACTS[i % len(ACTS)]
        k = (1, 3, 5, 7)[rng.randrange(4)] if i % 4 == 0 else 3
        ratio = rng.choice((2, 2, 3, 4))
        init = rng.choice((1, 3, 4, 6, 10, 18, 26, 33, 40, 70))
        c = rng.choice((1, 5, 16, 24, 40, 72, 120))
        n = rng.randint(1, 3)
        h, w = rng.randint(1, 45), rng.randint(1, 45)
        oc = rng.randint(1, init * ratio)
        inputs = make_inputs(n, c, h, w, init, ratio, k, dtype, cl, torch.Generator().manual_seed(i))
        ok, ef, eb = compare(inputs, oc, act, LIMIT[dtype], i)
        key = str(dtype).removeprefix("torch.")
        worst[key] = max(worst.get(key, (0, 0))[0], ef), max(worst.get(key, (0, 0))[1], eb)
        if not ok:
            failures.append(f"{key} cl={cl} act={act} k={k} ratio={ratio} N{n} C{c} {h}x{w} init={init} oc={oc}: "
                            f"fwd {ef:.2e} bwd {eb:.2e}")
    detail = ", ".join(f"{k} worst fwd {v[0]:.1e} bwd {v[1]:.1e}" for k, v in worst.items())
    return not failures, f"{count} random cases; {detail}" + ("".join("\n    FAIL " + f for f in failures[:10])
                                                           if failures else "")


def check_grid():
    """Every dtype x layout x activation x k once, forward and all gradients. channels_last alternates between a
    shape of the 16-byte-vector epilogues (ratio 2, out_channels % 8 == 0, init % 4 == 0; init % 8 == 4 on odd
    cases, which gives 4-channel edge groups) and one of the one-element fallback (odd channel counts, ratio 3)."""
    failures, count = [], 0
    for di, dtype in enumerate(DTYPES):
        for cl in (False, True):
            for ai, act in enumerate(ACTS):
                for k in (1, 3, 5, 7):
                    seed = 1000 + 97 * di + 31 * ai + k + (500 if cl else 0)
                    if (ai + k) % 2 == 0:  # vector-friendly: init 12 or 20 -> 24 or 40 outputs, some sliced off
                        init, ratio, oc, c = (12, 2, 24, 16) if k % 4 == 1 else (20, 2, 32, 24)
                    else:
                        init, ratio, oc, c = (7, 3, 19, 13)
                    inputs = make_inputs(2, c, 13, 11, init, ratio, k, dtype, cl, torch.Generator().manual_seed(seed))
                    ok, ef, eb = compare(inputs, oc, act, LIMIT[dtype], seed)
                    count += 1
                    if not ok:
                        failures.append(f"{str(dtype).removeprefix('torch.')} cl={cl} act={act} k={k} init={init} "
                                        f"ratio={ratio} oc={oc}: fwd {ef:.2e} bwd {eb:.2e}")
    return not failures, f"{count} cases" + "".join("\n    FAIL " + f for f in failures[:20])


def check_ghostnet():
    from ghostkernels.bench.cases import model_shapes

    shapes = list(dict.fromkeys(model_shapes("ghostnet_100")))
    failures, worst = [], 0.0
    for j, s in enumerate(shapes):
        for dtype, cl in ((torch.float16, True), (torch.float32, False)):
            inputs = make_inputs(2, s.in_channels, s.height, s.width, s.init_channels, s.ratio, s.dw_size, dtype, cl,
                                 torch.Generator().manual_seed(100 + j))
            ok, ef, eb = compare(inputs, s.out_channels, "relu" if s.relu else "identity", LIMIT[dtype], 100 + j)
            worst = max(worst, ef / LIMIT[dtype][0], eb / LIMIT[dtype][1])
            if not ok:
                failures.append(f"{s.label} {dtype}: fwd {ef:.2e} bwd {eb:.2e}")
    return not failures, f"{len(shapes)} shapes x 2 configs, worst error at {worst:.2f} of its limit" + "".join(
        "\n    FAIL " + f for f in failures)


def check_blocking():
    from ghostkernels.bench.cases import model_shapes

    shapes = [s for s in dict.fromkeys(model_shapes("ghostnet_100")) if s.height <= 14]
    failures, worst, count = [], 0.0, 0
    saved = torch.backends.cudnn.allow_tf32
    try:
        for j, s in enumerate(shapes):
            for dtype, cl, tf32 in ((torch.float16, True, False), (torch.bfloat16, True, False),
                                    (torch.float32, False, True)):
                torch.backends.cudnn.allow_tf32 = tf32
                act = "relu" if s.relu else "identity"
                inputs = make_inputs(256, s.in_channels, s.height, s.width, s.init_channels, s.ratio, s.dw_size,
                                     dtype, cl, torch.Generator().manual_seed(300 + j))
                with torch.no_grad():
                    out = ghostkernels.ops.ghost_module(*inputs, s.out_channels, act, backend="cuda")
                    ref = ghost_module_reference(*[t.double() for t in inputs], s.out_channels, act)
                    few = ghostkernels.ops.ghost_module(inputs[0][:2].contiguous(memory_format=(
                        torch.channels_last if cl else torch.contiguous_format)), *inputs[1:], s.out_channels, act,
                        backend="cuda")
                limit = TF32_LIMIT[0] if tf32 else LIMIT[dtype][0]
                err = rel_err(out, ref)
                worst = max(worst, err / limit)
                count += 1
                name = f"{s.label} {str(dtype).removeprefix('torch.')}{' tf32' if tf32 else ''}"
                if not err < limit:
                    failures.append(f"{name}: fwd {err:.2e}")
                if not torch.equal(out[:2], few):
                    failures.append(f"{name}: batch 256 vs batch 2 differ by {(out[:2] - few).abs().max().item():.3e}")
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    return not failures, f"{count} cases, worst error at {worst:.2f} of its limit" + "".join(
        "\n    FAIL " + f for f in failures[:20])


def check_gated():
    """ghost_module_gated on CUDA against float64: output and all six gradients (x, the four weights, the map)."""
    failures, count = [], 0
    cases = [  # (N, C, H, W, init, k, out_channels, act, Hg, Wg): ghostnetv2_100's gated ghost1 shapes and others
        (2, 16, 112, 112, 8, 3, 16, "relu", 56, 56), (2, 24, 56, 56, 36, 3, 72, "relu", 28, 28),
        (2, 40, 28, 28, 60, 3, 120, "relu", 14, 14), (2, 80, 14, 14, 100, 3, 200, "relu", 7, 7),
        (2, 160, 7, 7, 480, 3, 960, "relu", 3, 3), (256, 160, 7, 7, 480, 3, 960, "relu", 3, 3),
        (256, 112, 14, 14, 336, 3, 672, "relu", 7, 7), (1, 12, 9, 11, 10, 5, 17, "silu", 4, 13),
    ]
    for i, (n, c, h, w, init, k, oc, act, hg, wg) in enumerate(cases):
        for dtype, cl in ((torch.float16, True), (torch.bfloat16, True), (torch.float32, False)):
            gen = torch.Generator().manual_seed(100 + i)
            inputs = make_inputs(n, c, h, w, init, 2, k, dtype, cl, gen)
            gate = torch.sigmoid(torch.randn(n, oc, hg, wg, generator=gen) * 2).to(DEV, dtype)
            if cl:
                gate = gate.contiguous(memory_format=torch.channels_last)
            leaves = [t.detach().clone().requires_grad_() for t in inputs + [gate]]
            out = ghostkernels.ops.ghost_module_gated(*leaves[:5], oc, act, leaves[5], backend="cuda")
            grad_out = torch.randn(out.shape, generator=gen).to(DEV, dtype)
            ref_leaves = [t.detach().double().requires_grad_() for t in inputs + [gate]]
            ref = ghost_module_gated_reference(*ref_leaves[:5], oc, act, ref_leaves[5])
            e_fwd = rel_err(out, ref)
            e_bwd = float("nan")
            if n <= 2:  # the batch-256 cases check the forward's plans only
                out.backward(grad_out)
                ref.backward(grad_out.double())
                e_bwd = max(rel_err(a.grad, b.grad) for a, b in zip(leaves, ref_leaves))
            count += 1
            lim = LIMIT[dtype]
            if not (e_fwd < lim[0] and (n > 2 or e_bwd < lim[1])):
                failures.append(f"{str(dtype).removeprefix('torch.')} cl={cl} N{n} C{c} {h}x{w} init={init} k={k} "
                                f"oc={oc} {act} map {hg}x{wg}: fwd {e_fwd:.2e} bwd {e_bwd:.2e}")
    return not failures, f"{count} gated cases" + "".join("\n    FAIL " + f for f in failures[:10])


def check_tf32():
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        msgs, ok_all = [], True
        for act in ("identity", "relu"):
            inputs = make_inputs(2, 96, 20, 20, 40, 2, 3, torch.float32, True, torch.Generator().manual_seed(7))
            ok, ef, eb = compare(inputs, 80, act, TF32_LIMIT, 7)
            ok_all &= ok
            msgs.append(f"{act}: fwd {ef:.1e} bwd {eb:.1e}")
        return ok_all, "; ".join(msgs)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def check_empty():
    for shape in ((0, 16, 8, 8), (2, 16, 0, 8)):
        x = torch.randn(*shape, device=DEV, dtype=torch.float16).requires_grad_()
        params = [p.requires_grad_() for p in make_inputs(1, 16, 1, 1, 6, 2, 3, torch.float16, False,
                                                           torch.Generator().manual_seed(0))[1:]]
        out = ghostkernels.ops.ghost_module(x, *params, 12, "relu", backend="cuda")
        assert out.shape == (shape[0], 12, shape[2], shape[3]), f"empty output shape {tuple(out.shape)}"
        out.sum().backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is not None and (p.grad == 0).all() for p in params), "weight grads of empty input"
    return True, "N = 0 and H = 0"


def check_strided():
    base = make_inputs(2, 48, 17, 19, 12, 2, 3, torch.float16, False, torch.Generator().manual_seed(3))
    x_view = base[0][:, ::2]  # [2, 24, 17, 19], not contiguous in any format
    w1 = base[1][:, ::2].contiguous()
    a = ghostkernels.ops.ghost_module(x_view, w1, *base[2:], 20, "silu", backend="cuda")
    b = ghostkernels.ops.ghost_module(x_view.contiguous(), w1, *base[2:], 20, "silu", backend="cuda")
    assert torch.equal(a, b), "strided input differs from its contiguous copy"
    return True, "channel-sliced input == contiguous copy (bitwise)"


def check_graph():
    inputs = make_inputs(4, 40, 28, 28, 60, 2, 3, torch.float16, True, torch.Generator().manual_seed(5))
    static = [t.clone().requires_grad_(i > 0) for i, t in enumerate(inputs)]
    static[0].requires_grad_()
    grad_out = torch.randn(4, 120, 28, 28, device=DEV, dtype=torch.float16)

    def step():
        for t in static:
            t.grad = None
        out = ghostkernels.ops.ghost_module(*static, 120, "relu", backend="cuda")
        out.backward(grad_out)
        return out

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm up outside the capture (library, caches, autograd)
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out_static = step()
    new = make_inputs(4, 40, 28, 28, 60, 2, 3, torch.float16, True, torch.Generator().manual_seed(6))
    with torch.no_grad():
        for t, v in zip(static, new):
            t.copy_(v)
    g.replay()
    torch.cuda.synchronize()
    ref_out, ref_grads = forward_backward(new, 120, "relu", grad_out)
    assert torch.equal(out_static, ref_out), "graph replay output differs from a direct call"
    for t, rg in zip(static, ref_grads):
        assert rel_err(t.grad, rg) < 1e-6, "graph replay gradients differ from a direct call"
    return True, "forward+backward captured and replayed on new data == direct call"


def check_compile():
    inputs = make_inputs(2, 24, 14, 14, 36, 2, 3, torch.float16, True, torch.Generator().manual_seed(8))

    def f(x, w1, b1, w2, b2):
        return ghostkernels.ops.ghost_module(x, w1, b1, w2, b2, 72, "relu", backend="cuda") * 2

    compiled = torch.compile(f, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):  # reduce-overhead records a CUDA graph after warm-up runs
        got = compiled(*inputs)
    want = f(*inputs)
    assert torch.equal(got, want), "torch.compile(fullgraph, reduce-overhead) differs from eager"
    return True, "fullgraph + reduce-overhead == direct call"


def check_opcheck():
    for dtype, cl in ((torch.float16, True), (torch.float32, False)):
        inputs = make_inputs(2, 16, 9, 10, 6, 2, 3, dtype, cl, torch.Generator().manual_seed(9))
        for t in inputs:
            t.requires_grad_()
        torch.library.opcheck(torch.ops.ghostkernels.ghost_module.default, (*inputs, 11, "hardswish"))
    return True, "float16 channels_last and float32 NCHW"


def check_errors():
    inputs = make_inputs(1, 8, 6, 6, 4, 2, 9, torch.float16, False, torch.Generator().manual_seed(10))
    try:
        ghostkernels.ops.ghost_module(*inputs, 8, "relu", backend="cuda")
        return False, "k = 9 was accepted"
    except ValueError as e:
        msg_k = str(e).splitlines()[0]
    inputs = make_inputs(1, 8, 6, 6, 4, 2, 3, torch.float32, False, torch.Generator().manual_seed(10))
    try:
        ghostkernels.ops.ghost_module(*[t.double() for t in inputs], 8, "relu", backend="cuda")
        return False, "float64 was accepted"
    except TypeError as e:
        msg_t = str(e).splitlines()[0]
    return True, f"ValueError: {msg_k[:90]} | TypeError: {msg_t[:90]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--cases", type=int, default=90, help="random cases of the sweep")
    ap.add_argument("--checks", default=None, help="comma list of the checks to run (default: all)")
    args = ap.parse_args()
    print(f"ghostkernels {ghostkernels.__version__}, library {ghostkernels.load_library()}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}", flush=True)
    if not ghostkernels.ops.cuda_kernels_available():
        print("FAIL: the op library has no CUDA kernels")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # at::empty -> NaN: unwritten outputs show
    rng = random.Random(1234)
    checks = [("sweep", lambda: check_sweep(args.cases, rng)), ("grid", check_grid), ("ghostnet", check_ghostnet),
              ("blocking", check_blocking), ("gated", check_gated),
              ("tf32", check_tf32), ("empty", check_empty), ("strided", check_strided), ("graph", check_graph),
              ("compile", check_compile), ("opcheck", check_opcheck), ("errors", check_errors)]
    if args.checks:
        wanted = [c.strip() for c in args.checks.split(",") if c.strip()]
        unknown = sorted(set(wanted) - {name for name, _ in checks})
        if unknown:
            ap.error(f"unknown checks {unknown}; known: {', '.join(name for name, _ in checks)}")
        checks = [(name, fn) for name, fn in checks if name in wanted]
    results = {}
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            ok, msg = fn()
        except Exception as e:  # a crash is a failed check, and the next checks still run
            ok, msg = False, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
        dt = time.perf_counter() - t0
        results[name] = {"ok": bool(ok), "detail": msg, "seconds": round(dt, 1)}
        print(f"[{'PASS' if ok else 'FAIL'}] {name:9s} {dt:6.1f}s  {msg}", flush=True)
    failed = [n for n, r in results.items() if not r["ok"]]
    print(f"check_cuda_kernels: {len(results) - len(failed)}/{len(results)} passed" +
          (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
