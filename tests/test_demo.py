"""The demo runner: step selection, headers printed before a step runs, phase bars."""

import fnmatch
import io
import subprocess
import sys
import tomllib

import pytest

import probinf.demo as demo
from probinf.demo import STEP_NAMES, DemoStep, StepSkipped, phase_bar, run_demo, select_steps


def test_select_steps_keeps_demo_order_and_names_the_accepted_steps():
    assert [s.name for s in select_steps(["pic", "vi"])] == ["vi", "pic"]
    assert [s.name for s in select_steps(None)] == list(STEP_NAMES)
    with pytest.raises(ValueError, match="'nope'.*the steps are: " + ", ".join(STEP_NAMES)):
        select_steps(["vi", "nope"])
    with pytest.raises(ValueError, match="none given"):
        select_steps([])


def test_header_is_printed_before_the_step_runs(tmp_path, monkeypatch):
    printed = []

    def fake_step(key, quick, progress=None):
        # The step sees its own header already printed (and nothing after it yet).
        assert printed[-1].endswith(demo.STEPS[0].title)
        return DemoStep(["measured 1.0 vs exact 1.0"], [lambda ax: ax.plot([0, 1], label="a")])

    def skipped_step(key, quick, progress=None):
        raise StepSkipped("install with: something")

    steps = {demo.STEPS[0].function: fake_step, demo.STEPS[1].function: skipped_step}
    monkeypatch.setattr(demo, "_load", lambda spec: steps[spec])
    figure = tmp_path / "demo.png"
    reports = run_demo(figure, only=[STEP_NAMES[0], STEP_NAMES[1]], print_fn=printed.append)
    assert [r.title for r in reports] == [demo.STEPS[0].title]
    assert printed[0] == f"\n== [1/2] {demo.STEPS[0].title}"
    assert printed[1] == "   measured 1.0 vs exact 1.0"
    assert printed[3] == f"\n== [2/2] {demo.STEPS[1].title}"
    assert printed[4] == "   skipped: install with: something"
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_phase_bar_counts_phases_and_names_the_running_one(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    with phase_bar(2, desc="demo", progress=True) as phase:
        phase("first")
        phase("second")
    text = stream.getvalue()
    assert "2/2 phases" in text and "second" in text and "done" in text
    with phase_bar(2, desc="demo", progress=False) as phase:
        phase("first")
    assert stream.getvalue() == text  # disabled: writes nothing



def test_steps_live_in_probinf_demos_and_are_imported_only_when_they_run():
    modules = {spec.function.split(":")[0] for spec in demo.STEPS}
    assert modules == {f"probinf.demos.{name}" for name in
                       ("vi", "flows", "smc", "pcn", "circuits", "pic", "amortized", "llm")}
    # Loading the vi step, as `probinf demo --only vi` does, imports no sibling package.
    code = ("import sys; from probinf.demo import STEPS, _load; import probinf.demos; "
            "_load(STEPS[0].function); "
            "print(','.join(m for m in ('flows', 'circuits', 'amortized', 'probinf.demos.circuits') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_shipped_demo_data_is_package_data(repo_root):
    # A data file that no package-data glob matches is silently left out of the wheel.
    globs = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folder = repo_root / "probinf" / "demos"
    shipped = sorted((folder / "data").iterdir())
    assert shipped, "probinf/demos/data/ is empty"
    for path in shipped:
        relative = path.relative_to(folder).as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs.get("probinf.demos", [])), relative
