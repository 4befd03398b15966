"""A small forward + backward of the CUDA kernels for compute-sanitizer (memcheck, racecheck).

  compute-sanitizer --tool memcheck --kernel-name kns=ghost_ python3 bench/gpu/sanitize_case.py [--only-layouts]

Covers both layouts, float16 (16-byte vector loads) and float32 (element loads, exact FMA GEMM), k = 3 and k = 5,
a ratio of 3, several tiles and channel chunks, image borders and an out_channels slice, the forward's tall units,
resident x and overlapped copies (NOTES entry 37), and the gated forward of GhostNetV2 on those layouts (the
map read in the stores, NOTES entry 44), while staying small enough for the instrumented run (a few seconds).
Set PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation and an out-of-bounds access cannot land inside a neighbouring cached block unnoticed.
"""

from __future__ import annotations

import sys

import torch

import ghostkernels


def main(argv: list[str]) -> None:
    """--only-layouts: just the two cases of entry 37's layouts (racecheck's run is slower than memcheck's)."""
    ghostkernels.load_library()
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)
    cases = [  # (dtype, channels_last, N, C, H, W, init, ratio, k, out_channels, act)
        (torch.float16, True, 2, 40, 23, 21, 36, 2, 3, 70, "relu"),
        (torch.float32, False, 1, 20, 17, 30, 10, 3, 5, 25, "silu"),
        # NOTES entry 37's forward layouts: 128-channel units with x resident and overlapped copies (7x7, a batch
        # large enough for the planner to take them), and x resident across four 32-channel chunks (14x14)
        (torch.float16, True, 100, 48, 7, 7, 164, 2, 3, 328, "relu"),
        (torch.bfloat16, True, 4, 40, 14, 14, 100, 2, 3, 200, "hardswish"),
    ]
    if "--only-layouts" in argv:
        cases = cases[2:]
    for dtype, cl, n, c, h, w, init, ratio, k, oc, act in cases:
        def r(*s):
            return torch.randn(*s, generator=gen).to("cuda", dtype)

        x = r(n, c, h, w)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        params = [r(init, c, 1, 1) / c ** 0.5, r(init), r(init * (ratio - 1), 1, k, k) / k, r(init * (ratio - 1))]
        leaves = [t.requires_grad_() for t in [x] + params]
        out = ghostkernels.ops.ghost_module(*leaves, oc, act, backend="cuda")
        out.backward(torch.randn(out.shape, generator=gen).to("cuda", dtype))
        # the gated forward (map at half resolution, rounded down for odd sizes)
        gate = torch.rand(n, oc, max(h // 2, 1), max(w // 2, 1), generator=gen).to("cuda", dtype)
        if cl:
            gate = gate.contiguous(memory_format=torch.channels_last)
        gated = ghostkernels.ops.ghost_module_gated(*[t.detach() for t in leaves], oc, act, gate, backend="cuda")
        torch.cuda.synchronize()
        print(f"{dtype} channels_last={cl}: out {tuple(out.shape)}, |grad x| = {x.grad.float().norm().item():.3f}, "
              f"|gated| = {gated.float().norm().item():.3f}")
    print("sanitize_case: done")


if __name__ == "__main__":
    main(sys.argv[1:])
