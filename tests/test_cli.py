"""The `probinf` command: help, version, demo, and one-line errors for bad input."""

import subprocess
import sys

import pytest

import probinf
from probinf.cli import main


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "probinf", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "version" in out.stdout


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


def test_unknown_demo_step_is_one_line_error():
    out = run_cli("demo", "--only", "no_such_step")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "no demo step" in out.stderr


@pytest.mark.slow
def test_demo_runs_and_writes_figure(tmp_path):
    figure = tmp_path / "demo.png"
    out = run_cli("demo", "--quick", "--out", str(figure), timeout=600)
    assert out.returncode == 0, out.stderr
    assert figure.stat().st_size > 10_000
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "log evidence: exact" in out.stdout
    assert str(figure) in out.stdout
