"""Forward of ghostkernels.ops.ghost_module on every backend against the float64 eager reference.

Each check asserts, besides the values: dtype, device and shape of the output, the output memory-format rule
(channels_last iff x is channels_last-contiguous and not contiguous), no NaN (conftest poisons fresh allocations
with NaN, so an element the kernel never writes is caught), and that the inputs are left untouched.
"""

from __future__ import annotations

import pytest
import torch

import ghost_testing as gt


def check_forward(backend: str, dtype: torch.dtype, case: gt.GhostCase, seed: int) -> None:
    gt.skip_unless_backend(backend)
    device = gt.backend_device(backend)
    inputs = gt.make_inputs(case, dtype, device, seed)
    before = [t.clone() for t in inputs]
    with torch.no_grad():
        out = gt.call_op(backend, inputs, case.oc, case.act)
    assert out.dtype == dtype and out.device.type == device.type
    assert tuple(out.shape) == (case.n, case.oc, case.h, case.w)
    expected = gt.reference_forward(inputs, case.oc, case.act)
    gt.assert_close_to_reference(out, expected, gt.forward_tol(backend, dtype), "output")
    gt.assert_memory_format(out, gt.expected_memory_format(inputs[0]), "output")
    for name, t, b in zip(("x", "w_primary", "b_primary", "w_cheap", "b_cheap"), inputs, before):
        assert torch.equal(t, b), f"the op modified its input {name}"


@pytest.mark.parametrize("backend,dtype,case", gt.op_params(gt.ghostnet_cases()))
def test_forward_ghostnet_100_shapes(backend, dtype, case, seed):
    check_forward(backend, dtype, case, seed)


@pytest.mark.parametrize("backend,dtype,case", gt.op_params(gt.edge_cases()))
def test_forward_edge_cases(backend, dtype, case, seed):
    check_forward(backend, dtype, case, seed)


def test_nan_poisoning_is_active():
    """The NaN checks above are only meaningful while fresh allocations are filled with NaN."""
    assert torch.isnan(torch.empty(16)).all()
    assert torch.isnan(torch.empty(2, 3, 4, 5, memory_format=torch.channels_last)).all()


@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_forward_channels_last_output_is_channels_last(backend, seed):
    """An unambiguous channels_last x (C > 1, H*W > 1) gives an output that is channels_last and NOT contiguous."""
    gt.skip_unless_backend(backend)
    case = gt.GhostCase(n=2, c=6, h=5, w=4, init=4, k=3, out_channels=7, layout="channels_last")
    inputs = gt.make_inputs(case, torch.float32, gt.backend_device(backend), seed)
    out = gt.call_op(backend, inputs, case.oc, case.act)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


def test_ghostnet_100_has_32_ghost_modules_at_expected_sizes():
    shapes = gt.ghostnet_100_shapes()
    assert len(shapes) == 32
    assert {s.h for s in shapes} == {112, 56, 28, 14, 7}
    assert [(s.inp, s.oup, s.act) for s in shapes[:3]] == [(16, 16, "relu"), (16, 16, "identity"), (16, 48, "relu")]
    assert (shapes[-1].inp, shapes[-1].oup, shapes[-1].h) == (960, 160, 7)
    assert all(s.ratio == 2 and s.k == 3 for s in shapes)


@pytest.mark.skipif(not gt.models_available(), reason="ghostkernels.models is not written yet")
def test_ghostnet_100_shapes_from_model_match_config():
    """The shapes come from the model's forward hooks; the configuration walk must agree with them."""
    assert list(gt.ghostnet_100_shapes()) == gt.ghost_shapes_from_config()


# The CPU backend has two kernels for float32 and bfloat16: the AVX-512 one (contiguous inputs on CPUs with AVX-512,
# depthwise kernel size 1, 3, 5 or 7) and the generic one (everything else). The tests above run whichever this CPU takes;
# these run the generic one as well, so that both are tested on an AVX-512 machine.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=gt.dtype_name)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in gt.ghostnet_cases() + gt.edge_cases()])
def test_forward_generic_cpu_kernel(case, dtype, seed, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "generic")
    check_forward("cpu", dtype, case, seed)


# bfloat16 on CPUs with AMX-BF16 runs its GEMM on AMX tiles where the module has more than 16 input channels
# (kernel_ghost_forward_avx512.cpp): the tests above run that path there. GHOSTKERNELS_CPU_AMX=0 (read per call) keeps
# the AVX-512 GEMM, which these run too, so that both are tested on an AMX machine (on others the two are the same).
# Shapes aimed at the AMX blocking (32 channels x 32 pixels of 16 x 16 tiles, input channel pairs zero-padded to
# whole tiles): an odd C one pair past a tile, 17 primaries (a block of one tile plus one row), 40 (a ragged second
# block), groups of 7x7 images (pixels not a multiple of 16), 1x1 images, C just above the 16 where AMX starts, and
# a batch-1 call whose channels are cut into blocks for the two threads (blocks rounded up to whole tiles).
AMX_CASES = [
    gt.GhostCase(n=3, c=33, h=7, w=7, init=17, out_channels=30, label="amx-odd-c"),
    gt.GhostCase(n=2, c=40, h=13, w=11, init=40, k=5, act="hardswish", label="amx-ragged-block"),
    gt.GhostCase(n=2, c=18, h=20, w=9, init=5, ratio=3, label="amx-c18"),
    gt.GhostCase(n=4, c=64, h=1, w=1, init=70, label="amx-1x1"),
    gt.GhostCase(n=1, c=48, h=14, w=14, init=100, out_channels=150, label="amx-channel-blocks"),
]


@pytest.mark.parametrize("amx", ["1", "0"], ids=["amx-if-present", "amx-off"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in AMX_CASES])
def test_bfloat16_forward_amx_blocking(case, amx, seed, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_AMX", amx)
    check_forward("cpu", torch.bfloat16, case, seed)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in gt.ghostnet_cases() + gt.edge_cases()])
def test_bfloat16_forward_without_amx(case, seed, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_AMX", "0")
    check_forward("cpu", torch.bfloat16, case, seed)


def test_avx512_cpu_kernel_is_taken_where_the_cpu_has_it(seed, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "avx512")
    case = gt.edge_cases()[0]
    if gt.cpu_has_avx512():
        check_forward("cpu", torch.float32, case, seed)
    else:
        with pytest.raises(RuntimeError, match="AVX-512"):
            check_forward("cpu", torch.float32, case, seed)


def test_avx512_cpu_kernel_refuses_a_kernel_size_it_lacks(seed, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "avx512")
    with pytest.raises(RuntimeError, match="kernel size 9"):
        check_forward("cpu", torch.float32, gt.edge_cases()[0].replace(k=9, h=10, w=10), seed)


def test_cpu_kernel_knob_rejects_unknown_values(seed, monkeypatch):
    monkeypatch.setenv("GHOSTKERNELS_CPU_KERNEL", "fastest")
    with pytest.raises(RuntimeError, match="GHOSTKERNELS_CPU_KERNEL must be auto, generic or avx512"):
        check_forward("cpu", torch.float32, gt.edge_cases()[0], seed)
