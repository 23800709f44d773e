"""Tables in docs/ that report benchmark results are generated from the committed JSON, so a
re-run that changes the JSON without regenerating the docs fails here."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # as tests/conftest.py's REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))

# (docs page, results file, module in benchmarks/, the function that renders its table)
GENERATED_TABLES = [
    ("inference.md", "posteriordb.json", "bench_posteriordb", "markdown_table"),
    ("llm.md", "llm.json", "llm_bench", "results_markdown"),
    ("llm-server.md", "llm_server.json", "bench_llm_server", "overhead_table"),
    ("llm-server.md", "llm_server.json", "bench_llm_server", "throughput_table"),
    ("circuits.md", "circuits.json", "published_debd", "debd_table_markdown"),
    ("circuits.md", "circuits.json", "bench_circuits", "map_table_markdown"),
    ("circuits.md", "circuits.json", "bench_circuits", "throughput_table_markdown"),
    ("circuits.md", "circuits.json", "bench_circuits", "compile_table_markdown"),
    ("scaling.md", "scale.json", "bench_scale", "markdown_table"),
    ("smc.md", "smc.json", "bench_smc", "markdown_table"),
    ("flows.md", "flows.json", "bench_flows", "markdown_table"),
    ("pcn.md", "pcn.json", "bench_pcn", "markdown_table"),
    ("amortized.md", "amortized.json", "bench_amortized", "markdown_table"),
    ("pic.md", "pic.json", "bench_pic", "markdown_table"),
    ("vi-benchmarks.md", "vi.json", "bench_vi", "markdown_table"),
]


@pytest.mark.parametrize(("page", "results", "module", "function"), GENERATED_TABLES,
                         ids=[f"{row[1]}:{row[3]}" for row in GENERATED_TABLES])
def test_docs_table_is_the_committed_json_rendered(page, results, module, function):
    render = getattr(importlib.import_module(f"benchmarks.{module}"), function)
    table = render(json.loads((REPO_ROOT / "benchmarks" / "results" / results).read_text()))
    assert table.count("\n") >= 2, "the rendered table is empty"
    docs = (REPO_ROOT / "docs" / page).read_text()
    assert table in docs, (
        f"docs/{page} does not quote benchmarks/results/{results} as `{module}.{function}` renders "
        f"it: regenerate the table (python benchmarks/{module}.py --table or the function)")
