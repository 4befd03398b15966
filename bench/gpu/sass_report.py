"""Static SASS properties of the CUDA kernels, read without a GPU: compile for one architecture, disassemble, count.

    python3 bench/gpu/sass_report.py [--arch 90] [--files ghost_forward_f16.cu ...] [--filter REGEX] [--json PATH]

Per kernel (one line each, demangled name shortened):
  regs     registers per thread (from the cubin's symbol table)
  stack    stack frame bytes; spills show as STL/LDL instructions (local memory), counted separately
  brx      indirect branches (BRX/JMX): a run-time switch compiled to a jump table
  stores   global stores by width (STG.E.U16 = 16-bit scalar, STG.E = 32 bits, .64, .128)
  loads    global loads by width (LDG), same notation
  loops    per epilogue stage, the innermost loops that hold its global stores (or, for a stage without any, its
           global loads; for a stage without either, its shared-memory stores of float32 words): static
           instructions of the loop body, elements one iteration stores (the stores' bytes over the element size),
           and their ratio, "instructions per output element"

How a loop is found: every backward branch (a BRA to a lower address) closes a loop that starts at its target;
the loop's stage is the kernel-level source line the branch is attributed to (nvdisasm -gi line info: ptxas
attributes a loop's closing branch to the statement of the kernel body that the loop was inlined from, e.g. the
line calling cheap_epilogue), named by the first identifier on that line. The count is static: every instruction
of the loop body once, whether or not a given element executes it (a switch's five activation cases all count).

Compiles with the flags of the JIT build (ghostkernels/ops/build.py and torch's COMMON_NVCC_FLAGS) plus -cubin, and
caches the cubins by a hash of the sources and flags (GHOSTKERNELS_SASS_CACHE, default a folder under the system
temp dir), so repeated runs cost only the disassembly. Needs nvcc and cuobjdump/nvdisasm (these two ship in the
triton wheel: triton/backends/nvidia/bin); tests/test_cuda_sass.py asserts the properties for the hot kernels.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(REPO, "csrc")
CUDA_DIR = os.path.join(CSRC, "cuda")

# The JIT build's nvcc flags (ghostkernels/ops/build.py nvcc_flags and torch's COMMON_NVCC_FLAGS), spelled out so that this
# script runs without importing torch; tests/test_cuda_sass.py checks that the two lists agree.
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]
CXX_STD = "c++17"
# Kernel-body lines whose loops are not epilogues: weight and pixel-table set-up, the GEMM's K loop (its cp.async
# copies are the loads there), the backward's persistent item loop.
NOT_EPILOGUE = {"load_chunk_weights", "build_pixel_table", "gemm_rect", "for", "if", "while", "zero_dropped_partials"}


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        cand = os.path.join(home, "bin", "nvcc") if home else None
        if cand and os.path.isfile(cand):
            return cand
    return None


def find_binutil(name: str) -> str | None:
    """cuobjdump / nvdisasm: on PATH, next to nvcc, or inside the triton wheel (which CI installs)."""
    found = shutil.which(name)
    if found:
        return found
    nvcc = find_nvcc()
    if nvcc and os.path.isfile(os.path.join(os.path.dirname(nvcc), name)):
        return os.path.join(os.path.dirname(nvcc), name)
    try:
        import importlib.util

        spec = importlib.util.find_spec("triton")
    except (ImportError, ValueError):
        spec = None
    if spec and spec.origin:
        cand = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", name)
        if os.path.isfile(cand):
            return cand
    return None


def _cache_dir() -> str:
    d = os.environ.get("GHOSTKERNELS_SASS_CACHE") or os.path.join(tempfile.gettempdir(), "ghostkernels-sass")
    os.makedirs(d, exist_ok=True)
    return d


def _sources_hash(extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for path in sorted(glob.glob(os.path.join(CSRC, "**", "*"), recursive=True)):
        if path.endswith((".h", ".cuh", ".cu")) and "emulation" not in path:
            h.update(os.path.relpath(path, CSRC).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def compile_cubin(cu_file: str, arch: int, nvcc: str) -> str:
    """Path of the cubin of csrc/cuda/<cu_file> for sm_<arch>, compiled once per source hash."""
    src = os.path.join(CUDA_DIR, cu_file)
    flags = [f"-std={CXX_STD}", *NVCC_FLAGS, "-I", CSRC, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-cubin"]
    key = _sources_hash(repr((cu_file, flags, nvcc)))
    out = os.path.join(_cache_dir(), f"{os.path.splitext(cu_file)[0]}-sm{arch}-{key}.cubin")
    if not os.path.isfile(out):
        tmp = out + f".tmp{os.getpid()}"
        r = subprocess.run([nvcc, *flags, src, "-o", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvcc failed on {cu_file}:\n{r.stdout}\n{r.stderr}")
        os.replace(tmp, out)
    return out


@dataclasses.dataclass
class Instr:
    addr: int
    text: str           # predicate + opcode + operands
    opcode: str         # e.g. STG.E.128
    loc: tuple          # (file, line, inlined_file, inlined_line); '' / 0 when absent


@dataclasses.dataclass
class Loop:
    stage: str
    start: int          # instruction index of the branch target
    end: int            # instruction index of the backward branch
    instructions: int
    elements: float     # elements stored (or loaded) per iteration
    accesses: list

    @property
    def per_element(self) -> float:
        return self.instructions / self.elements if self.elements else float("nan")


@dataclasses.dataclass
class KernelReport:
    name: str           # demangled
    regs: int
    stack: int
    instructions: int
    brx: int
    local: int          # STL/LDL count
    stores: dict
    loads: dict
    loops: list

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for lp, src in zip(d["loops"], self.loops):
            lp["per_element"] = round(src.per_element, 2)
        return d


_LOC = re.compile(r'\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_INS = re.compile(r"\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRA = re.compile(r"\bBRA(?:\.\S+)?\s+`\((\.L_x_\d+)\)")


def _opcode(text: str) -> str:
    toks = text.split()
    return toks[1] if toks and toks[0].startswith("@") and len(toks) > 1 else (toks[0] if toks else "")


def parse_functions(disasm: str) -> tuple[dict[str, list[Instr]], dict[str, dict[str, int]]]:
    """nvdisasm -gi text -> ({mangled function name: instructions with their source locations},
    {mangled function name: {label: index of the instruction it precedes}})."""
    funcs: dict[str, list[Instr]] = {}
    labels_of: dict[str, dict[str, int]] = {}
    for part in re.split(r"^\s*\.section\s+\.text\.", disasm, flags=re.M)[1:]:
        name = part.split(",", 1)[0].strip()
        loc, ins, labels = ("", 0, "", 0), [], {}
        for line in part.splitlines():
            m = _LOC.match(line)
            if m:
                loc = (os.path.basename(m.group(1)), int(m.group(2)), os.path.basename(m.group(3) or ""),
                       int(m.group(4) or 0))
                continue
            m = _LABEL.match(line)
            if m:
                labels[m.group(1)] = len(ins)
                continue
            m = _INS.match(line)
            if m:
                text = m.group(2).strip()
                ins.append(Instr(int(m.group(1), 16), text, _opcode(text), loc))
        funcs[name] = ins
        labels_of[name] = labels
    return funcs, labels_of


def _width_bytes(opcode: str) -> int:
    """Bytes of one LDG/STG/STS: .U8/.S8 1, .U16/.S16 2, .64 8, .128 16, plain 4."""
    for suffix, b in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in opcode:
            return b
    return 4


def _stage_name(src_lines: dict, loc: tuple) -> str:
    """First identifier of the kernel-level source line a loop's closing branch is attributed to."""
    fname, line = (loc[2], loc[3]) if loc[3] else (loc[0], loc[1])
    text = src_lines.get(fname, [""] * (line + 1))
    text = text[line - 1] if 0 < line <= len(text) else ""
    m = re.search(r"([A-Za-z_]\w*)\s*(?:<[^()]*>)?\s*\(", text)
    return m.group(1) if m else f"{fname}:{line}"


def analyze(name: str, ins: list[Instr], labels: dict[str, int], regs: int, stack: int, elem_bytes: int,
            src_lines: dict, stages: tuple[str, ...] | None) -> KernelReport:
    stores = collections.Counter(i.opcode for i in ins if i.opcode.startswith("STG"))
    loads = collections.Counter(i.opcode for i in ins if i.opcode.startswith("LDG"))
    brx = sum(1 for i in ins if i.opcode.startswith(("BRX", "JMX")))
    local = sum(1 for i in ins if i.opcode.startswith(("STL", "LDL")))
    loops = []
    for k, i in enumerate(ins):
        m = _BRA.search(i.text)
        if not m or labels.get(m.group(1), k + 1) > k:
            continue
        loops.append((labels[m.group(1)], k, _stage_name(src_lines, i.loc)))
    # For every global store (else load) of a stage, the innermost loop around it; one row per such loop.
    rows = {}
    for kind in ("STG", "LDG", "STS"):
        for k, i in enumerate(ins):
            if not i.opcode.startswith(kind):
                continue
            around = [lp for lp in loops if lp[0] <= k <= lp[1]]
            if not around:
                continue
            start, end, stage = min(around, key=lambda lp: lp[1] - lp[0])
            if (stage not in stages) if stages is not None else stage in NOT_EPILOGUE:
                continue
            if any(r.stage == stage and r.accesses and not r.accesses[0].startswith(kind) for r in rows.values()):
                continue  # the stage has global stores (or loads): the count is per those elements
            row = rows.setdefault((start, end), Loop(stage, start, end, end - start + 1, 0.0, []))
            if row.accesses and not row.accesses[0].startswith(kind):
                continue
            row.accesses.append(i.opcode)
            # Shared memory holds float32 (Z, D, G2): a shared store's elements are 4-byte words.
            row.elements += _width_bytes(i.opcode) / (4 if kind == "STS" else elem_bytes)
    return KernelReport(name, regs, stack, len(ins), brx, local, dict(stores), dict(loads),
                        sorted(rows.values(), key=lambda r: r.start))


def _demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool:
        return {n: n for n in names}
    r = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = r.stdout.splitlines()
    return dict(zip(names, out)) if r.returncode == 0 and len(out) == len(names) else {n: n for n in names}


def _resources(cubin: str, cuobjdump: str) -> dict[str, tuple[int, int]]:
    """{mangled name: (registers, stack bytes)} from cuobjdump --dump-resource-usage."""
    out = subprocess.run([cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
    res, current = {}, None
    for line in out.splitlines():
        m = re.search(r"Function ([^\s:]+):", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+)", line)
        if m and current:
            res[current] = (int(m.group(1)), int(m.group(2)))
    return res


def _elem_bytes(demangled: str) -> int:
    m = re.search(r"<(__half|__nv_bfloat16|float)\b", demangled)
    return 4 if not m or m.group(1) == "float" else 2


def report_cubin(cubin: str, name_filter: str | None = None, stages: tuple[str, ...] | None = None
                 ) -> list[KernelReport]:
    nvdisasm, cuobjdump = find_binutil("nvdisasm"), find_binutil("cuobjdump")
    if not nvdisasm or not cuobjdump:
        raise RuntimeError("nvdisasm/cuobjdump not found (install triton, which ships them, or a CUDA toolkit)")
    disasm = subprocess.run([nvdisasm, "-gi", "-c", cubin], capture_output=True, text=True, check=True).stdout
    funcs, labels = parse_functions(disasm)
    res = _resources(cubin, cuobjdump)
    names = _demangle([n for n in funcs if not n.startswith("$")])
    src_lines = {}
    for path in glob.glob(os.path.join(CUDA_DIR, "*.cu*")):
        with open(path) as f:
            src_lines[os.path.basename(path)] = f.read().splitlines()
    out = []
    for mangled, demangled in names.items():
        if "ghost_" not in demangled or (name_filter and not re.search(name_filter, demangled)):
            continue
        regs, stack = res.get(mangled, (-1, -1))
        out.append(analyze(demangled, funcs[mangled], labels[mangled], regs, stack, _elem_bytes(demangled),
                           src_lines, stages))
    return out


def short_name(demangled: str) -> str:
    s = re.sub(r"ghostkernels::(cuda::)?", "", demangled)
    s = s.replace("(KernelParams)", "").replace("__nv_bfloat16", "bf16").replace("__half", "f16")
    return s.replace("void ", "")


def format_report(reports: list[KernelReport]) -> str:
    lines = []
    for r in reports:
        st = " ".join(f"{k}x{v}" for k, v in sorted(r.stores.items()))
        ld = " ".join(f"{k}x{v}" for k, v in sorted(r.loads.items()))
        lines.append(f"{short_name(r.name)}: regs {r.regs}, stack {r.stack}, local {r.local}, brx {r.brx}, "
                     f"{r.instructions} instr; stores [{st}]; loads [{ld}]")
        for lp in r.loops:
            lines.append(f"    {lp.stage:24s} loop of {lp.instructions:4d} instr, {lp.elements:g} elem/iter "
                         f"({' '.join(sorted(set(lp.accesses)))}): {lp.per_element:.1f} instr/elem")
    return "\n".join(lines)


def default_files() -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(CUDA_DIR, "*.cu")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--files", nargs="*", default=None, help="csrc/cuda/*.cu files (default: all)")
    ap.add_argument("--filter", default=None, help="regex on the demangled kernel name")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    nvcc = find_nvcc()
    if nvcc is None:
        print("sass_report: nvcc not found", file=sys.stderr)
        return 2
    files = args.files or default_files()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        cubins = list(pool.map(lambda f: compile_cubin(f, args.arch, nvcc), files))
    everything = []
    for f, cubin in zip(files, cubins):
        reports = report_cubin(cubin, args.filter)
        everything += reports
        print(f"== {f} (sm_{args.arch})")
        print(format_report(reports), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in everything], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
