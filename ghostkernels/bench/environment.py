"""What a benchmark ran on: device, core count, library versions, git commit, thread count, memory bandwidth.

Everything here goes into the "environment" block of the results JSON, so that a number can always be traced back
to the conditions that produced it.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import time

import torch


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor(), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one: a container may see fewer)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning() -> str | None:
    """A warning when other processes already keep the cores busy: CPU timings are then unreliable."""
    load = load_average()
    cores = usable_cores()
    if load is not None and load > 0.5 * cores:
        return (f"the machine is busy (load average {load:.1f} on {cores} cores): CPU timings will be noisy; "
                "measure on an idle machine")
    return None


def memory_copy_gbs(device: torch.device) -> float | None:
    """Copy bandwidth of a 64 MiB buffer (bytes read + written per second, best of 5), on the CPU only. On a shared VM
    it moves with the neighbours' load (bench/NOTES.md saw 2x between hours), and the memory-bound kernels with it,
    so it is recorded at the start and end of a run beside the numbers it conditions."""
    if device.type != "cpu":
        return None
    src = torch.ones(16 << 20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best / 1e9


_TUNING_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "MALLOC_", "GHOSTKERNELS_", "TORCHINDUCTOR_")


def tuning_environment() -> dict[str, str]:
    """Environment variables that change CPU timings (thread pools' wait policy and counts, the allocator, this
    package's knobs); e.g. OMP_WAIT_POLICY=ACTIVE changes batch-1 latencies by 20% (bench/NOTES.md, entry 15)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(_TUNING_PREFIXES)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()


def device_slug(device: torch.device) -> str:
    """A file-name-safe device id for bench/results/<slug>.json, e.g. 'cpu-amd-epyc-2c' or 'cuda-nvidia-h100-80gb-hbm3'.

    The CPU slug carries the core count because the same CPU model in a smaller VM is a different benchmark machine.
    """
    name = re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")
    if device.type == "cpu":
        return f"cpu-{name}-{usable_cores()}c"
    return f"{device.type}-{name}"


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")


def git_commit() -> dict | None:
    """The commit of the source checkout this package was imported from (None when it is not a git checkout)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def cpu_bf16_extensions() -> list[str]:
    """The x86 extensions that decide how bfloat16 runs here (the AVX-512 BF16 dot product, AMX tiles), from
    /proc/cpuinfo: which peers and which of our kernels have native bfloat16 (bench/NOTES.md entries 56, 58, 60)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ("avx512_bf16", "amx_bf16") if f in flags]


def describe(device: torch.device, threads: int) -> dict:
    """The environment block of the results JSON."""
    env = {
        "device_type": device.type,
        "device_name": device_name(device),
        "device_slug": device_slug(device),
        "cpu_name": cpu_model_name(),
        "cpu_cores": usable_cores(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_extensions": cpu_bf16_extensions(),
        "threads": threads,
        "load_average_at_start": load_average(),
        "memory_copy_gbs_at_start": memory_copy_gbs(device),
        "tuning_environment": tuning_environment(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = props.total_memory
        env["gpu_l2_cache_bytes"] = getattr(props, "L2_cache_size", None)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return env
