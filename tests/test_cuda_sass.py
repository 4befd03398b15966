"""Machine-code properties of the CUDA kernels that matter for speed, checked without a GPU.

The fp16/bf16 forward and backward translation units are compiled for sm_90 (as the JIT build compiles them for an
H100/H200) and disassembled (bench/gpu/sass_report.py; cuobjdump and nvdisasm come with the triton wheel). For the
hot instantiations -- every compile-time activation, k = 3 and run-time k, NCHW and NHWCVec -- the tests assert:
  * no indirect branch (BRX/JMX): the activation is a template parameter, not a switch per element;
  * no local memory (STL/LDL) and no stack frame in the hot kernels (every forward, the NHWCVec k = 3
    backward); elsewhere at most a few bytes;
  * NHWCVec: 128-bit global stores present and 16-bit scalar global stores absent (8 channels per thread and
    access), and the epilogue loops' static instruction count per output element stays small.
Skipped, with the reason, where nvcc or the disassembler is missing. The cubins are cached by a hash of the
sources and flags (GHOSTKERNELS_SASS_CACHE), so only a change of csrc/cuda recompiles.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("sass_report", os.path.join(REPO, "bench", "gpu", "sass_report.py"))
sass = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("sass_report", sass)  # dataclasses look their module up there
_spec.loader.exec_module(sass)

FILES = ("ghost_forward_f16.cu", "ghost_forward_bf16.cu", "ghost_backward_f16.cu", "ghost_backward_bf16.cu")
# Loose ceilings on instructions per output element of the NHWCVec store loops (k = 3), measured at 7.8 (primary
# stores) and 16-21 (cheap outputs, by activation) when written; the scalar loops they replaced took 99 and 119.
FORWARD_LOOP_CEILING = {"primary_stores": 12.0, "cheap_epilogue_vec": 32.0}
BACKWARD_LOOP_CEILING = {"primary_grad_vec": 40.0, "cheap_grad_vec": 40.0}


def _template_args(name: str) -> list[str]:
    """<T, kTF32, KT, activation, layout> of a demangled kernel name."""
    m = re.search(r"_kernel<(.*)>\(", name)
    assert m, f"not a kernel instantiation: {name}"
    args = [a.strip() for a in m.group(1).split(",")]
    assert len(args) == 5, f"expected 5 template arguments in {name}"
    return args


def _layout(name: str) -> int:
    """0 NCHW, 1 NHWC (one element per access), 2 NHWCVec."""
    arg = _template_args(name)[4]
    m = re.search(r"\)(\d)$|Layout::(\w+)$", arg)
    assert m, f"no layout in {name}"
    return int(m.group(1)) if m.group(1) is not None else {"NCHW": 0, "NHWC": 1, "NHWCVec": 2}[m.group(2)]


def _act(name: str) -> int:
    """The activation's number (reference.ACTS order); -1 for the run-time activation of the NHWC fallback."""
    return int(_template_args(name)[3].split(")")[-1])


def _k_class(name: str) -> int:
    return int(_template_args(name)[2])


@pytest.fixture(scope="module")
def reports():
    nvcc = sass.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit on PATH, in CUDA_HOME or /usr/local/cuda)")
    if sass.find_binutil("nvdisasm") is None or sass.find_binutil("cuobjdump") is None:
        pytest.skip("nvdisasm/cuobjdump not found (they ship with the triton wheel of the test extra)")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        cubins = list(pool.map(lambda f: sass.compile_cubin(f, 90, nvcc), FILES))
    out = {}
    for f, cubin in zip(FILES, cubins):
        out[f] = sass.report_cubin(cubin)
        assert out[f], f"{f}: no ghost kernels found in its cubin"
    return out


def test_report_flags_match_the_jit_build():
    torch_ext = pytest.importorskip("torch.utils.cpp_extension")
    from ghostkernels.ops import build as _build

    assert sass.NVCC_FLAGS == [*_build.nvcc_flags(), *torch_ext.COMMON_NVCC_FLAGS]


@pytest.mark.parametrize("cu", FILES)
def test_every_instantiation_is_there(reports, cu):
    """2 k classes x (5 activations x {NCHW, NHWCVec} + the run-time-activation NHWC fallback)."""
    names = [r.name for r in reports[cu]]
    assert len(names) == 22, f"{cu}: {len(names)} kernels\n" + "\n".join(names)
    assert {_layout(n) for n in names} == {0, 1, 2}


# The hot kernels (every forward; the backward's NHWCVec for k = 3, GhostNet's) must not spill at all. The other
# backward instantiations run their GEMM at the 128-register cap of the launch bounds and may keep a few loop
# values in local memory (measured when written: bfloat16 NCHW k = 3, 8 bytes, one store and one load per work
# item; NHWCVec with a run-time k, 16-40 bytes): bounded here so that a real blow-up still fails.
COLD_BACKWARD_STACK_LIMIT = 64


def _hot(r) -> bool:
    return "forward" in r.name or (_layout(r.name) == 2 and _k_class(r.name) == 3)


@pytest.mark.parametrize("cu", FILES)
def test_no_spills_in_hot_kernels(reports, cu):
    bad = [f"{sass.short_name(r.name)}: stack {r.stack} B, {r.local} local-memory instructions"
           for r in reports[cu] if _hot(r) and (r.local or r.stack)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("cu", FILES)
def test_spills_elsewhere_stay_small(reports, cu):
    bad = [f"{sass.short_name(r.name)}: stack {r.stack} B" for r in reports[cu]
           if not _hot(r) and r.stack > COLD_BACKWARD_STACK_LIMIT]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("cu", FILES)
def test_no_indirect_branch_in_hot_kernels(reports, cu):
    hot = [r for r in reports[cu] if _act(r.name) >= 0]
    assert len(hot) == 20
    bad = [f"{sass.short_name(r.name)}: {r.brx} BRX/JMX" for r in hot if r.brx]
    assert not bad, "a per-element switch survived:\n" + "\n".join(bad)


@pytest.mark.parametrize("cu", FILES)
def test_nhwc_vector_kernels_store_16_bytes_and_never_2(reports, cu):
    vec = [r for r in reports[cu] if _layout(r.name) == 2]
    assert len(vec) == 10
    for r in vec:
        name = sass.short_name(r.name)
        assert r.stores.get("STG.E.128", 0) > 0, f"{name}: no 128-bit global store: {r.stores}"
        scalar16 = {k: v for k, v in r.stores.items() if k.startswith("STG") and (".U16" in k or ".S16" in k)}
        assert not scalar16, f"{name}: 16-bit scalar global stores {scalar16}"
        if "backward" in r.name:
            assert r.loads.get("LDG.E.128.CONSTANT", 0) + r.loads.get("LDG.E.128", 0) > 0, \
                f"{name}: grad_out is not read with 128-bit loads: {r.loads}"


@pytest.mark.parametrize("cu", FILES)
def test_nhwc_vector_epilogue_loops_are_short(reports, cu):
    ceiling = BACKWARD_LOOP_CEILING if "backward" in cu else FORWARD_LOOP_CEILING
    for r in reports[cu]:
        if _layout(r.name) != 2 or _k_class(r.name) != 3:
            continue
        seen = {}
        for lp in r.loops:
            if lp.stage in ceiling:
                seen[lp.stage] = min(seen.get(lp.stage, float("inf")), lp.per_element)
        name = sass.short_name(r.name)
        for stage, limit in ceiling.items():
            assert stage in seen, f"{name}: no store loop found for {stage}\n{sass.format_report([r])}"
            assert seen[stage] <= limit, (f"{name}: {stage} takes {seen[stage]:.1f} instructions per element "
                                          f"(ceiling {limit})\n{sass.format_report([r])}")
