"""benchmarks/peers.py: finding a peer's python, the messages for a missing one, interpreters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]  # as tests/conftest.py's REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import peers  # noqa: E402


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch):
    for peer in peers.PEERS.values():
        monkeypatch.delenv(peer.env_var, raising=False)
    monkeypatch.delenv(peers.ROOT_ENV, raising=False)


def fake_venv(root: Path, name: str, requirements=None, marker=True) -> Path:
    """A directory laid out like a virtualenv (no real interpreter needed to be found)."""
    venv = root / name
    python = peers._venv_python(venv)
    python.parent.mkdir(parents=True)
    python.write_text("")
    (venv / "pyvenv.cfg").write_text("")
    if marker:
        peer = peers.PEERS[name]
        recipe = {"python": peer.python,
                  "requirements": list(requirements or peer.requirements)}
        (venv / peers.MARKER).write_text(json.dumps({"recipe": recipe}))
    return python


def test_finds_a_finished_venv_under_the_root(tmp_path):
    python = fake_venv(tmp_path, "pcx")
    assert peers.peer_python("pcx", tmp_path) == python
    assert peers.peer_python("sbi", tmp_path) is None


def test_root_from_the_environment(tmp_path, monkeypatch):
    python = fake_venv(tmp_path, "cirkit")
    monkeypatch.setenv(peers.ROOT_ENV, str(tmp_path))
    assert peers.peer_python("cirkit") == python
    assert peers.peers_root() == tmp_path.resolve()


def test_default_root_is_inside_the_repository():
    assert peers.peers_root() == REPO_ROOT / "benchmarks" / ".peers"


def test_environment_variable_wins(tmp_path, monkeypatch):
    fake_venv(tmp_path, "genjax")
    other = tmp_path / "elsewhere" / "python"
    other.parent.mkdir()
    other.write_text("")
    monkeypatch.setenv("GENJAX_PYTHON", str(other))
    assert peers.peer_python("genjax", tmp_path) == other
    monkeypatch.setenv("GENJAX_PYTHON", str(tmp_path / "missing"))
    assert peers.peer_python("genjax", tmp_path) is None
    message = peers.missing_peer_message("genjax", tmp_path)
    assert "GENJAX_PYTHON=" in message and "is not a file" in message
    assert "python benchmarks/peers.py --only genjax" in message


def test_missing_venv_message_names_the_command(tmp_path):
    message = peers.missing_peer_message("sbi", tmp_path)
    assert f"no sbi virtualenv at {tmp_path.resolve() / 'sbi'}" in message
    assert f"`python benchmarks/peers.py --only sbi --root {tmp_path.resolve()}`" in message
    assert "SBI_PYTHON" in message and "sbi==0.27.0" in message


def test_outdated_or_unfinished_venv_is_not_used(tmp_path):
    fake_venv(tmp_path, "flowjax", requirements=["flowjax==0.0.1"])
    assert peers.peer_python("flowjax", tmp_path) is None
    assert "has other pins" in peers.missing_peer_message("flowjax", tmp_path)
    fake_venv(tmp_path, "its_hub", marker=False)
    assert peers.peer_python("its_hub", tmp_path) is None
    assert "was not finished" in peers.missing_peer_message("its_hub", tmp_path)


def test_pldi_peer_needs_the_artifact(tmp_path):
    assert "--pldi-artifact DIR" in peers.create_command("genjax-pldi")
    assert "ff2bc65" in peers.missing_peer_message("genjax-pldi", tmp_path)
    peer = peers.PEERS["genjax-pldi"]
    with pytest.raises(RuntimeError, match="needs --pldi-artifact"):
        peers.build(peer, tmp_path, interpreters={}, artifact=None, force=False)
    with pytest.raises(RuntimeError, match="has no adevjax/pyproject.toml"):
        peers.build(peer, tmp_path, interpreters={}, artifact=tmp_path, force=False)


def test_unknown_peer_is_an_error_naming_the_argument():
    with pytest.raises(ValueError, match=r"name: expected one of .*'pcx'.*got 'jpc'"):
        peers.peer_python("jpc")


def test_every_pin_is_exact():
    for peer in peers.PEERS.values():
        for requirement in peer.requirements:
            assert requirement.count("==") == 1, requirement
        assert peers._requirement_name(peer.requirements[0])


def test_find_interpreter_checks_the_version():
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = peers.find_interpreter(version, {version: Path(sys.executable)})
    assert found is not None and peers._probe(found)[0] == version
    # A python of another version given for this one is refused.
    assert peers.find_interpreter("2.7", {"2.7": Path(sys.executable)}) is None
    assert peers.find_interpreter(version, {version: Path("/nonexistent/python")}) is None


def test_python_option_syntax():
    assert peers._interpreter_arg("3.12=/usr/bin/python3.12") == ("3.12", Path("/usr/bin/python3.12"))
    for bad in ("3.12", "python=/x", "3.12="):
        with pytest.raises(argparse.ArgumentTypeError, match="expected X.Y=PATH"):
            peers._interpreter_arg(bad)
