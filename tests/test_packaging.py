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


def test_license_and_publish_metadata(repo_root):
    # PEP 639: an SPDX expression, the license text shipped, no license classifier beside it.
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (repo_root / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert not any(c.startswith("License ::") for c in project["classifiers"])
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    assert any(r.startswith("setuptools>=77") for r in pyproject["build-system"]["requires"])
    readthedocs = (repo_root / ".readthedocs.yaml").read_text()
    assert "mkdocs.yml" in readthedocs and "- docs" in readthedocs


def test_the_real_model_tests_run_in_ci_with_the_llm_extra(repo_root):
    # The test extra leaves out llama.cpp (a source build) so the README's install stays
    # fast; the tests that need it skip there and CI runs them in a step with the extra.
    extras = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(d.startswith(("llama-cpp-python", "torch")) for d in extras["test"])
    assert any(d.startswith("llama-cpp-python") for d in extras["llm"])
    ci = (repo_root / ".ci" / "run").read_text().splitlines()
    assert ci.index('pip install -e ".[test,llm]"') < ci.index("pytest -m llm_extra")
    options = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(marker.startswith("llm_extra:") for marker in options["markers"])


def test_ci_executes_the_notebooks_that_the_default_run_leaves_out(repo_root):
    options = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m 'not notebooks'" in options["addopts"]
    assert "pytest -m notebooks tests/test_notebooks.py" in (repo_root / ".ci" / "run").read_text().splitlines()
