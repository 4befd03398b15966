"""ghostkernels::chain (a chain of the CPU inference ops in one call) and the whole-network forward freeze() gives a
fused GhostNet (ghostkernels.patch.frozen): the op's contract (opcheck, program validation, errors naming the step, no
backward), the frozen network against its own forward and eager PyTorch, when it falls back to the class's forward
(autograd, training, autocast, other dtypes, hooks, tracing), unfreeze, deepcopy and pickling, networks it must
refuse."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import ghost_testing as gt
import ghostkernels
import variants
from ghostkernels.patch import frozen
from ghostkernels.patch.frozen import CHAIN_OPCODES, ChainNotBuildable
from ghostkernels.ops.reference import ACTS

NETWORKS = variants.SMALL_GHOSTNETS
# The chain runs the same kernels as the op-by-op forward; only the global pooling's summation order may differ.
SAME_AS_MODULES = {torch.float32: gt.Tol(atol=1e-5, rtol=1e-5), torch.bfloat16: gt.Tol(atol=2e-2, rtol=2e-2)}


def _frozen(kind: str, seed: int = 0, dtype=torch.float32, calls: list | None = None):
    """(eager network, fused and frozen copy); ``calls`` (a chain_calls list) is cleared of freeze()'s probe."""
    net = variants.small_ghostnet(kind, seed, num_classes=37).to(dtype)
    fused = ghostkernels.freeze(ghostkernels.fuse(copy.deepcopy(net), strict=True))
    if calls is not None:
        calls.clear()
    return net, fused


@pytest.fixture
def chain_calls(monkeypatch):
    """The shapes of x of the chain calls."""
    return gt.record_op_calls(monkeypatch, "chain")


# ---------------------------------------------------------------------------------------------------------------
# The frozen network
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", list(SAME_AS_MODULES), ids=gt.dtype_name)
@pytest.mark.parametrize("kind", list(NETWORKS))
def test_frozen_network_runs_one_chain_call_and_matches(kind, dtype, chain_calls):
    net, fused = _frozen(kind, dtype=dtype)
    assert frozen.network_plan(fused) is not None
    for shape in ((1, 3, 64, 64), (3, 3, 57, 71)):
        x = torch.randn(shape).to(dtype)
        chain_calls.clear()
        with torch.inference_mode():
            got = fused(x)
            by_modules = type(fused).forward(fused, x)
        assert chain_calls == [shape]
        gt.assert_close_to_reference(got, by_modules.double(), SAME_AS_MODULES[dtype], f"{kind} {shape} chain")
        if dtype == torch.float32:
            with torch.no_grad():
                torch.testing.assert_close(got, net(x), atol=5e-5, rtol=5e-5)


def test_frozen_network_output_is_fully_written():
    # conftest fills fresh allocations (the pool's blocks included) with NaN: an unwritten element would show.
    _, fused = _frozen("ours")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = fused(x)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("situation", ["autograd", "training", "autocast", "other dtype", "two inputs",
                                       "submodule hook", "global hook", "compiling"])
def test_frozen_network_uses_its_own_forward_where_the_chain_does_not_apply(situation, chain_calls):
    net, fused = _frozen("ours", seed=1, calls=chain_calls)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = net(x)
    seen = []
    if situation == "autograd":
        got = fused(x)
        assert got.requires_grad
    elif situation == "training":
        fused.train()
        net.train()
        with torch.no_grad():
            torch.manual_seed(0)  # the same dropout mask for both
            got = fused(x)
            torch.manual_seed(0)
            want = net(x)
    elif situation == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            got = fused(x)
        got = got.float()
        want = want.float()
        torch.testing.assert_close(got, want, atol=0.3, rtol=0.1)
    elif situation == "other dtype":
        with torch.no_grad(), pytest.raises((RuntimeError, TypeError, ValueError)):
            fused(x.double())  # the class's forward gives the layers' dtype error
        got = None
    elif situation == "two inputs":
        with torch.no_grad(), pytest.raises(TypeError):
            fused(x, x)
        got = None
    elif situation == "submodule hook":
        handle = fused.blocks[2][0].register_forward_hook(lambda m, a, out: seen.append(out.shape))
        with torch.no_grad():
            got = fused(x)
        assert len(seen) == 1
        handle.remove()
        with torch.no_grad():
            fused(x)
        assert chain_calls == [tuple(x.shape)] and len(seen) == 1  # hook gone: the chain again
        chain_calls.clear()
    elif situation == "global hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, a, out: seen.append(type(m)))
        try:
            with torch.no_grad():
                got = fused(x)
        finally:
            handle.remove()
        assert len(seen) > 20
    else:
        compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
        with torch.no_grad():
            got = compiled(x)
    assert chain_calls == []
    if got is not None and situation != "autocast":
        torch.testing.assert_close(got.detach(), want, atol=5e-5, rtol=5e-5)


def test_hooks_on_the_network_itself_run_around_the_chain(chain_calls):
    _, fused = _frozen("official", calls=chain_calls)
    seen = []
    fused.register_forward_pre_hook(lambda m, args: seen.append("pre"))
    fused.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        fused(torch.randn(1, 3, 64, 64))
    assert seen == ["pre", (1, 37)] and chain_calls == [(1, 3, 64, 64)]


def test_unfreeze_and_freeze_again(chain_calls):
    _, fused = _frozen("ours", seed=2, calls=chain_calls)
    x = torch.randn(1, 3, 64, 64)
    ghostkernels.unfreeze(fused)
    assert frozen.network_plan(fused) is None and "forward" not in fused.__dict__
    with torch.no_grad():
        before = fused(x)
        assert chain_calls == []
        fused.conv_head.weight.mul_(0.5)  # seen: unfrozen
        halved = fused(x)
        ghostkernels.freeze(fused)  # the plan is rebuilt from the current weights
        chain_calls.clear()  # (freeze's probe)
        torch.testing.assert_close(fused(x), halved, atol=1e-5, rtol=1e-5)
    assert chain_calls == [(1, 3, 64, 64)] and not torch.allclose(before, halved)


def test_deepcopy_binds_the_copy_and_pickling_drops_the_plan(chain_calls):
    _, fused = _frozen("ours", seed=3, calls=chain_calls)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = fused(x)
    twin = copy.deepcopy(fused)
    assert frozen.network_plan(twin) is not None and twin.forward.__self__ is twin
    with torch.no_grad():
        torch.testing.assert_close(twin(x), want, atol=0, rtol=0)
        twin.classifier.bias.add_(1.0)
        ghostkernels.freeze(twin)
        torch.testing.assert_close(twin(x), want + 1.0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused(x), want, atol=0, rtol=0)  # the original is untouched
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert frozen.network_plan(loaded) is None
    chain_calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want, atol=1e-5, rtol=1e-5)
    assert chain_calls == []


def test_networks_the_chain_cannot_stand_in_for_keep_their_forward(chain_calls):
    net = variants.small_ghostnet("ours", 4, num_classes=37)

    class Shifted(type(net)):
        def forward(self, x):
            return super().forward(x) + 1.0

    shifted = copy.deepcopy(net)
    shifted.__class__ = Shifted
    fused = ghostkernels.freeze(ghostkernels.fuse(shifted, strict=True))
    assert frozen.network_plan(fused) is None
    chain_calls.clear()
    with pytest.raises(ChainNotBuildable, match="computes something else"):
        frozen.install(fused)
    chain_calls.clear()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(fused(x), net(x) + 1.0, atol=5e-5, rtol=5e-5)
    assert chain_calls == []

    ghost_only = ghostkernels.fuse(copy.deepcopy(net), blocks=False)
    with pytest.raises(ChainNotBuildable, match="conv_stem is not fused"):
        frozen.build_plan(ghost_only)
    assert frozen.network_plan(ghostkernels.freeze(ghost_only)) is None

    eager_block = ghostkernels.fuse(copy.deepcopy(net))
    eager_block.blocks[3][0].backend = "eager"
    with pytest.raises(ChainNotBuildable, match=r"blocks\.3\.0 has backend='eager'"):
        frozen.build_plan(eager_block)
    with pytest.raises(ChainNotBuildable, match="has no conv_stem"):
        frozen.build_plan(nn.Sequential(nn.Conv2d(3, 4, 1)))


def test_freeze_finds_networks_inside_a_model(chain_calls):
    net = variants.small_ghostnet("official", 5, num_classes=37)
    model = nn.Sequential(nn.Identity(), net)
    ghostkernels.freeze(ghostkernels.fuse(model, strict=True))
    assert frozen.network_plan(model[1]) is not None
    chain_calls.clear()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert chain_calls == [(1, 3, 64, 64)]


# ---------------------------------------------------------------------------------------------------------------
# The op
# ---------------------------------------------------------------------------------------------------------------

def _small_program(seed: int = 0):
    """conv2d_act (3 -> 8, stride 2) -> mean_hw -> linear_act (8 -> 5, relu) -> linear_act (5 -> 3)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(8, 3, 3, 3, generator=gen) / 5, torch.randn(8, generator=gen),
               torch.randn(5, 8, generator=gen) / 3, torch.randn(5, generator=gen),
               torch.randn(3, 5, generator=gen) / 2, torch.randn(3, generator=gen)]
    relu, ident = ACTS.index("relu"), ACTS.index("identity")
    program = [CHAIN_OPCODES["conv2d_act"], 2, relu, CHAIN_OPCODES["mean_hw"], CHAIN_OPCODES["linear_act"], relu,
               CHAIN_OPCODES["linear_act"], ident]
    return tensors, program


def test_chain_matches_its_steps_in_float64():
    tensors, program = _small_program()
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    tensors = [t.double() for t in tensors]
    w, b, w1, b1, w2, b2 = tensors
    y = torch.relu(torch.nn.functional.conv2d(x, w, b, stride=2, padding=1)).mean((2, 3))
    want = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(y, w1, b1)), w2, b2)
    torch.testing.assert_close(torch.ops.ghostkernels.chain(x, tensors, program), want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 17, 7, 7), (1, 33, 4, 4), (3, 16, 5, 7), (1, 20, 17, 3),
                                   (2, 5, 16, 16)], ids=lambda s: "x".join(map(str, s)))
def test_mean_hw_step_matches_float64_mean(shape, dtype):
    """The global average pool alone (AVX-512 plane sums where the CPU has them): planes shorter than, equal to and
    longer than a vector, ragged groups of 16 planes."""
    x = (torch.randn(*shape, dtype=torch.float64) + 0.5).to(dtype)
    got = torch.ops.ghostkernels.chain(x, [], [CHAIN_OPCODES["mean_hw"]])
    want = x.double().mean((2, 3))
    tol = {torch.float32: 2e-6, torch.bfloat16: 8e-3}[dtype]  # float accumulation; bfloat16 rounds the mean
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_chain_opcheck():
    tensors, program = _small_program(1)
    torch.library.opcheck(torch.ops.ghostkernels.chain.default, (torch.randn(2, 3, 10, 12), tensors, program),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_chain_opcheck_on_a_network_program():
    _, fused = _frozen("official", seed=6)
    plan = frozen.network_plan(fused)
    torch.library.opcheck(torch.ops.ghostkernels.chain.default, (torch.randn(1, 3, 48, 40), plan.tensors,
                                                                 plan.program),
                          test_utils=("test_schema", "test_faketensor"))


def test_chain_has_no_backward():
    tensors, program = _small_program()
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="chain has no backward.*ghostkernels.freeze"):
        torch.ops.ghostkernels.chain(x, tensors, program).sum().backward()


def _bad(edit):
    tensors, program = _small_program()
    tensors, program = edit(list(tensors), list(program))
    return tensors, program


@pytest.mark.parametrize("edit,match", [
    (lambda t, p: (t, []), "the program is empty"),
    (lambda t, p: (t, [7] + p), r"step 0 \(program\[0\]\) has opcode 7"),
    (lambda t, p: (t, p[:-1]), r"step 3 \(linear_act\) needs 1 integer"),
    (lambda t, p: (t[:-1], p), r"step 3 \(linear_act\) needs 2 tensor"),
    (lambda t, p: (t + [torch.randn(2)], p), "take 6 tensors, but 7 were given"),
    (lambda t, p: ([None] + t[1:], p), r"step 0 \(conv2d_act\) tensor 0 \(tensors\[0\]\) is None"),
    (lambda t, p: (t, p[:5] + [9] + p[6:]), r"step 2 \(linear_act\) has activation code 9"),
])
def test_chain_rejects_bad_programs(edit, match):
    tensors, program = _bad(edit)
    with pytest.raises(ValueError, match=match):
        torch.ops.ghostkernels.chain(torch.randn(1, 3, 8, 8), tensors, program)
    with pytest.raises(ValueError, match=match), torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):  # the fake agrees
        torch.ops.ghostkernels.chain(torch.randn(1, 3, 8, 8), tensors, program)


def test_chain_errors_name_the_step():
    tensors, program = _small_program()
    tensors[2] = torch.randn(5, 7)  # the first linear_act's w does not take 8 features
    with pytest.raises(ValueError, match=r"(?s)w must be \[out, 8\].*ghostkernels::chain \(CPU\): in step 2 "
                                         r"\(linear_act\)"):
        torch.ops.ghostkernels.chain(torch.randn(1, 3, 8, 8), tensors, program)
    with pytest.raises(ValueError, match="x must be 4-D"):
        torch.ops.ghostkernels.chain(torch.randn(3, 8), tensors, program)


def test_chain_intermediates_reuse_larger_pool_blocks_but_its_output_does_not():
    """Inside the chain a step's output may take an idle pool block up to 4x its size (it dies inside the chain;
    csrc/cpu/util_tensor_pool.h, TransientAllocationScope); the chain's own output gets a block of its size."""
    from ghostkernels import ops
    if ops.cpu_pool_stats()["limit_bytes"] < (64 << 20):
        pytest.skip("the CPU block pool is off or small (GHOSTKERNELS_CPU_POOL_MB)")
    if not gt.cpu_has_avx512():
        pytest.skip("without AVX-512 the 1x1 convolutions are ATen's, whose outputs do not come from the block pool")
    relu = ACTS.index("relu")
    conv = CHAIN_OPCODES["conv2d_act"]
    x = torch.randn(1, 16, 64, 64)
    big_w, big_b = torch.randn(256, 16, 1, 1), torch.randn(256)  # 256 x 64 x 64 floats: a 4 MB output
    w1, b1 = torch.randn(80, 16, 1, 1) / 4, torch.randn(80)       # the intermediate: 1.25 MB
    w2, b2 = torch.randn(64, 80, 1, 1) / 9, torch.randn(64)       # the output: 1 MB
    one_step = [conv, 1, relu]
    ops.release_cpu_pool()
    big = [torch.ops.ghostkernels.chain(x, [big_w, big_b], one_step) for _ in range(2)]
    del big  # two idle 4 MB blocks, each more than a quarter larger than either tensor below
    before = ops.cpu_pool_stats()
    out = torch.ops.ghostkernels.chain(x, [w1, b1, w2, b2], one_step + one_step)
    after = ops.cpu_pool_stats()
    assert after["hits"] - before["hits"] == 1  # the intermediate, in a 4 MB block
    assert after["misses"] - before["misses"] == 1  # the output, in a block of its own size
    assert after["in_use_bytes"] - before["in_use_bytes"] == out.numel() * out.element_size()
    want = torch.relu(nn.functional.conv2d(torch.relu(nn.functional.conv2d(x, w1, b1)), w2, b2))
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    del out
    ops.release_cpu_pool()


# ---------------------------------------------------------------------------------------------------------------
# A batch cut into one slice per thread (GHOSTKERNELS_CHAIN_IMAGE_SPLIT, csrc/cpu/op_chain.cpp)
# ---------------------------------------------------------------------------------------------------------------

def _slices_of_one_forward(fused, x):
    """(output, how many slices the chain ran): each slice runs the whole program, so the global pool's user scope
    (one step per network) shows once per slice in torch.profiler's trace."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        got = fused(x)
    return got, sum(e.name == "ghostkernels::chain/mean_hw" for e in prof.events())


# Bit for bit where the AVX-512 kernels run (their sums never depend on the work items). On CPUs without AVX-512 the
# generic kernels' GEMMs are MKL's, whose blocking (and so rounding) follows the matrix sizes that the cut and the
# thread count give: measured up to 1.3e-5 relative, 1e-7 absolute on an AVX2 CPU.
SLICED_TOL = dict(atol=0, rtol=0) if gt.cpu_has_avx512() else dict(atol=1e-6, rtol=1e-4)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("knob,batch,slices", [(None, 8, 2), (None, 4, 2), ("0", 8, 1), (None, 7, 1), (None, 2, 1),
                                               ("5", 8, 1), ("1", 2, 2)])
def test_chain_cuts_a_large_batch_into_a_slice_per_thread(knob, batch, slices, two_threads, monkeypatch):
    # Default: from 2 images per thread, and only an even cut. The slices run the same per-image kernels, so the
    # result is the same, bit for bit, as one thread's (on the AVX-512 kernels; see SLICED_TOL).
    _, fused = _frozen("ours", seed=3)
    if knob is not None:
        monkeypatch.setenv("GHOSTKERNELS_CHAIN_IMAGE_SPLIT", knob)
    x = torch.randn(batch, 3, 40, 48)
    got, ran = _slices_of_one_forward(fused, x)
    assert ran == slices
    torch.set_num_threads(1)
    with torch.no_grad():
        want = fused(x)
    torch.testing.assert_close(got, want, **SLICED_TOL)


@pytest.mark.parametrize("knob", ["-1", "four", "2x", " "])
def test_chain_rejects_a_bad_image_split_knob(knob, two_threads, monkeypatch):
    tensors, program = _small_program()
    monkeypatch.setenv("GHOSTKERNELS_CHAIN_IMAGE_SPLIT", knob)
    with pytest.raises(ValueError, match="GHOSTKERNELS_CHAIN_IMAGE_SPLIT must be a non-negative integer"):
        torch.ops.ghostkernels.chain(torch.randn(8, 3, 8, 8), tensors, program)


def test_fused_bottleneck_op_cuts_a_large_batch_into_a_slice_per_thread(two_threads, monkeypatch):
    # A fused but not frozen network calls ghost_bottleneck per block; from 2 images per thread each thread runs the
    # whole block on its slice: ghost2's scope then shows once per slice (these small maps make one chunk of the batch).
    net = variants.small_ghostnet("ours", 4, num_classes=37)
    fused = ghostkernels.fuse(copy.deepcopy(net), strict=True).eval()
    x = torch.randn(8, 3, 40, 48)

    def forward_and_ghost2_scopes():
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
            got = fused(x)
        return got, sum(e.name == "ghostkernels::ghost_bottleneck/ghost2" for e in prof.events())

    got, cut = forward_and_ghost2_scopes()
    monkeypatch.setenv("GHOSTKERNELS_CHAIN_IMAGE_SPLIT", "0")
    whole, uncut = forward_and_ghost2_scopes()
    assert uncut > 0 and cut == 2 * uncut
    torch.testing.assert_close(got, whole, **SLICED_TOL)
    torch.set_num_threads(1)
    with torch.no_grad():
        torch.testing.assert_close(got, fused(x), **SLICED_TOL)
