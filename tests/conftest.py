import contextlib
import os
import pathlib
import shutil
import tempfile
import uuid

import pytest

os.environ.setdefault("PROBINF_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# One persistent JAX compilation cache for the whole run, set before JAX is imported so
# that every process reads it: the pytest-xdist workers (started by this process, they
# inherit the environment) and the subprocesses the tests start (doc blocks, notebooks,
# the CLI demo). The suite compiles the same small programs again and again: in other
# test modules (compiled programs are dropped after each module, see below), in the other
# worker, in each fresh subprocess. Measured on tests/vi, flows, smc and two more files
# (2 workers): 486 s without, 448 s and 424 s with (40 % of compilations were hits); a
# sequence of nine doc blocks 179 s -> 119 s. Entries are keyed on the program, the JAX
# and jaxlib versions and the XLA flags, so a hit is the executable XLA would build. A
# cache the caller set (JAX_COMPILATION_CACHE_DIR) is used as it is.
_RUN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # JAX creates the folder at the first compilation: a run that ends before (a usage
    # error) leaves nothing behind; pytest_unconfigure removes it after any other.
    _RUN_CACHE = os.path.join(tempfile.gettempdir(), f"probinf-tests-jax-cache-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _RUN_CACHE
    # Small programs too: most of the suite's compilations take well under 0.1 s, and
    # caching only the slower ones (a 0.1 s threshold) gave no gain.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import probinf  # noqa: E402


def pytest_unconfigure(config):
    if _RUN_CACHE is not None:
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)


LLM_EXTRA_INSTALL = "[llm]"  # in every skip reason for the missing extra: pip install -e '.[llm]'


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that skips for the missing `llm` extra must carry the ``llm_extra`` marker.

    The README's test run has no `llm` extra, so these tests skip there; CI installs the
    extra and runs them with ``pytest -m llm_extra``. Without the marker a test would skip
    in the first run and be left out of the second, so never run: that is an error here.
    """
    report = yield
    if (report.skipped and LLM_EXTRA_INSTALL in str(report.longrepr)
            and item.get_closest_marker("llm_extra") is None):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} skips for the missing `llm` extra but is not marked "
                           "@pytest.mark.llm_extra, so CI's `pytest -m llm_extra` run would never run it")
    return report


# Before any test module starts JAX: subprocesses (notebooks, the CLI) inherit it.
probinf.xla_cpu_workaround()

# Test problems are small, so XLA's compile time, not run time, dominates the suite: the
# tests compile without the CPU backend's optimisation passes, which changes how fast a
# program runs, not what it computes (XLA:CPU uses no fast-math either way; measured on
# four test files: 198 s -> 127 s). tests/test_x64.py (every core
# algorithm's exact answers) and tests/test_xla_workaround.py run at XLA's defaults, as
# users do. An XLA_FLAGS that already sets the level (e.g. to 2, the default) wins.
UNOPTIMISED_XLA_FLAG = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {UNOPTIMISED_XLA_FLAG}".strip()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Beside the checkout only (a clone lacks it; tests that need it skip): PROBINF_SHARED_DATA
# points elsewhere, e.g. at a missing folder to check that those tests skip rather than fail.
SHARED_DATA = pathlib.Path(os.environ.get("PROBINF_SHARED_DATA")
                           or REPO_ROOT.parent / "shared" / "data")


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")
_RECORDINGS: list[list[str]] = []


def _record_compilation(event, duration, **kwargs):
    if event in _COMPILE_EVENTS and _RECORDINGS:
        _RECORDINGS[-1].append(kwargs.get("fun_name", event))


def _register_compilation_listener():
    import jax

    jax.monitoring.register_event_duration_secs_listener(_record_compilation)


_register_compilation_listener()


@contextlib.contextmanager
def _recording():
    compiled: list[str] = []
    _RECORDINGS.append(compiled)
    try:
        yield compiled
    finally:
        _RECORDINGS.remove(compiled)


@pytest.fixture
def record_compilations():
    """``with record_compilations() as compiled: ...`` lists what JAX traced or compiled inside."""
    return _recording


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory {SHARED_DATA} is not present "
                    f"(set PROBINF_SHARED_DATA to its path)")
    return SHARED_DATA


class ConjugateNormalMean:
    """y_i ~ N(mu, noise_sd^2), mu ~ N(0, prior_sd^2): posterior and leave-one-out in closed form."""

    y = (1.2, 0.3, 2.1, 1.7, 0.8, 1.1, 1.9, 0.4, 1.5, 1.0, -0.3, 2.4)
    prior_sd, noise_sd = 2.0, 1.0

    def model(self, y):
        import numpyro
        import numpyro.distributions as dist

        mu = numpyro.sample("mu", dist.Normal(0.0, self.prior_sd))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, self.noise_sd), obs=y)

    def posterior_mean_and_var(self, y) -> tuple[float, float]:
        import numpy as np

        var = 1.0 / (1.0 / self.prior_sd**2 + len(y) / self.noise_sd**2)
        return var * float(np.sum(y)) / self.noise_sd**2, var

    def exact_loo(self, y):
        """log p(y_i | y_-i) = log N(y_i; m_-i, s_-i^2 + noise_sd^2)."""
        import numpy as np
        from scipy import stats

        y = np.asarray(y, np.float64)
        out = []
        for i in range(y.size):
            mean, var = self.posterior_mean_and_var(np.delete(y, i))
            out.append(stats.norm.logpdf(y[i], mean, np.sqrt(var + self.noise_sd**2)))
        return np.array(out)


@pytest.fixture(scope="session")
def conjugate_normal_mean() -> ConjugateNormalMean:
    return ConjugateNormalMean()


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
