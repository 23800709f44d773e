"""Data subsampling in from_numpyro targets, vi.fit and FlowGuide (against exact answers)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import probinf
from probinf import vi

N, B = 400, 40
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(N, 2)), jnp.float32)
Y = jnp.asarray(np.asarray(X) @ np.array([1.5, -1.0]) + 0.3 + RNG.normal(size=N) > 0,
                jnp.float32)


def logistic(x, y, subsample_size=None):
    w = numpyro.sample("w", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as rows:
        numpyro.sample("y", dist.Bernoulli(logits=x[rows] @ w + b), obs=y[rows])


def manual_log_density(z, rows):
    """Prior plus N / B times the rows' log-likelihood (flat vector: b, w in name order)."""
    b, w = z[0], z[1:]
    prior = dist.Normal(0.0, 2.0).log_prob(w).sum() + dist.Normal(0.0, 2.0).log_prob(b)
    logits = X[rows] @ w + b
    lik = dist.Bernoulli(logits=logits).log_prob(Y[rows]).sum()
    return prior + N / len(rows) * lik


@pytest.fixture(scope="module")
def targets():
    full = probinf.from_numpyro(logistic, X, Y)
    sub = probinf.from_numpyro(logistic, X, Y, subsample_size=B)
    return full, sub


def test_subsampled_target_is_exact_on_the_full_data(targets):
    full, sub = targets
    assert sub.subsample_plates == (probinf.SubsamplePlate("data", N, B),)
    assert full.subsample_plates == ()
    z = jax.random.normal(jax.random.key(1), (5, 3))
    np.testing.assert_allclose(sub.log_density(z), full.log_density(z), rtol=1e-6)
    np.testing.assert_allclose(sub.init_position, full.init_position)


def test_a_batch_scales_its_rows_as_numpyro_does(targets):
    _, sub = targets
    rows = jnp.array([3, 3, 17, 250, 399])
    z = jnp.array([0.2, 1.0, -0.5])
    got = sub.with_batch({"data": rows}).log_density(z)
    np.testing.assert_allclose(got, manual_log_density(z, np.asarray(rows)), rtol=1e-5)
    batch = sub.draw_batch(jax.random.key(0))
    assert batch["data"].shape == (B,) and int(batch["data"].max()) < N
    assert sub.with_batch(batch).with_batch(None).batch is None


def _mean_and_se(samples):
    samples = np.asarray(samples, np.float64)
    return samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))


def _assert_unbiased(estimates, exact, z_score=4.5):
    """Every coordinate of the mean estimate within z_score standard errors of exact."""
    mean, se = _mean_and_se(estimates)
    exact = np.asarray(exact, np.float64)
    assert np.all(np.abs(mean - exact) <= z_score * se + 1e-6 * np.abs(exact)), (
        mean, exact, se)


def test_subsampled_elbo_gradient_is_unbiased(targets):
    """The mean over batches of the subsampled ELBO's gradient is the full-data gradient."""
    full, sub = targets
    family = probinf.FullRankGaussian.init(3, loc=jnp.array([0.3, 1.0, -0.8]), scale=0.3)
    objective = vi.ELBO(4)
    draw_key = jax.random.key(7)  # the same z draws for every batch: only the rows vary

    def grad_at(target):
        return jax.grad(lambda fam: objective(draw_key, fam, target))(family)

    exact = jax.flatten_util.ravel_pytree(grad_at(full))[0]

    @jax.jit
    def batch_grad(key):
        return jax.flatten_util.ravel_pytree(grad_at(sub.with_batch(sub.draw_batch(key))))[0]

    grads = jax.lax.map(batch_grad, jax.random.split(jax.random.key(3), 3000))
    _assert_unbiased(grads, exact)
    # Not trivially so: a single batch's gradient is far from the full one.
    assert float(jnp.abs(grads[0] - exact).max()) > 10 * float(
        _mean_and_se(grads)[1].max())


def test_control_variate_is_unbiased_and_exact_on_all_rows(targets):
    full, sub = targets
    reference = jnp.array([0.3, 1.5, -1.0])
    cv = sub.with_control_variate(reference)
    z = jnp.array([0.25, 1.3, -0.9])
    all_rows = cv.with_batch({"data": jnp.arange(N)})
    np.testing.assert_allclose(all_rows.log_density(z), full.log_density(z), rtol=1e-5)

    @jax.jit
    def estimates(key):
        batch = sub.draw_batch(key)
        plain = jax.value_and_grad(sub.with_batch(batch).log_density)(z)
        with_cv = jax.value_and_grad(cv.with_batch(batch).log_density)(z)
        return jnp.concatenate([plain[0][None], plain[1]]), jnp.concatenate(
            [with_cv[0][None], with_cv[1]])

    plain, with_cv = jax.lax.map(estimates, jax.random.split(jax.random.key(4), 2000))
    exact = jnp.concatenate([full.log_density(z)[None], jax.grad(full.log_density)(z)])
    _assert_unbiased(with_cv, exact)
    _assert_unbiased(plain, exact)
    # Near the reference the residual is third order: far less variance than plain rows.
    assert np.all(np.asarray(with_cv).std(0) < 0.1 * np.asarray(plain).std(0))


def test_fit_with_subsampling_matches_the_full_data_fit(targets):
    """From vi.initialize's start the control variate is used from step 0 and the fitted
    Gaussian matches the full-data fit's, schedule included."""
    full, sub = targets
    family = vi.initialize(jax.random.key(5), full)
    fits = [vi.fit(vi.ELBO(8), family, t, key=jax.random.key(0), steps=4000,
                   optimizer=optax_schedule(), diagnose=False) for t in (full, sub)]
    assert fits[1].control_variate_from == 0 and fits[0].control_variate_from is None
    exact, approx = (f.family for f in fits)
    sd = np.sqrt(np.diag(np.asarray(exact.covariance)))
    assert np.all(np.abs(np.asarray(approx.mean - exact.mean)) < 0.1 * sd)
    ratio = np.sqrt(np.diag(np.asarray(approx.covariance))) / sd
    assert np.all(np.abs(np.log(ratio)) < 0.1), ratio


def optax_schedule():
    import optax

    return optax.adam(optax.cosine_decay_schedule(2e-2, 4000, alpha=1e-2))


def test_local_latent_in_a_subsampled_plate_is_refused():
    def model(y):
        with numpyro.plate("data", y.shape[0], subsample_size=5) as rows:
            u = numpyro.sample("u", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(u, 1.0), obs=y[rows])

    with pytest.raises(ValueError, match="latent site 'u'.*subsampled plate 'data'"):
        probinf.from_numpyro(model, jnp.zeros(20))


def test_numpy_data_indexed_by_the_plate_fails_at_construction():
    """vi.fit's steps pass traced rows: a model indexing NumPy data with them is refused
    when the target is built, not deep inside the first compiled step."""
    with pytest.raises(ValueError, match="traced row indices for its subsampled plate.*'data'"):
        probinf.from_numpyro(logistic, np.asarray(X), np.asarray(Y), subsample_size=B)


def test_batch_errors_name_the_argument(targets):
    full, sub = targets
    with pytest.raises(ValueError, match="no subsampled plate"):
        full.draw_batch(jax.random.key(0))
    with pytest.raises(ValueError, match="subsampled plates \\['data'\\]"):
        sub.with_batch({"rows": jnp.arange(3)})
    with pytest.raises(ValueError, match="outside \\[0, 400\\)"):
        sub.with_batch({"data": jnp.array([0, 400])})
    with pytest.raises(ValueError, match="integer array"):
        sub.with_batch({"data": jnp.zeros(3)})
    with pytest.raises(ValueError, match="`reference` must have shape \\(3,\\)"):
        sub.with_control_variate(jnp.zeros(2))


def test_flow_guide_takes_a_subsampled_model(targets):
    """FlowGuide builds on the full-data density and trains with batches, in probinf and
    in numpyro's SVI (which subsamples the plate itself)."""
    import optax
    from numpyro.infer import SVI, Trace_ELBO

    import flows

    full, _ = targets
    guide = flows.FlowGuide(logistic, X, Y, key=jax.random.key(0), num_layers=1,
                            model_kwargs={"subsample_size": B})
    assert guide.target.subsample_plates == (probinf.SubsamplePlate("data", N, B),)
    z = jax.random.normal(jax.random.key(1), (4, 3))
    np.testing.assert_allclose(guide.target.log_density(z), full.log_density(z), rtol=1e-6)
    svi = SVI(logistic, guide, optax.adam(1e-3), Trace_ELBO())
    result = svi.run(jax.random.key(2), 50, X, Y, subsample_size=B, progress_bar=False)
    assert np.all(np.isfinite(result.losses))


def test_a_far_start_trains_in_two_phases(targets):
    """Started far from the mode, the variate does not help at first: the plain estimate
    runs the first half (the same run as without the variate), the variate the rest."""
    _, sub = targets
    family = probinf.FullRankGaussian.init(3, loc=jnp.array([-6.0, 8.0, 8.0]), scale=0.1)
    result = vi.fit(vi.ELBO(4), family, sub, key=jax.random.key(0), steps=200, diagnose=False)
    assert result.control_variate_from == 100
    assert isinstance(result.target.control_variate, probinf._subsample.TaylorControlVariate)
    assert result.num_steps == 200 and result.target.batch is None
    plain = vi.fit(vi.ELBO(4), family, sub, key=jax.random.key(0), steps=200, diagnose=False,
                   control_variate=False)
    assert plain.target.control_variate is None and plain.control_variate_from is None
    np.testing.assert_array_equal(result.losses[:100], plain.losses[:100])
    assert "control variate from step 100" in result.summary()


def test_two_subsampled_plates_fit_plainly_with_a_warning():
    def model(a, b):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        with numpyro.plate("a", a.shape[0], subsample_size=10) as rows:
            numpyro.sample("ya", dist.Normal(mu, 1.0), obs=a[rows])
        with numpyro.plate("b", b.shape[0], subsample_size=5) as rows:
            numpyro.sample("yb", dist.Normal(mu, 2.0), obs=b[rows])

    a, b = jnp.linspace(-1.0, 3.0, 50), jnp.linspace(0.0, 2.0, 30)
    target = probinf.from_numpyro(model, a, b)
    batch = target.draw_batch(jax.random.key(0))
    assert batch["a"].shape == (10,) and batch["b"].shape == (5,)
    # Exact full-data posterior of mu (conjugate): precision-weighted.
    precision = 1 / 9 + 50 / 1.0 + 30 / 4.0
    mean = (a.sum() / 1.0 + b.sum() / 4.0) / precision
    np.testing.assert_allclose(
        target.with_batch({"a": jnp.arange(50), "b": jnp.arange(30)}).log_density(mean[None])
        - target.log_density(jnp.zeros(1)), target.log_density(mean[None])
        - target.log_density(jnp.zeros(1)), rtol=1e-5)
    family = probinf.MeanFieldGaussian.init(1, loc=jnp.zeros(1), scale=0.1)
    with pytest.warns(RuntimeWarning, match="subsamples 2 plates"):
        result = vi.fit(vi.ELBO(4), family, target, key=jax.random.key(1), steps=3000,
                        optimizer=optax_schedule(), diagnose=False)
    assert abs(float(result.family.loc[0]) - float(mean)) < 0.25 / np.sqrt(precision)


def test_infer_on_a_subsampled_model_gives_the_full_data_posterior():
    """probinf.infer scores its draws with the target's full-data density: a subsampled
    plate changes how VI trains, not the posterior it reports."""
    draws = [probinf.infer(logistic, X, Y, key=jax.random.key(0), num_draws=1000,
                           subsample_size=size).posterior for size in (None, B)]
    for name in ("w", "b"):
        full, sub = (np.asarray(d[name]).reshape(1000, -1) for d in draws)
        sd = full.std(0)
        assert np.all(np.abs(sub.mean(0) - full.mean(0)) < 0.15 * sd)
        assert np.all(np.abs(np.log(sub.std(0) / sd)) < 0.15)
