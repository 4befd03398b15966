"""ONNX export of the fused op (ghostkernels.onnx): the graph holds only standard ONNX operators (Conv, the
activation's own operator, Concat, Slice), and ONNX Runtime's output matches the float64 reference / eager.

Skipped, saying which, where onnx, onnxscript or onnxruntime is missing (``pip install ghostkernels[onnx]``).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

pytest.importorskip("onnx", reason="the onnx package is not installed (pip install ghostkernels[onnx])")
pytest.importorskip("onnxscript", reason="the onnxscript package is not installed (pip install ghostkernels[onnx])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install ghostkernels[onnx])")

import onnx  # noqa: E402

import ghostkernels  # noqa: E402
import ghostkernels.onnx as gk_onnx  # noqa: E402
from ghost_testing import GhostCase, Tol, assert_close_to_reference, make_inputs, reference_forward  # noqa: E402
import variants  # noqa: E402

# ONNX Runtime's float32 convolutions (MLAS) sum in another order than ATen's; measured worst over these cases and
# five seeds: 1.3e-7 of max(1, |out|max) (ghost_testing's measure). The op tests' eager float32 tolerance holds it.
ORT_FLOAT32 = Tol(atol=5e-6, rtol=2.5e-6)

# The operator(s) each activation must lower to.
ACT_OPS = {"identity": set(), "relu": {"Relu"}, "relu6": {"Clip"}, "silu": {"Sigmoid", "Mul"},
           "hardswish": {"HardSwish"}}

CASES = [
    GhostCase(2, 5, 7, 6, init=3, ratio=2, k=3, act="identity"),  # nothing sliced
    GhostCase(1, 4, 5, 5, init=4, ratio=3, k=3, out_channels=11, act="relu"),  # ratio 3, slice in the cheap half
    GhostCase(2, 6, 6, 9, init=5, ratio=2, k=5, out_channels=7, act="relu6"),  # odd slice, k = 5
    GhostCase(1, 3, 4, 4, init=6, ratio=2, k=1, out_channels=4, act="silu"),  # slice inside the primary half
    GhostCase(1, 8, 5, 7, init=4, ratio=2, k=3, act="hardswish"),
]


class OneGhostCall(torch.nn.Module):
    """A model that is one call of the fused op, with the case's (already folded) weights as parameters."""

    def __init__(self, case: GhostCase, weights):
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in weights])
        self.out_channels, self.act = case.oc, case.act

    def forward(self, x):
        return ghostkernels.ghost_module(x, *self.weights, self.out_channels, self.act)


def run_onnx(path, *inputs: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def op_types(path) -> Counter:
    model = onnx.load(str(path), load_external_data=False)
    custom = {n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    assert not custom and not model.functions, f"non-standard ONNX domains/functions: {custom}, {model.functions}"
    return Counter(n.op_type for n in model.graph.node)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fused_op_lowers_to_standard_onnx(case, seed, tmp_path):
    inputs = make_inputs(case, torch.float32, "cpu", seed)
    model = OneGhostCall(case, inputs[1:]).eval()
    path = tmp_path / "ghost.onnx"
    gk_onnx.export(model, (inputs[0],), path)

    types = op_types(path)
    cheap_used = case.oc > case.init
    assert types["Conv"] == (2 if cheap_used else 1), types
    assert ACT_OPS[case.act] <= set(types), f"act {case.act!r} should lower to {ACT_OPS[case.act]}: {types}"
    assert (types["Slice"] == 1) == (case.oc < case.init * case.ratio), types
    assert (types["Concat"] == 1) == cheap_used, types
    assert set(types) <= {"Conv", "Concat", "Slice"} | ACT_OPS[case.act], f"unexpected operators: {types}"

    out = run_onnx(path, inputs[0])
    assert_close_to_reference(out, reference_forward(inputs, case.oc, case.act), ORT_FLOAT32, f"ORT {case.id}")


def test_batch_and_image_size_stay_dynamic(seed, tmp_path):
    case = CASES[2]
    inputs = make_inputs(case, torch.float32, "cpu", seed)
    model = OneGhostCall(case, inputs[1:]).eval()
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    path = tmp_path / "ghost_dynamic.onnx"
    gk_onnx.export(model, (inputs[0],), path, dynamic_shapes=(dims,))
    for n, h, w in ((1, 5, 7), (3, 9, 4)):
        other = case.replace(n=n, h=h, w=w)
        x = make_inputs(other, torch.float32, "cpu", seed + n)[0]
        expected = reference_forward((x,) + inputs[1:], case.oc, case.act)
        assert_close_to_reference(run_onnx(path, x), expected, ORT_FLOAT32, f"ORT at {n}x{h}x{w}")


def test_fused_ghostnet_matches_eager_in_onnx_runtime(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = ghostkernels.fuse(ghostkernels.models.ghostnet_100()).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    path = tmp_path / "ghostnet.onnx"
    gk_onnx.export(model, (x,), path)

    types = op_types(path)
    # 32 Ghost modules, each 2 Conv + 1 Concat (GhostNet's channel counts are even: no Slice); every ghost1 has Relu.
    assert types["Concat"] == 32 and types["Conv"] >= 64 and types["Relu"] >= 32, types
    with torch.no_grad():
        expected = model(x)
    out = run_onnx(path, x)
    # float32 against float32 eager: relative to the output's magnitude, as for AOTInductor (tests/test_aoti.py).
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_fused_bottlenecks_exported_under_no_grad_lower_to_standard_onnx(tmp_path):
    """Exported under no_grad, fuse(model)'s blocks are ghost_bottleneck nodes (one per block); their lowering adds
    the strided depthwise convs, the squeeze-excites and the shortcuts."""
    with torch.random.fork_rng():
        torch.manual_seed(8)
        model = ghostkernels.fuse(ghostkernels.models.ghostnet_100()).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    path = tmp_path / "ghostnet_blocks.onnx"
    with torch.no_grad():
        program = gk_onnx.export(model, (x,), path)
        expected = model(x)
    assert "ghostkernels" not in str(program.model)
    types = op_types(path)
    # 7 squeeze-excites (GhostNet 1.0x), 32 Ghost modules, 16 residual adds.
    assert types["HardSigmoid"] == 7 and types["Concat"] == 32 and types["Add"] >= 16, types
    out = run_onnx(path, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_only_the_dynamo_exporter_is_accepted():
    with pytest.raises(ValueError, match="dynamo=True"):
        gk_onnx.export(torch.nn.Identity(), (torch.randn(1),), None, dynamo=False)


class GatedCall(torch.nn.Module):
    """dfc_gate + ghost_module_gated, weights as constant parameters."""

    def __init__(self, ghost, gate, out_channels: int, act: str):
        super().__init__()
        self.ghost = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in ghost])
        self.gate = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in gate])
        self.out_channels, self.act = out_channels, act

    def forward(self, x):
        gate_map = ghostkernels.ops.dfc_gate(x, *self.gate)
        return ghostkernels.ops.ghost_module_gated(x, *self.ghost, self.out_channels, self.act, gate_map)


@pytest.mark.parametrize("hw", [(7, 7), (8, 6), (9, 11)], ids=str)
def test_gated_ops_lower_to_standard_onnx(hw, tmp_path):
    """AveragePool, Conv, Sigmoid and Resize (nearest, asymmetric, floor: F.interpolate's indices) for the gate,
    at odd sizes too (7x7 pools to 3x3 and upsamples rows 0, 0, 0, 1, 1, 2, 2)."""
    from ghostkernels.ops.reference import dfc_gate_reference, ghost_module_gated_reference

    gen = torch.Generator().manual_seed(hw[0] * 31 + hw[1])
    c, init, o = 6, 5, 9
    ghost = (torch.randn(init, c, 1, 1, generator=gen), torch.randn(init, generator=gen),
             torch.randn(init, 1, 3, 3, generator=gen) * 0.4, torch.randn(init, generator=gen))
    gate = (torch.randn(o, c, 1, 1, generator=gen) * 0.5, torch.randn(o, generator=gen),
            torch.randn(o, 1, 1, 5, generator=gen) * 0.5, torch.randn(o, generator=gen),
            torch.randn(o, 1, 5, 1, generator=gen) * 0.5, torch.randn(o, generator=gen))
    x = torch.randn(2, c, *hw, generator=gen)
    path = tmp_path / "gated.onnx"
    gk_onnx.export(GatedCall(ghost, gate, o, "relu").eval(), (x,), path)
    types = op_types(path)
    assert {"AveragePool", "Sigmoid", "Resize", "Mul"} <= set(types) and types["Conv"] == 5, types
    expected = ghost_module_gated_reference(x.double(), *[t.double() for t in ghost], o, "relu",
                                            dfc_gate_reference(x.double(), *[t.double() for t in gate]))
    assert_close_to_reference(run_onnx(path, x), expected, ORT_FLOAT32, f"ORT gated {hw}")


def test_fused_ghostnetv2_lowers_to_standard_onnx(tmp_path):
    """Exported under no_grad, GhostNetV2's gated blocks are ghost_bottleneck_gated nodes; ONNX Runtime matches the
    fused blocks. Stages 4 and 5 of ghostnetv2_100 (a stride-2 block with squeeze-excite, then one on a 7x7 map that
    pools to 3x3), not the whole network: an export of that costs a minute on 2 cores."""
    with torch.random.fork_rng():
        torch.manual_seed(9)
        net = variants.randomize_batchnorm(ghostkernels.models.ghostnetv2_100(), seed=9)
    model = ghostkernels.fuse(torch.nn.Sequential(net.blocks[3], net.blocks[4]).eval(), strict=True)
    x = torch.randn(2, 24, 14, 14, generator=torch.Generator().manual_seed(9))
    path = tmp_path / "ghostnetv2.onnx"
    with torch.no_grad():
        program = gk_onnx.export(model, (x,), path)
        expected = model(x)
    assert "ghostkernels" not in str(program.model)
    types = op_types(path)
    assert types["Resize"] == 2 and types["Sigmoid"] == 2 and types["AveragePool"] == 2, types
    out = run_onnx(path, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
