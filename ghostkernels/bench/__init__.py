"""Benchmark harness of ghostkernels: the fused Ghost module against eager PyTorch, torch.compile and ONNX Runtime.

One harness serves the CLI (``python -m ghostkernels.bench``, see __main__) and the pytest-benchmark suite in
``bench/`` of the source tree:

  cases        Ghost-module shapes read off GhostNet 0.5x/1.0x/1.3x with forward hooks; dtype configurations
  providers    eager / torch.compile (freezing) / fused-<backend> modules and the timed step of each mode
  timing       warm-up, per-call timing (CPU perf_counter, GPU CUDA events with inputs rotated past L2), percentiles
  checks       every provider's result against the float64 eager reference before it is timed
  microbench   one Ghost-module case over every provider, with ideal-bytes bandwidth
  end_to_end   whole models: eager, compile, fuse(model), fuse(model)+compile, ONNX Runtime (onnx_peer)
  memory       training memory: saved-for-backward bytes and peak bytes, eager against fused
  results      the results JSON (speedups, per-model geometric means, merging runs)
  table, plot  terminal/markdown tables and the PNG plot
  runner       one whole run (quick or full)
"""

from .runner import RunOptions, run

__all__ = ["RunOptions", "run"]
