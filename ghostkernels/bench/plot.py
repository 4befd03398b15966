"""PNG plot of a results dict: speedup over eager (log scale) per shape and provider, one panel per
mode/dtype/batch, plus one end-to-end panel per dtype. matplotlib (Agg backend, no display needed) is an optional
dependency: `pip install 'ghostkernels[bench]'`.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict

from .table import conditions


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install matplotlib)"
    return None


def _panels(results: dict) -> list[tuple[str, list[str], dict[str, list[float]]]]:
    """(title, x labels, {provider: speedups aligned with the labels}) per panel; nan where a value is missing."""
    panels = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results["module_cases"]:
        groups[(r["mode"], r["dtype"], r["memory_format"], r["batch"])].append(r)
    for (mode, dtype, fmt, batch), recs in groups.items():
        labels = list(dict.fromkeys(r["label"] for r in recs))
        by = {(r["label"], r["provider"]): r.get("speedup_vs_eager", float("nan")) for r in recs}
        providers = sorted({r["provider"] for r in recs} - {"eager"})
        panels.append((f"Ghost modules: {mode}, {dtype} {fmt}, batch {batch}", labels,
                       {p: [by.get((lab, p), float("nan")) for lab in labels] for p in providers}))
    e2e: dict[tuple, list[dict]] = defaultdict(list)
    for r in results["end_to_end"]:
        e2e[(r["dtype"], r["memory_format"])].append(r)
    for (dtype, fmt), recs in e2e.items():
        labels = list(dict.fromkeys(f"{r['model']} b{r['batch']}" for r in recs))
        by = {(f"{r['model']} b{r['batch']}", r["provider"]): r.get("speedup_vs_eager", float("nan")) for r in recs}
        providers = sorted({r["provider"] for r in recs} - {"eager"})
        panels.append((f"End-to-end: {dtype} {fmt}", labels,
                       {p: [by.get((lab, p), float("nan")) for lab in labels] for p in providers}))
    return panels


def plot(results: dict, path: str) -> str:
    """Write the PNG to `path` and return it; raises RuntimeError when matplotlib is missing."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"ghostkernels.bench: cannot plot: {reason}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = _panels(results)
    if not panels:
        raise ValueError("ghostkernels.bench: nothing to plot (no timed cases in the results)")
    # One colour per provider in every panel (matplotlib's cycle would restart per panel, so a provider missing from
    # one panel, e.g. ONNX Runtime in bfloat16, shifted the others' colours there).
    every = sorted({p for _, _, series in panels for p in series})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {p: palette[i % len(palette)] for i, p in enumerate(every)}
    width = max(8.0, 0.32 * max(len(labels) for _, labels, _ in panels) + 2)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.6 * len(panels)), squeeze=False)
    for ax, (title, labels, series) in zip(axes[:, 0], panels):
        n = max(len(series), 1)
        bar = 0.8 / n
        for i, (provider, values) in enumerate(sorted(series.items())):
            xs = [j + (i - (n - 1) / 2) * bar for j in range(len(labels))]
            # Bars grow from 1x (up: faster than eager, down: slower), not from the bottom of the log axis.
            ax.bar(xs, [v - 1.0 for v in values], bottom=1.0, width=bar, label=provider, color=colour[provider])
        ax.axhline(1.0, color="black", linewidth=0.8)
        # Speedups are ratios: a log axis shows 0.5x and 2x equally far from 1x.
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _: f"{v:,.0f}x" if v >= 10 else f"{v:.3g}x"))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7)
        ax.set_ylabel("speedup over eager")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(conditions(results), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
