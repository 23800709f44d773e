"""Bounds are ordered as theory says, and hierarchical estimates are valid bounds.

Expectations are Monte Carlo means over many independent batches; each ordering
claim is checked on the paired differences of the estimates computed from the
same draws where possible, requiring the mean difference to exceed 5 standard
errors in the direction theory predicts.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probinf
from probinf import vi

NUM_BATCHES = 20_000


def _estimates(objective, family, target, seed):
    keys = jax.random.split(jax.random.key(seed), NUM_BATCHES)
    sign = -1.0 if objective.maximize else 1.0
    values = jax.jit(jax.vmap(lambda k: sign * objective(k, family, target)))(keys)
    return np.asarray(values, np.float64)


def _mean_se(values):
    return values.mean(), values.std(ddof=1) / math.sqrt(values.size)


@pytest.fixture(scope="module")
def mismatched_family():
    return probinf.MeanFieldGaussian(jnp.array([0.0, 0.5]), jnp.array([0.2, -0.5]))


def test_elbo_iwae_logz_ordering(problem_2d, mismatched_family):
    target = problem_2d.target
    elbo = _estimates(vi.ELBO(1), mismatched_family, target, 0)
    iwae_k = _estimates(vi.IWAE(4), mismatched_family, target, 1)
    iwae_2k = _estimates(vi.IWAE(8), mismatched_family, target, 2)
    exact_elbo = float(problem_2d.exact_elbo(mismatched_family.loc, mismatched_family.log_scale))
    means = [_mean_se(v) for v in (elbo, iwae_k, iwae_2k)]
    assert abs(means[0][0] - exact_elbo) < 5 * means[0][1]
    for (low, low_se), (high, high_se) in zip(means[:-1], means[1:], strict=True):
        assert high - low > 5 * math.hypot(low_se, high_se)
    high, high_se = means[-1]
    assert problem_2d.log_z - high > 5 * high_se


def test_renyi_bounds_decrease_in_alpha(problem_2d, mismatched_family):
    target = problem_2d.target
    values = {
        alpha: _mean_se(_estimates(vi.RenyiBound(alpha, 8), mismatched_family, target, 10 + i))
        for i, alpha in enumerate([0.0, 0.5, 1.0])
    }
    iwae = _mean_se(_estimates(vi.IWAE(8), mismatched_family, target, 10))
    np.testing.assert_allclose(values[0.0][0], iwae[0], rtol=1e-6)  # same keys: alpha=0 is IWAE
    assert values[0.0][0] - values[0.5][0] > 5 * math.hypot(values[0.0][1], values[0.5][1])
    assert values[0.5][0] - values[1.0][0] > 5 * math.hypot(values[0.5][1], values[1.0][1])
    assert values[0.0][0] < problem_2d.log_z


def test_cubo_is_an_upper_bound(problem_1d, quadrature):
    family = probinf.MeanFieldGaussian(jnp.array([0.2]), jnp.array([0.1]))
    # Exact CUBO_2 = 0.5 log E_q[w^2], by one-dimensional quadrature.
    log_w = lambda z, log_q: problem_1d.target.log_density(z[..., None]) - log_q
    second_moment = quadrature(lambda lw: jnp.exp(2 * lw[0]), log_w, 0.2, 0.1, 1, nodes=80)
    exact_cubo = 0.5 * math.log(float(second_moment))
    assert exact_cubo > problem_1d.log_z + 0.01
    # The K-sample estimate converges to it from below as K grows.
    estimate = _mean_se(_estimates(vi.CUBO(2.0, 512, num_batches=1), family, problem_1d.target, 3))
    assert problem_1d.log_z < estimate[0] <= exact_cubo + 5 * estimate[1]
    assert exact_cubo - estimate[0] < 0.05


def test_tempered_elbo_interpolates(problem_2d, mismatched_family):
    target = problem_2d.target
    key = jax.random.key(4)
    at_one = vi.TemperedELBO(1.0, 64)(key, mismatched_family, target)
    plain = vi.ELBO(64)(key, mismatched_family, target)
    np.testing.assert_allclose(at_one, plain, rtol=1e-6)
    # beta = 0: the ELBO of the standard-normal reference, -KL(q || N(0, I)), in closed form.
    at_zero = _mean_se(_estimates(vi.TemperedELBO(0.0, 1), mismatched_family, target, 5))
    var = jnp.exp(2 * mismatched_family.log_scale)
    kl = 0.5 * float(jnp.sum(var + mismatched_family.loc**2 - 1 - 2 * mismatched_family.log_scale))
    assert abs(at_zero[0] + kl) < 5 * at_zero[1]
    schedule = vi.linear_schedule(0.1, 1.0, 100)
    annealed = vi.TemperedELBO(schedule, 8)
    assert float(annealed.inverse_temperature(jnp.asarray(50))) == pytest.approx(0.55)
    assert float(annealed.inverse_temperature(jnp.asarray(500))) == pytest.approx(1.0)


def test_forward_kl_is_cross_entropy(problem_2d):
    samples = jax.random.multivariate_normal(jax.random.key(0), problem_2d.mean, problem_2d.cov, (500,))
    family = probinf.FullRankGaussian.init(2)
    loss = vi.ForwardKL(samples)(jax.random.key(1), family, problem_2d.target)
    expected = -np.mean(jax.scipy.stats.multivariate_normal.logpdf(samples, jnp.zeros(2), jnp.eye(2)))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="samples"):
        vi.ForwardKL(jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match="samples"):
        vi.ForwardKL(jnp.array([[0.0, jnp.nan]]))


def _hierarchical(num_inner):
    """u ~ N(0, 1), z | u ~ N(1.5 u + 0.3, 0.6^2): marginal q(z) = N(0.3, 1.5^2 + 0.6^2)."""
    conditional = probinf.AffineGaussianConditional(
        weight=jnp.array([[1.5]]), bias=jnp.array([0.3]), log_scale=jnp.log(jnp.array([0.6]))
    )
    return probinf.HierarchicalFamily(probinf.MeanFieldGaussian.init(1), conditional,
                                      num_inner=num_inner)


def test_hierarchical_bounds_are_ordered(problem_1d):
    target = problem_1d.target
    marginal = probinf.MeanFieldGaussian(jnp.array([0.3]), jnp.log(jnp.sqrt(jnp.array([1.5**2 + 0.6**2]))))
    exact_elbo = float(problem_1d.exact_elbo(marginal.loc, marginal.log_scale))
    hvi = _mean_se(_estimates(vi.ELBO(1), _hierarchical(0), target, 20))
    iwhvi = _mean_se(_estimates(vi.ELBO(1), _hierarchical(8), target, 21))
    diwhvi = _mean_se(_estimates(vi.IWAE(8), _hierarchical(8), target, 22))
    assert iwhvi[0] - hvi[0] > 5 * math.hypot(hvi[1], iwhvi[1])
    assert exact_elbo - iwhvi[0] > -5 * iwhvi[1]  # IWHVI <= ELBO of the true marginal
    assert diwhvi[0] - iwhvi[0] > 5 * math.hypot(diwhvi[1], iwhvi[1])
    assert diwhvi[0] < problem_1d.log_z


def test_hierarchical_density_estimate_converges():
    family = _hierarchical(0)
    z = jnp.array([[0.0], [1.0], [-2.0]])
    exact = jax.scipy.stats.norm.logpdf(z[:, 0], 0.3, math.sqrt(1.5**2 + 0.6**2))
    estimate = family.estimate_log_prob(jax.random.key(0), z, num_samples=20_000)
    np.testing.assert_allclose(estimate, exact, atol=0.02)
    with pytest.raises(NotImplementedError, match="estimate_log_prob"):
        family.log_prob(z)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: vi.ELBO(0), "num_samples"),
        (lambda: vi.IWAE(-3), "num_samples"),
        (lambda: vi.IWAE(4, num_batches=0), "num_batches"),
        (lambda: vi.RenyiBound(float("nan")), "alpha"),
        (lambda: vi.CUBO(0.5), "order"),
        (lambda: vi.TemperedELBO(1.5), "beta"),
        (lambda: vi.RWS(4, phase="sleep"), "phase"),
        (lambda: vi.RWS(4, estimator=vi.Reparam()), "RWS supports"),
        (lambda: probinf.HierarchicalFamily(probinf.MeanFieldGaussian.init(1),
                                            probinf.AffineGaussianConditional.init(1, 1),
                                            num_inner=-1), "num_inner"),
    ],
)
def test_bad_objective_options(make, message):
    with pytest.raises(ValueError, match=message):
        make()
