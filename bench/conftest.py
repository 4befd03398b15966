"""The benchmark harness's cases as a pytest-benchmark suite.

    pytest bench --benchmark-only                 measure (scope "full": every shape of GhostNet 0.5x/1.0x/1.3x)
    pytest bench --benchmark-only --bench-scope quick
    pytest bench --benchmark-disable              run each case once as a smoke test (scope "smoke", what CI does)

Scope (--bench-scope or GHOSTKERNELS_BENCH_SCOPE): smoke | quick | full; by default "full" with --benchmark-only
(measuring) and "smoke" otherwise (a few small cases that reach every code path in about two minutes). In smoke scope:
three Ghost-module shapes at <= 12x12, every mode, dtype, batch and fused backend (batch-statistics BN: one shape,
dtype and batch); torch.compile only on the first
shape at batch 1 in the first dtype (once per mode: inference with freezing, and training); end-to-end GhostNet 0.5x
at 64x64, batch 1, eager, fuse(model) and ONNX Runtime when installed, no whole-model torch.compile (40-90 s each on
2 cores; the module cases run the same compile code); training memory of GhostNet 0.5x at 64x64, batch 2.

Devices (--bench-device, comma list): default cpu, plus cuda when torch sees a GPU.

Every test checks its provider's result against the float64 eager reference before timing it, so a smoke run also
catches a provider that computes the wrong thing.
"""

from __future__ import annotations

import os

import pytest
import torch

from ghostkernels.bench.cases import (DEFAULT_CONFIGS, E2E_MODELS, MODELS, MODES, SCOPES, THROUGHPUT_BATCH,
                                     select_cases)
from ghostkernels.bench.end_to_end import PEER_DTYPES, EndToEndCase, end_to_end_providers
from ghostkernels.bench.microbench import ModuleCase
from ghostkernels.bench.providers import fused_backends, module_providers

SMOKE_RESOLUTION = 64  # GhostNet divides by 32: 64x64 leaves a 2x2 map for the last stage
SMOKE_MEMORY_BATCH = 2


def pytest_addoption(parser):
    group = parser.getgroup("ghostkernels-bench")
    group.addoption("--bench-scope", choices=SCOPES, default=None,
                    help="benchmark cases to run: smoke (CI), quick or full (default: full with "
                         "--benchmark-only, else smoke; env GHOSTKERNELS_BENCH_SCOPE)")
    group.addoption("--bench-device", default=None,
                    help="comma list of devices (default: cpu, plus cuda when available)")


def bench_scope(config) -> str:
    scope = config.getoption("--bench-scope") or os.environ.get("GHOSTKERNELS_BENCH_SCOPE")
    if scope is None:
        return "full" if config.getoption("benchmark_only", default=False) else "smoke"
    if scope not in SCOPES:
        raise pytest.UsageError(f"GHOSTKERNELS_BENCH_SCOPE={scope!r}: expected one of {', '.join(SCOPES)}")
    return scope


def bench_devices(config) -> list[torch.device]:
    text = config.getoption("--bench-device")
    if text is None:
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    devices = [torch.device(t.strip()) for t in text.split(",") if t.strip()]
    for d in devices:
        if d.type not in THROUGHPUT_BATCH:
            raise pytest.UsageError(f"--bench-device {d}: expected cpu or cuda")
        if d.type == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError("--bench-device cuda: torch sees no CUDA device")
    return devices


def _id(device: torch.device, *parts) -> str:
    return "-".join([device.type, *map(str, parts)]).replace(" ", "_").replace(">", "").replace("@", "at")


def _module_params(config) -> list:
    scope = bench_scope(config)
    params = []
    for device in bench_devices(config):
        providers, _ = module_providers(device)
        shapes = select_cases(scope, MODELS)
        for cfg in DEFAULT_CONFIGS[device.type]:
            for mode in MODES:
                for batch in (1, THROUGHPUT_BATCH[device.type]):
                    for i, sc in enumerate(shapes):
                        case = ModuleCase(sc, mode, batch, cfg)
                        # Smoke, batch-statistics BN: one shape, dtype and batch, no compile (the same
                        # compile_module as the frozen-BN cases; the op's own tests cover the rest).
                        if (mode == "train-bn" and scope == "smoke"
                                and not (i == 0 and batch == 1 and cfg == DEFAULT_CONFIGS[device.type][0])):
                            continue
                        for p in providers:
                            if (p == "compile" and scope == "smoke"
                                    and (mode == "train-bn"
                                         or not (i == 0 and batch == 1 and cfg == DEFAULT_CONFIGS[device.type][0]))):
                                continue
                            tid = _id(device, mode, cfg.label, f"b{batch}", sc.shape.label, p)
                            params.append(pytest.param(device, case, p, id=tid))
    return params


def _end_to_end_params(config) -> list:
    scope = bench_scope(config)
    params = []
    for device in bench_devices(config):
        backends, _ = fused_backends(device)
        names, _ = end_to_end_providers(device, backends, with_onnx=False)
        if device.type == "cpu":
            # always listed: the test skips with the reason when the peer is not installed
            names += ["onnxruntime", "openvino"]
        if scope == "smoke":  # GhostNetV2 too: its gated blocks are a path of their own
            models, resolution, batches = ["ghostnet_050", "ghostnetv2_100"], SMOKE_RESOLUTION, [1]
        else:
            models = ["ghostnet_100", "ghostnetv2_100"] if scope == "quick" else list(E2E_MODELS)
            resolution, batches = 224, [1, THROUGHPUT_BATCH[device.type]]
        for cfg in DEFAULT_CONFIGS[device.type]:
            for model in models:
                for batch in batches:
                    case = EndToEndCase(model, batch, cfg, resolution)
                    for p in names:
                        if p in PEER_DTYPES and cfg.dtype not in PEER_DTYPES[p]:
                            continue
                        # Smoke: the peers on one model only (an ONNX export of GhostNetV2 is ~1 min on 2 cores;
                        # its lowering is tests/test_onnx.py's, and the peers' code is the same for every model).
                        if scope == "smoke" and p in PEER_DTYPES and model != models[0]:
                            continue
                        # Smoke: no whole-model compile (one costs 40-90 s on 2 cores): the module tests run the
                        # same compile_module, the fused-<b> tests the same fused_model.
                        if scope == "smoke" and (p == "compile" or p.endswith("+compile")):
                            continue
                        tid = _id(device, model, cfg.label, f"b{batch}", f"r{resolution}", p)
                        params.append(pytest.param(device, case, p, id=tid))
    return params


def _memory_params(config) -> list:
    scope = bench_scope(config)
    params = []
    for device in bench_devices(config):
        backends, _ = fused_backends(device)
        if scope == "smoke":
            models, resolution, batch = ["ghostnet_050"], SMOKE_RESOLUTION, SMOKE_MEMORY_BATCH
            configs = DEFAULT_CONFIGS[device.type][:1]
        else:
            models = ["ghostnet_100"] if scope == "quick" else list(MODELS)
            resolution, batch, configs = 224, THROUGHPUT_BATCH[device.type], DEFAULT_CONFIGS[device.type]
        for cfg in configs:
            for model in models:
                for p in ["eager"] + [f"fused-{b}" for b in backends]:
                    tid = _id(device, model, cfg.label, f"b{batch}", f"r{resolution}", p)
                    params.append(pytest.param(device, (model, cfg, batch, resolution), p, id=tid))
    return params


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "module_case" in names:
        metafunc.parametrize("device,module_case,provider", _module_params(metafunc.config))
    elif "e2e_case" in names:
        metafunc.parametrize("device,e2e_case,provider", _end_to_end_params(metafunc.config))
    elif "memory_case" in names:
        metafunc.parametrize("device,memory_case,provider", _memory_params(metafunc.config))
    elif "device" in names:  # a test of its own cases (the whole-model training step)
        metafunc.parametrize("device", bench_devices(metafunc.config), ids=lambda d: d.type)


@pytest.fixture(scope="session", autouse=True)
def _session_setup():
    """Build/load the op library once, before anything is compiled (dynamo must find the op registered), and let
    cuDNN pick its fastest algorithms, as the CLI harness does (the strongest eager baseline)."""
    from ghostkernels import ops

    ops.load_library()
    torch.backends.cudnn.benchmark = True

