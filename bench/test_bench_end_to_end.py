"""End-to-end GhostNet inference: eager, torch.compile, fuse(model), fuse(model)+torch.compile, ONNX Runtime,
OpenVINO.

Each benchmark test checks the provider's logits against the float64 eager model, then benchmarks one forward
call (the runner that the `python -m ghostkernels.bench` end-to-end section uses is unit-tested in
tests/bench/test_bench_runner.py).
"""

from __future__ import annotations

import functools

import pytest
import torch

from ghostkernels.bench import onnx_peer, openvino_peer
from ghostkernels.bench.end_to_end import EndToEndCase, EndToEndRunner
from ghostkernels.bench.timing import TimingBudget, rotating_call

# One runner per device for the session: it keeps the float32 models and the ONNX export of each model.
_RUNNERS: dict[str, EndToEndRunner] = {}


def _runner(device: torch.device) -> EndToEndRunner:
    if str(device) not in _RUNNERS:
        _RUNNERS[str(device)] = EndToEndRunner(device, torch.get_num_threads(), TimingBudget(), strict=True)
    return _RUNNERS[str(device)]


@pytest.fixture(scope="module", autouse=True)
def _close_runners():
    yield
    for runner in _RUNNERS.values():
        runner.close()  # removes the temporary ONNX files
    _RUNNERS.clear()


@functools.lru_cache(maxsize=1)  # consecutive tests share a case (the provider varies fastest)
def _inputs_and_reference(device: torch.device, case: EndToEndCase):
    runner = _runner(device)
    inputs = runner.inputs(case)
    return inputs, runner.reference(case, inputs[0])


def test_end_to_end(benchmark, device, e2e_case, provider):
    for name, peer in (("onnxruntime", onnx_peer), ("openvino", openvino_peer)):
        if provider == name and peer.unavailable_reason() is not None:
            pytest.skip(f"{name} peer: {peer.unavailable_reason()}")
    inputs, reference = _inputs_and_reference(device, e2e_case)
    step, err = _runner(device).checked_step(provider, e2e_case, inputs[0], reference)  # raises when wrong
    benchmark.group = f"{device.type} end-to-end {e2e_case.label}"
    benchmark.extra_info.update(model=e2e_case.model, batch=e2e_case.batch, resolution=e2e_case.resolution,
                                rel_err=err, threads=torch.get_num_threads())
    logits = benchmark(rotating_call(step, [(x,) for x in inputs], device))
    assert tuple(logits.shape) == tuple(reference.shape)
