"""What is specific to the Triton backend (ghostkernels/triton); the shared op suite (test_ops_forward.py,
test_ops_backward.py) runs backend="triton" through the same cases as every backend.

Without a CUDA device the kernels run under Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported), where the shared suite only affords its smallest cases. This file
covers the axes those leave out, each on a small case: ratio 3 and 4, k in {1, 5, 7}, every activation,
channels_last and strided x, several tiles per image, several channel blocks, several persistent rounds per
program, several chunks per tile. It also checks the torch.library registration (opcheck, torch.compile), the
plain-PyTorch CPU path of the op, the error paths of the entry point, the launch heuristics, and that the kernels
compile for sm_90 (no GPU needed). With a CUDA device the same kernel tests run compiled, plus bfloat16 and
torch.compile with Inductor.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import ghost_testing as gt

pytest.importorskip("triton")
if not gt.has_cuda_device() and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("tests/test_triton_backend.py: no CUDA device and TRITON_INTERPRET is not 1 "
                       "(tests/conftest.py sets it before triton is imported)")

import ghostkernels  # noqa: E402
import ghostkernels.triton as gtriton  # noqa: E402
from ghostkernels.triton import configs, ghost_module_triton, torch_math  # noqa: E402

OP = gtriton.load_op()
DEVICE = gt.backend_device("triton")
NAMES = ("x", "w_primary", "b_primary", "w_cheap", "b_cheap")

# float32: tl.dot runs with input_precision="ieee" (IEEE_FP32 in the kernels), so float32 is float32 arithmetic in
# another summation order; measured under the interpreter <= 1e-6 of max|expected|. float16 and bfloat16: the
# shared suite's tolerances (float accumulation, x1 rounded to the dtype before the depthwise conv).
_F32_FORWARD = gt.Tol(atol=1e-5, rtol=5e-6)
_F32_BACKWARD = gt.Tol(atol=3e-5, rtol=1.5e-5)


def forward_tol(dtype):
    return _F32_FORWARD if dtype == torch.float32 else gt.forward_tol("triton", dtype)


def backward_tol(dtype):
    return _F32_BACKWARD if dtype == torch.float32 else gt.backward_tol("triton", dtype)


def check_kernels(case: gt.GhostCase, dtype: torch.dtype, seed: int, backward: bool = True) -> None:
    """Forward (and backward) of ghost_module_triton against float64 eager, plus the memory-format rule."""
    inputs = gt.make_inputs(case, dtype, DEVICE, seed, requires_grad=backward)
    out = ghost_module_triton(*inputs, case.oc, case.act)
    assert out.dtype == dtype and tuple(out.shape) == (case.n, case.oc, case.h, case.w)
    fmt = gt.expected_memory_format(inputs[0])
    gt.assert_memory_format(out, fmt, "output")
    gt.assert_close_to_reference(out, gt.reference_forward(inputs, case.oc, case.act), forward_tol(dtype), "output")
    if not backward:
        return
    grad_out = gt.make_grad_out(case, dtype, DEVICE, seed)
    grads = torch.autograd.grad(out, inputs, grad_out)
    expected = gt.reference_grads(inputs, grad_out, case.oc, case.act)
    for name, g, e in zip(NAMES, grads, expected):
        gt.assert_close_to_reference(g, e, backward_tol(dtype), f"grad {name}")
    gt.assert_memory_format(grads[0], fmt, "grad x")


# Each case covers axes the shared suite's interpreter subset does not reach. float16 gradients are compared only
# for smooth activations: a float16 pre-activation within rounding of a kink takes the other derivative there.
KERNEL_CASES = [
    (gt.GhostCase(n=1, c=6, h=6, w=7, init=4, ratio=3, k=5, out_channels=10, act="silu", layout="channels_last",
                  label="ratio3-k5-slice-in-x2"), (torch.float32, torch.float16)),
    (gt.GhostCase(n=1, c=5, h=6, w=5, init=3, ratio=4, k=1, out_channels=11, act="hardswish",
                  label="ratio4-k1"), (torch.float32,)),
    (gt.GhostCase(n=1, c=4, h=8, w=7, init=5, k=7, act="relu6", label="k7-several-tiles"), (torch.float32,)),
    # init 36 -> three blocks of 16 primary channels; 2 images x tiles x blocks > 3 programs: persistent rounds
    (gt.GhostCase(n=2, c=4, h=5, w=6, init=36, out_channels=60, act="relu", label="three-channel-blocks"),
     (torch.float32,)),
    (gt.GhostCase(n=2, c=3, h=13, w=11, init=6, act="identity", layout="transposed", label="3x3-tiles-strided"),
     (torch.float16,)),
    (gt.GhostCase(n=1, c=7, h=6, w=6, init=6, out_channels=4, act="relu", layout="channels_last_batch_slice",
                  label="slice-inside-x1"), (torch.float32,)),
]


@pytest.mark.parametrize("case,dtype", [pytest.param(c, d, id=f"{gt.dtype_name(d)}-{c.id}")
                                        for c, dtypes in KERNEL_CASES for d in dtypes])
def test_kernels_forward_backward(case, dtype, seed):
    check_kernels(case, dtype, seed)


@pytest.mark.parametrize("act", gt.ACTS)
def test_kernels_forward_every_activation_float16(act, seed):
    case = gt.GhostCase(n=1, c=5, h=6, w=7, init=4, ratio=3, k=3, out_channels=11, act=act, layout="channels_last")
    check_kernels(case, torch.float16, seed, backward=False)


def test_kernels_with_several_chunks_per_tile(monkeypatch, seed):
    """Tiles walked in chunks of 16 pixels, as the GPU sizing does for large tiles (the interpreter's default
    makes a test tile one chunk)."""
    monkeypatch.setattr(configs, "chunk_elems", lambda: 256)
    case = gt.GhostCase(n=1, c=4, h=6, w=7, init=5, ratio=3, k=3, out_channels=13, act="silu",
                        layout="channels_last")
    check_kernels(case, torch.float32, seed)


@pytest.mark.skipif(not gt.has_cuda_device(), reason="bfloat16 needs a GPU (numpy has none for the interpreter)")
@pytest.mark.parametrize("act", ["silu", "identity"])
def test_kernels_bfloat16_on_gpu(act, seed):
    case = gt.GhostCase(n=2, c=24, h=14, w=14, init=12, ratio=2, k=3, act=act, layout="channels_last")
    check_kernels(case, torch.bfloat16, seed)


# --- registration --------------------------------------------------------------------------------------------

_REG_CASE = gt.GhostCase(n=1, c=4, h=5, w=6, init=6, ratio=2, k=3, out_channels=10, act="silu",
                         layout="channels_last")


def test_schemas_match_the_cpp_op():
    """Same signature as ghostkernels::ghost_module / ghost_module_backward, so backends are interchangeable."""
    ghostkernels.load_library()
    for triton_name, cpp_name in (("ghost_module_triton", "ghost_module"),
                                  ("ghost_module_triton_backward", "ghost_module_backward")):
        ours = getattr(torch.ops.ghostkernels, triton_name).default._schema
        theirs = getattr(torch.ops.ghostkernels, cpp_name).default._schema
        assert str(ours).replace(triton_name, cpp_name, 1) == str(theirs)


def test_opcheck_forward_op(seed):
    inputs = gt.make_inputs(_REG_CASE, torch.float32, DEVICE, seed, requires_grad=True)
    torch.library.opcheck(torch.ops.ghostkernels.ghost_module_triton.default, (*inputs, _REG_CASE.oc, _REG_CASE.act))


def test_opcheck_backward_op(seed):
    inputs = gt.make_inputs(_REG_CASE, torch.float32, DEVICE, seed)
    grad_out = gt.make_grad_out(_REG_CASE, torch.float32, DEVICE, seed)
    torch.library.opcheck(torch.ops.ghostkernels.ghost_module_triton_backward.default,
                          (grad_out, *inputs, _REG_CASE.oc, _REG_CASE.act))


def test_torch_compile_fullgraph_forward_backward(seed):
    """No graph break, and the compiled forward and backward agree with eager. On the CPU the traced body is the
    op's plain-PyTorch path (op.py), run by aot_eager; on a GPU Inductor compiles the Triton kernels themselves."""
    backend = "inductor" if DEVICE.type == "cuda" else "aot_eager"
    torch._dynamo.reset()
    fn = torch.compile(ghost_module_triton, fullgraph=True, backend=backend)
    case = _REG_CASE
    inputs = gt.make_inputs(case, torch.float32, DEVICE, seed, requires_grad=True)
    out = fn(*inputs, case.oc, case.act)
    grad_out = gt.make_grad_out(case, torch.float32, DEVICE, seed)
    grads = torch.autograd.grad(out, inputs, grad_out)
    gt.assert_close_to_reference(out, gt.reference_forward(inputs, case.oc, case.act), _F32_FORWARD, "compiled out")
    for name, g, e in zip(NAMES, grads, gt.reference_grads(inputs, grad_out, case.oc, case.act)):
        gt.assert_close_to_reference(g, e, _F32_BACKWARD, f"compiled grad {name}")


def test_ops_entry_point_reaches_the_triton_op(seed):
    case = _REG_CASE
    inputs = gt.make_inputs(case, torch.float32, DEVICE, seed)
    via_ops = ghostkernels.ops.ghost_module(*inputs, case.oc, case.act, backend="triton")
    direct = torch.ops.ghostkernels.ghost_module_triton(*inputs, case.oc, case.act)
    assert torch.equal(via_ops, direct)


@pytest.mark.parametrize("act", gt.ACTS)
def test_cpu_reference_path_matches_float64_autograd(act, seed):
    """The op's plain-PyTorch implementation (its CPU kernel without the interpreter, and its traced body for
    fake tensors) has the same forward and gradients as eager autograd; float64, so exact up to summation order."""
    case = gt.GhostCase(n=2, c=5, h=6, w=5, init=4, ratio=3, k=5, out_channels=10, act=act, layout="channels_last")
    inputs = gt.make_inputs(case, torch.float64, "cpu", seed)
    grad_out = gt.make_grad_out(case, torch.float64, "cpu", seed)
    fmt = gt.expected_memory_format(inputs[0])
    grads = torch_math.backward(grad_out, *inputs, case.oc, act, fmt)
    expected = gt.reference_grads(inputs, grad_out, case.oc, act)
    for name, g, e in zip(NAMES, grads, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10, msg=lambda m: f"grad {name}: {m}")
    gt.assert_memory_format(grads[0], fmt, "grad x")


def test_op_on_cpu_without_interpreter_computes_the_reference(monkeypatch, seed):
    """Called directly, torch.ops.ghostkernels.ghost_module_triton on CPU tensors without the interpreter is the
    documented reference kernel (the entry point refuses such tensors instead, see below)."""
    monkeypatch.setattr(OP, "INTERPRETED", False)
    case = _REG_CASE
    inputs = gt.make_inputs(case, torch.float32, "cpu", seed, requires_grad=True)
    out = torch.ops.ghostkernels.ghost_module_triton(*inputs, case.oc, case.act)
    gt.assert_memory_format(out, gt.expected_memory_format(inputs[0]), "output")
    gt.assert_close_to_reference(out, gt.reference_forward(inputs, case.oc, case.act), _F32_FORWARD, "output")
    grad_out = gt.make_grad_out(case, torch.float32, "cpu", seed)
    grads = torch.autograd.grad(out, inputs, grad_out)
    for name, g, e in zip(NAMES, grads, gt.reference_grads(inputs, grad_out, case.oc, case.act)):
        gt.assert_close_to_reference(g, e, _F32_BACKWARD, f"grad {name}")


# --- errors --------------------------------------------------------------------------------------------------

def _small_inputs(dtype=torch.float32, device=DEVICE):
    return gt.make_inputs(_REG_CASE, dtype, device, seed=0)


def test_cpu_tensors_without_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(OP, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="need a CUDA GPU; use backend='cpu'"):
        ghost_module_triton(*_small_inputs(device="cpu"), _REG_CASE.oc, _REG_CASE.act)


def test_missing_triton_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(gtriton, "_op_module", None)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    with pytest.raises(RuntimeError, match="needs the 'triton' package"):
        ghost_module_triton(*_small_inputs(), _REG_CASE.oc, _REG_CASE.act)


def test_unsupported_device_is_refused():
    meta = [t.to("meta") for t in _small_inputs(device="cpu")]
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ghost_module_triton(*meta, _REG_CASE.oc, _REG_CASE.act)


def test_float64_is_refused():
    with pytest.raises(TypeError, match="float16, bfloat16 and float32"):
        ghost_module_triton(*_small_inputs(torch.float64), _REG_CASE.oc, _REG_CASE.act)


@pytest.mark.skipif(gt.has_cuda_device(), reason="the interpreter's limitation")
def test_bfloat16_under_the_interpreter_is_refused():
    with pytest.raises(TypeError, match="bfloat16 cannot run under TRITON_INTERPRET=1"):
        ghost_module_triton(*_small_inputs(torch.bfloat16), _REG_CASE.oc, _REG_CASE.act)


def test_bad_arguments_name_the_problem():
    x, wp, bp, wc, bc = _small_inputs()
    with pytest.raises(ValueError, match="out_channels=13 is outside"):
        ghost_module_triton(x, wp, bp, wc, bc, 13, "relu")
    with pytest.raises(ValueError, match="unknown act 'gelu'"):
        ghost_module_triton(x, wp, bp, wc, bc, 10, "gelu")
    with pytest.raises(ValueError, match="kernel size must be odd"):
        ghost_module_triton(x, wp, bp, torch.zeros(6, 1, 2, 2), bc, 10, "relu")


def test_backward_op_checks_grad_out():
    x, wp, bp, wc, bc = _small_inputs()
    with pytest.raises(ValueError, match="grad_out must be"):
        torch.ops.ghostkernels.ghost_module_triton_backward(torch.zeros(1, 9, 5, 6), x, wp, bp, wc, bc, 10, "relu")


# --- launch heuristics ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,tile,block", [(112, 14, 256), (56, 14, 256), (28, 14, 256), (14, 14, 256),
                                             (7, 7, 128)])
def test_forward_tiles_for_ghostnet_resolutions_waste_nothing(size, tile, block):
    """k = 3 at every GhostNet resolution: square tiles whose halo fills a power-of-two block exactly (or, at 7,
    one tile per image)."""
    geo = configs.choose_tile(size, size, 3, 1, 256)
    assert (geo.TH, geo.TW, geo.BLOCK_P) == (tile, tile, block)


@pytest.mark.parametrize("halo_radii", [1, 2])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_tiles_cover_the_image_and_fit_their_blocks(k, halo_radii):
    r = (k // 2) * halo_radii
    for h, w in [(1, 1), (1, 9), (7, 7), (13, 11), (56, 56), (112, 112), (3, 200)]:
        geo = configs.choose_tile(h, w, k, halo_radii, 256 if k < 7 else 512)
        assert geo.tiles_y * geo.TH >= h and (geo.tiles_y - 1) * geo.TH < h
        assert geo.tiles_x * geo.TW >= w and (geo.tiles_x - 1) * geo.TW < w
        assert (geo.TH + 2 * r) * (geo.TW + 2 * r) <= geo.BLOCK_P
        assert geo.TH * geo.TW <= geo.BLOCK_Q
        assert (geo.TH + 2 * (k // 2)) * (geo.TW + 2 * (k // 2)) <= geo.BLOCK_P1
        assert geo.BLOCK_P >= 16  # tl.dot's minimum


def test_block_i_pads_init_least():
    assert configs.choose_block_i(8) == 16
    assert configs.choose_block_i(24) == 32  # 32 either way: the larger block reads x fewer times
    assert configs.choose_block_i(36) == 16  # 48 instead of 64
    assert configs.choose_block_i(480) == 32


def _nvidia_backend_missing() -> str | None:
    """Why Triton cannot compile for an NVIDIA target here, or None."""
    import importlib.util

    import triton

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        return "this triton has no NVIDIA backend"
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.isfile(ptxas) and not os.environ.get("TRITON_PTXAS_PATH"):
        return "triton's ptxas is missing"
    return None


_COMPILE_CASES = ("fp16-cl-72to24-56", "bf16-cl-k5-ratio3-28")


@pytest.fixture(scope="module")
def sm90_compile():
    """compile_check's output for the kernels of _COMPILE_CASES (first autotune configuration): forward, gated
    forward (GhostNetV2) and backward, and the DFC map's two kernels, compiled for an H100 in a child process without
    TRITON_INTERPRET, with triton's own ptxas (cached by triton by source hash)."""
    if gt.has_cuda_device():
        pytest.skip("on a GPU the kernels are compiled by the tests themselves")
    why = _nvidia_backend_missing()
    if why:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    env["GHOSTKERNELS_DEFER_LOAD"] = "1"  # compiling needs no op library
    cmd = [sys.executable, "-m", "ghostkernels.triton.compile_check", "--arch", "90", "--configs", "first",
           "--kernels", "ghost"]  # the train-mode BatchNorm kernels: tests/test_triton_bn_train.py
    for case in _COMPILE_CASES:
        cmd += ["--case", case]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_kernels_compile_for_sm90_without_a_gpu(sm90_compile):
    """The interpreter accepts code the compiler rejects: the five kernels of each case must compile for sm_90."""
    assert sm90_compile.returncode == 0, sm90_compile.stdout + sm90_compile.stderr
    assert sm90_compile.stdout.count("ok   sm_90") == 5 * len(_COMPILE_CASES), sm90_compile.stdout


def test_channels_last_x_tile_loads_are_16_byte_vectors_in_ptx(sm90_compile):
    """16-bit channels_last x with C % 8 == 0: every global load of the 1x1 conv's x tile is 16 bytes wide (ld.global
    .v4 or the pipeliner's 16-byte cp.async), none a 2-byte scalar, in the forward, the gated forward and the
    backward (NOTES entry 37: before it, ld.global.b16 despite the hints)."""
    assert sm90_compile.returncode == 0, sm90_compile.stdout + sm90_compile.stderr
    lines = [ln for ln in sm90_compile.stdout.splitlines()
             if ln.startswith("ok   sm_90") and re.search(r" (forward|forward-gated|backward) BLOCK_C=", ln)]
    assert len(lines) == 3 * len(_COMPILE_CASES), sm90_compile.stdout
    for line in lines:
        m = re.search(r"x-tile loads \[([^]]*)\]", line)
        assert m, f"no x-tile load widths in: {line}"
        widths = dict(tok.split("Bx") for tok in m.group(1).split()) if m.group(1) != "none" else {}
        assert widths and set(widths) == {"16"}, f"x tile not loaded as 16-byte vectors: {line}"


# --- precision, vector hints, autotune switch -------------------------------------------------------------------

def test_autotune_switch_one_config(monkeypatch):
    """GHOSTKERNELS_TRITON_AUTOTUNE=one leaves one GPU configuration; "all" (the default) the whole sweep; anything
    else is a clear error."""
    import triton

    monkeypatch.setattr(configs, "interpreting", lambda: False)
    monkeypatch.delenv(configs.AUTOTUNE_ENV, raising=False)
    assert len(configs.autotune_configs(triton)) == len(configs._GPU_SWEEP)
    monkeypatch.setenv(configs.AUTOTUNE_ENV, "one")
    (cfg,) = configs.autotune_configs(triton)
    assert (cfg.kwargs["BLOCK_C"], cfg.num_warps, cfg.num_stages) == (32, 4, 2)
    monkeypatch.setenv(configs.AUTOTUNE_ENV, "fast")
    with pytest.raises(ValueError, match="GHOSTKERNELS_TRITON_AUTOTUNE"):
        configs.autotune_configs(triton)


def test_fp32_dot_precision_follows_torch_conv_setting():
    """TF32 exactly when torch lets cuDNN convolutions use it (legacy flag and the per-op setting alike); 16-bit
    inputs always take the tensor-core default."""
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert configs.dot_precision(torch.float32) == "tf32"
        torch.backends.cudnn.allow_tf32 = False
        assert configs.dot_precision(torch.float32) == "ieee"
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            conv.fp32_precision = "tf32"
            assert configs.dot_precision(torch.float32) == "tf32"
            conv.fp32_precision = "ieee"
            assert configs.dot_precision(torch.float32) == "ieee"
        assert configs.dot_precision(torch.float16) == "tf32"
    finally:
        torch.backends.cudnn.allow_tf32 = saved  # the legacy setter resets conv and rnn together


def test_channel_vector_hint_only_when_true():
    assert configs.channel_vector(16, 32, 8) == 8
    assert configs.channel_vector(16, 36) == 1


def test_tensor_vector_needs_every_stride_a_multiple():
    """Per tensor (configs.tensor_vector): channels_last with the channel count, the row and the image strides
    multiples of 8; a batch slice whose image stride is not (or NCHW) gets no hint."""
    x = torch.empty(2, 16, 3, 5).contiguous(memory_format=torch.channels_last)
    assert configs.tensor_vector(x, 16) == 8
    assert configs.tensor_vector(torch.empty(2, 16, 3, 5), 16) == 1  # NCHW
    odd = torch.empty(2, 20, 3, 5).contiguous(memory_format=torch.channels_last)[:, :16]
    assert configs.tensor_vector(odd, 16) == 1  # per-pixel stride 20, not the channel count
    skewed = torch.empty(2 * 244).as_strided((2, 16, 3, 5), (244, 1, 80, 16))  # image stride 244 = 8 * 30 + 4
    assert configs.tensor_vector(skewed, 16) == 1


@pytest.mark.parametrize("layout,vec", [("channels_last", 8), ("contiguous", 1)])
def test_vector_hinted_and_tf32_launch_computes_the_same(layout, vec, seed):
    """Channel counts that are multiples of 8 in channels_last get VEC = 8 (the offsets' multiple_of hints), and
    with TF32 allowed float32 launches with DOT_PRECISION="tf32"; the results stay those of the reference (the
    interpreter computes a tf32 dot in float32, so the float32 tolerance holds there; TF32 itself is checked on the
    GPU by bench/gpu/check_triton_kernels.py)."""
    from ghostkernels.triton import backward_kernels, forward_kernels

    case = gt.GhostCase(n=1, c=8, h=6, w=7, init=8, ratio=2, k=3, out_channels=16, act="relu6", layout=layout)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        inputs = gt.make_inputs(case, torch.float32, DEVICE, seed, requires_grad=True)
        fmt = gt.expected_memory_format(inputs[0])
        out = torch.empty((1, 16, 6, 7), memory_format=fmt)
        consts = forward_kernels.forward_launch_plan(*[t.detach() for t in inputs], out, 16, 2)[2]
        assert consts["VEC"] == vec and consts["XVEC"] == vec and consts["DOT_PRECISION"] == "tf32"
        grad_out = gt.make_grad_out(case, torch.float32, DEVICE, seed)
        bconsts = backward_kernels.backward_launch_plan(grad_out.contiguous(memory_format=fmt),
                                                        *[t.detach() for t in inputs], 16, 2, fmt)[2]
        assert bconsts["VEC"] == vec and bconsts["XVEC"] == vec and bconsts["DOT_PRECISION"] == "tf32"
        if DEVICE.type == "cpu":
            check_kernels(case, torch.float32, seed)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
