"""Machine-code properties of the CUDA kernels that matter for speed, checked without a GPU.

The fp16/bf16 forward and backward translation units are compiled for sm_90 (as the JIT build compiles them for an
H100/H200) and disassembled (bench/gpu/sass_report.py; cuobjdump and nvdisasm come with the triton wheel). For the
hot instantiations -- every compile-time activation, k = 3 and run-time k, NCHW and NHWCVec, and the gated forward
(GhostNetV2's ghost_module_gated: k = 3 ReLU in NCHW and NHWCVec, run-time k and activation otherwise) -- the
tests assert:
  * no indirect branch (BRX/JMX): the activation is a template parameter, not a switch per element;
  * no local memory (STL/LDL) and no stack frame in the hot kernels (every k = 3 forward, the NHWCVec k = 3
    backward: GhostNet's); elsewhere at most a few bytes;
  * NHWCVec: 128-bit global stores present and 16-bit scalar global stores absent (8 channels per thread and
    access; the gated kernels read the map likewise, 128-bit loads), and the epilogue loops' static instruction
    count per output element stays small (gated: the map load and its index included);
  * every forward kernel issues asynchronous copies (LDGSTS, cp.async) from the persistent loop's `issue_next`,
    the next unit's prologue that L.overlap sends out before this unit's epilogue (NOTES entry 37).
The code is the sm_90 part of the objects tests/test_cuda_compile.py checks (the session's ``cuda_objects``,
tests/cuda_toolchain.py: each .cu compiled once, with the JIT build's flags, for sm_80 and sm_90), taken out with
cuobjdump -xelf. Skipped, with the reason, where nvcc or the disassembler is missing.
"""

from __future__ import annotations

import os
import re

import pytest

import cuda_toolchain

sass = cuda_toolchain.sass

FILES = ("ghost_forward_f16.cu", "ghost_forward_bf16.cu", "ghost_backward_f16.cu", "ghost_backward_bf16.cu")
# Loose ceilings on instructions per output element of the NHWCVec store loops (k = 3), measured at 7.8 (primary
# stores) and 16-21 (cheap outputs, by activation) when written; the scalar loops they replaced took 99 and 119.
# The gated kernel's loops also compute the map pixel and load the map, measured at 12.1-12.6 and 22.0-22.4
# (GhostNetV2's k = 3 ReLU, float16 / bfloat16; NOTES entry 44).
FORWARD_LOOP_CEILING = {"primary_stores": 12.0, "cheap_epilogue_vec": 32.0}
GATED_LOOP_CEILING = {"primary_stores": 18.0, "cheap_epilogue_vec": 36.0}
BACKWARD_LOOP_CEILING = {"primary_grad_vec": 40.0, "cheap_grad_vec": 40.0}
# Kernels per translation unit: 2 k classes x (5 activations x {NCHW, NHWCVec} + the run-time-activation NHWC
# fallback) = 22, and in the forward files 5 gated ones (ghost_cuda_select.cuh select_gated_forward).
UNGATED_KERNELS, GATED_KERNELS = 22, 5


def _template_args(name: str) -> list[str]:
    """<T, kTF32, KT, activation, layout[, kGate]> of a demangled kernel name (kGate: the forward only)."""
    m = re.search(r"_kernel<(.*)>\(", name)
    assert m, f"not a kernel instantiation: {name}"
    args = [a.strip() for a in m.group(1).split(",")]
    assert len(args) == (6 if "forward" in name else 5), f"unexpected template arguments in {name}"
    return args


def _gated(name: str) -> bool:
    return "forward" in name and _template_args(name)[5] == "true"


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
def cubins(cuda_objects):
    if sass.find_binutil("nvdisasm") is None or sass.find_binutil("cuobjdump") is None:
        pytest.skip("nvdisasm/cuobjdump not found (they ship with the triton wheel of the test extra)")
    return {f: cuda_objects.cubin(f, 90) for f in FILES}


@pytest.fixture(scope="module")
def reports(cubins):
    out = {}
    for f, cubin in cubins.items():
        out[f] = sass.report_cubin(cubin)
        assert out[f], f"{f}: no ghost kernels found in its cubin"
    return out


def test_report_flags_match_the_jit_build():
    torch_ext = pytest.importorskip("torch.utils.cpp_extension")
    from ghostkernels.ops import build as _build

    assert sass.NVCC_FLAGS == [*_build.nvcc_flags(), *torch_ext.COMMON_NVCC_FLAGS]


@pytest.mark.parametrize("cu", FILES)
def test_every_instantiation_is_there(reports, cu):
    """UNGATED_KERNELS, and in the forward files the GATED_KERNELS: k = 3 ReLU in NCHW and NHWCVec, the run-time-k,
    run-time-activation kernel in each layout."""
    names = [r.name for r in reports[cu]]
    gated = [n for n in names if _gated(n)]
    want = GATED_KERNELS if "forward" in cu else 0
    assert len(names) == UNGATED_KERNELS + want, f"{cu}: {len(names)} kernels\n" + "\n".join(names)
    assert {_layout(n) for n in names} == {0, 1, 2}
    if want:
        assert sorted((_k_class(n), _act(n), _layout(n)) for n in gated) == [(0, -1, 0), (0, -1, 1), (0, -1, 2),
                                                                              (3, 1, 0), (3, 1, 2)], gated


# The hot kernels (every k = 3 forward; the backward's NHWCVec for k = 3: GhostNet's Ghost modules all use k = 3)
# must not spill at all. The other instantiations run at the 128-register cap of the launch bounds and may keep a
# few loop values in local memory (measured when written: bfloat16 NCHW k = 3 backward, 8 bytes, one store and one
# load per work item; NHWCVec backward with a run-time k, 16-40 bytes; the float16 NHWCVec forward with a run-time
# k, 8 bytes of the persistent loop's state, one store and load per unit, NOTES entry 37): bounded here so that a
# real blow-up still fails.
COLD_STACK_LIMIT = 64


def _hot(r) -> bool:
    return _k_class(r.name) == 3 and ("forward" in r.name or _layout(r.name) == 2)


@pytest.mark.parametrize("cu", FILES)
def test_no_spills_in_hot_kernels(reports, cu):
    bad = [f"{sass.short_name(r.name)}: stack {r.stack} B, {r.local} local-memory instructions"
           for r in reports[cu] if _hot(r) and (r.local or r.stack)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("cu", FILES)
def test_spills_elsewhere_stay_small(reports, cu):
    bad = [f"{sass.short_name(r.name)}: stack {r.stack} B" for r in reports[cu]
           if not _hot(r) and r.stack > COLD_STACK_LIMIT]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("cu", FILES)
def test_no_indirect_branch_in_hot_kernels(reports, cu):
    hot = [r for r in reports[cu] if _act(r.name) >= 0]
    assert len(hot) == 20 + (2 if "forward" in cu else 0)  # the gated k = 3 ReLU pair
    bad = [f"{sass.short_name(r.name)}: {r.brx} BRX/JMX" for r in hot if r.brx]
    assert not bad, "a per-element switch survived:\n" + "\n".join(bad)


@pytest.mark.parametrize("cu", FILES)
def test_nhwc_vector_kernels_store_16_bytes_and_never_2(reports, cu):
    vec = [r for r in reports[cu] if _layout(r.name) == 2]
    assert len(vec) == 10 + (2 if "forward" in cu else 0)  # the gated k = 3 ReLU and run-time ones
    for r in vec:
        name = sass.short_name(r.name)
        assert r.stores.get("STG.E.128", 0) > 0, f"{name}: no 128-bit global store: {r.stores}"
        scalar16 = {k: v for k, v in r.stores.items() if k.startswith("STG") and (".U16" in k or ".S16" in k)}
        assert not scalar16, f"{name}: 16-bit scalar global stores {scalar16}"
        if "backward" in r.name or _gated(r.name):  # grad_out, or the gate map
            assert r.loads.get("LDG.E.128.CONSTANT", 0) + r.loads.get("LDG.E.128", 0) > 0, \
                f"{name}: grad_out / the map is not read with 128-bit loads: {r.loads}"


@pytest.mark.parametrize("cu", FILES)
def test_nhwc_vector_epilogue_loops_are_short(reports, cu):
    for r in reports[cu]:
        if _layout(r.name) != 2 or _k_class(r.name) != 3:
            continue
        ceiling = (BACKWARD_LOOP_CEILING if "backward" in cu else
                   GATED_LOOP_CEILING if _gated(r.name) else FORWARD_LOOP_CEILING)
        seen = {}
        for lp in r.loops:
            if lp.stage in ceiling:
                seen[lp.stage] = min(seen.get(lp.stage, float("inf")), lp.per_element)
        name = sass.short_name(r.name)
        for stage, limit in ceiling.items():
            assert stage in seen, f"{name}: no store loop found for {stage}\n{sass.format_report([r])}"
            assert seen[stage] <= limit, (f"{name}: {stage} takes {seen[stage]:.1f} instructions per element "
                                          f"(ceiling {limit})\n{sass.format_report([r])}")


def _scalar16_loads(r) -> int:
    return sum(v for k, v in r.loads.items() if k.startswith("LDG") and (".U16" in k or ".S16" in k))


@pytest.mark.parametrize("cu", [f for f in FILES if "forward" in f])
def test_gated_kernels_add_only_the_map(reports, cu):
    """GhostNetV2's gated kernels (k = 3, ReLU) next to their ungated twins: the NHWCVec one reads the map in
    vectors only (as many 16-bit scalar loads as the twin: those are x's and the weights' element paths); neither
    spills (the hot-kernel rule above) nor grows by more than a quarter (NOTES entry 44: +12% NHWCVec, +5% NCHW
    when written)."""
    by_key = {(tuple(_template_args(r.name)[:5]), _gated(r.name)): r for r in reports[cu]}
    checked = 0
    for (args, gated), r in by_key.items():
        if not gated or _act(r.name) < 0:
            continue
        twin = by_key[(args, False)]
        name = sass.short_name(r.name)
        if _layout(r.name) == 2:
            assert _scalar16_loads(r) == _scalar16_loads(twin), \
                f"{name}: 16-bit scalar loads {r.loads} against the ungated {twin.loads}"
            assert r.loads.get("LDG.E.128.CONSTANT", 0) > twin.loads.get("LDG.E.128.CONSTANT", 0), \
                f"{name}: no 128-bit map loads {r.loads}"
        assert r.instructions <= 1.25 * twin.instructions, f"{name}: {r.instructions} instructions, ungated " \
                                                           f"{twin.instructions}"
        checked += 1
    assert checked == 2


def _line_of(path: str, statement: str) -> int:
    """The line (1-based) of the one line of `path` that is exactly `statement` (leading spaces aside)."""
    with open(path) as f:
        found = [i for i, text in enumerate(f, 1) if text.strip() == statement]
    assert len(found) == 1, f"{statement!r} on lines {found} of {path}, expected once"
    return found[0]


@pytest.mark.parametrize("cu", [f for f in FILES if "forward" in f])
def test_forward_prefetches_the_next_unit(cubins, cu):
    """The next unit's cp.async copies exist in the compiled persistent loop (not folded away): LDGSTS attributed to
    the kernel body's `issue_next();` line, which runs right after a unit's GEMM when the plan overlaps copies and
    epilogue (ptxas attributes inlined code to the kernel-body statement it came from, as for the loops above)."""
    kernel_src = os.path.join(sass.CUDA_DIR, "ghost_forward_kernel.cuh")
    line = _line_of(kernel_src, "issue_next();")
    funcs, _, names = sass.disassemble(cubins[cu])
    checked = 0
    for mangled, demangled in names.items():
        if "ghost_forward_kernel" not in demangled:
            continue
        at = [i for i in funcs[mangled] if i.opcode.startswith("LDGSTS") and
              os.path.basename(i.loc[2] or i.loc[0]) == "ghost_forward_kernel.cuh" and
              (i.loc[3] if i.loc[3] else i.loc[1]) == line]
        assert at, f"{sass.short_name(demangled)}: no LDGSTS from issue_next (line {line})"
        checked += 1
    assert checked == UNGATED_KERNELS + GATED_KERNELS
