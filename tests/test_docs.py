"""Every document a file of this repository cites (an upper-case name ending in .md, with or without a
folder) is in the repository, so no reference points at notes a reader cannot open."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"(?<![\w.-])(?:[\w.-]+/)*[A-Z][A-Z0-9_-]*\.md\b")


def test_every_cited_markdown_file_resolves_inside_the_repository():
    files = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.sh", "*.toml", ".ci/*"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    missing = []
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        for cited in set(CITED.findall(path.read_text(errors="replace"))):
            if cited.startswith(("http", "www.")) or "<" in cited:
                continue
            if not ((ROOT / cited).exists() or (path.parent / cited).exists()):
                missing.append(f"{name}: {cited}")
    assert not missing, "cited but not in the repository: " + ", ".join(sorted(missing))


def test_the_readme_constraint_keeps_the_installed_torch(tmp_path):
    """The first line of the README's recipe for a machine with a CUDA torch pins the torch that is there."""
    import importlib.metadata
    import os
    import sys
    line = next(ln.strip() for ln in (ROOT / "README.md").read_text().splitlines()
                if ln.strip().startswith("pip list --format=freeze"))
    assert line.endswith("> keep-torch.txt")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, check=True)
    pins = (tmp_path / "keep-torch.txt").read_text().split()
    assert f"torch=={importlib.metadata.version('torch')}" in pins
