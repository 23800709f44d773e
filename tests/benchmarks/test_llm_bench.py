"""benchmarks/llm_bench.py: the LLM benchmark's summaries (paired tests, reward
diagnostics), and the docs' tables quoted verbatim from the committed results."""

import json
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

REPO_ROOT = Path(__file__).resolve().parents[2]  # as tests/conftest.py's REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.llm_bench import _paired, results_markdown, reward_diagnostics, summarize  # noqa: E402


def _baseline(problem, correct, log_odds, answers):
    return {"stage": "baseline", "problem": problem,
            "greedy": {"correct": False, "budget": {"tokens": 1, "total_seconds": 1.0}},
            "samples": {"correct": correct, "log_odds": log_odds, "answers": answers, "tokens": [1] * len(correct),
                        "total_seconds": 1.0}}


def test_paired_test_is_the_exact_one_sided_mcnemar():
    # Best-of-2 picks the higher log-odds sample; the method is right where marked.
    records, wins, losses = [], 0, 0
    for i in range(12):
        bon_right = i % 3 == 0
        method_right = i % 2 == 0
        records.append(_baseline(i, [bon_right, not bon_right], [1.0, 0.0], ["1", "2"]))
        records.append({"stage": "particle_filter:2", "problem": i, "method": "particle_filter", "n": 2,
                        "correct": method_right})
        wins += method_right and not bon_right
        losses += bon_right and not method_right
    baseline = {r["problem"]: r for r in records if r["stage"] == "baseline"}
    out = _paired(records, baseline, "particle_filter", 2)
    assert (out["method_only_correct"], out["best_of_n_only_correct"]) == (wins, losses)
    assert out["mcnemar_p_one_sided"] == pytest.approx(stats.binomtest(wins, wins + losses, alternative="greater").pvalue)


def test_reward_auc_counts_ties_half():
    records = [_baseline(0, [True, False, False], [2.0, 2.0, -1.0], ["5", "6", "7"])]
    out = reward_diagnostics(records)
    assert out["auc"] == pytest.approx((0.5 + 1.0) / 2)        # tie with one wrong, above the other
    assert out["correct_with_top_score"] == pytest.approx(0.5)  # two samples share the top score


def test_best_of_n_from_shared_samples_and_coverage():
    problems = [{"answer": "5"}, {"answer": "7"}]
    records = [_baseline(0, [False, True], [0.0, 3.0], ["4", "5"]), _baseline(1, [False, False], [1.0, 0.0], ["1", "2"])]
    table = summarize(records, problems, [1, 2])
    assert table["best_of_n"]["2"]["accuracy"] == 0.5
    assert table["best_of_n"]["2"]["coverage"] == 0.5
    assert table["best_of_n"]["1"]["accuracy"] == 0.0
    assert math.isclose(table["best_of_n"]["2"]["stderr"], math.sqrt(0.25 / 2))


def test_docs_quote_the_committed_results(repo_root):
    result = json.loads((repo_root / "benchmarks" / "results" / "llm.json").read_text())
    docs = (repo_root / "docs" / "llm.md").read_text()
    assert results_markdown(result) in docs
