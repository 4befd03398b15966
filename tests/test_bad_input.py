"""Bad input raises a clear Python exception naming the problem, on every backend; never a crash or a silent result.

Each case changes one thing in a valid call and checks the exception type and the message text.
"""

from __future__ import annotations

import pytest
import torch

import ghost_testing as gt
from ghostkernels import ops

_VALID = gt.GhostCase(n=2, c=6, h=5, w=4, init=4, ratio=3, k=3, out_channels=9)


def _valid_inputs(backend: str, seed: int) -> list[torch.Tensor]:
    return list(gt.make_inputs(_VALID, torch.float32, gt.backend_device(backend), seed))


def _other_device(device: torch.device) -> torch.device:
    """A device that differs from ``device``: the CPU for GPU tensors, the meta device for CPU tensors (no second
    real device is needed: the op must reject the mix before touching any data)."""
    return torch.device("cpu") if device.type == "cuda" else torch.device("meta")


# (id, how to break a valid (x, w_primary, b_primary, w_cheap, b_cheap, out_channels, act) call, exception, message)
_BREAKAGES = [
    ("x-rank-3", lambda a: [a[0][0]] + a[1:], ValueError, r"x must be 4-D \[N, C, H, W\], got 3-D"),
    ("x-rank-5", lambda a: [a[0][None]] + a[1:], ValueError, r"x must be 4-D \[N, C, H, W\], got 5-D"),
    ("channel-mismatch", lambda a: [a[0][:, :5]] + a[1:], ValueError,
     r"channel mismatch: x has 5 channels but w_primary expects 6"),
    ("w-primary-not-1x1", lambda a: [a[0], a[1].expand(-1, -1, 3, 3)] + a[2:], ValueError,
     r"w_primary must be \[init, C, 1, 1\]"),
    ("b-primary-shape", lambda a: [a[0], a[1], a[2][:3]] + a[3:], ValueError, r"b_primary must be \[4\]"),
    ("w-cheap-not-multiple-of-init", lambda a: a[:3] + [a[3][:7]] + a[4:], ValueError,
     r"w_cheap has 7 channels, which is not a positive multiple of init=4"),
    ("w-cheap-not-depthwise", lambda a: a[:3] + [a[3].expand(-1, 2, -1, -1)] + a[4:], ValueError,
     r"w_cheap must be a depthwise weight"),
    ("even-k", lambda a: a[:3] + [torch.nn.functional.pad(a[3], (0, 1, 0, 1))] + a[4:], ValueError,
     r"depthwise kernel size must be odd.*k=4"),
    ("non-square-k", lambda a: a[:3] + [torch.nn.functional.pad(a[3], (1, 1))] + a[4:], ValueError,
     r"w_cheap must be square k x k"),
    ("b-cheap-shape", lambda a: a[:4] + [a[4][:5]], ValueError, r"b_cheap must be \[8\]"),
    ("dtype-mismatch", lambda a: [a[0], a[1].to(torch.float16 if a[0].dtype != torch.float16 else torch.float32)]
     + a[2:], TypeError, r"dtype mismatch: x is .* but w_primary is"),
    ("dtype-mismatch-bias", lambda a: a[:4] + [a[4].to(torch.float16)], TypeError,
     r"dtype mismatch: x is .* but b_cheap is"),
    ("device-mismatch", lambda a: [a[0], a[1].to(_other_device(a[0].device))] + a[2:], ValueError,
     r"device mismatch: x is on .* but w_primary is on"),
]

_ARG_BREAKAGES = [
    ("unknown-act", {"act": "gelu"}, ValueError, r"unknown act 'gelu'; expected one of identity, relu"),
    ("out-channels-0", {"out_channels": 0}, ValueError, r"out_channels=0 is outside \[1, init\*ratio=12\]"),
    ("out-channels-too-many", {"out_channels": 13}, ValueError, r"out_channels=13 is outside \[1, init\*ratio=12\]"),
]


@pytest.mark.parametrize("breakage", _BREAKAGES, ids=[b[0] for b in _BREAKAGES])
@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_bad_tensor_arguments(backend, breakage, seed):
    gt.skip_unless_backend(backend)
    _, breaker, exc, message = breakage
    args = breaker(_valid_inputs(backend, seed))
    with pytest.raises(exc, match=message):
        ops.ghost_module(*args, _VALID.oc, _VALID.act, backend=backend)


@pytest.mark.parametrize("breakage", _ARG_BREAKAGES, ids=[b[0] for b in _ARG_BREAKAGES])
@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_bad_scalar_arguments(backend, breakage, seed):
    gt.skip_unless_backend(backend)
    _, change, exc, message = breakage
    kwargs = {"out_channels": _VALID.oc, "act": _VALID.act, **change}
    with pytest.raises(exc, match=message):
        ops.ghost_module(*_valid_inputs(backend, seed), kwargs["out_channels"], kwargs["act"], backend=backend)


def test_unknown_backend(seed):
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'; expected one of auto, cpu, cuda, triton, eager"):
        ops.ghost_module(*_valid_inputs("cpu", seed), _VALID.oc, _VALID.act, backend="tpu")


def test_cuda_backend_with_cpu_tensors(seed):
    with pytest.raises(ValueError, match=r"backend='cuda' needs CUDA tensors, got tensors on cpu"):
        ops.ghost_module(*_valid_inputs("cpu", seed), _VALID.oc, _VALID.act, backend="cuda")


def test_cpu_backend_with_non_cpu_tensors(seed):
    args = [t.to("meta") for t in _valid_inputs("cpu", seed)]
    with pytest.raises(ValueError, match=r"backend='cpu' needs CPU tensors, got tensors on meta"):
        ops.ghost_module(*args, _VALID.oc, _VALID.act, backend="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for CUDA tensors")
def test_cpu_backend_with_cuda_tensors(seed):
    args = [t.to("cuda") for t in _valid_inputs("cpu", seed)]
    with pytest.raises(ValueError, match=r"backend='cpu' needs CPU tensors, got tensors on cuda"):
        ops.ghost_module(*args, _VALID.oc, _VALID.act, backend="cpu")


def test_triton_backend_with_cpu_tensors_outside_the_interpreter(seed):
    gt.skip_unless_backend("triton")
    if gt.triton_interpreted():
        pytest.skip("under TRITON_INTERPRET=1 CPU tensors are what the Triton backend runs on")
    with pytest.raises(RuntimeError, match=r"backend='triton' got CPU tensors, but the Triton kernels need a CUDA"):
        ops.ghost_module(*_valid_inputs("cpu", seed), _VALID.oc, _VALID.act, backend="triton")


# Dtypes each backend refuses: the CPU kernels have no float16 path, the Triton kernels no float64; integer
# tensors are refused by every fused backend.
_UNSUPPORTED_DTYPES = {
    "cpu": [(torch.float16, r"supported dtypes are float64, float32 and bfloat16, got Half"),
            (torch.int32, r"supported dtypes are float64, float32 and bfloat16, got Int")],
    "cuda": [(torch.int32, r"(?i)dtype")],
    "triton": [(torch.float64, r"the Triton kernels support float16, bfloat16 and float32, got torch.float64"),
               (torch.int32, r"the Triton kernels support float16, bfloat16 and float32, got torch.int32")],
}


@pytest.mark.parametrize("backend,dtype,message",
                         [(b, d, m) for b, entries in _UNSUPPORTED_DTYPES.items() for d, m in entries],
                         ids=[f"{b}-{gt.dtype_name(d)}" for b, entries in _UNSUPPORTED_DTYPES.items()
                              for d, _ in entries])
def test_unsupported_dtype(backend, dtype, message, seed):
    gt.skip_unless_backend(backend)
    args = [t.to(dtype) for t in _valid_inputs(backend, seed)]
    with pytest.raises(TypeError, match=message):
        ops.ghost_module(*args, _VALID.oc, _VALID.act, backend=backend)


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_backward_op_rejects_wrong_grad_out_shape(backend, seed):
    gt.skip_unless_backend(backend)
    x, *weights = _valid_inputs(backend, seed)
    grad_out = torch.randn(2, _VALID.oc - 1, 5, 4, device=x.device)
    if backend == "triton":
        import ghostkernels.triton

        ghostkernels.triton.interpreted()  # registers the Triton ops on first use
        op = torch.ops.ghostkernels.ghost_module_triton_backward
    else:
        op = torch.ops.ghostkernels.ghost_module_backward
    with pytest.raises(ValueError, match=r"grad_out must be \[2, 9, 5, 4\], got"):
        op(grad_out, x, *weights, _VALID.oc, _VALID.act)


@pytest.mark.parametrize("backend", gt.BACKENDS)
def test_bad_input_under_torch_compile(backend, seed):
    """The fake kernels run the same checks, so a compiled call fails with the same message while tracing."""
    gt.skip_unless_backend(backend)
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def f(*args):
        return ops.ghost_module(*args, _VALID.oc, "gelu", backend=backend)

    with pytest.raises(Exception, match=r"unknown act 'gelu'"):
        f(*_valid_inputs(backend, seed))
