"""The `probinf` command: help, version, demo, and one-line errors for bad input."""

import re
import subprocess
import sys

import pytest

import probinf
from probinf.cli import build_parser, main
from probinf.demo import STEPS, _load


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "probinf", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "version" in out.stdout


def test_bare_command_prints_help_and_is_a_usage_error(capsys):
    # Exit status 2, as argparse gives any missing required argument; `--help` gives 0.
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: probinf")
    for command in ("version", "demo", "decode"):
        assert re.search(rf"^\s+{command}\s", err, re.MULTILINE), err
    assert err.strip().splitlines()[-1].startswith("probinf: error:")


def _listed_steps(text: str) -> list[str]:
    """Step names from the table at the end of `probinf demo --help`."""
    table = text.split("steps (in the order they run", 1)[1].splitlines()[1:]
    return [row.split()[0] for row in table if row.strip()]


def _accepted(name: str) -> bool:
    try:
        return build_parser().parse_args(["demo", "--only", name]).only == [name]
    except SystemExit:
        return False


def test_demo_help_lists_the_steps_that_only_accepts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    listed = _listed_steps(capsys.readouterr().out)
    assert listed == [spec.name for spec in STEPS]
    assert all(_accepted(name) for name in listed)
    assert not _accepted("vi_step") and not _accepted("v")  # exact names, not substrings
    for spec in STEPS:  # and every listed step resolves to a function
        assert callable(_load(spec.function))


def test_version_matches_package(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"probinf {probinf.__version__}"


@pytest.mark.parametrize(
    "args",
    [("frobnicate",), ("demo", "--seed", "minus-one"), ("demo", "--no-such-option")],
)
def test_bad_input_is_one_line_error(args):
    out = run_cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("probinf") and "error" in lines[0]
    assert "Traceback" not in out.stderr


def test_unknown_demo_step_is_one_line_error_listing_the_accepted_names():
    out = run_cli("demo", "--only", "vi", "no_such_step")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "unknown demo step 'no_such_step'" in out.stderr
    listed = re.search(r"the steps are: ([\w, ]+?) \(see --help\)$", out.stderr.strip()).group(1).split(", ")
    assert listed == [spec.name for spec in STEPS]
    assert all(_accepted(name) for name in listed)


def test_demo_output_folder_is_checked_before_running(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "missing" / "demo.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "does not exist" in err[0]


@pytest.mark.slow
def test_demo_runs_and_writes_figure(tmp_path):
    figure = tmp_path / "demo.png"
    out = run_cli("demo", "--quick", "--out", str(figure), timeout=600)
    assert out.returncode == 0, out.stderr
    assert figure.stat().st_size > 10_000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each step's header comes before its results, and results name the exact answer.
    assert out.stdout.index("== [1/8] Variational inference") < out.stdout.index("log evidence: ELBO")
    assert "vs exact" in out.stdout and "vs enumeration" in out.stdout
    assert "could not be loaded" not in out.stdout  # the circuits step has its data
    assert str(figure) in out.stdout
