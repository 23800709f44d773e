"""MAP with iterated-conditional-modes refinement, against brute-force enumeration.

Every expected value comes from the independent unfolded evaluator in
``reference.py`` over all assignments of a small circuit; the circuit's own
``log_prob`` is never the reference.
"""

import functools
import importlib.util
import pathlib

import equinox as eqx
import jax
import numpy as np
import pytest

import circuits
from circuits.circuit import _change_log_ratios

_spec = importlib.util.spec_from_file_location(
    "circuit_reference", pathlib.Path(__file__).with_name("reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

# float32 circuit arithmetic against float64 enumeration.
ATOL = 2e-5


def _sharpen(circuit, factor):
    """Scale every logit: peaked distributions, where max-product and the true MAP differ."""
    inputs = {name: value * factor for name, value in circuit.input_params.items()}
    return circuit.with_params(input_params=inputs,
                               sum_logits=tuple(w * factor for w in circuit.sum_logits))


# (region graph, input layer, number of values, layer kind, units, normalised, sharpening)
CONFIGS = {
    "bernoulli-tucker-dag": (lambda: circuits.quad_graph(2, 4), circuits.Bernoulli(), 2,
                             "tucker", 3, True, 1.0),
    "categorical3-cp-unnormalised": (
        lambda: circuits.random_binary_tree(jax.random.key(2), 7, 2, 2), circuits.Categorical(3),
        3, "cp", 4, False, 3.0),
    # Counts in {0, 1, 2}: a change moves to either other count. Only the change scores
    # are checked on it (each configuration costs a few compilations).
    "binomial2": (lambda: circuits.random_binary_tree(jax.random.key(3), 6, 2, 2),
                  circuits.Binomial(2), 3, "cp", 3, True, 1.0),
}
SEARCHED = ["bernoulli-tucker-dag", "categorical3-cp-unnormalised"]


class Problem:
    """A circuit, its enumerated log-probabilities, and random evidence rows."""

    def __init__(self, name, num_rows=40):
        build, layer, num_values, kind, units, normalized, factor = CONFIGS[name]
        graph = build()
        circuit = circuits.compile_circuit(graph, layer, units, kind, key=jax.random.key(5),
                                           normalized=normalized)
        self.circuit = _sharpen(circuit, factor)
        self.num_values = num_values
        self.num_variables = graph.num_variables
        self.domain = reference.all_assignments(self.num_variables, num_values)
        self.log_p = reference.log_normalised(self.circuit, self.domain, self.domain)
        rng = np.random.default_rng(0)
        self.evidence = rng.random((num_rows, self.num_variables)) < 0.3
        self.evidence[0] = False  # unconditional MAP
        self.x = self.domain[rng.integers(0, len(self.domain), num_rows)]

    @functools.cached_property
    def raw(self):
        """The max-product completion (no refinement)."""
        return np.asarray(self.circuit.map(self.x, self.evidence, refine=None)[0])

    @functools.cached_property
    def refined(self):
        """``(assignment, log_value)`` with the default refinement."""
        assignment, value = self.circuit.map(self.x, self.evidence)
        return np.asarray(assignment), np.asarray(value)

    def index(self, assignments):
        shape = (self.num_values,) * self.num_variables
        return np.ravel_multi_index(np.asarray(assignments).T, shape)

    def exact_map(self):
        """Per row, the enumerated ``max log p`` over completions that agree with the evidence."""
        return np.array([self.log_p[np.all((self.domain == row) | ~mask, axis=1)].max()
                         for row, mask in zip(self.x, self.evidence, strict=True)])


@functools.cache
def _problem(name):
    return Problem(name)  # shared by the tests below: each map compiles once


@pytest.fixture(params=SEARCHED)
def problem(request):
    return _problem(request.param)


def test_icm_improves_on_max_product_and_finds_local_optima(problem):
    raw, (refined, value) = problem.raw, problem.refined

    # Evidence is never changed.
    np.testing.assert_array_equal(refined[problem.evidence], problem.x[problem.evidence])
    log_p_raw = problem.log_p[problem.index(raw)]
    log_p_refined = problem.log_p[problem.index(refined)]
    # The returned value is log p of the returned assignment ...
    np.testing.assert_allclose(value, log_p_refined, atol=ATOL)
    # ... never below the max-product completion's.
    assert np.all(log_p_refined >= log_p_raw - ATOL)

    # A local optimum: no change of one unobserved variable raises log p.
    for row, mask, log_p_row in zip(refined, problem.evidence, log_p_refined, strict=True):
        for variable in np.flatnonzero(~mask):
            for other in range(problem.num_values):
                if other == row[variable]:
                    continue
                neighbour = row.copy()
                neighbour[variable] = other
                assert problem.log_p[problem.index(neighbour[None])[0]] <= log_p_row + ATOL

    # The exact MAP on a clear majority of rows, and at least as often as max-product.
    best = problem.exact_map()
    exact_refined = np.mean(log_p_refined >= best - ATOL)
    exact_raw = np.mean(log_p_raw >= best - ATOL)
    assert exact_refined >= 0.8
    assert exact_refined >= exact_raw


@pytest.mark.parametrize("name", list(CONFIGS))
def test_change_scores_are_exact_log_ratios(name):
    """The one-backward-pass scores equal enumerated ``log p(x_{i<-v}) - log p(x)``."""
    problem = _problem(name)
    rows = problem.x[:8]
    scores_fn = eqx.filter_jit(_change_log_ratios)
    log_c, ratios = scores_fn(problem.circuit, jax.numpy.asarray(rows, problem.circuit.float_dtype),
                              problem.num_values)
    log_p_rows = problem.log_p[problem.index(rows)]
    log_z = float(problem.circuit.log_partition())
    np.testing.assert_allclose(np.asarray(log_c) - log_z, log_p_rows, atol=ATOL)
    expected = np.empty(ratios.shape)
    for b, row in enumerate(rows):
        for variable in range(problem.num_variables):
            changed = np.repeat(row[None], problem.num_values, axis=0)
            changed[:, variable] = np.arange(problem.num_values)
            expected[b, variable] = problem.log_p[problem.index(changed)] - log_p_rows[b]
    np.testing.assert_allclose(np.asarray(ratios), expected, atol=1e-4)


def test_max_steps_stops_early_with_a_warning():
    problem = _problem("bernoulli-tucker-dag")
    raw, full = problem.raw, problem.refined[0]
    assert (np.sum(raw != full, axis=1) >= 2).any()  # some row needs two changes or more
    with pytest.warns(RuntimeWarning, match=r"max_steps=1 .* still improved"):
        one, value = problem.circuit.map(problem.x, problem.evidence, max_steps=1)
    log_p_one = problem.log_p[problem.index(one)]
    np.testing.assert_allclose(np.asarray(value), log_p_one, atol=ATOL)
    assert np.all(log_p_one >= problem.log_p[problem.index(raw)] - ATOL)
    assert np.all(log_p_one <= problem.log_p[problem.index(full)] + ATOL)


def test_random_restarts_only_add_starts():
    problem = _problem("categorical3-cp-unnormalised")  # compiles sampling faster than Tucker
    key = jax.random.key(4)
    restarted, value = problem.circuit.map(problem.x, problem.evidence, num_restarts=2, key=key)
    restarted = np.asarray(restarted)
    np.testing.assert_array_equal(restarted[problem.evidence], problem.x[problem.evidence])
    log_p = problem.log_p[problem.index(restarted)]
    np.testing.assert_allclose(np.asarray(value), log_p, atol=ATOL)
    # The default starts are among these: never worse than without restarts.
    assert np.all(log_p >= problem.log_p[problem.index(problem.refined[0])] - ATOL)
    again, _ = problem.circuit.map(problem.x, problem.evidence, num_restarts=2, key=key)
    np.testing.assert_array_equal(np.asarray(again), restarted)  # the key fixes the draws


def test_map_under_jit_matches_the_eager_call():
    problem = _problem("categorical3-cp-unnormalised")
    eager, eager_value = problem.refined
    np.testing.assert_array_equal(eager[problem.evidence], problem.x[problem.evidence])
    np.testing.assert_allclose(eager_value, problem.log_p[problem.index(eager)], atol=ATOL)
    jitted = jax.jit(lambda pc, x, e: pc.map(x, e))
    traced, traced_value = jitted(problem.circuit, problem.x, problem.evidence)
    np.testing.assert_array_equal(np.asarray(traced), eager)
    np.testing.assert_allclose(np.asarray(traced_value), eager_value, atol=1e-6)


def test_map_arguments_are_checked():
    pc = _problem("bernoulli-tucker-dag").circuit  # 8 variables
    x = np.zeros((3, 8), int)
    evidence = np.zeros((3, 8), bool)
    evidence[:, 0] = True
    with pytest.raises(ValueError, match=r"`refine` must be one of \('auto', 'icm', None\), got 'beam'"):
        pc.map(x, evidence, refine="beam")
    with pytest.raises(ValueError, match=r"`max_steps` must be a positive int, got 0"):
        pc.map(x, evidence, max_steps=0)
    with pytest.raises(ValueError, match=r"`max_steps` applies to refine='icm' only"):
        pc.map(x, evidence, refine=None, max_steps=3)
    with pytest.raises(ValueError, match=r"`num_restarts` must be a non-negative int, got -1"):
        pc.map(x, evidence, num_restarts=-1)
    with pytest.raises(ValueError, match=r"`key` is required for num_restarts=2"):
        pc.map(x, evidence, num_restarts=2)
    with pytest.raises(ValueError, match=r"`key` was given but num_restarts=0"):
        pc.map(x, evidence, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"`key` must be one JAX PRNG key"):
        pc.map(x, evidence, num_restarts=1, key=0)
    with pytest.raises(TypeError, match=r"`evidence` must be a boolean mask"):
        pc.map(x, evidence.astype(int))
    with pytest.raises(ValueError, match=r"`evidence` must have 8 entries"):
        pc.map(x, evidence[:, :3])
    with pytest.raises(ValueError, match=r"`x` must have 8 variables"):
        pc.map(x[:, :3], evidence[:, :3])
    bad = x.copy()
    bad[1, 0] = 2
    with pytest.raises(ValueError, match=r"`x` variable 0 has value 2 \(row 1\) outside the "
                                         r"support \{0, ..., 1\}"):
        pc.map(bad, evidence)
    # The same structure with Gaussian inputs (built directly: nothing to compile).
    shape = pc.input_params["logits"].shape
    gaussian = circuits.Circuit(pc.structure, circuits.Gaussian(),
                                {"loc": np.zeros(shape), "log_scale": np.zeros(shape)},
                                pc.sum_logits, pc.mix_logits)
    with pytest.raises(ValueError, match=r"`refine='icm'` needs an input layer with a finite "
                                         r"support .* got Gaussian; pass refine=None"):
        gaussian.map(np.zeros((1, 8)), np.ones((1, 8), bool), refine="icm")
    # The default ("auto") is the max-product completion for such layers.
    half = np.arange(8) < 4
    default, raw = (gaussian.map(np.ones((2, 8)), np.stack([half, ~half]), refine=r)
                    for r in ("auto", None))
    for a, b in zip(default, raw, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
