"""Every Python block of the README runs as written, each in a fresh process.

Iteration counts are capped (``steps=``, ``epochs=``, ``num_epochs=``) so the suite stays
short: the blocks are checked to be complete (they define and import what they use, and
read only data that ships with the package) and to print what they claim, not to converge.
They run from an empty folder, so nothing beside the checkout (``../shared``) is reachable.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
CAP = 40


def _blocks():
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        heading = re.findall(r"^#+ (.*)$", text[: match.start()], flags=re.M)[-1]
        blocks.append(pytest.param(match.group(1), id=re.sub(r"\W+", "-", heading).strip("-").lower()))
    return blocks


BLOCKS = _blocks()


def _capped(code: str) -> str:
    code = re.sub(r"\bsteps=(\d+)", lambda m: f"steps={min(int(m.group(1)), CAP)}", code)
    return re.sub(r"\b(num_epochs|epochs)=(\d+)", lambda m: f"{m.group(1)}={min(int(m.group(2)), 2)}", code)


def test_the_readme_has_a_block_per_part():
    names = " ".join(p.id for p in BLOCKS)
    for part in ("variational", "infer", "flows", "sequential", "circuits", "integral", "transformers",
                 "llm", "predictive"):
        assert part in names, (part, names)


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS)
def test_readme_block_runs_as_written(code, tmp_path):
    if "from probinf import llm" in code and importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the LLM block needs the `llm` extra (llama-cpp-python)")
    env = {**os.environ, "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _capped(code)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    if "print(" in code:
        assert out.stdout.strip(), "the block prints nothing"
