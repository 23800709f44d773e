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


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every XLA:CPU executable holds about six memory mappings until it is freed, and
    Linux caps a process at ``vm.max_map_count`` (65530 by default). A pytest-xdist
    worker running half the suite compiles ~10,000 programs, so it came within a few
    thousand of the cap, and past it LLVM's JIT segfaults while compiling. Modules
    keep their compiled functions between tests; only the next module starts cold.
    """
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
