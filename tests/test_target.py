"""Targets: numpyro's transforms and Jacobians, batching, constrain, bad input.

`from_numpyro` is checked against numpyro's own functions: the log density against
``-numpyro.infer.util.potential_energy`` and ``constrain`` against
``numpyro.infer.util.constrain_fn``, at random unconstrained points, for every kind of
model numpyro's HMC accepts; initial points against closed forms.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.flatten_util import ravel_pytree
from jax.scipy.special import erfinv
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.infer import (
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    init_to_value,
)
from numpyro.infer.util import constrain_fn, potential_energy

import probinf


def model(y):
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
    loc = numpyro.sample("loc", dist.Normal(0.0, 3.0))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(loc, scale), obs=y)
    numpyro.deterministic("precision", 1.0 / scale**2)


Y = jnp.array([0.5, -0.3, 1.1])


def test_from_numpyro_adds_the_log_jacobian():
    target = probinf.from_numpyro(model, Y)
    assert target.dim == 2
    z = jnp.array([0.4, -0.7])  # order of the flattened unconstrained sites
    sites = target.constrain(z)
    scale, loc = sites["scale"], sites["loc"]
    # The unconstrained coordinate of `scale` is log(scale): log-Jacobian = log(scale).
    by_hand = (
        dist.LogNormal(0.0, 1.0).log_prob(scale)
        + dist.Normal(0.0, 3.0).log_prob(loc)
        + dist.Normal(loc, scale).log_prob(Y).sum()
        + jnp.log(scale)
    )
    np.testing.assert_allclose(target.log_density(z), by_hand, rtol=1e-5)
    np.testing.assert_allclose(sites["precision"], 1.0 / scale**2, rtol=1e-6)
    assert set(target.site_shapes) == {"scale", "loc", "precision"}
    assert target.init_position.shape == (2,)


def test_batched_log_density_and_constrain():
    target = probinf.from_numpyro(model, Y)
    z = jax.random.normal(jax.random.key(0), (4, 3, 2))
    batched = target.log_density(z)
    assert batched.shape == (4, 3)
    np.testing.assert_allclose(batched[2, 1], target.log_density(z[2, 1]), rtol=1e-6)
    assert target.constrain(z)["loc"].shape == (4, 3)


def test_from_logdensity_with_params_and_constrain():
    target = probinf.from_logdensity(
        lambda z, p: -0.5 * jnp.sum((z - p) ** 2), 2, params=jnp.array([1.0, 2.0]),
        constrain=lambda z: {"rate": jnp.exp(z)},
    )
    np.testing.assert_allclose(target.log_density(jnp.array([1.0, 2.0])), 0.0)
    np.testing.assert_allclose(target.constrain(jnp.zeros(2))["rate"], jnp.ones(2))


def test_bad_input():
    with pytest.raises(ValueError, match="dim"):
        probinf.from_logdensity(lambda z: z.sum(), 0)
    with pytest.raises(ValueError, match="scalar"):
        probinf.from_logdensity(lambda z: z, 3)
    with pytest.raises(TypeError, match="fn"):
        probinf.from_logdensity("not a function", 3)
    with pytest.raises(ValueError, match="init_position"):
        probinf.from_logdensity(lambda z: z.sum(), 2, init_position=jnp.zeros(3))
    # Validated like the families' parameters (MeanFieldGaussian.init(loc=nan) is rejected too).
    for bad, shown in ((jnp.nan, "nan at index 0"), (jnp.inf, "inf at index 0")):
        with pytest.raises(ValueError, match=f"`init_position` must be finite, got {shown}"):
            probinf.from_logdensity(lambda z: z.sum(), 2, init_position=[bad, 0.0])
    target = probinf.from_logdensity(lambda z: z.sum(), 2)
    with pytest.raises(ValueError, match="last axis of length 2"):
        target.log_density(jnp.zeros(3))


def test_discrete_latent_site_is_rejected_by_name():
    def mixture(y):
        component = numpyro.sample("component", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(component, 1.0), obs=y)

    with pytest.raises(ValueError, match="'component' is a discrete latent") as err:
        probinf.from_numpyro(mixture, 0.3)
    assert "Bernoulli" in str(err.value)


def test_model_without_latents_is_rejected():
    def observed_only(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no latent"):
        probinf.from_numpyro(observed_only, 0.3)


# --- every model numpyro's HMC accepts, against numpyro's own potential_energy ---------


def assert_matches_numpyro(target, model, prototype, *args, num_points=4, **kwargs):
    """``log_density`` = numpyro's ``-potential_energy`` and ``constrain`` = numpyro's
    ``constrain_fn`` at random unconstrained points; ``prototype`` is numpyro's dict of
    unconstrained sites (any values), whose ravelled order is the target's."""
    flat, unravel = ravel_pytree(prototype)
    assert target.dim == flat.shape[0]
    points = jax.random.normal(jax.random.key(1), (num_points, target.dim))
    points = jnp.concatenate([points, target.init_position[None]])

    @jax.jit
    def both(points):  # one compiled program for ours and numpyro's (speed only)
        reference = jax.vmap(lambda z: -potential_energy(model, args, kwargs, unravel(z)))(points)
        reference_sites = jax.vmap(lambda z: constrain_fn(
            model, args, kwargs, unravel(z), return_deterministic=True))(points)
        return target.log_density(points), target.constrain(points), reference, reference_sites

    ours, ours_sites, reference, reference_sites = both(points)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(ours))
    assert set(ours_sites) == set(reference_sites)
    for name, value in reference_sites.items():
        np.testing.assert_allclose(ours_sites[name], value, rtol=1e-5, atol=1e-6)


def improper_model(y):
    """Flat priors on every kind of support, as in translated Stan programs."""
    with numpyro.plate("groups", 2):
        offset = numpyro.sample("offset", dist.ImproperUniform(constraints.real, (), ()))
    scale = numpyro.sample("scale", dist.ImproperUniform(constraints.positive, (), ()))
    share = numpyro.sample("share", dist.ImproperUniform(constraints.interval(0.0, 3.0), (), ()))
    weights = numpyro.sample("weights", dist.ImproperUniform(constraints.simplex, (), (3,)))
    cuts = numpyro.sample("cuts", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    loc = offset.sum() + share + weights @ jnp.arange(3.0) + cuts[1]
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(loc, scale), obs=y)


def test_improper_priors_on_every_support():
    y = jnp.array([0.4, 1.3, -0.2, 2.2])
    target = probinf.from_numpyro(improper_model, y)
    prototype = {"cuts": jnp.zeros(2), "offset": jnp.zeros(2), "scale": 0.0, "share": 0.0,
                 "weights": jnp.zeros(2)}
    assert_matches_numpyro(target, improper_model, prototype, y)
    assert target.site_shapes["weights"] == (3,)


def factor_model(y):
    """A dependent support (b's upper bound is a latent), a factor and a deterministic site."""
    a = numpyro.sample("a", dist.Uniform(0.0, 1.0))
    b = numpyro.sample("b", dist.Uniform(0.0, 1.0 - a))
    numpyro.factor("penalty", -((a - b) ** 2))
    numpyro.deterministic("rest", 1.0 - a - b)
    numpyro.sample("y", dist.Normal(a + b, 0.5), obs=y)


def test_factor_dependent_support_and_deterministic_sites():
    y = jnp.array(0.7)
    target = probinf.from_numpyro(factor_model, y)
    assert_matches_numpyro(target, factor_model, {"a": 0.0, "b": 0.0}, y)
    points = jax.random.normal(jax.random.key(2), (50, 2)) * 3.0
    sites = jax.jit(lambda z: target.constrain(z))(points)
    assert np.all((sites["b"] > 0) & (sites["b"] < 1 - sites["a"]))  # b's support follows a
    np.testing.assert_allclose(sites["rest"], 1 - sites["a"] - sites["b"], rtol=1e-5, atol=1e-6)


def masked_model(y, observed):
    """Masked latent and observed sites; masked-out observations are NaN (allowed)."""
    loc = numpyro.sample("loc", dist.Normal(0.0, 2.0))
    with numpyro.plate("units", 3):
        prior = dist.Normal(0.0, 1.0).mask(jnp.array([True, False, True]))
        effect = numpyro.sample("effect", prior)
    with handlers.mask(mask=jnp.array(False)):
        numpyro.sample("ignored", dist.Normal(loc, 1.0), obs=jnp.array(1e3))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(loc + effect, 1.0).mask(observed), obs=y)
        numpyro.sample("z", dist.Normal(loc, 1.0), obs=y, obs_mask=observed)


def test_masked_sites_and_masked_out_nan_data():
    y = jnp.array([0.5, jnp.nan, 1.5])
    observed = ~jnp.isnan(y)
    target = probinf.from_numpyro(masked_model, y, observed)
    prototype = {"effect": jnp.zeros(3), "loc": 0.0, "z_unobserved": jnp.zeros(3)}
    assert_matches_numpyro(target, masked_model, prototype, y, observed)
    grad = jax.grad(target.log_density)(target.init_position)
    assert np.all(np.isfinite(grad))  # NaN data under a mask does not reach the gradient


def hierarchical_model(sigma, y=None):
    """Eight-schools style: nested plates, keyword data, a scale handler."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        with numpyro.plate("repeats", 2, dim=-2), handlers.scale(scale=0.5):
            numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def test_nested_plates_keyword_data_and_scale():
    sigma = jnp.array([15.0, 10.0, 16.0])
    y = jnp.array([[28.0, 8.0, -3.0], [20.0, 4.0, 1.0]])
    target = probinf.from_numpyro(hierarchical_model, sigma, y=y)
    prototype = {"mu": 0.0, "tau": 0.0, "theta": jnp.zeros(3)}
    assert_matches_numpyro(target, hierarchical_model, prototype, sigma, y=y)


# --- initialisation strategies --------------------------------------------------------


def prior_model():
    numpyro.sample("loc", dist.Normal(3.0, 1.0))
    numpyro.sample("sigma", dist.HalfNormal(2.0))


def test_default_init_is_numpyro_init_to_median():
    num_samples = 100_001
    strategy = init_to_median(num_samples=num_samples)
    target = probinf.from_numpyro(prior_model, init_strategy=strategy)
    # Prior medians: 3, and HalfNormal(2)'s 2*sqrt(2)*erfinv(1/2), unconstrained by log. A
    # sample median of n draws has sd 1/(2 f(m) sqrt(n)); 5 sd of it in each coordinate.
    sigma_median = 2.0 * np.sqrt(2.0) * float(erfinv(0.5))
    sigma_density = 2.0 * np.exp(-(sigma_median**2) / 8.0) / (2.0 * np.sqrt(2.0 * np.pi))
    sd = np.array([np.sqrt(2.0 * np.pi) / 2.0, 1.0 / (2.0 * sigma_density * sigma_median)])
    expected = np.array([3.0, np.log(sigma_median)])
    error = np.abs(np.asarray(target.init_position) - expected)
    assert np.all(error < 5 * sd / np.sqrt(num_samples))
    default = probinf.from_numpyro(prior_model, key=jax.random.PRNGKey(3))
    explicit = probinf.from_numpyro(prior_model, key=jax.random.PRNGKey(3),
                                    init_strategy=init_to_median)
    np.testing.assert_array_equal(default.init_position, explicit.init_position)
    assert default.init_position.dtype == jax.dtypes.canonicalize_dtype(jnp.float64)


def test_init_to_value_is_the_given_value_transformed():
    strategy = init_to_value(values={"sigma": 1.7, "loc": -0.4})
    target = probinf.from_numpyro(prior_model, init_strategy=strategy)
    np.testing.assert_array_equal(target.init_position, jnp.array([-0.4, jnp.log(1.7)]))
    # A dependent support: b in (0, 1 - a) is unconstrained by logit(b / (1 - a)).
    y = jnp.array(0.7)
    strategy = init_to_value(values={"a": 0.2, "b": 0.6})
    target = probinf.from_numpyro(factor_model, y, init_strategy=strategy)
    expected = [jax.scipy.special.logit(0.2), jax.scipy.special.logit(0.6 / 0.8)]
    np.testing.assert_allclose(target.init_position, expected, rtol=1e-6)
    # Sites without a value fall back to init_to_uniform, as in numpyro.
    target = probinf.from_numpyro(prior_model, init_strategy=init_to_value(values={"loc": 1}))
    assert target.init_position[0] == 1.0 and abs(target.init_position[1]) < 2.0


def test_every_numpyro_strategy_has_numpyro_meaning():
    def start(strategy):
        return np.asarray(probinf.from_numpyro(prior_model, init_strategy=strategy).init_position)

    np.testing.assert_array_equal(start(init_to_feasible), [0.0, 0.0])  # radius 0
    # Prior means: 3 and HalfNormal(2)'s 2 sqrt(2 / pi), unconstrained by log.
    np.testing.assert_allclose(start(init_to_mean), [3.0, np.log(2.0 * np.sqrt(2.0 / np.pi))],
                               rtol=1e-6)
    uniform = start(init_to_uniform)
    assert np.all(np.abs(uniform) < 2.0) and np.all(uniform != 0.0)
    assert np.all(np.abs(start(init_to_uniform(radius=0.5))) < 0.5)
    assert np.all(np.isfinite(start(init_to_sample)))


def test_unknown_or_bad_strategy_is_rejected():
    with pytest.raises(ValueError, match="init_strategy.*init_to_median"):
        probinf.from_numpyro(prior_model, init_strategy=lambda site: None)
    with pytest.raises(TypeError, match="init_strategy"):
        probinf.from_numpyro(prior_model, init_strategy="median")
    with pytest.raises(ValueError, match=r"num_samples.*positive"):
        probinf.from_numpyro(prior_model, init_strategy=init_to_median(num_samples=0))
    with pytest.raises(ValueError, match=r"\['sgima'\].*latent sites are \['loc', 'sigma'\]"):
        probinf.from_numpyro(prior_model, init_strategy=init_to_value(values={"sgima": 1.0}))
    with pytest.raises(ValueError, match="'sigma' \\(HalfNormal\\) a value outside its support"):
        probinf.from_numpyro(prior_model, init_strategy=init_to_value(values={"sigma": -1.0}))
    with pytest.raises(ValueError, match="'sigma' \\(HalfNormal\\) a value of shape \\(2,\\)"):
        probinf.from_numpyro(prior_model,
                             init_strategy=init_to_value(values={"sigma": jnp.ones(2)}))
    with pytest.raises(TypeError, match="key"):
        probinf.from_numpyro(prior_model, key=0)


# --- errors name the site, its distribution and the reason ----------------------------


def normal_model(y):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", dist.Normal(0.0, sigma), obs=y)


def test_nonfinite_observations_are_rejected_naming_the_site():
    with pytest.raises(ValueError, match=r"observed site 'y' \(Normal\) has 2 non-finite") as err:
        probinf.from_numpyro(normal_model, jnp.array([1.0, jnp.nan, jnp.inf, 2.0]))
    assert "NaN and infinite" in str(err.value) and "4 entries" in str(err.value)


def test_nonfinite_log_density_at_init_names_strategy_site_and_alternatives():
    def bounded(y):
        top = numpyro.sample("top", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Uniform(0.0, top), obs=y)

    # Every HalfNormal(1) median of 15 draws is far below the datum 50.
    with pytest.raises(ValueError, match="init_to_median") as err:
        probinf.from_numpyro(bounded, 50.0)
    message = str(err.value)
    assert "observed site 'y' (Uniform)" in message and "init_to_value" in message
    target = probinf.from_numpyro(bounded, 50.0, init_strategy=init_to_value(values={"top": 60.0}))
    np.testing.assert_allclose(target.log_density(target.init_position),
                               -potential_energy(bounded, (jnp.asarray(50.0),), {},
                                                 {"top": jnp.log(60.0)}), rtol=1e-6)


def test_site_that_cannot_be_a_continuous_latent_is_named():
    def on_sphere():
        numpyro.sample("direction", dist.ProjectedNormal(jnp.ones(3)))

    with pytest.raises(ValueError, match=r"'direction' \(ProjectedNormal") as err:
        probinf.from_numpyro(on_sphere)
    assert "init_to_median" in str(err.value)


def test_delta_latent_and_model_errors_are_named():
    def delta_latent():
        numpyro.sample("fixed", dist.Delta(1.0))
        numpyro.sample("free", dist.Normal())

    with pytest.raises(ValueError, match=r"'fixed'.*Delta.*deterministic"):
        probinf.from_numpyro(delta_latent)

    def broken():
        numpyro.sample("first", dist.Normal())
        raise RuntimeError("bad model code")

    with pytest.raises(RuntimeError, match="bad model code") as err:
        probinf.from_numpyro(broken)
    assert "after site 'first'" in "".join(err.value.__notes__)


def test_x64_model_in_a_subprocess():
    """x64 is process-global: one subprocess runs the x64 checks."""
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
        from jax.flatten_util import ravel_pytree
        from numpyro.infer import init_to_value
        from numpyro.infer.util import constrain_fn, potential_energy
        import probinf
        assert jax.config.jax_enable_x64

        def model(y):
            a = numpyro.sample("a", dist.ImproperUniform(dist.constraints.positive, (), ()))
            b = numpyro.sample("b", dist.Uniform(0.0, 1.0 / (1.0 + a)))
            numpyro.deterministic("c", a * b)
            with numpyro.plate("n", y.shape[0]):
                numpyro.sample("y", dist.Normal(a, 1.0 + b), obs=y)

        y = jnp.array([0.3, 1.2, 2.0])
        target = probinf.from_numpyro(model, y)
        assert target.init_position.dtype == jnp.float64, target.init_position.dtype
        unravel = ravel_pytree({"a": 0.0, "b": 0.0})[1]
        points = jax.random.normal(jax.random.key(0), (3, 2))
        ours = jax.jit(lambda p: target.log_density(p))(points)
        assert ours.dtype == jnp.float64
        sites = jax.jit(lambda p: target.constrain(p))(points)
        reference = jax.jit(jax.vmap(lambda z: -potential_energy(model, (y,), {}, unravel(z))))
        np.testing.assert_allclose(ours, reference(points), rtol=1e-12)
        reference_sites = jax.jit(jax.vmap(lambda z: constrain_fn(
            model, (y,), {}, unravel(z), return_deterministic=True)))(points)
        for name, value in reference_sites.items():
            assert sites[name].dtype == jnp.float64
            np.testing.assert_allclose(sites[name], value, rtol=1e-12)
        assert target.log_density(points[0].astype(jnp.float32)).dtype == jnp.float64
        start = init_to_value(values={"a": 0.3, "b": 0.5})
        exact = probinf.from_numpyro(model, y, init_strategy=start)
        np.testing.assert_array_equal(exact.init_position,
                                      [np.log(0.3), jax.scipy.special.logit(0.5 * 1.3)])
        print("x64 ok")
    """)
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x64 ok" in result.stdout
