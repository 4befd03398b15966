"""The README's results block is rendered from the committed bench/results/*.json (ghostkernels.bench.readme_table):
editing one without the other fails here. Then the renderer on a small synthetic results dict."""

import pathlib

import pytest

from ghostkernels.bench import readme_table, results

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_block_is_what_the_committed_json_gives():
    readme = (ROOT / "README.md").read_text()
    expected = readme_table.render_block(ROOT / "bench" / "results", ROOT)
    assert readme_table.current_block(readme) == expected.strip(), (
        "README.md's results block differs from bench/results/*.json: "
        "run `python -m ghostkernels.bench.readme_table --write`")


def test_check_command_agrees(capsys):
    assert readme_table.main(["--check", "--readme", str(ROOT / "README.md"),
                              "--results", str(ROOT / "bench" / "results")]) == 0


# ------------------------------------------------------------------------------------------- synthetic results

def _env(date: str, commit: str, copy: float) -> dict:
    return {"device_type": "cpu", "device_name": "Test CPU", "device_slug": "cpu-test-2c", "cpu_name": "Test CPU",
            "cpu_cores": 2, "cpu_capability": "AVX512", "threads": 2, "torch": "9.9.9+cpu",
            "git": {"commit": commit, "dirty": False}, "date": date, "memory_copy_gbs_at_start": copy,
            "memory_copy_gbs_at_end": copy + 10}


def _module(label, mode, batch, dtype, provider, ms, counts):
    return {"shape": {"label": label}, "label": label, "model_counts": counts, "mode": mode, "batch": batch,
            "dtype": dtype, "memory_format": "nchw", "provider": provider, "median_ms": ms, "p20_ms": ms * 0.9,
            "p80_ms": ms * 1.1}


def _e2e(model, batch, dtype, provider, ms):
    return {"model": model, "resolution": 224, "batch": batch, "dtype": dtype, "memory_format": "nchw",
            "provider": provider, "median_ms": ms, "p20_ms": ms - 0.1, "p80_ms": ms + 0.1,
            "images_per_s": 1000.0 * batch / ms}


@pytest.fixture
def synthetic() -> dict:
    settings = {"scope": "full", "end_to_end_providers": ["eager", "compile", "fused-cpu", "fused-cpu-frozen",
                                                          "onnxruntime"]}
    res = results.new_results(_env("2000-01-01T00:00:00+00:00", "a" * 40, 30.0), settings)
    # Shape A used twice by the model, shape B once: the geometric means weight A twice.
    counts_a, counts_b = {"ghostnet_100": 2}, {"ghostnet_100": 1}
    recs = []
    for dtype, scale in (("float32", 1.0), ("bfloat16", 0.5)):
        for batch in (1, 8):
            recs += [_module("A", "forward", batch, dtype, "eager", 4.0 * scale, counts_a),
                     _module("A", "forward", batch, dtype, "compile", 2.0 * scale, counts_a),
                     _module("A", "forward", batch, dtype, "fused-cpu", 1.0 * scale, counts_a),
                     _module("B", "forward", batch, dtype, "eager", 1.0 * scale, counts_b),
                     _module("B", "forward", batch, dtype, "compile", 1.0 * scale, counts_b),
                     _module("B", "forward", batch, dtype, "fused-cpu", 2.0 * scale, counts_b)]
    results.add_records(res, "module_cases", recs)
    # A second run: the training cases, at batches 1 and 8 (only the largest reaches the README's table).
    second = results.new_results(_env("2000-01-02T00:00:00+00:00", "b" * 40, 40.0), settings)
    train = []
    for batch in (1, 8):
        train += [_module("A", "train", batch, "float32", "eager", 3.0, counts_a),
                  _module("A", "train", batch, "float32", "compile", 3.0, counts_a),
                  _module("A", "train", batch, "float32", "fused-cpu", 1.5, counts_a)]
    results.add_records(second, "module_cases", train)
    results.add_records(second, "end_to_end", [
        _e2e("ghostnet_100", 1, "float32", "eager", 10.0), _e2e("ghostnet_100", 1, "float32", "compile", 5.0),
        _e2e("ghostnet_100", 1, "float32", "fused-cpu", 3.0),
        _e2e("ghostnet_100", 1, "float32", "fused-cpu-frozen", 2.0),
        _e2e("ghostnet_100", 1, "float32", "onnxruntime", 2.5), _e2e("ghostnet_100", 8, "float32", "eager", 80.0),
        _e2e("ghostnet_100", 8, "float32", "fused-cpu", 20.0)])
    return results.merge(results.finalize(res), second)


def test_module_table_weights_shapes_by_use(synthetic):
    table = readme_table.module_table(synthetic).splitlines()
    assert table[0] == ("| Ghost modules, GhostNet 1.0x | fused vs eager | fused vs torch.compile | "
                        "shapes slower than eager | torch.compile vs eager |")
    # fused vs eager: A 4x (weight 2), B 0.5x (weight 1): (4 * 4 * 0.5) ** (1/3) = 2.0; vs compile: (2*2*0.5)^(1/3).
    assert table[2] == "| forward, float32, batch 1 | 2.00x | 1.26x | 1 of 2 (worst 0.50x) | 1.59x |"
    assert table[3].startswith("| forward, float32, batch 8 |")
    assert table[4].startswith("| forward, bfloat16, batch 1 |")
    # forward+backward: the largest batch only.
    assert table[-1] == "| forward+backward (frozen BN), float32, batch 8 | 2.00x | 2.00x | 0 of 1 | 1.00x |"
    assert len(table) == 2 + 4 + 1


def test_end_to_end_table(synthetic):
    table = readme_table.end_to_end_table(synthetic).splitlines()
    assert table[0] == ("| end to end, ghostnet_100, float32 (at bbbbbbb) | eager | fuse(model) | fuse(model) + freeze | "
                        "ONNX Runtime | torch.compile |")
    assert table[2] == "| batch 1, ms | 10.00 | 3.00 | 2.00 | 2.50 | 5.00 |"
    assert table[3] == "| batch 8, images/s | 100 | 400 | - | - | - |"


def test_end_to_end_columns_keep_their_order_when_the_latest_run_lacks_a_provider(synthetic):
    # A file that merges runs: the latest run timed no ONNX Runtime; its column stays where it was.
    synthetic["settings"]["end_to_end_providers"] = ["eager", "fused-cpu-frozen", "fused-cpu", "compile"]
    header = readme_table.end_to_end_table(synthetic).splitlines()[0]
    assert header.endswith("| eager | fuse(model) | fuse(model) + freeze | ONNX Runtime | torch.compile |")


def test_conditions_name_every_run(synthetic):
    text = readme_table.conditions(synthetic, "bench/results/cpu-test-2c.json")
    assert "[`bench/results/cpu-test-2c.json`](bench/results/cpu-test-2c.json)" in text
    assert "[`bench/results/cpu-test-2c.md`](bench/results/cpu-test-2c.md)" in text
    assert "Ghost modules forward at aaaaaaa" in text and "forward+backward at bbbbbbb" in text
    assert "end to end at bbbbbbb" in text and "Memory copy 30-50 GB/s" in text
    assert readme_table.heading(synthetic) == (
        "### Latest results: CPU (Test CPU, 2 cores, AVX512, torch 9.9.9+cpu, 2 threads)")


def test_figure_lines(synthetic):
    lines = readme_table.figure_lines(synthetic)
    # bfloat16 is twice as fast on every shape in the synthetic forward cases.
    assert lines[0] == ("- bfloat16 against float32, fused Ghost modules of GhostNet 1.0x: forward 2.00x at batch 8 "
                        "(faster on 2 of 2 shapes), forward 2.00x at batch 1 (faster on 2 of 2 shapes).")
    assert lines[1] == ("- GhostNet 1.0x, float32: fuse(model) against eager 3.3x at batch 1, 4.0x at batch 8; "
                        "fuse(model) + freeze against ONNX Runtime 1.25x at batch 1 (2.00 against 2.50 ms, p20-p80 "
                        "1.90-2.10 against 2.40-2.60; fuse(model) alone 0.83x).")
    assert len(lines) == 2


def test_provider_names():
    assert readme_table.provider_name("fused-cpu-modules") == "fuse(model, blocks=False)"
    assert readme_table.provider_name("fused-cpu+compile") == "fuse(model) + compile"
    assert readme_table.provider_name("openvino") == "OpenVINO"
    assert readme_table.provider_name("fused-triton", ["cuda", "triton"]) == "fuse(model, backend='triton')"
    assert readme_table.model_name("ghostnet_050") == "GhostNet 0.5x"


def test_replace_block_and_check(tmp_path, synthetic):
    text = f"intro\n\n{readme_table.BEGIN}\nold figures\n{readme_table.END}\n\nrest\n"
    new = readme_table.replace_block(text, "new figures\n")
    assert new == f"intro\n\n{readme_table.BEGIN}\n\nnew figures\n\n{readme_table.END}\n\nrest\n"
    assert readme_table.current_block(new) == "new figures"
    with pytest.raises(ValueError):
        readme_table.replace_block("no markers here", "x")
    with pytest.raises(ValueError):
        readme_table.replace_block(f"{readme_table.END} {readme_table.BEGIN}", "x")

    # The CLI on a scratch checkout: --check fails on a stale block, --write fixes it, then --check passes.
    (tmp_path / "bench" / "results").mkdir(parents=True)
    results.save(synthetic, str(tmp_path / "bench" / "results" / "cpu-test-2c.json"))
    readme = tmp_path / "README.md"
    readme.write_text(text)
    argv = ["--readme", str(readme), "--results", str(tmp_path / "bench" / "results")]
    assert readme_table.main(["--check", *argv]) == 1
    assert readme_table.main(["--write", *argv]) == 0
    assert readme_table.main(["--check", *argv]) == 0
    block = readme_table.current_block(readme.read_text())
    assert block.startswith("### Latest results: CPU (Test CPU")
    assert "(bench/results/cpu-test-2c.json)" in block


def test_several_fused_providers_are_named(synthetic):
    # A GPU file has fused-cuda and fused-triton: each gets its own rows and end-to-end columns.
    for section in ("module_cases", "end_to_end"):
        extra = [dict(r, provider=r["provider"].replace("fused-cpu", "fused-triton"))
                 for r in synthetic[section] if r["provider"].startswith("fused-cpu")]
        synthetic[section] = [dict(r, provider=r["provider"].replace("fused-cpu", "fused-cuda"))
                              for r in synthetic[section]] + extra
    synthetic["settings"]["end_to_end_providers"] = None
    res = results.finalize(synthetic)
    table = readme_table.module_table(res)
    assert "| forward, float32, batch 1, fused-cuda |" in table
    assert "| forward, float32, batch 1, fused-triton |" in table
    e2e = readme_table.end_to_end_table(res).splitlines()[0]
    assert "fuse(model, backend='cuda')" in e2e and "fuse(model, backend='triton') + freeze" in e2e
    assert readme_table.render_results(res, "bench/results/x.json")


def test_openvino_line_compares_each_precision_with_its_own():
    def rec(dtype, batch, provider, ms):
        return {"model": "ghostnet_100", "dtype": dtype, "batch": batch, "provider": provider, "median_ms": ms,
                "memory_format": "nchw", "images_per_s": batch * 1000 / ms}

    results = {"end_to_end": [rec("float32", 1, "fused-cpu-frozen", 4.0), rec("float32", 1, "openvino", 5.0),
                              rec("bfloat16", 1, "fused-cpu-frozen", 4.0), rec("bfloat16", 1, "openvino", 8.0)]}
    line = readme_table._against_openvino(readme_table._EndToEnd(results, "cpu"))
    assert line == ("- fuse(model) + freeze against OpenVINO at the same precision: GhostNet 1.0x float32 batch 1 "
                    "1.25x, bfloat16 batch 1 2.00x.")
    assert readme_table._against_openvino(readme_table._EndToEnd({"end_to_end": results["end_to_end"][:1]},
                                                                  "cpu")) is None
