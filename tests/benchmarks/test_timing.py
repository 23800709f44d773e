"""benchmarks/timing.py (round-robin timer) and benchmarks/results_io.py (incremental JSON)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import results_io, timing  # noqa: E402


def recording(calls: list, name: str, sleep_s: float = 0.0):
    def fn():
        calls.append(name)
        if sleep_s:
            time.sleep(sleep_s)
    return fn


def test_calls_alternate_with_rotated_order_and_warmups_excluded():
    calls = []
    names = ["a", "b", "c"]
    result = timing.compare({n: recording(calls, n) for n in names}, rounds=7, warmup=2,
                            block_until_ready=False)
    # 2 warm-up + 7 timed rounds of one call each, rotated by one place every round.
    expected = [n for r in range(9) for n in names[r % 3:] + names[:r % 3]]
    assert calls == expected
    assert result["order"] == [names[r % 3:] + names[:r % 3] for r in range(2, 9)]
    for n in names:
        assert len(result["contenders"][n]["times_s"]) == 7
    # every contender goes first in some round
    assert {order[0] for order in result["order"]} == set(names)


def test_warmup_call_is_not_timed():
    slow_first = {"count": 0}

    def contender():
        slow_first["count"] += 1
        time.sleep(0.3 if slow_first["count"] == 1 else 0.0)

    result = timing.compare({"x": contender}, rounds=7, warmup=1, block_until_ready=False)
    assert slow_first["count"] == 8
    assert result["contenders"]["x"]["max_s"] < 0.1


def test_statistics_and_ratio_of_known_durations():
    calls = []
    result = timing.compare({"fast": recording(calls, "fast", 0.01),
                             "slow": recording(calls, "slow", 0.04)},
                            rounds=7, warmup=0, ratios=[("slow", "fast"), ("fast", "slow")],
                            block_until_ready=False)
    fast, slow = result["contenders"]["fast"], result["contenders"]["slow"]
    assert fast["min_s"] >= 0.01 and slow["min_s"] >= 0.04
    assert fast["min_s"] <= fast["median_s"] <= fast["max_s"]
    times = sorted(slow["times_s"])
    assert slow["median_s"] == times[3]
    assert slow["relative_range"] == pytest.approx((times[-1] - times[0]) / times[3])
    # quartiles of 7 sorted values (inclusive method): positions 1.5 and 4.5
    iqr = (times[4] + times[5]) / 2 - (times[1] + times[2]) / 2
    assert slow["iqr_s"] == pytest.approx(iqr)
    assert result["ratios"]["slow/fast"] == pytest.approx(slow["median_s"] / fast["median_s"])
    assert result["ratios"]["fast/slow"] == pytest.approx(fast["median_s"] / slow["median_s"])
    assert result["ratios_of_min"]["slow/fast"] == pytest.approx(slow["min_s"] / fast["min_s"])
    # sleeps of 10 and 40 ms: the ratio is near 4 even with scheduler jitter
    assert 2.5 < result["ratios"]["slow/fast"] < 4.5
    assert len(result["load_average_at_start"]) == 3 and len(result["load_average_at_end"]) == 3
    json.dumps(result, allow_nan=False)  # plain JSON


def test_default_ratios_are_over_the_first_contender():
    result = timing.compare({"base": lambda: None, "x": lambda: None, "y": lambda: None},
                            block_until_ready=False)
    assert set(result["ratios"]) == {"x/base", "y/base"}


def test_block_until_ready_waits_for_jax_results():
    import jax.numpy as jnp

    result = timing.compare({"jax": lambda: jnp.ones(3) * 2.0}, rounds=7)
    assert len(result["contenders"]["jax"]["times_s"]) == 7


@pytest.mark.parametrize("kwargs, match", [
    ({"rounds": 6}, "rounds: expected an int >= 7, got 6"),
    ({"rounds": 7.0}, "rounds"),
    ({"warmup": -1}, "warmup: expected an int >= 0, got -1"),
    ({"ratios": [("a", "missing")]}, "ratios"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timing.compare({"a": lambda: None}, block_until_ready=False, **kwargs)


def test_contenders_must_be_named_callables():
    with pytest.raises(ValueError, match="contenders"):
        timing.compare({}, block_until_ready=False)
    with pytest.raises(ValueError, match="contenders"):
        timing.compare({"a": 3}, block_until_ready=False)


def test_update_results_writes_each_unit_and_keeps_earlier_ones(tmp_path):
    path = tmp_path / "sub" / "out.json"
    results_io.update_results(path, "machine", {"cpu_count": 2}, fresh=True)
    results_io.update_results(path, ["problems", "U1"], {"ratio": 1.5})
    results_io.update_results(path, ["problems", "funnel"], {"ratio": 2.0})
    assert json.loads(path.read_text()) == {
        "machine": {"cpu_count": 2}, "problems": {"U1": {"ratio": 1.5}, "funnel": {"ratio": 2.0}}}
    results_io.update_results(path, "machine", {"fresh": True}, fresh=True)
    assert json.loads(path.read_text()) == {"machine": {"fresh": True}}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left


def test_update_results_converts_numpy_values(tmp_path):
    import numpy as np

    path = tmp_path / "out.json"
    results_io.update_results(path, "x", {"a": np.float32(0.5), "b": np.arange(3), "c": (1, 2)})
    assert json.loads(path.read_text()) == {"x": {"a": 0.5, "b": [0, 1, 2], "c": [1, 2]}}


def test_missing_data_file_names_the_file_and_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.json\.gz does not exist.*--data DIR"):
        results_io.data_file(tmp_path, "posteriordb", "nothing.json.gz", needed_for="a test")
    (tmp_path / "here.txt").write_text("x")
    assert results_io.data_file(tmp_path, "here.txt", needed_for="a test") == tmp_path / "here.txt"
