"""Targets: numpyro's transforms and Jacobians, batching, constrain, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

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
    target = probinf.from_logdensity(lambda z: z.sum(), 2)
    with pytest.raises(ValueError, match="last axis of length 2"):
        target.log_density(jnp.zeros(3))


def test_discrete_latent_site_is_rejected_by_name():
    def mixture(y):
        component = numpyro.sample("component", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(component, 1.0), obs=y)

    with pytest.raises(ValueError, match="'component' is a discrete latent"):
        probinf.from_numpyro(mixture, 0.3)


def test_model_without_latents_is_rejected():
    def observed_only(y):
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

    with pytest.raises(ValueError, match="no latent"):
        probinf.from_numpyro(observed_only, 0.3)
