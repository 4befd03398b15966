"""The README's commands are the ones CI runs: `.ci/run` must contain the README's test command verbatim."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(setup)
    assert len(blocks) == 2, "the Set-up section has exactly two commands: the main job and the tests"
    main_job, test_command = blocks
    assert "python -m ghostkernels.bench" in main_job
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines, f".ci/run does not run the README's test command: {test_command!r}"


def test_readme_never_installs_an_unpinned_torch():
    # A bare `pip install torch` would pull a multi-GB CUDA build on a machine without torch, or replace the
    # installed one; the README installs the pinned local CPU build, and only where no torch is importable.
    readme = (ROOT / "README.md").read_text()
    for cmd in _bash_blocks(readme):
        for m in re.finditer(r"pip install ([^;&|\n]*)", cmd):
            args = m.group(1).split()
            assert "torch" not in args, f"unpinned torch install in the README: {m.group(0)!r}"
            if any(a.startswith("torch==") for a in args):
                assert 'python -c "import torch" 2>/dev/null ||' in cmd, "torch is installed only when missing"
