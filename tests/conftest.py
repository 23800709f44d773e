import os
import pathlib

os.environ.setdefault("PROBINF_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

import probinf  # noqa: E402, F401  (applies the XLA:CPU workaround before any test module starts JAX)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory {SHARED_DATA} is not present")
    return SHARED_DATA
