"""GhostNetV2's CUDA gate kernels (csrc/cuda/dfc_gate_kernel.cuh) without a GPU: the unchanged kernel code run on
the host by the emulator (modes 2 and 3 of csrc/cuda/emulation/ghost_cuda_emulator.cpp), against the float64 eager
reference: the DFC map (pool, 1x1 conv, the (1, k) and (k, 1) depthwise convs, sigmoid) and the multiply by the
nearest-upsampled map, in both layouts and every CUDA dtype, at the sizes where the upsampling index differs (even:
i >> 1; 7 -> 3; maps of other sizes). Compilation for sm_80/sm_90 is tests/test_cuda_compile.py's (every .cu)."""

from __future__ import annotations

import pytest
import torch

from cuda_toolchain import DTYPE_CODE, emulator_or_skip, run_emulator

from ghostkernels.ops.reference import dfc_gate_reference, upsample_nearest

# The map is a sigmoid (in (0, 1)); products are compared relative to their largest value. float32 sums C
# products in another order than eager; 16-bit stores round once (the multiply twice: the module's output, then
# the product).
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


MULTIPLY_CASES = {  # (n, oc, h, w, hg, wg, dtype, channels_last)
    "f32-nchw-7-from-3": (2, 5, 7, 7, 3, 3, torch.float32, False),
    "f32-nhwc-even": (1, 8, 12, 10, 6, 5, torch.float32, True),
    "f16-nchw-other-size": (2, 3, 9, 5, 4, 3, torch.float16, False),
    "bf16-nhwc-one-pixel-map": (1, 4, 5, 6, 1, 1, torch.bfloat16, True),
}


@pytest.mark.parametrize("name", list(MULTIPLY_CASES))
def test_gate_multiply_kernel_under_host_emulation(name, emulator, tmp_path):
    n, oc, h, w, hg, wg, dtype, cl = MULTIPLY_CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    out = torch.randn(n, oc, h, w, generator=gen).to(dtype)
    gate = (torch.rand(n, oc, hg, wg, generator=gen) + 0.1).to(dtype)
    got = _run(emulator, tmp_path, 3, dtype, cl, (n, 0, h, w, hg, wg, 0, oc), [out, gate])
    want = out.double() * upsample_nearest(gate.double(), (h, w))
    err = _max_err(got.reshape(want.shape), want)
    assert err < _LIMIT[dtype], f"{name}: product error {err:.2e}"
