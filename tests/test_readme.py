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


def _documents() -> list[pathlib.Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _links(text: str) -> list[str]:
    # Inline markdown links and images, [text](target) / ![alt](target), outside code blocks and code spans.
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [m.group(1).split()[0] for m in re.finditer(r"\]\(([^)\s]+(?:\s+\"[^\"]*\")?)\)", text)]


def test_docs_exist():
    assert (ROOT / "docs").is_dir() and len(_documents()) > 1


def test_no_link_points_outside_the_repository():
    # Relative links stay inside the checkout (nothing like ../shared/...), and nothing names an absolute path.
    for doc in _documents():
        text = doc.read_text()
        for target in _links(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same file
            path = target.split("#", 1)[0]
            assert not path.startswith("/"), f"{doc.name}: absolute path {target!r}"
            resolved = (doc.parent / path).resolve()
            assert resolved.is_relative_to(ROOT), f"{doc.name}: {target!r} points outside the repository"
        for m in re.finditer(r"(?<![\w./])(?:\.\./)+[\w.-]+[\w./-]*", text):
            resolved = (doc.parent / m.group(0)).resolve()
            assert resolved.is_relative_to(ROOT), f"{doc.name}: {m.group(0)!r} points outside the repository"


def test_every_relative_link_resolves():
    for doc in _documents():
        for target in _links(doc.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)}: link {target!r} does not resolve ({path})"
