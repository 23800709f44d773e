"""The example notebooks are committed with the outputs of a clean top-to-bottom run, and every
one of them still runs top to bottom in quick mode (PROBINF_QUICK=1).

Refresh a notebook's outputs with a full (not quick) run, from ``examples/``::

    jupyter nbconvert --to notebook --execute --inplace NAME.ipynb \
        --ExecutePreprocessor.timeout=900 --ExecutePreprocessor.record_timing=False
"""

import json
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

NOTEBOOKS = sorted((REPO_ROOT / "examples").glob("*.ipynb"))

# GitHub renders a notebook up to a few MB; embedded PNGs keep ours well below that.
MAX_NOTEBOOK_BYTES = 1_500_000
# Widget views render as raw JSON outside a live kernel.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def test_there_are_notebooks():
    assert NOTEBOOKS, "examples/ holds no notebook"


def _output_text(output):
    """Every string an output holds: stream text, MIME payloads, error name/value/traceback."""
    if output["output_type"] == "stream":
        parts = [output["text"]]
    elif output["output_type"] == "error":
        parts = [output["ename"], output["evalue"], *output["traceback"]]
    else:
        parts = list(output.get("data", {}).values())
    return "".join("".join(p) if isinstance(p, list) else str(p) for p in parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs_come_from_one_clean_run(path):
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    notebook = json.loads(path.read_text())
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all("".join(c["source"]).strip() for c in code_cells), f"{path.name}: empty code cell"
    counts = [c.get("execution_count") for c in code_cells]
    assert counts == list(range(1, len(code_cells) + 1)), (
        f"{path.name}: execution counts {counts}, expected 1..{len(code_cells)} (rerun top to bottom)"
    )
    for number, cell in enumerate(code_cells, start=1):
        # Per-cell timestamps would make every re-run a diff of its own.
        assert "execution" not in cell.get("metadata", {}), f"{path.name}: timing metadata"
        for output in cell.get("outputs", []):
            where = f"{path.name}, code cell {number}"
            assert output["output_type"] != "error", f"{where}: error output {output.get('ename')}"
            text = _output_text(output)
            assert "Traceback" not in text, f"{where}: a traceback in the output"
            assert "/work/" not in text, f"{where}: a local path in the output"
            assert WIDGET_MIME not in output.get("data", {}), f"{where}: a widget output"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    committed = path.read_bytes()
    notebook = nbformat.read(path, as_version=4)
    # The kernel inherits this environment; monkeypatch keeps it out of later tests.
    monkeypatch.setenv("PROBINF_QUICK", "1")
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    # Only the in-memory copy ran: the committed full-mode outputs are left as they are.
    assert path.read_bytes() == committed
