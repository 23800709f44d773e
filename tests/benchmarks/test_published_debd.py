"""benchmarks/published_debd.py: the published HCLT figures recomputed as display_results.jl
does, merged into circuits.json (docs/circuits.md quotes it: test_docs_quote_results.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # as tests/conftest.py's REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import published_debd  # noqa: E402

PREFIX = "logs_1_1_0_0_0"


def write_logs(root: Path, per_seed: dict[int, dict[str, str]]) -> Path:
    """Seed folders in the released layout: ``root/non-deterministic PCs/PREFIX_s/NAME.txt``."""
    for seed, files in per_seed.items():
        folder = root / "non-deterministic PCs" / f"{PREFIX}_{seed}"
        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / f"{name}.txt").write_text(text)
    return root


def test_last_line_test_value_mean_and_n_minus_1_sd(tmp_path):
    # The best validation (-1.0) is on the first line, so the last line differs from it.
    logs = {seed: {"toy": f"-9.0 -1.0 -3.0\n-8.0 -2.0 {test}\n"}
            for seed, test in zip((1, 2, 3), ("-5.0", "-6.0", "-10.0"), strict=True)}
    out = published_debd.recompute(write_logs(tmp_path, logs), PREFIX, (1, 2, 3))
    finals = np.array([-5.0, -6.0, -10.0])
    assert out["toy"]["per_seed"] == finals.tolist()
    assert out["toy"]["mean"] == pytest.approx(-7.0)
    assert out["toy"]["sd"] == pytest.approx(np.sqrt(((finals + 7.0) ** 2).sum() / 2))
    assert out["toy"]["n_seeds"] == 3
    assert out["toy"]["mean_test_at_best_valid_epoch"] == pytest.approx(-3.0)


def test_log_without_final_newline_is_refused(tmp_path):
    logs = {1: {"toy": "-1 -1 -1\n-2 -2 -2"}}
    with pytest.raises(ValueError, match=r"toy\.txt does not end with a newline"):
        published_debd.recompute(write_logs(tmp_path, logs), PREFIX, (1,))


def test_seed_folders_must_hold_the_same_datasets(tmp_path):
    logs = {1: {"a": "-1 -1 -1\n"}, 2: {"b": "-1 -1 -1\n"}}
    with pytest.raises(ValueError, match="hold different files"):
        published_debd.recompute(write_logs(tmp_path, logs), PREFIX, (1, 2))


def test_missing_seed_folder_is_named(tmp_path):
    write_logs(tmp_path, {1: {"a": "-1 -1 -1\n"}})
    with pytest.raises(FileNotFoundError, match=f"{PREFIX}_2"):
        published_debd.recompute(tmp_path, PREFIX, (1, 2))


def test_commit_must_be_a_full_hash(tmp_path):
    with pytest.raises(ValueError, match="commit: expected a 40-hex-digit"):
        published_debd.published_record(tmp_path, "05743c7")


def test_merge_fills_gap_keeps_other_keys_and_marks_unknown_datasets():
    published = {"source_repo": "r", "commit": "0" * 40, "folder": "f", "hyperparameters": "h",
                 "method": "m", "units": "u", "citation": "c",
                 "datasets": {"toy": {"mean": -7.0, "sd": 0.5, "n_seeds": 5}}}
    report = {"density_estimation": {
        "toy": {"test_log_likelihood": -7.25, "cirkit": {"test_log_likelihood": -8.0}},
        "other": {"test_log_likelihood": -1.0}}}
    out = published_debd.merge_published(report, published)["density_estimation"]
    assert out["toy"]["published"] == {"hclt_mean": -7.0, "hclt_sd": 0.5, "n_seeds": 5,
                                       "gap_ours_minus_published": -0.25}
    assert out["toy"]["cirkit"] == {"test_log_likelihood": -8.0}
    assert out["other"]["published"] is None


@pytest.fixture(scope="module")
def committed():
    results = REPO_ROOT / "benchmarks" / "results"
    return (json.loads((results / "published_debd.json").read_text()),
            json.loads((results / "circuits.json").read_text()))


def test_committed_figures_are_the_mean_and_sd_of_their_runs(committed):
    published, _ = committed
    assert re.fullmatch(r"[0-9a-f]{40}", published["commit"])
    assert published["source_repo"] == "UCLA-StarAI/Tractable-PC-Regularization"
    assert published["citation"] == published_debd.CITATION
    for name, row in published["datasets"].items():
        runs = np.array(row["per_seed"])
        assert row["n_seeds"] == runs.size == 5, name
        assert row["mean"] == pytest.approx(runs.mean(), abs=1e-12), name
        assert row["sd"] == pytest.approx(runs.std(ddof=1), rel=1e-9), name


def test_circuits_json_carries_the_committed_figures(committed):
    published, report = committed
    assert report["published_figures"]["commit"] == published["commit"]
    for name, row in report["density_estimation"].items():
        source = published["datasets"].get(name)
        if source is None:
            assert row["published"] is None, name
            continue
        assert row["published"]["hclt_mean"] == source["mean"], name
        assert row["published"]["gap_ours_minus_published"] == pytest.approx(
            row["test_log_likelihood"] - source["mean"], abs=1e-12), name
