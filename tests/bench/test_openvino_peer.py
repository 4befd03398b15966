"""The benchmark's OpenVINO peer (ghostkernels/bench/openvino_peer.py) on a tiny network: logits against float64 eager
at both inference precisions, the precision OpenVINO reports, bfloat16 inputs widened once, and clear errors. Skips
with the reason where openvino (an optional extra) is not installed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ghost_testing as gt
from ghostkernels.bench import openvino_peer

pytestmark = pytest.mark.skipif(openvino_peer.unavailable_reason() is not None,
                                reason=f"OpenVINO peer: {openvino_peer.unavailable_reason()}")


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


# Relative to the largest logit: float32 is OpenVINO's own summation order; bf16 rounds weights and activations.
_TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2}


# bfloat16 only: float32 (and bfloat16 on a GhostNet) run in bench/test_bench_end_to_end.py's smoke cases; an
# export costs seconds on 2 cores.
@pytest.mark.parametrize("dtype", [torch.bfloat16], ids=str)
def test_logits_and_reported_precision(dtype):
    net = _tiny_net()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net.double()(x.double())
    peer = openvino_peer.OpenVinoModel(net.float(), x, threads=1, dtype=dtype)
    try:
        if peer.precision != openvino_peer.PRECISIONS[dtype]:
            # OpenVINO runs a bfloat16 hint in float32 on CPUs without bfloat16 instructions (an AVX2 Zen 3 here);
            # the harness records what it took, so only that fallback is allowed.
            assert peer.precision == "f32" and not {"avx512_bf16", "amx_bf16"} & gt.cpu_flags(), peer.precision
        xin = x.to(dtype)
        got = peer(xin)
        assert got.dtype == torch.float32 and got.shape == want.shape
        err = float((got.double() - want).abs().max() / want.abs().max())
        assert err <= _TOL[dtype], err
        if dtype == torch.bfloat16:
            peer(xin)
            assert len(peer._widened) == 1  # the same input tensor is widened once, not per call
    finally:
        peer.close()


def test_other_dtypes_are_refused():
    with pytest.raises(ValueError, match="float32 and bfloat16"):
        openvino_peer.OpenVinoModel(_tiny_net(), torch.randn(1, 3, 8, 8), threads=1, dtype=torch.float16)
