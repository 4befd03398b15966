"""Launch geometry of the Triton Ghost-module kernels: heuristics, autotune configurations, program counts.

Two kinds of choices, kept apart on purpose:

* Heuristics (plain Python, decided before the launch): the spatial tile (TH x TW output pixels), the halo-tile
  size BLOCK_P it implies, BLOCK_I (primary channels per program) and the chunk sizes the passes walk a tile in
  (SUB_P, SUB_A, SUB_Q; sized so that one [BLOCK_I, chunk] tile fits the registers). They depend only on H, W,
  the depthwise kernel size k and init, and the first three size the per-program scratch buffers, which must be
  allocated before the launch: autotuning them would mean re-allocating scratch per candidate.
* Autotuned (triton.autotune, keyed on init, C, H*W, k and, implicitly, the tensors' dtypes): BLOCK_C (the
  reduction chunk of the 1x1 conv), num_warps and num_stages. None of them changes the grid or the scratch size.

Under TRITON_INTERPRET=1 there is exactly one configuration (the interpreter cannot time kernels), halo tiles
are kept small (64 slots) so that test images of 6 to 13 pixels still cross tile borders, and 3 programs make
the persistent loop run several rounds.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


@functools.lru_cache(maxsize=None)
def interpreting() -> bool:
    """True when the kernels run under Triton's interpreter (TRITON_INTERPRET=1). Read once, at the first call,
    which is when forward_kernels decorates the kernels (autotune_configs): triton itself reads the variable at
    decoration, so a later change of the environment must not switch the sizing away from the kernels' mode."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


@dataclass(frozen=True)
class TileGeometry:
    """One spatial tiling of an H x W image for a depthwise radius r = k // 2 and a halo of `halo` pixels.

    The program computes the 1x1 conv on the halo tile (TH + 2*halo) x (TW + 2*halo), flattened row-major into
    BLOCK_P >= that many slots (a power of two, as tl.arange needs), and produces TH x TW output pixels, flattened
    into BLOCK_Q slots. The forward needs halo = r (x1 around the tile); the backward needs halo = 2r (x1 around
    the ring of z2 positions whose gradients reach the tile through the transposed depthwise conv) and keeps a
    middle ring of r in BLOCK_P1 slots.
    """

    TH: int
    TW: int
    tiles_y: int
    tiles_x: int
    BLOCK_P: int
    BLOCK_Q: int
    BLOCK_P1: int

    @property
    def tiles_per_image(self) -> int:
        return self.tiles_y * self.tiles_x


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# Per-tile fixed cost in "halo-slot equivalents": weight loads, index math, barriers and the epilogue. It makes the
# search prefer fewer, larger tiles when the padding waste is about equal.
_TILE_OVERHEAD_SLOTS = 48


@functools.lru_cache(maxsize=None)
def choose_tile(H: int, W: int, k: int, halo_radii: int, max_block: int) -> TileGeometry:
    """The tiling of H x W that minimizes the 1x1-conv work (tiles x BLOCK_P slots, plus a per-tile overhead).

    `halo_radii` is how many depthwise radii surround the tile (1 for the forward, 2 for the backward). Every
    GhostNet resolution gets a tiling without padding waste for k = 3: 14 x 14 tiles (16 x 16 halo, 256 slots) for
    56/112/28/14, one 7 x 7 tile (9 x 9 halo, 128 slots) for 7.
    """
    r = k // 2
    halo = r * halo_radii
    best = None
    block = 16  # tl.dot needs every dimension >= 16
    while block <= max_block:
        for th in range(1, H + 1):
            rh = th + 2 * halo
            if rh > block:
                break
            tw = min(W, block // rh - 2 * halo)
            if tw < 1:
                continue
            tiles = _ceil_div(H, th) * _ceil_div(W, tw)
            used = (th + 2 * halo) * (tw + 2 * halo)
            cost = tiles * (next_pow2(used) + _TILE_OVERHEAD_SLOTS)
            key = (cost, -block, -tw)
            if best is None or key < best[0]:
                best = (key, th, tw)
        block *= 2
    if best is None:
        raise ValueError(f"ghostkernels (triton): no tiling of a {H}x{W} image fits a halo tile of at most "
                         f"{max_block} pixels for k={k}; the depthwise kernel is too large for this backend")
    _, th, tw = best
    rh, rw = th + 2 * halo, tw + 2 * halo
    return TileGeometry(
        TH=th, TW=tw, tiles_y=_ceil_div(H, th), tiles_x=_ceil_div(W, tw),
        BLOCK_P=max(16, next_pow2(rh * rw)), BLOCK_Q=next_pow2(th * tw),
        BLOCK_P1=next_pow2((th + 2 * r) * (tw + 2 * r)))


def max_halo_block(k: int, halo_radii: int) -> int:
    """Largest halo tile (pixels) the tiling search may use. On the GPU 256: enough for 14 x 14 tiles at k = 3
    (the halo costs 31% extra 1x1-conv work; larger tiles gain little more) while the per-program scratch stays
    at 8-48 KB; the passes walk a tile in register-sized chunks, so this does not drive register use. Under the
    interpreter 64, which keeps test images split into several tiles. Large halos (k = 7, and k >= 5 in the
    backward's double halo) get room for a tile of at least min_tile x min_tile output pixels, or the halo would
    dwarf the tile."""
    halo = (k // 2) * halo_radii
    min_tile = 2 if interpreting() else 8
    base = 64 if interpreting() else 256
    return max(base, next_pow2((2 * halo + min_tile) ** 2))


def choose_block_i(init: int) -> int:
    """Primary channels per program: the candidate (16 or 32) that pads init least; ties go to the larger block,
    which reads the x tile fewer times. tl.dot needs >= 16."""
    cands = (32, 16)
    return min(cands, key=lambda b: _ceil_div(init, b) * b)


def sub_block(region_block: int, block_i: int, minimum: int = 1, elems: int | None = None) -> int:
    """Pixels per chunk of a pass over a region of `region_block` slots: a [BLOCK_I, chunk] tile of about
    `elems` (default chunk_elems()) elements, so that offsets, pointers and accumulators stay in registers.
    `minimum` is 16 for the 1x1 conv, whose tl.dot needs N >= 16."""
    elems = chunk_elems() if elems is None else elems
    return max(minimum, min(region_block, next_pow2(max(1, elems // block_i))))


def chunk_elems() -> int:
    """Elements of one [BLOCK_I, chunk] tile: 1024 (8 per thread at 4 warps) on the GPU. Measured with
    compile_check for sm_90 (float16/bfloat16): 60-130 registers per thread for the forward with BLOCK_C <= 32,
    96-170 for the backward (128 at 8 warps); 2048 took 165-250, and whole 256-slot regions spilled. Under the interpreter, whose cost is per operation rather than per element, 4096: a test
    tile is then one chunk (tests/test_triton_backend.py lowers it to cover the chunk loops)."""
    return 4096 if interpreting() else 1024


def tap_chunk_elems() -> int:
    """Elements of one [BLOCK_I, chunk] tile in the backward's depthwise passes (gz2 on the single halo, gx1 on the
    tile), whose taps are unrolled along each kernel row: half of chunk_elems() on the GPU, so that the unrolled
    taps' shifted offsets fit the registers; the interpreter's size otherwise (NOTES entry 37)."""
    return chunk_elems() if interpreting() else 512


# Persistent programs per SM. Each program owns a scratch slot for the whole launch, so the scratch stays small
# (a few MB, resident in L2) instead of one slot per tile being written back to HBM.
PROGRAMS_PER_SM = 4
INTERPRETER_PROGRAMS = 3  # < the number of work items in the tests, so the persistent loop runs several times


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_programs(num_work: int, device: torch.device) -> int:
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        cap = _sm_count(idx) * PROGRAMS_PER_SM
    else:
        cap = INTERPRETER_PROGRAMS
    return max(1, min(num_work, cap))


# (BLOCK_C, num_warps, num_stages). BLOCK_C = 128 is left out: compiled for sm_90 (triton 3.6) it needs > 200
# registers per thread in both kernels; the kept ones need 60-170 (float16/bfloat16) with at most a few bytes of
# spill. 8 warps halve the per-thread share of every [BLOCK_I, chunk] tile.
_GPU_SWEEP = ((16, 4, 2), (32, 4, 2), (32, 4, 3), (64, 4, 2), (16, 8, 2), (32, 8, 2), (64, 8, 2), (64, 8, 3))


def _gpu_configs(triton):
    return [triton.Config({"BLOCK_C": c}, num_warps=w, num_stages=s) for c, w, s in _GPU_SWEEP]


AUTOTUNE_ENV = "GHOSTKERNELS_TRITON_AUTOTUNE"


def autotune_mode() -> str:
    """GHOSTKERNELS_TRITON_AUTOTUNE: "all" (default, the sweep) or "one" (one configuration of it, BLOCK_C=32 with 4
    warps and 2 stages, so a quick GPU check compiles one kernel per shape instead of eight). Read when the kernels are decorated (first import of
    ghostkernels.triton's kernels), like TRITON_INTERPRET."""
    mode = os.environ.get(AUTOTUNE_ENV, "all").strip().lower() or "all"
    if mode not in ("all", "one"):
        raise ValueError(f"ghostkernels: {AUTOTUNE_ENV}={mode!r}; expected 'all' or 'one'")
    return mode


def autotune_configs(triton):
    """The configurations handed to triton.autotune: one under the interpreter, a small sweep on the GPU (one
    configuration there too with GHOSTKERNELS_TRITON_AUTOTUNE=one)."""
    if interpreting():
        return [triton.Config({"BLOCK_C": 16}, num_warps=4, num_stages=1)]
    cfgs = _gpu_configs(triton)
    return cfgs[1:2] if autotune_mode() == "one" else cfgs


def fp32_dot_precision() -> str:
    """tl.dot's input_precision for float32 inputs: "tf32" when torch lets cuDNN convolutions use TF32 (the
    setting eager's 1x1 convolution follows, so the fused op rounds as the module it replaces), else "ieee".
    torch >= 2.9 keeps it in torch.backends.cudnn.conv.fp32_precision, where "none" defers to the parent settings
    (cudnn, then the global one) and a chain of "none" means no TF32; older torch has only cudnn.allow_tf32."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv is None:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    for prec in (conv, getattr(torch.backends.cudnn, "fp32_precision", "none"),
                 getattr(torch.backends, "fp32_precision", "none")):
        if prec != "none":
            return "tf32" if prec == "tf32" else "ieee"
    return "ieee"


def dot_precision(dtype: torch.dtype) -> str:
    """The DOT_PRECISION constexpr of the kernels: fp32_dot_precision() for float32; 16-bit inputs always run on
    the tensor cores with float32 accumulation, for which Triton's default ("tf32") is the one accepted value."""
    return fp32_dot_precision() if dtype == torch.float32 else "tf32"


def channel_vector(*channel_counts: int) -> int:
    """The VEC constexpr: 8 when every per-pixel channel count of a channels_last tensor is a multiple of 8 (so each
    pixel's channels start at a multiple of 8 elements: 16 bytes for 16-bit types), else 1. The kernels pass it to
    tl.multiple_of on their per-pixel offsets, which lets Triton vectorize the channel-contiguous accesses; it is a
    promise about the offsets, so it must only be given when true."""
    return 8 if all(int(c) % 8 == 0 for c in channel_counts) else 1


def tensor_vector(t, channels: int) -> int:
    """channel_vector for one tensor's per-pixel accesses: channels_last with channel stride 1, per-pixel stride
    `channels`, and row and image strides (the kernels' n * stride offset) multiples of the vector too; else 1."""
    if t.stride(1) != 1 or t.stride(3) != channels:
        return 1
    return channel_vector(channels, t.stride(2), t.stride(0))


AUTOTUNE_KEY = ["I", "C", "HW", "K"]  # Triton adds the dtypes of the tensor arguments to the key itself
