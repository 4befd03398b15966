"""Ghost-module microbenchmarks: every shape case of the harness x mode x dtype x batch x provider.

Each test builds the provider's step (compiling it for torch.compile), checks its result against the float64
eager module (the output in forward mode, the input gradient in train mode), then hands the step to
pytest-benchmark, rotating the inputs as the harness does.
"""

from __future__ import annotations

import torch

from ghostkernels.bench.microbench import ModuleCase, PreparedCase, ideal_bytes
from ghostkernels.bench.timing import rotating_call


_last: dict = {}  # the last PreparedCase: consecutive tests share a case (the provider varies fastest)


def _prepared(device: torch.device, case: ModuleCase) -> PreparedCase:
    key = (str(device), case.shape, case.mode, case.batch, case.config)
    if _last.get("key") != key:
        _last.clear()  # free the previous case's inputs first
        _last.update(key=key, prepared=PreparedCase.build(case, device))
    return _last["prepared"]


def test_ghost_module(benchmark, device, module_case, provider):
    prepared = _prepared(device, module_case)
    step, err = prepared.checked_step(provider)  # raises when the provider's result is wrong
    elt = torch.empty((), dtype=module_case.config.dtype).element_size()
    benchmark.group = f"{device.type} {module_case.mode} {module_case.config.label} b{module_case.batch} " \
                      f"{module_case.shape.label}"
    benchmark.extra_info.update(
        shape=module_case.shape.to_json(), model_counts=module_case.case.counts, rel_err=err,
        ideal_bytes=ideal_bytes(module_case.shape, module_case.batch, elt, module_case.mode),
        input_copies=len(prepared.inputs), threads=torch.get_num_threads())
    result = benchmark(rotating_call(step, prepared.inputs, device))
    assert result is not None
