"""Packaging: one distribution, four import packages, a light `import probinf`."""

import subprocess
import sys
import tomllib

import pytest


def test_import_probinf_does_not_import_heavy_or_sibling_packages():
    code = (
        "import sys, probinf; "
        "bad = [m for m in ('torch', 'circuits', 'amortized', 'flows', 'transformers') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("package", ["probinf", "flows", "circuits", "amortized"])
def test_four_import_packages(package):
    __import__(package)


def test_ci_runs_exactly_the_readme_test_command(repo_root):
    readme = (repo_root / "README.md").read_text()
    command = 'pip install -e ".[test]" && pytest'
    assert command in readme
    assert command in (repo_root / ".ci" / "run").read_text().splitlines()


def test_runtime_dependencies_have_lower_bounds(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    names = {d.split(">=")[0].split("[")[0] for d in project["dependencies"]}
    assert {"jax", "numpyro", "blackjax", "optax", "equinox", "numpy", "arviz", "tqdm", "matplotlib"} <= names
    assert all(">=" in d for d in project["dependencies"])
    assert not any(heavy in " ".join(project["dependencies"]) for heavy in ("torch", "transformers"))
    assert {"llm", "test", "docs", "bench"} <= set(project["optional-dependencies"])
