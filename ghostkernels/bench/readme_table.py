"""The README's results block, rendered from the committed results files (bench/results/*.json).

    python -m ghostkernels.bench.readme_table            # print the block
    python -m ghostkernels.bench.readme_table --write    # replace the block in README.md
    python -m ghostkernels.bench.readme_table --check    # exit 1 when README.md's block is not what the JSON gives

The block is everything between ``<!-- results:begin -->`` and ``<!-- results:end -->`` in README.md: per results
file (one per device), a conditions line, the Ghost-module table of one model (count-weighted geometric means from
the file's ``summary``, as in ``table.summary_table``), the end-to-end table of that model and a few lines of
figures read off the same records. Nothing here times anything or calls an op (importing the package still loads
the op library, unless GHOSTKERNELS_DEFER_LOAD=1); the full tables of a file are
``python -m ghostkernels.bench --markdown <file>`` (the ``<device>.md`` beside it).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence

from . import results as results_mod
from .table import MIB, _x, render

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
ROOT = pathlib.Path(__file__).resolve().parents[2]  # the source checkout this module runs from
MODEL = "ghostnet_100"  # the model of the README's tables (the targets are about GhostNet 1.0x)
_MODE_ORDER = {"forward": 0, "train": 1, "train-bn": 2}
_DTYPE_ORDER = {"float32": 0, "bfloat16": 1, "float16": 2, "float64": 3}


# ----------------------------------------------------------------------------------------------------------- names

def model_name(model: str) -> str:
    """ghostnet_100 -> "GhostNet 1.0x"."""
    width = model.removeprefix("ghostnet_")
    return f"GhostNet {int(width) / 100:.1f}x" if width.isdigit() else model


def _config(dtype: str, fmt: str) -> str:
    return dtype if fmt == "nchw" else f"{dtype} {fmt}"


def _short(commit: str | None, dirty: bool = False) -> str:
    return (commit or "unknown")[:7] + (" (dirty tree)" if dirty else "")


def _fused_backends(providers: Iterable[str]) -> list[str]:
    return sorted({p.removeprefix("fused-").split("+")[0].split("-")[0] for p in providers if p.startswith("fused-")})


def provider_name(provider: str, backends: Sequence[str] = ("cpu",)) -> str:
    """An end-to-end provider as the README names it: fused-cpu-frozen -> "fuse(model) + freeze"."""
    if provider == "eager":
        return "eager"
    if provider == "compile":
        return "torch.compile"
    if provider == "onnxruntime":
        return "ONNX Runtime"
    if provider == "openvino":
        return "OpenVINO"
    if not provider.startswith("fused-"):
        return provider
    rest = provider.removeprefix("fused-")
    backend = rest.split("+")[0].split("-")[0]
    suffix = rest[len(backend):]
    args = "model" if len(backends) <= 1 else f"model, backend={backend!r}"
    names = {"": f"fuse({args})", "-frozen": f"fuse({args}) + freeze", "-modules": f"fuse({args}, blocks=False)",
             "+compile": f"fuse({args}) + compile"}
    return names.get(suffix, provider)


# ------------------------------------------------------------------------------------------------------ run lookup

def _commits(results: dict, records: Iterable[dict]) -> str:
    """The commits of the runs that the records come from, oldest run first ("f92b250" or "f92b250, c374c43")."""
    runs = results.get("runs", {})
    ids = sorted({r["run_id"] for r in records if "run_id" in r})
    out = []
    for run_id in ids:
        git = (runs.get(run_id, {}).get("environment") or {}).get("git") or {}
        name = _short(git.get("commit"), bool(git.get("dirty")))
        if name not in out:
            out.append(name)
    return ", ".join(out) or "unknown"


def _memory_copy(results: dict) -> str | None:
    """The range of the memory-copy bandwidth measured at the start and end of every run in the file."""
    values = []
    for run in results.get("runs", {}).values():
        env = run.get("environment") or {}
        values += [env[k] for k in ("memory_copy_gbs_at_start", "memory_copy_gbs_at_end") if env.get(k) is not None]
    if not values:
        return None
    lo, hi = round(min(values)), round(max(values))
    return f"{lo} GB/s" if lo == hi else f"{lo}-{hi} GB/s"


# ---------------------------------------------------------------------------------------------------------- pieces

def heading(results: dict) -> str:
    env = results["environment"]
    if env["device_type"] == "cuda":
        what = f"GPU ({env['device_name']}, torch {env['torch']}, CUDA {env.get('cuda')})"
    else:
        isa = ", ".join([env.get("cpu_capability") or "?"] + list(env.get("cpu_bf16_extensions") or []))
        what = (f"CPU ({env['cpu_name']}, {env['cpu_cores']} cores, {isa}, torch {env['torch']}, "
                f"{env['threads']} threads)")
    return f"### Latest results: {what}"


def conditions(results: dict, path: str) -> str:
    """Where the figures come from: the file, the commit of each part, the machine's memory bandwidth."""
    md = path.removesuffix(".json") + ".md"
    parts = []
    by_mode = defaultdict(list)
    for r in results["module_cases"]:
        by_mode[r["mode"]].append(r)
    names = {"forward": "Ghost modules forward", "train": "forward+backward",
             "train-bn": "forward+backward with batch-statistics BN"}
    parts += [f"{names.get(mode, mode)} at {_commits(results, recs)}" for mode, recs in sorted(by_mode.items())]
    if results["end_to_end"]:
        parts.append(f"end to end at {_commits(results, results['end_to_end'])}")
    if results["training_memory"]:
        parts.append(f"training memory at {_commits(results, results['training_memory'])}")
    if results.get("training_step"):
        parts.append(f"training step at {_commits(results, results['training_step'])}")
    n = len(results.get("runs", {}))
    merged = f"{n} runs merged" if n > 1 else "one run"
    text = f"From [`{path}`]({path}) (every table, all widths: [`{md}`]({md})), {merged}: {'; '.join(parts)}."
    copy = _memory_copy(results)
    if copy:
        text += f" Memory copy {copy} at the runs' starts and ends."
    return text


def _row_order(s: dict) -> tuple:
    return (_MODE_ORDER.get(s["mode"], 9), _DTYPE_ORDER.get(s["dtype"], 9), s["dtype"], s["memory_format"],
            s["batch"], s["provider"])


def module_table(results: dict, model: str = MODEL) -> str | None:
    """Per (mode, dtype, batch): the fused providers' geometric means over the model's Ghost modules against eager
    and torch.compile, the shapes slower than eager, and torch.compile against eager. Forward rows at every batch,
    forward+backward rows at the largest batch only (the others are in the <device>.md)."""
    summary = [s for s in results["summary"] if s["model"] == model]
    fused = [s for s in summary if s["provider"].startswith("fused-")]
    if not fused:
        return None
    compile_ = {(s["mode"], s["batch"], s["dtype"], s["memory_format"]): s for s in summary
                if s["provider"] == "compile"}
    largest = defaultdict(int)
    for s in fused:
        largest[s["mode"]] = max(largest[s["mode"]], s["batch"])
    several = len({s["provider"] for s in fused}) > 1
    rows = []
    for s in sorted(fused, key=_row_order):
        if s["mode"] != "forward" and s["batch"] != largest[s["mode"]]:
            continue
        mode = {"forward": "forward", "train": "forward+backward (frozen BN)",
                "train-bn": "forward+backward (batch-statistics BN)"}.get(s["mode"], s["mode"])
        label = f"{mode}, {_config(s['dtype'], s['memory_format'])}, batch {s['batch']}"
        if several:
            label += f", {s['provider']}"
        slower = len(s["slower_than_eager"])
        shapes = f"{slower} of {s['shapes']}"
        if slower:
            shapes += f" (worst {_x(s['min_speedup_vs_eager'])})"
        c = compile_.get((s["mode"], s["batch"], s["dtype"], s["memory_format"]))
        rows.append([label, _x(s["geomean_speedup_vs_eager"]), _x(s["geomean_speedup_vs_compile"]), shapes,
                     _x(c["geomean_speedup_vs_eager"]) if c else "-"])
    headers = [f"Ghost modules, {model_name(model)}", "fused vs eager", "fused vs torch.compile",
               "shapes slower than eager", "torch.compile vs eager"]
    return render(headers, rows, markdown=True)


def _e2e(results: dict, model: str) -> tuple[list[dict], str | None]:
    """The model's end-to-end records in one dtype configuration: float32 NCHW where measured, else the first."""
    recs = [r for r in results["end_to_end"] if r["model"] == model and "median_ms" in r]
    configs = sorted({(r["dtype"], r["memory_format"]) for r in recs},
                     key=lambda c: (c != ("float32", "nchw"), _DTYPE_ORDER.get(c[0], 9), c))
    if not configs:
        return [], None
    dtype, fmt = configs[0]
    return [r for r in recs if (r["dtype"], r["memory_format"]) == (dtype, fmt)], _config(dtype, fmt)


def _provider_rank(provider: str) -> tuple[int, str]:
    """Column order of the end-to-end table: eager, fuse(model), + freeze, the ONNX peers, torch.compile, fuse(model)
    + compile, fuse(model, blocks=False), then anything else; fused backends by name. A fixed order, not the latest
    run's provider list: in a file that merges runs, a provider that the latest run did not time would otherwise move
    to the end."""
    if provider == "eager":
        return 0, ""
    if provider in ("onnxruntime", "openvino"):
        return (3 if provider == "onnxruntime" else 4), ""
    if provider == "compile":
        return 5, ""
    if provider.startswith("fused-"):
        backend = provider.removeprefix("fused-").split("+")[0].split("-")[0]
        if provider.endswith("+compile"):
            return 6, backend
        if provider.endswith("-frozen"):
            return 2, backend
        if provider.endswith("-modules"):
            return 7, backend
        return 1, backend
    return 8, provider


def _provider_order(providers: Iterable[str]) -> list[str]:
    return sorted(set(providers), key=lambda p: (_provider_rank(p), p))


def end_to_end_table(results: dict, model: str = MODEL) -> str | None:
    """One row per batch (batch 1: median ms; larger batches: images/s), one column per provider; the same
    roundings as the <device>.md's end-to-end table."""
    recs, config = _e2e(results, model)
    if not recs:
        return None
    providers = _provider_order(r["provider"] for r in recs)
    backends = _fused_backends(providers)
    by = {(r["batch"], r["provider"]): r for r in recs}
    rows = []
    for batch in sorted({r["batch"] for r in recs}):
        if batch == 1:
            cells = [f"{by[batch, p]['median_ms']:.2f}" if (batch, p) in by else "-" for p in providers]
            rows.append([f"batch {batch}, ms"] + cells)
        else:
            cells = [f"{by[batch, p]['images_per_s']:.0f}" if (batch, p) in by else "-" for p in providers]
            rows.append([f"batch {batch}, images/s"] + cells)
    title = f"end to end, {model}, {config} (at {_commits(results, recs)})"
    return render([title] + [provider_name(p, backends) for p in providers], rows, markdown=True)


def dtype_ratios(results: dict, model: str = MODEL, fast: str = "bfloat16", base: str = "float32") -> list[str]:
    """Per (mode, batch, fused provider): the fused provider's `fast` against its `base` timings of the same shapes,
    as a geometric mean weighted by the model's use of each shape (the summaries' weighting), and how many of the
    shapes were faster. Forward at every batch, forward+backward at the largest."""
    groups: dict[tuple, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in results["module_cases"]:
        if r["provider"].startswith("fused-") and "median_ms" in r and model in r.get("model_counts", {}):
            groups[(r["mode"], r["batch"], r["memory_format"], r["provider"])][r["label"]][r["dtype"]] = r
    largest = defaultdict(int)
    for mode, batch, _, _ in groups:
        largest[mode] = max(largest[mode], batch)
    out = []
    for (mode, batch, fmt, provider), shapes in sorted(groups.items(), key=lambda kv: (kv[0][0] != "forward",
                                                                                       -kv[0][1], kv[0][2:])):
        if mode != "forward" and batch != largest[mode]:
            continue
        pairs = [(d[base]["median_ms"] / d[fast]["median_ms"], d[base]["model_counts"][model])
                 for d in shapes.values() if base in d and fast in d]
        if not pairs:
            continue
        faster = sum(1 for v, _ in pairs if v > 1.0)
        what = {"forward": "forward", "train": "forward+backward",
                "train-bn": "forward+backward (batch-statistics BN)"}.get(mode, mode)
        out.append(f"{what} {_x(results_mod._geomean(pairs))} at batch {batch} (faster on {faster} of {len(pairs)} "
                   "shapes)")
    return out


def _joined(records: list[dict], field: str, spec: str) -> str:
    return " / ".join(format(r[field], spec) for r in records)


class _EndToEnd:
    """The end-to-end records of a file with one fused backend, looked up by (model, dtype, batch, provider)
    (NCHW only: the CPU's end-to-end format)."""

    def __init__(self, results: dict, backend: str):
        self.by = {(r["model"], r["dtype"], r["batch"], r["provider"]): r for r in results["end_to_end"]
                   if "median_ms" in r and r["memory_format"] == "nchw"}
        self.fused, self.frozen = f"fused-{backend}", f"fused-{backend}-frozen"
        self.models = sorted({k[0] for k in self.by})

    def get(self, model: str, dtype: str, batch: int, provider: str) -> dict | None:
        return self.by.get((model, dtype, batch, provider))

    def batches(self, model: str | None, dtype: str) -> list[int]:
        return sorted({k[2] for k in self.by if (model is None or k[0] == model) and k[1] == dtype})


def _against_eager_and_ort(e2e: _EndToEnd, model: str) -> str | None:
    """fuse(model) against eager, and fuse + freeze against ONNX Runtime, per batch (float32)."""
    vs_eager, vs_ort = [], []
    for batch in e2e.batches(model, "float32"):
        fused, frozen = e2e.get(model, "float32", batch, e2e.fused), e2e.get(model, "float32", batch, e2e.frozen)
        eager, ort = e2e.get(model, "float32", batch, "eager"), e2e.get(model, "float32", batch, "onnxruntime")
        if fused and eager:
            vs_eager.append(f"{eager['median_ms'] / fused['median_ms']:.1f}x at batch {batch}")
        if frozen and ort:
            notes = []
            if batch == 1:
                notes.append(f"{frozen['median_ms']:.2f} against {ort['median_ms']:.2f} ms, p20-p80 "
                             f"{frozen['p20_ms']:.2f}-{frozen['p80_ms']:.2f} against "
                             f"{ort['p20_ms']:.2f}-{ort['p80_ms']:.2f}")
            if fused:
                notes.append(f"fuse(model) alone {_x(ort['median_ms'] / fused['median_ms'])}")
            vs_ort.append(f"{_x(ort['median_ms'] / frozen['median_ms'])} at batch {batch}"
                          + (f" ({'; '.join(notes)})" if notes else ""))
    if not (vs_eager or vs_ort):
        return None
    line = f"- {model_name(model)}, float32: fuse(model) against eager {', '.join(vs_eager)}"
    if vs_ort:
        line += f"; fuse(model) + freeze against ONNX Runtime {', '.join(vs_ort)}"
    return line + "."


def _other_width(e2e: _EndToEnd, model: str) -> str | None:
    """fuse(model), + freeze and ONNX Runtime for a model outside the tables (float32)."""
    parts = []
    for batch in e2e.batches(model, "float32"):
        cells = [(name, e2e.get(model, "float32", batch, p)) for name, p in
                 (("fuse(model)", e2e.fused), ("+ freeze", e2e.frozen), ("ONNX Runtime", "onnxruntime"))]
        cells = [(name, r) for name, r in cells if r]
        if batch == 1:
            parts.append("batch 1 " + ", ".join(f"{name} {r['median_ms']:.2f}" for name, r in cells) + " ms")
        else:
            parts.append(f"batch {batch} " + ", ".join(f"{name} {r['images_per_s']:.0f}" for name, r in cells)
                         + " images/s")
    return f"- {model_name(model)}, float32: " + "; ".join(parts) + "." if parts else None


_OV_PRECISION = {"float32": "f32", "bfloat16": "bf16"}  # the dtypes' names in openvino_peer.PRECISIONS


def _against_openvino(e2e: _EndToEnd) -> str | None:
    """fuse + freeze against OpenVINO at the same precision (float32, bfloat16), per model and batch."""
    parts = []
    for model in e2e.models:
        cells = []
        for dtype in ("float32", "bfloat16"):
            for batch in e2e.batches(model, dtype):
                frozen, ov = e2e.get(model, dtype, batch, e2e.frozen), e2e.get(model, dtype, batch, "openvino")
                if frozen and ov:
                    # OpenVINO runs a bfloat16 hint in float32 on CPUs without bfloat16 instructions; say so.
                    took = ov.get("inference_precision")
                    fell_back = f" (OpenVINO ran {took})" if took and took != _OV_PRECISION[dtype] else ""
                    cells.append(f"{dtype} batch {batch} {_x(ov['median_ms'] / frozen['median_ms'])}{fell_back}")
        if cells:
            parts.append(f"{model_name(model)} " + ", ".join(cells))
    if not parts:
        return None
    return "- fuse(model) + freeze against OpenVINO at the same precision: " + "; ".join(parts) + "."


def _bfloat16_frozen(e2e: _EndToEnd) -> str | None:
    """fuse + freeze in bfloat16 against float32, every width side by side."""
    per_batch = []
    for batch in e2e.batches(None, "bfloat16"):
        bf = [e2e.get(m, "bfloat16", batch, e2e.frozen) for m in e2e.models]
        fp = [e2e.get(m, "float32", batch, e2e.frozen) for m in e2e.models]
        if not all(bf) or not all(fp):
            continue
        if batch == 1:
            per_batch.append(f"batch 1 {_joined(bf, 'median_ms', '.2f')} ms "
                             f"(float32 {_joined(fp, 'median_ms', '.2f')})")
        else:
            per_batch.append(f"batch {batch} {_joined(bf, 'images_per_s', '.0f')} images/s "
                             f"(float32 {_joined(fp, 'images_per_s', '.0f')})")
    if not per_batch:
        return None
    widths = " / ".join(model_name(m).removeprefix("GhostNet ") for m in e2e.models)
    return f"- bfloat16, fuse(model) + freeze ({widths}): " + ", ".join(per_batch) + "."


def _training_memory(results: dict, model: str) -> list[str]:
    mem = [r for r in results["training_memory"] if r["model"] == model and r["dtype"] == "float32"
           and "peak_bytes" in r]
    eager = {r["batch"]: r for r in mem if r["provider"] == "eager"}
    lines = []
    for r in mem:
        e = eager.get(r["batch"])
        if r["provider"].startswith("fused-") and e:
            ratio = r["saved_bytes_ghost"] / e["saved_bytes_ghost"]
            lines.append(
                f"- Training memory ({model_name(model)}, float32, batch {r['batch']}, one forward+backward): saved "
                f"for backward inside the Ghost modules {e['saved_bytes_ghost'] / MIB:.0f} MiB eager, "
                f"{r['saved_bytes_ghost'] / MIB:.0f} MiB fused ({ratio:.2f}x); "
                f"peak of the step {e['peak_bytes'] / MIB:.0f} and {r['peak_bytes'] / MIB:.0f} MiB.")
    return lines


def _training_step(results: dict, model: str) -> list[str]:
    """The whole training step with batch-statistics BN: time and memory of fused and compile against eager."""
    recs = [r for r in results.get("training_step", []) if r["model"] == model and "median_ms" in r]
    eager = {(r["batch"], r["dtype"]): r for r in recs if r["provider"] == "eager"}
    lines = []
    for r in recs:
        e = eager.get((r["batch"], r["dtype"]))
        if r["provider"] == "eager" or e is None:
            continue
        line = (f"- Training step with batch-statistics BN ({model_name(model)}, {r['dtype']}, batch {r['batch']}, "
                f"forward+backward): {provider_name(r['provider'])} {r['median_ms']:.0f} ms against eager "
                f"{e['median_ms']:.0f} ms ({_x(e['median_ms'] / r['median_ms'])}); peak {r['peak_bytes'] / MIB:.0f} "
                f"against {e['peak_bytes'] / MIB:.0f} MiB")
        if r.get("saved_bytes_ghost") is not None and e.get("saved_bytes_ghost"):
            line += (f"; activation memory of the Ghost modules {r['saved_bytes_ghost'] / MIB:.0f} against "
                     f"{e['saved_bytes_ghost'] / MIB:.0f} MiB ({r['saved_bytes_ghost'] / e['saved_bytes_ghost']:.2f}x)")
        lines.append(line + ".")
    return lines


def figure_lines(results: dict, model: str = MODEL) -> list[str]:
    """The figures the tables leave out, as markdown list items: dtype ratios of the fused Ghost modules, fused
    against eager and ONNX Runtime end to end, the other widths, bfloat16 end to end, training memory. The
    end-to-end lines need a file with one fused backend (a CPU file)."""
    lines = []
    ratios = dtype_ratios(results, model)
    if ratios:
        lines.append(f"- bfloat16 against float32, fused Ghost modules of {model_name(model)}: " + ", ".join(ratios)
                     + ".")
    backends = _fused_backends(r["provider"] for r in results["end_to_end"])
    if len(backends) == 1:
        e2e = _EndToEnd(results, backends[0])
        lines += [line for line in (_against_eager_and_ort(e2e, model),
                                    *(_other_width(e2e, m) for m in e2e.models if m != model),
                                    _bfloat16_frozen(e2e), _against_openvino(e2e)) if line]
    return lines + _training_memory(results, model) + _training_step(results, model)


def render_results(results: dict, path: str, model: str = MODEL) -> str:
    """The README section of one results file (`path`: its name relative to the repository root)."""
    parts = [heading(results), conditions(results, path)]
    for table in (module_table(results, model), end_to_end_table(results, model)):
        if table:
            parts.append(table)
    lines = figure_lines(results, model)
    if lines:
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def results_files(results_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(results_dir.glob("*.json"))


def render_block(results_dir: pathlib.Path = ROOT / "bench" / "results", root: pathlib.Path = ROOT) -> str:
    """The whole block between the markers (markers excluded): one section per results file, by file name."""
    sections = []
    for f in results_files(results_dir):
        rel = f.resolve().relative_to(root.resolve()).as_posix() if f.resolve().is_relative_to(root.resolve()) \
            else f.name
        sections.append(render_results(results_mod.load(str(f)), rel))
    if not sections:
        sections.append(f"No results files in `{results_dir}` yet.")
    return "\n\n".join(sections)


def replace_block(text: str, block: str) -> str:
    """`text` with everything between the markers replaced by `block` (one blank line each side)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the README must hold exactly one {BEGIN} ... {END} pair, in that order")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{block.strip()}\n\n{END}{tail}"


def current_block(text: str) -> str:
    """The block as it stands between the markers of `text`."""
    replace_block(text, "")  # validates the markers
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ghostkernels.bench.readme_table", description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 when the README's block is not current")
    mode.add_argument("--write", action="store_true", help="replace the README's block")
    p.add_argument("--readme", type=pathlib.Path, default=ROOT / "README.md")
    p.add_argument("--results", type=pathlib.Path, default=ROOT / "bench" / "results",
                   help="folder of the results JSON files (default: bench/results of this checkout)")
    args = p.parse_args(argv)
    root = args.readme.resolve().parent
    block = render_block(args.results, root)
    if not (args.check or args.write):
        print(block)
        return 0
    text = args.readme.read_text()
    if args.check:
        if current_block(text) != block.strip():
            print(f"{args.readme}: the results block is not what {args.results}/*.json gives; run "
                  "`python -m ghostkernels.bench.readme_table --write`", file=sys.stderr)
            return 1
        return 0
    new = replace_block(text, block)
    if new != text:
        args.readme.write_text(new)
        print(f"{args.readme}: results block rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
