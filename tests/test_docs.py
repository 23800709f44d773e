"""The documentation site builds with `mkdocs build --strict`."""

import importlib.util
import shutil
import subprocess
import sys

import pytest


@pytest.mark.docs
def test_mkdocs_build_strict(repo_root, tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("the docs extra is not installed: pip install -e '.[docs]'")
    mkdocs = shutil.which("mkdocs") or f"{sys.executable} -m mkdocs"
    out = subprocess.run(
        [*mkdocs.split(), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").exists()
