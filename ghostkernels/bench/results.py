"""The results JSON: records of one or more runs on one device, speedups, per-model summaries.

Layout (schema "ghostkernels-bench/1"):
  complete         false while a run is still going (the CLI saves after every case) or was cut short;
  environment      the latest run's environment (environment.describe) and settings;
  runs             {run_id: {"environment", "settings"}} for every run merged into the file;
  module_cases     one record per (shape, mode, batch, dtype, memory format, provider): median_ms, p20_ms, p80_ms,
                   reps, ideal_bytes, gb_per_s, speedup_vs_eager, speedup_vs_compile, rel_err (vs float64 eager),
                   model_counts (how often each model uses the shape), run_id; or "error" instead of a timing;
  end_to_end       one record per (model, resolution, batch, dtype, memory format, provider): the same timing
                   fields plus images_per_s;
  training_memory  one record per (model, batch, dtype, memory format, provider): peak_bytes, saved_bytes,
                   saved_bytes_ghost;
  training_step    one record per (model, batch, dtype, memory format, provider) of a whole training step with
                   batch-statistics BatchNorm (training_step.py): the timing fields, images_per_s, rel_err and
                   grad_rel_err, peak_bytes, and (not for compile) saved_bytes and saved_bytes_ghost; files written
                   before it existed have no such section;
  summary          per (model, mode, batch, dtype, memory format, provider): the geometric mean of the per-shape
                   speedups over that model's Ghost modules, each shape weighted by how often the model uses it,
                   and the shapes where the provider is slower than eager.

Speedups are ratios of medians within one file, so they compare providers measured in the same run (or merged
runs of the same device).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

SCHEMA = "ghostkernels-bench/1"
# Fields that are measurements (or derived from them), or what a provider reported of its run (OpenVINO's
# inference_precision); everything else in a record identifies the case. (inference_precision in the key had left
# OpenVINO's records without a speedup over eager, so the plots had no OpenVINO bars.)
_MEASURED = {"median_ms", "p20_ms", "p80_ms", "reps", "rounds", "gb_per_s", "images_per_s", "speedup_vs_eager",
             "speedup_vs_compile", "rel_err", "error", "traceback", "run_id", "input_copies", "peak_bytes",
             "saved_bytes", "saved_bytes_ghost", "saved_tensors", "model_counts", "grad_rel_err",
             "inference_precision"}
SECTIONS = ("module_cases", "end_to_end", "training_memory", "training_step")


def record_key(rec: dict) -> str:
    return json.dumps({k: v for k, v in rec.items() if k not in _MEASURED and k != "provider"}, sort_keys=True)


def identity(rec: dict) -> str:
    return record_key(rec) + "|" + rec["provider"]


def add_speedups(records: list[dict]) -> None:
    """speedup_vs_eager / speedup_vs_compile: the eager (compile) median of the same case over this median; the
    "+compile" variants of end-to-end fused providers are compared with the same 'compile' baseline."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for rec in records:
        groups[record_key(rec)][rec["provider"]] = rec
    for by_provider in groups.values():
        for rec in by_provider.values():
            for base, field in (("eager", "speedup_vs_eager"), ("compile", "speedup_vs_compile")):
                ref = by_provider.get(base)
                if rec.get("median_ms") and ref is not None and ref.get("median_ms"):
                    rec[field] = ref["median_ms"] / rec["median_ms"]
                else:
                    rec.pop(field, None)


def _geomean(values_weights: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in values_weights)
    if not total:
        return None
    return math.exp(sum(w * math.log(v) for v, w in values_weights) / total)


def summarize(module_cases: list[dict]) -> list[dict]:
    """Per-model geometric-mean speedups (see the module docstring)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for rec in module_cases:
        if "median_ms" not in rec:
            continue
        for model, count in rec.get("model_counts", {}).items():
            key = (model, rec["mode"], rec["batch"], rec["dtype"], rec["memory_format"], rec["provider"])
            groups[key].append({**rec, "_count": count})
    out = []
    for (model, mode, batch, dtype, fmt, provider), recs in sorted(groups.items()):
        if provider == "eager":
            continue
        vs_eager = [(r["speedup_vs_eager"], r["_count"]) for r in recs if "speedup_vs_eager" in r]
        vs_compile = [(r["speedup_vs_compile"], r["_count"]) for r in recs if "speedup_vs_compile" in r]
        slower = sorted({r["label"] for r in recs if r.get("speedup_vs_eager", math.inf) < 1.0})
        out.append({
            "model": model, "mode": mode, "batch": batch, "dtype": dtype, "memory_format": fmt,
            "provider": provider, "shapes": len(recs), "modules": sum(r["_count"] for r in recs),
            "geomean_speedup_vs_eager": _geomean(vs_eager), "geomean_speedup_vs_compile": _geomean(vs_compile),
            "min_speedup_vs_eager": min((v for v, _ in vs_eager), default=None),
            "slower_than_eager": slower,
        })
    return out


def new_results(environment: dict, settings: dict) -> dict:
    run_id = environment["date"]
    return {"schema": SCHEMA, "environment": environment, "settings": settings,
            "runs": {run_id: {"environment": environment, "settings": settings}},
            "module_cases": [], "end_to_end": [], "training_memory": [], "training_step": [],
            "summary": []}


def add_records(results: dict, section: str, records: list[dict]) -> None:
    run_id = results["environment"]["date"]
    for rec in records:
        rec["run_id"] = run_id
    results[section].extend(records)


def finalize(results: dict) -> dict:
    add_speedups(results["module_cases"])
    add_speedups(results["end_to_end"])
    add_speedups(results.setdefault("training_step", []))
    results["summary"] = summarize(results["module_cases"])
    return results


def merge(old: dict, new: dict) -> dict:
    """`new` on top of `old` (same device): records of the same case and provider are replaced, others kept."""
    if old.get("schema") != SCHEMA:
        raise ValueError(f"ghostkernels.bench: cannot merge into a results file of schema {old.get('schema')!r}; "
                         f"expected {SCHEMA!r}")
    old_dev, new_dev = old["environment"]["device_slug"], new["environment"]["device_slug"]
    if old_dev != new_dev:
        raise ValueError(f"ghostkernels.bench: cannot merge results of {new_dev} into a file of {old_dev}")
    merged = {"schema": SCHEMA, "complete": new.get("complete", True), "environment": new["environment"],
              "settings": new["settings"], "runs": {**old.get("runs", {}), **new["runs"]}}
    for section in SECTIONS:
        replaced = {identity(r) for r in new[section]}
        merged[section] = [r for r in old.get(section, []) if identity(r) not in replaced] + new[section]
    return finalize(merged)


def default_output_dir() -> str:
    """bench/results of the source checkout the package runs from, else ./ghostkernels-bench-results."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isdir(os.path.join(repo, "bench")) and os.path.isfile(os.path.join(repo, "setup.py")):
        return os.path.join(repo, "bench", "results")
    return os.path.join(os.getcwd(), "ghostkernels-bench-results")


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise ValueError(f"ghostkernels.bench: {path} is not a ghostkernels benchmark results file "
                         f"(schema {data.get('schema')!r}, expected {SCHEMA!r})")
    return data


def save(results: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)  # never leave a half-written results file behind
    return path
