"""Tables of a results dict: plain text for the terminal, markdown for the README (the same rows).

    python -m ghostkernels.bench --markdown bench/results/<device>.json   # print the README tables of a saved run
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

MIB = 1 << 20


_NUMERIC = re.compile(r"^(-|ERROR|[-+]?\d[\d.,]*(x| \(\d+\)|-[\d.]+)?)$")


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """Aligned text columns, or a markdown table: numeric columns right-aligned, text columns left-aligned.
    Columns with no value in any row ("-" everywhere, e.g. "vs compile" when compile did not run) are left out."""
    keep = [j for j in range(len(headers)) if not rows or any(str(r[j]) != "-" for r in rows)]
    headers = [headers[j] for j in keep]
    rows = [[str(r[j]) for j in keep] for r in rows]
    numeric = [bool(rows) and all(_NUMERIC.match(r[j]) for r in rows) for j in range(len(headers))]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(headers, *rows)]

    def fmt(r):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _ms(rec: dict | None) -> str:
    if rec is None:
        return "-"
    if "error" in rec:
        return "ERROR"
    return f"{rec['median_ms']:.3f}"


def _x(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}x"


def _providers(records: list[dict]) -> list[str]:
    order = {"eager": 0, "compile": 1, "onnxruntime": 9, "openvino": 10}
    return sorted({r["provider"] for r in records}, key=lambda p: (order.get(p, 5), p))


def _group(records: list[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def module_tables(results: dict, markdown: bool = False) -> list[str]:
    """One table per (mode, dtype, memory format, batch): per shape, every provider's median and the speedups."""
    out = []
    for (mode, dtype, fmt, batch), recs in _group(results["module_cases"],
                                                  ("mode", "dtype", "memory_format", "batch")).items():
        providers = _providers(recs)
        others = [p for p in providers if p != "eager"]
        headers = (["shape", "uses"] + [f"{p} ms" for p in providers]
                   + [f"{p} vs eager" for p in others] + [f"{p} vs compile" for p in others if p != "compile"]
                   + [f"{p} GB/s" for p in providers])
        rows = []
        for (label,), by_shape in _group(recs, ("label",)).items():
            by = {r["provider"]: r for r in by_shape}
            counts = sorted(by_shape[0]["model_counts"].items())
            uses = " ".join(f"{m.removeprefix('ghostnet_')}:{n}" for m, n in counts)
            rows.append([label, uses] + [_ms(by.get(p)) for p in providers]
                        + [_x(by.get(p, {}).get("speedup_vs_eager")) for p in others]
                        + [_x(by.get(p, {}).get("speedup_vs_compile")) for p in others if p != "compile"]
                        + [f"{by[p]['gb_per_s']:.1f}" if "gb_per_s" in by.get(p, {}) else "-" for p in providers])
        title = f"Ghost modules, {mode}, {dtype} {fmt}, batch {batch} (median ms; uses = width:occurrences)"
        if markdown:  # long per-shape tables fold away in the README
            out.append(f"<details><summary>{title}</summary>\n\n{render(headers, rows, True)}\n\n</details>")
        else:
            out.append(_title(title, False) + render(headers, rows, False))
    return out


def summary_table(results: dict, markdown: bool = False) -> str | None:
    rows = [[s["model"], s["mode"], f"{s['dtype']} {s['memory_format']}", str(s["batch"]), s["provider"],
             f"{s['modules']} ({s['shapes']})", _x(s["geomean_speedup_vs_eager"]),
             _x(s["geomean_speedup_vs_compile"]), _x(s["min_speedup_vs_eager"]), str(len(s["slower_than_eager"]))]
            for s in results["summary"]]
    if not rows:
        return None
    headers = ["model", "mode", "dtype", "batch", "provider", "modules (shapes)", "geomean vs eager",
               "geomean vs compile", "worst vs eager", "shapes slower than eager"]
    title = "Ghost-module speedups per model (geometric mean over the model's Ghost modules)"
    return _title(title, markdown) + render(headers, rows, markdown)


def end_to_end_table(results: dict, markdown: bool = False) -> str | None:
    recs = results["end_to_end"]
    if not recs:
        return None
    rows = []
    for r in recs:
        if "error" in r:
            rows.append([r["model"], f"{r['dtype']} {r['memory_format']}", str(r["batch"]), r["provider"],
                         "ERROR", "-", "-", "-", "-"])
            continue
        rows.append([r["model"], f"{r['dtype']} {r['memory_format']}", str(r["batch"]), r["provider"],
                     f"{r['median_ms']:.2f}", f"{r['p20_ms']:.2f}-{r['p80_ms']:.2f}", f"{r['images_per_s']:.0f}",
                     _x(r.get("speedup_vs_eager")), _x(r.get("speedup_vs_compile"))])
    headers = ["model", "dtype", "batch", "provider", "median ms", "p20-p80 ms", "images/s", "vs eager",
               "vs compile"]
    res = recs[0]["resolution"]
    return _title(f"End-to-end inference at {res}x{res}", markdown) + render(headers, rows, markdown)


def _ratio(rec: dict, eager: dict | None, field: str) -> str:
    if eager is None or not eager.get(field):
        return "-"
    return f"{rec[field] / eager[field]:.2f}"


def memory_table(results: dict, markdown: bool = False) -> str | None:
    recs = results["training_memory"]
    if not recs:
        return None
    eager = {(r["model"], r["batch"], r["dtype"], r["memory_format"]): r for r in recs if r["provider"] == "eager"}
    rows = []
    for r in recs:
        if "error" in r:
            rows.append([r["model"], f"{r['dtype']} {r['memory_format']}", str(r["batch"]), r["provider"],
                         "ERROR", "-", "-", "-", "-"])
            continue
        e = eager.get((r["model"], r["batch"], r["dtype"], r["memory_format"]))
        rows.append([r["model"], f"{r['dtype']} {r['memory_format']}", str(r["batch"]), r["provider"],
                     f"{r['peak_bytes'] / MIB:.1f}", _ratio(r, e, "peak_bytes"), f"{r['saved_bytes'] / MIB:.1f}",
                     f"{r['saved_bytes_ghost'] / MIB:.1f}", _ratio(r, e, "saved_bytes_ghost")])
    headers = ["model", "dtype", "batch", "provider", "peak MiB", "peak / eager", "saved MiB",
               "saved in Ghost modules MiB", "Ghost saved / eager"]
    res = recs[0]["resolution"]
    title = f"Training memory, forward+backward with frozen BN at {res}x{res} (peak above the step's start)"
    return _title(title, markdown) + render(headers, rows, markdown)


def training_step_table(results: dict, markdown: bool = False) -> str | None:
    recs = results.get("training_step", [])
    if not recs:
        return None
    eager = {(r["model"], r["batch"], r["dtype"], r["memory_format"]): r for r in recs if r["provider"] == "eager"}
    rows = []
    for r in recs:
        head = [r["model"], f"{r['dtype']} {r['memory_format']}", str(r["batch"]), r["provider"]]
        if "median_ms" not in r:
            rows.append(head + ["ERROR"] + ["-"] * 7)
            continue
        e = eager.get((r["model"], r["batch"], r["dtype"], r["memory_format"]))
        saved = r.get("saved_bytes_ghost")
        rows.append(head + [f"{r['median_ms']:.1f}", f"{r['images_per_s']:.1f}", _x(r.get("speedup_vs_eager")),
                            f"{r['peak_bytes'] / MIB:.1f}", _ratio(r, e, "peak_bytes"),
                            f"{saved / MIB:.1f}" if saved is not None else "-",
                            _ratio(r, e, "saved_bytes_ghost") if saved is not None else "-"])
    headers = ["model", "dtype", "batch", "provider", "median ms", "images/s", "vs eager", "peak MiB",
               "peak / eager", "saved in Ghost modules MiB", "Ghost saved / eager"]
    res = recs[0]["resolution"]
    title = (f"Training step with batch-statistics BN at {res}x{res} (forward+backward; peak above the step's start; "
             "saved = activation memory kept for backward)")
    return _title(title, markdown) + render(headers, rows, markdown)


def conditions(results: dict) -> str:
    """One line stating the conditions of the numbers."""
    env, s = results["environment"], results["settings"]
    git = env.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (dirty tree)" if git.get("dirty") else "")
    if env["device_type"] == "cuda":
        parts = [f"GPU: {env['device_name']}", f"host CPU: {env['cpu_name']} ({env['cpu_cores']} cores)"]
    else:
        parts = [f"CPU: {env['cpu_name']}, {env['cpu_cores']} cores ({env.get('cpu_capability')})"]
    parts.append(f"{env['threads']} threads")
    if env.get("memory_copy_gbs_at_start") is not None:
        end = env.get("memory_copy_gbs_at_end")
        parts.append(f"memory copy {env['memory_copy_gbs_at_start']:.0f} GB/s at start"
                     + (f", {end:.0f} at end" if end is not None else ""))
    parts.append(f"torch {env['torch']}")
    if env.get("cuda"):
        parts.append(f"CUDA {env['cuda']}")
    if env.get("triton") and env["device_type"] == "cuda":
        parts.append(f"triton {env['triton']}")
    parts += [f"commit {commit}", f"{s.get('scope')} run", env["date"]]
    return "; ".join(parts)


def _title(text: str, markdown: bool) -> str:
    return f"**{text}**\n\n" if markdown else f"\n{text}\n"


def report(results: dict, markdown: bool = False) -> str:
    """Every table of `results` (markdown: the README section, conditions first)."""
    s = results["settings"]
    used = f"Ghost-module providers: {', '.join(s.get('module_providers', []))}"
    if s.get("end_to_end_providers"):
        used += f"; end-to-end: {', '.join(s['end_to_end_providers'])}"
    parts = [("_" + conditions(results) + "_") if markdown else conditions(results), used]
    for part in [summary_table(results, markdown), *module_tables(results, markdown),
                 end_to_end_table(results, markdown), memory_table(results, markdown),
                 training_step_table(results, markdown)]:
        if part:
            parts.append(part)
    skipped = s.get("skipped") or []
    if skipped:
        parts.append("\n".join(("- " if markdown else "note: ") + s for s in skipped))
    return "\n\n".join(parts) + "\n"
