"""End-to-end inference: a whole GhostNet, batch 1 (latency) and the throughput batch (images/s).

Providers: eager, compile (freezing), fused-<backend> (ghostkernels.fuse(model, strict=True): every Ghost module
and bottleneck must be fused, or the case fails instead of timing a half-fused model), on CPU fused-<backend>-frozen
(the same model after ghostkernels.freeze: weights promised constant, as torch.compile's freezing and ONNX Runtime
assume; the whole network in one ghostkernels::chain call) and fused-<backend>-modules
(fuse(model, blocks=False): Ghost modules only), fused-<backend>+compile and, on CPU, onnxruntime (float32) and
openvino (float32 and bfloat16 inference precision), both running the unfused model exported to ONNX (see onnx_peer,
openvino_peer). Each provider's logits are checked against the float64 eager model before it is timed.

All providers of a case are built and checked first and then timed in turns (timing.time_in_rounds), so that a
change in the machine's speed while the case runs (a shared VM's slow stretches) reaches all of them alike; the
compiled providers are compiled once per case (one dynamo reset before the case, none between its providers) and
any recompilation while they are timed raises instead of timing a different graph.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Sequence

import torch

import ghostkernels

from . import checks, onnx_peer, openvino_peer
from .cases import DTypeConfig, build_model
from .providers import compile_module, fused_backend_of, fused_model, make_step, place, set_mode
from .timing import Rounds, TimingBudget, rotation_copies, summarize, time_in_rounds


@dataclasses.dataclass(frozen=True)
class EndToEndCase:
    model: str
    batch: int
    config: DTypeConfig
    resolution: int = 224

    @property
    def label(self) -> str:
        return f"{self.model} {self.config.label} b{self.batch} @{self.resolution}"


def end_to_end_providers(device: torch.device, backends: Sequence[str], with_compile: bool = True,
                         with_onnx: bool = True) -> tuple[list[str], list[str]]:
    """(providers to run, messages about the ones left out)."""
    names, skipped = ["eager"], []
    if with_compile:
        names.append("compile")
    for b in backends:
        names.append(f"fused-{b}")
        if device.type == "cpu":  # the whole-block op is CPU-only: elsewhere the two would be the same model
            names += [f"fused-{b}-frozen", f"fused-{b}-modules"]
        if with_compile:
            names.append(f"fused-{b}+compile")
    if with_onnx and device.type == "cpu":
        for name, peer in (("onnxruntime", onnx_peer), ("openvino", openvino_peer)):
            reason = peer.unavailable_reason()
            if reason is None:
                names.append(name)
            else:
                skipped.append(f"{name} skipped: {reason}")
    return names, skipped


# The dtypes each CPU peer runs (other cases have nothing to report for it).
PEER_DTYPES = {"onnxruntime": (torch.float32,), "openvino": (torch.float32, torch.bfloat16)}


class EndToEndRunner:
    """Runs end-to-end cases; keeps the float32 models and the ONNX Runtime sessions (one export per model)."""

    def __init__(self, device: torch.device, threads: int, budget: TimingBudget, strict: bool = False,
                 turns: Rounds = Rounds()):
        self.device, self.threads, self.budget, self.strict, self.turns = device, threads, budget, strict, turns
        self._models: dict[str, torch.nn.Module] = {}
        self._onnx: dict[tuple[str, int], onnx_peer.OnnxRuntimeModel] = {}
        self._openvino: dict[tuple, openvino_peer.OpenVinoModel] = {}
        self.peer_precision: dict[tuple, str] = {}  # (model, batch, dtype) -> what OpenVINO computed in

    def close(self) -> None:
        for sess in list(self._onnx.values()) + list(self._openvino.values()):
            sess.close()
        self._onnx.clear()
        self._openvino.clear()

    def _close_peers_of(self, case: EndToEndCase) -> None:
        """Close the OpenVINO model compiled for `case` (one per model, resolution, batch and dtype: no later case
        reuses it), so that finished cases' compiled models (each with its executor and memory) are not still held
        while later cases are timed. (It was suspected of OpenVINO's 40 ms, against 16-17 ms alone, in the last
        case of a full CPU run, ghostnetv2_100 bfloat16 batch 8; that stayed after this change, cause not found:
        bench/NOTES.md entry 63.)"""
        key = (case.model, case.resolution, case.batch, case.config.dtype)
        peer = self._openvino.pop(key, None)
        if peer is not None:
            peer.close()

    def base_model(self, name: str) -> torch.nn.Module:
        if name not in self._models:
            self._models[name] = build_model(name)
        return self._models[name]

    def inputs(self, case: EndToEndCase) -> list[torch.Tensor]:
        shape = (case.batch, 3, case.resolution, case.resolution)
        elt = torch.empty((), dtype=case.config.dtype).element_size()
        gen = torch.Generator(device=self.device).manual_seed(0)
        n = rotation_copies(case.batch * 3 * case.resolution ** 2 * elt, self.device)
        return [torch.randn(shape, generator=gen, device=self.device).to(dtype=case.config.dtype,
                                                                          memory_format=case.config.memory_format)
                for _ in range(n)]

    def step(self, provider: str, case: EndToEndCase, example: torch.Tensor, fresh_dynamo: bool = True) -> Callable:
        """The provider's timed call on `case`. fresh_dynamo=False: a compiled provider is compiled without
        resetting dynamo first (run() resets once per case, so that its compiled providers coexist)."""
        base = self.base_model(case.model)
        if provider in ("eager", "compile"):
            model = set_mode(place(base, self.device, case.config), "forward")
        elif provider == "onnxruntime":
            if case.config.dtype != torch.float32 or self.device.type != "cpu":
                raise ValueError("the onnxruntime peer runs float32 on CPU only")
            key = (case.model, case.resolution)
            if key not in self._onnx:
                self._onnx[key] = onnx_peer.OnnxRuntimeModel(base, example, self.threads)
            return make_step(self._onnx[key], "forward")
        elif provider == "openvino":
            if self.device.type != "cpu":
                raise ValueError("the openvino peer runs on CPU only")
            key = (case.model, case.resolution, case.batch, case.config.dtype)
            if key not in self._openvino:
                self._openvino[key] = openvino_peer.OpenVinoModel(base, example, self.threads, case.config.dtype)
            self.peer_precision[(case.model, case.batch, case.config.name)] = self._openvino[key].precision
            return make_step(self._openvino[key], "forward")
        elif provider.startswith("fused-"):
            blocks = not provider.endswith("-modules")
            model = set_mode(fused_model(base, fused_backend_of(provider), self.device, case.config, blocks),
                             "forward")
            if provider.endswith("-frozen"):
                ghostkernels.freeze(model)
        else:
            raise ValueError(f"ghostkernels.bench: unknown end-to-end provider {provider!r}")
        if provider == "compile" or provider.endswith("+compile"):
            return compile_module(model, "forward", (example, None), reset=fresh_dynamo)
        return make_step(model, "forward")

    def reference(self, case: EndToEndCase, x: torch.Tensor) -> torch.Tensor:
        """The float64 eager model's logits for x."""
        ref_model = set_mode(place(self.base_model(case.model), self.device, DTypeConfig(torch.float64, False)),
                             "forward")
        with torch.no_grad():
            return ref_model(x.to(torch.float64))

    def checked_step(self, provider: str, case: EndToEndCase, x: torch.Tensor, reference: torch.Tensor,
                     fresh_dynamo: bool = True) -> tuple[Callable, float]:
        """The provider's step and its relative error on x; raises AssertionError beyond the dtype's tolerance."""
        step = self.step(provider, case, x, fresh_dynamo)
        err, ok = checks.check(step(x), reference, case.config.dtype, checks.MODEL_TOLERANCE)
        if not ok:
            raise AssertionError(f"{provider} on {case.label}: relative error {err:.3g} exceeds the "
                                 f"{case.config.name} tolerance {checks.MODEL_TOLERANCE[case.config.dtype]}")
        return step, err

    def time_steps(self, steps: dict[str, Callable], inputs: Sequence[tuple], budget: TimingBudget | None = None,
                   turns: Rounds | None = None) -> dict:
        """timing.time_in_rounds of steps built with fresh_dynamo=False after one torch._dynamo.reset(), with any
        recompilation an error (a compiled step that recompiles would be timed on a different graph)."""
        with torch._dynamo.config.patch(error_on_recompile=True):
            return time_in_rounds(steps, inputs, self.device, budget or self.budget, turns or self.turns,
                                  strict=self.strict)

    def run(self, case: EndToEndCase, providers: Sequence[str],
            on_result: Callable[[dict], None] | None = None) -> list[dict]:
        """Check every provider on one case, then time them in turns (self.turns); one record per provider (see
        run_module_case), with the number of rounds it was timed in."""
        inputs = self.inputs(case)
        reference = self.reference(case, inputs[0])
        records: dict[str, dict] = {}
        steps: dict[str, Callable] = {}
        torch._dynamo.reset()  # once per case: its compiled providers must all stay compiled while they take turns
        for provider in providers:
            if provider in PEER_DTYPES and case.config.dtype not in PEER_DTYPES[provider]:
                continue  # a peer without this dtype: nothing to report
            rec = {"model": case.model, "resolution": case.resolution, "batch": case.batch,
                   "dtype": case.config.name,
                   "memory_format": "channels_last" if case.config.channels_last else "nchw",
                   "provider": provider, "input_copies": len(inputs)}
            try:
                steps[provider], rec["rel_err"] = self.checked_step(provider, case, inputs[0], reference,
                                                                    fresh_dynamo=False)
            except Exception as e:  # noqa: BLE001 - recorded, reported, and re-raised in strict mode
                if self.strict:
                    raise
                _record_error(rec, e)
            if provider == "openvino" and (case.model, case.batch, case.config.name) in self.peer_precision:
                rec["inference_precision"] = self.peer_precision[(case.model, case.batch, case.config.name)]
            records[provider] = rec
        timed = self.time_steps(steps, [(x,) for x in inputs])
        self._close_peers_of(case)
        for provider, rec in records.items():
            result = timed.get(provider)
            if isinstance(result, Exception):
                _record_error(rec, result)
            elif result is not None:
                timing = summarize([t for turn in result for t in turn])
                rec.update(timing.to_json())
                rec["rounds"] = len(result)
                rec["images_per_s"] = case.batch / (timing.median_ms * 1e-3)
            if on_result is not None:
                on_result(rec)
        return list(records.values())


def _record_error(rec: dict, e: BaseException) -> None:
    rec["error"] = f"{type(e).__name__}: {e}"
    rec["traceback"] = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=4))
