"""GhostNetV2's CUDA gate without a GPU: the unchanged kernel code run on the host by the emulator (modes 2 and 3
of csrc/cuda/emulation/ghost_cuda_emulator.cpp), against the float64 eager reference:
- the DFC map (csrc/cuda/dfc_gate_kernel.cuh: pool, 1x1 conv, the (1, k) and (k, 1) depthwise convs, sigmoid);
- the gated Ghost-module forward (ghost_forward_kernel.cuh with kGate: the nearest-upsampled map multiplied into
  both halves as they are stored), against ghost_module_gated_reference, at the sizes where the upsampling index
  differs (even: i >> 1; 7 -> 3; other sizes, a map larger than the image), in every layout instantiation
  (NHWCVec, the one-element NHWC, NCHW), every CUDA dtype, on each of the five gated instantiations
  (ghost_cuda_select.cuh), and under every forward plan (unit height, x resident, overlapped copies, stages, grid:
  bit-identical, as ungated, tests/test_cuda_compile.py).
Outputs are NaN-filled before the kernels run. Compilation for sm_80/sm_90 is tests/test_cuda_compile.py's."""

from __future__ import annotations

import pytest
import torch

from cuda_toolchain import DTYPE_CODE, emulator_or_skip, plan_report, run_emulator

from ghostkernels.ops.reference import dfc_gate_reference, ghost_module_gated_reference

# The map is a sigmoid (in (0, 1)); maps are compared relative to their largest value. float32 sums C products in
# another order than eager; 16-bit stores round once.
_LIMIT = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module")
def emulator() -> str:
    return emulator_or_skip()


def _run(exe, tmp_path, mode, dtype, channels_last, sizes, arrays, reverse=False):
    n, c, h, w, i, m, k, oc = sizes
    header = (mode, DTYPE_CODE[dtype], 0, int(channels_last), 0, n, c, h, w, i, m, k, oc, 0, 0)
    return run_emulator(exe, tmp_path / f"in{mode}", tmp_path / f"out{mode}", header, arrays, reverse)[0]


def _max_err(got, want) -> float:
    assert not torch.isnan(got).any(), "NaN in the kernel's result: an element was never written"
    return float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30))


GATE_CASES = {  # (n, c, h, w, o, kh, kv, dtype, channels_last)
    "f32-nchw-7x7": (2, 6, 7, 7, 10, 5, 5, torch.float32, False),
    "f32-nhwc-odd-rect": (1, 5, 9, 12, 7, 5, 5, torch.float32, True),
    "f16-nhwc-14": (2, 8, 14, 14, 12, 5, 5, torch.float16, True),
    "bf16-nchw-k3-k7": (1, 4, 10, 6, 9, 3, 7, torch.bfloat16, False),
    "f32-nchw-2x2": (3, 3, 2, 3, 4, 5, 5, torch.float32, False),
}


@pytest.mark.parametrize("name", list(GATE_CASES))
def test_dfc_gate_kernels_under_host_emulation(name, emulator, tmp_path):
    n, c, h, w, o, kh, kv, dtype, cl = GATE_CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    ts = [torch.randn(n, c, h, w, generator=gen), torch.randn(o, c, 1, 1, generator=gen) * 0.6,
          torch.randn(o, generator=gen) * 0.5, torch.randn(o, 1, 1, kh, generator=gen) * 0.5,
          torch.randn(o, generator=gen) * 0.5, torch.randn(o, 1, kv, 1, generator=gen) * 0.5,
          torch.randn(o, generator=gen) * 0.5]
    ts = [t.to(dtype) for t in ts]
    got = _run(emulator, tmp_path, 2, dtype, cl, (n, c, h, w, o, kh, kv, 0), ts, reverse=cl)
    want = dfc_gate_reference(*[t.double() for t in ts])
    err = _max_err(got.reshape(want.shape), want)
    assert err < _LIMIT[dtype], f"{name}: map error {err:.2e}"


# The gated forward, relative (L2) error against float64: the limits of the ungated forward's emulated tests
# (test_cuda_compile.py; the product with the map is taken in float32 before the one rounding of the store).
_FWD_LIMIT = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
_TF32_LIMIT = 3e-3
_LAYOUT = {"0": "NCHW", "1": "NHWC", "2": "NHWCVec"}

# (N, C, H, W, init, ratio, k, out_channels, act, dtype, tf32, channels_last, Hg, Wg, the layout it must run in,
# threads in descending order). Which gated instantiation runs: k = 3 with ReLU in NCHW / NHWCVec has its own, every
# other call the run-time-k, run-time-activation one of its layout.
GATED_CASES = {
    # GhostNetV2's: 7x7 from a 3x3 map, init 36 (a 4-channel group at the chunk edge), two images
    "f16-vec-k3-relu-7-from-3": (2, 24, 7, 7, 36, 2, 3, 72, "relu", torch.float16, False, True, 3, 3, "2", True),
    # NCHW k = 3 ReLU, two tiles (40 rows), even sizes (i >> 1), a slice inside the cheap half
    "bf16-nchw-k3-relu-even-tiles": (1, 12, 40, 6, 10, 2, 3, 16, "relu", torch.bfloat16, False, False, 20, 3, "0",
                                     False),
    # the run-time-k kernel at k = 3 (hardswish is not compiled gated for itself), odd sizes
    "bf16-vec-k3-hardswish-odd": (1, 16, 9, 11, 16, 2, 3, 32, "hardswish", torch.bfloat16, False, True, 4, 5, "2",
                                  False),
    # the one-element NHWC path (ratio 3), k = 5, a map larger than the image (nearest downsampling)
    "f32-nhwc-k5-silu-ratio3": (1, 8, 9, 5, 6, 3, 5, 17, "silu", torch.float32, False, True, 11, 7, "1", True),
    # NCHW on the run-time kernels, TF32, k = 1, primary half only (out_channels < init), a 1x1 map
    "tf32-nchw-k1-identity-primary": (2, 20, 6, 7, 24, 2, 1, 20, "identity", torch.float32, True, False, 1, 1, "0",
                                      False),
    # exact float32 NHWCVec (4-channel vectors), k = 7, relu6, same size map
    "f32-vec-k7-relu6-same-size": (1, 12, 8, 6, 12, 2, 7, 24, "relu6", torch.float32, False, True, 8, 6, "2", False),
}


def _gated_inputs(name, n, c, h, w, init, ratio, k, oc, dtype, hg, wg):
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    w1 = (torch.randn(init, c, 1, 1, generator=gen) * 3 / c ** 0.5).to(dtype)
    b1 = (torch.randn(init, generator=gen) * 0.5).to(dtype)
    w2 = (torch.randn(init * (ratio - 1), 1, k, k, generator=gen) * 1.2 / k).to(dtype)
    b2 = (torch.randn(init * (ratio - 1), generator=gen) * 0.5).to(dtype)
    gate = torch.sigmoid(torch.randn(n, oc, hg, wg, generator=gen) * 2).to(dtype)
    return x, w1, b1, w2, b2, gate


def _gated_forward(exe, tmp_path, sizes, act, dtype, tf32, cl, inputs, plan=(0, 0, 0, 0), reverse=False):
    """The emulated gated forward with plan = (blocks, rows, mode, stages) requested (0: as the launcher / planner
    choose); returns (output [N, OC, H, W], the emulator's stdout)."""
    n, c, h, w, init, m, k, oc, hg, wg = sizes
    blocks, *request = plan
    header = (3, DTYPE_CODE[dtype], int(tf32), int(cl), plan_report.ACT_CODE[act], n, c, h, w, init, m, k, oc, 0,
              blocks)
    out, stdout = run_emulator(exe, tmp_path / "in3", tmp_path / "out3", header, inputs, reverse, tuple(request),
                               gate_size=(hg, wg))
    return out.reshape(n, oc, h, w), stdout


def _layout_of(stdout) -> str:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("layout ")][0]


def _rel_err(got, want) -> float:
    assert not torch.isnan(got).any(), "NaN in the kernel's result: an element was never written"
    return float((got.double() - want).norm() / want.norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", list(GATED_CASES))
def test_gated_forward_under_host_emulation(name, emulator, tmp_path):
    n, c, h, w, init, ratio, k, oc, act, dtype, tf32, cl, hg, wg, layout, reverse = GATED_CASES[name]
    inputs = _gated_inputs(name, n, c, h, w, init, ratio, k, oc, dtype, hg, wg)
    sizes = (n, c, h, w, init, ratio - 1, k, oc, hg, wg)
    got, stdout = _gated_forward(emulator, tmp_path, sizes, act, dtype, tf32, cl, inputs, reverse=reverse)
    assert _layout_of(stdout) == layout, f"{name}: ran in layout {_LAYOUT[_layout_of(stdout)]}, not {_LAYOUT[layout]}"
    want = ghost_module_gated_reference(*(t.double() for t in inputs[:5]), oc, act, inputs[5].double())
    limit = _TF32_LIMIT if tf32 else _FWD_LIMIT[dtype]
    err = _rel_err(got, want)
    assert err < limit, f"{name}: gated forward relative error {err:.2e} >= {limit:.0e}"


# Every forward plan, gated: the planner's unit heights (32 / 64 / 128), modes (streamed or x resident, with or
# without the next unit's copies overlapped), pipeline depths and grids (one block running every unit, runs that
# start inside a tile), forced on the same inputs. Every plan runs the same fragments in the same order, so the
# outputs must be bit-identical to the first (32 rows, streamed, one unit per block), which is also compared with
# float64. (N, C, H, W, init, ratio, k, out_channels, act, dtype, channels_last, Hg, Wg, the tallest unit, layout)
GATED_PLAN_CASES = {
    # GhostNetV2's instantiation: 128-row units (two: 128 + 36), a 3x3 map
    "f16-vec-k3-relu-7x7": (2, 24, 7, 7, 164, 2, 3, 328, "relu", torch.float16, True, 3, 3, 128, "2"),
    # the run-time NCHW kernel: k = 5 (64-row units at most on 7x7), an odd map
    "bf16-nchw-k5-silu-7x7": (1, 16, 7, 7, 76, 2, 5, 120, "silu", torch.bfloat16, False, 4, 2, 64, "0"),
}
_MODES = {1: "streamed", 2: "streamed+overlap", 3: "resident", 4: "resident+overlap"}


@pytest.mark.parametrize("name", list(GATED_PLAN_CASES))
def test_gated_forward_plans_are_bit_identical(name, emulator, tmp_path):
    n, c, h, w, init, ratio, k, oc, act, dtype, cl, hg, wg, tallest, layout = GATED_PLAN_CASES[name]
    inputs = _gated_inputs(name, n, c, h, w, init, ratio, k, oc, dtype, hg, wg)
    sizes = (n, c, h, w, init, ratio - 1, k, oc, hg, wg)
    base, stdout = _gated_forward(emulator, tmp_path, sizes, act, dtype, False, cl, inputs, (1 << 20, 32, 1, 0))
    assert _layout_of(stdout) == layout
    want = ghost_module_gated_reference(*(t.double() for t in inputs[:5]), oc, act, inputs[5].double())
    err = _rel_err(base, want)
    assert err < _FWD_LIMIT[dtype], f"{name}: gated forward relative error {err:.2e}"
    combos = [(rows, mode) for rows in (32, tallest) for mode in _MODES if (rows, mode) != (32, 1)]
    for idx, (rows, mode) in enumerate(combos):
        plan = ((1, 2, 3, 0)[idx % 4], rows, mode, (0, 2, 3, 4)[(idx // 2) % 4])
        out, stdout = _gated_forward(emulator, tmp_path, sizes, act, dtype, False, cl, inputs, plan,
                                     reverse=idx % 3 == 1)
        got = plan_report.plan_fields(stdout)
        assert (got["rows"], got["xres"], got["overlap"]) == (rows, int(mode >= 3), int(mode % 2 == 0)), \
            f"{name}: asked for {plan}, the emulator ran {got}"
        assert torch.equal(out, base), (f"{name}: plan {plan} ({_MODES[mode]}) differs from the reference plan by "
                                        f"{(out - base).abs().max():.3e}")
