"""Training: a DT trained once (module fixture) is checked against exact posteriors and a Kalman filter.

The task is the measurement update of a linear-Gaussian state-space model (2-d state,
1-d observations of the first coordinate), with mixture priors of one or two
components and one to four observations: its exact posterior is the conjugate
mixture update, and filtering with it is checked against the Kalman filter.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amortized import (
    DistributionTransformer,
    GaussianMixture,
    default_optimizer,
    load_checkpoint,
    monte_carlo_kl,
    sequential_posterior,
    train,
)
from amortized.tasks import ConjugateGaussian, LinearGaussianStateSpace, kalman_filter

SSM = LinearGaussianStateSpace(
    transition=[[0.9, 0.3], [-0.3, 0.9]],
    transition_noise=0.2 * np.eye(2),
    observation_matrix=[[1.0, 0.0]],
    observation_noise=[[0.5]],
)
TASK = SSM.update_task(num_observations=(1, 4), max_components=2)


@pytest.fixture(scope="module")
def trained():
    model = DistributionTransformer(key=jax.random.key(0), d_model=32, num_heads=4, **TASK.model_options())
    return train(model, TASK, key=jax.random.key(1), steps=1500, batch_size=128, learning_rate=2e-3, progress=False)


def kl_exact_to(model, priors, observations, mask, key):
    @eqx.filter_jit
    def run(model, priors, observations, mask, key):
        def one(prior, y, m, k):
            exact = TASK.exact_posterior(prior, y, m)
            return (monte_carlo_kl(k, exact, model.update(prior, y, m), 4000),
                    monte_carlo_kl(k, exact, prior, 4000))

        return jax.vmap(one)(priors, observations, mask, jax.random.split(key, observations.shape[0]))

    return run(model, priors, observations, mask, key)


def test_training_reduces_the_loss(trained):
    assert trained.stop_reason == "completed" and trained.num_steps == 1500
    assert trained.losses[-100:].mean() < trained.losses[:100].mean() - 0.5


def test_posterior_is_close_to_the_exact_mixture_posterior(trained):
    batch = TASK.simulate(jax.random.key(7), 200)
    kl_model, kl_prior = kl_exact_to(trained.model, batch.prior, batch.observations, batch.mask, jax.random.key(8))
    print(f"mean KL(exact || DT) = {float(kl_model.mean()):.4f}; KL(exact || prior) = {float(kl_prior.mean()):.4f}")
    assert float(kl_prior.mean()) > 0.5
    assert float(kl_model.mean()) < 0.08
    assert float(jnp.median(kl_model)) < 0.04


def test_prior_changed_on_the_fly(trained):
    """The same data under two hand-made priors: each DT posterior matches its exact one."""
    y = jnp.array([[0.8], [1.4]])
    priors = [
        GaussianMixture.from_covariances([0.5, 0.5], [[-2.0, 0.0], [2.0, 1.0]], [0.5 * np.eye(2), [[1.0, 0.3], [0.3, 0.8]]]),
        GaussianMixture.from_covariances([0.8, 0.2], [[1.0, -1.0], [-1.0, 2.0]], [[[2.0, -0.5], [-0.5, 1.0]], 0.3 * np.eye(2)]),
    ]
    for prior in priors:
        exact = TASK.exact_posterior(prior, y)
        dt = trained.model(prior, y)
        kl = float(monte_carlo_kl(jax.random.key(3), exact, dt, 20_000))
        kl_prior = float(monte_carlo_kl(jax.random.key(3), exact, prior, 20_000))
        assert kl < 0.1 < kl_prior


def test_sequential_inference_matches_the_batch_posterior(trained):
    prior = GaussianMixture.from_covariances([0.4, 0.6], [[-1.0, 0.5], [1.5, -0.5]], [np.eye(2), 0.6 * np.eye(2)])
    y = jnp.array([[0.3], [1.1], [0.7], [1.6], [0.9], [1.2]])
    steps = sequential_posterior(trained.model, prior, y.reshape(3, 2, 1))
    last = jax.tree_util.tree_map(lambda x: x[-1], steps)
    exact = TASK.exact_posterior(prior, y)
    assert float(monte_carlo_kl(jax.random.key(4), exact, last, 20_000)) < 0.15


def test_filtering_with_the_dt_tracks_the_kalman_filter(trained):
    initial = GaussianMixture.gaussian([0.0, 0.0], np.eye(2))
    _, ys = SSM.simulate(jax.random.key(5), initial, 25)
    means, covs, _ = kalman_filter(jnp.zeros(2), jnp.eye(2), SSM.transition, SSM.transition_noise,
                                   SSM.observation_matrix, SSM.observation_noise, ys)
    filtered = SSM.filter(initial, ys, trained.model.update)
    dt_means = jax.vmap(lambda g: g.mean)(filtered)
    dt_covs = jax.vmap(lambda g: g.covariance)(filtered)
    sds = jnp.sqrt(jnp.diagonal(covs, axis1=-2, axis2=-1))
    assert float(jnp.max(jnp.abs(dt_means - means) / sds)) < 0.5
    ratio = jnp.sqrt(jnp.diagonal(dt_covs, axis1=-2, axis2=-1)) / sds
    assert 0.8 < float(ratio.min()) and float(ratio.max()) < 1.25


def test_checkpoint_resume_reproduces_uninterrupted_training(tmp_path):
    task = ConjugateGaussian(1, num_observations=(1, 3))
    model = DistributionTransformer(key=jax.random.key(0), d_model=8, num_heads=2, num_encoder_layers=1,
                                    num_decoder_layers=1, **task.model_options())
    optimizer = optax.adam(1e-3)
    options = dict(key=jax.random.key(1), batch_size=16, chunk_size=2, optimizer=optimizer, progress=False)
    full = train(model, task, steps=6, **options)
    path = tmp_path / "ckpt.pkl"
    train(model, task, steps=4, checkpoint_path=path, **options)
    assert load_checkpoint(path)["step"] == 4
    resumed = train(model, task, steps=6, checkpoint_path=path, resume=True, **options)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.model), jax.tree_util.tree_leaves(full.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    reloaded = load_checkpoint(path)["model"]
    for a, b in zip(jax.tree_util.tree_leaves(reloaded), jax.tree_util.tree_leaves(full.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _BrokenTask(ConjugateGaussian):
    def simulate_data(self, key, theta):
        observations, mask = super().simulate_data(key, theta)
        return observations * jnp.nan, mask


def test_non_finite_loss_stops_training_with_a_warning():
    task = _BrokenTask(1, num_observations=(1, 2))
    model = DistributionTransformer(key=jax.random.key(0), d_model=8, num_heads=2, num_encoder_layers=1,
                                    num_decoder_layers=1, **task.model_options())
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = train(model, task, key=jax.random.key(1), steps=4, batch_size=8, chunk_size=2, progress=False)
    assert result.num_steps == 0
    for a, b in zip(jax.tree_util.tree_leaves(result.model), jax.tree_util.tree_leaves(model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_default_optimizer_warms_up_then_decays_to_the_final_fraction():
    # With a constant gradient Adam's step is the learning rate itself (m/sqrt(v) = 1).
    optimizer = default_optimizer(1000, learning_rate=0.01, final_fraction=0.002)
    param = jnp.zeros(())

    def step(state, _):
        update, state = optimizer.update(jnp.asarray(0.5), state, param)
        return state, -update

    _, rates = jax.lax.scan(step, optimizer.init(param), length=1000)
    rates = np.asarray(rates)
    np.testing.assert_allclose(rates[[0, 50]], [0.0, 0.005], rtol=1e-4, atol=1e-9)  # linear warm-up over 100 steps
    np.testing.assert_allclose(rates[100], 0.01, rtol=1e-4)
    # cosine from step 100 to 1000: halfway down at step 550, 0.002 * 0.01 at the end
    np.testing.assert_allclose(rates[550], 0.5 * (0.01 + 2e-5), rtol=1e-4)
    np.testing.assert_allclose(rates[-1], 2e-5 + (0.01 - 2e-5) * 0.5 * (1 + np.cos(np.pi * 899 / 900)), rtol=1e-3)
    assert np.all(np.diff(rates[100:]) <= 1e-9)
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="final_fraction"):
            default_optimizer(10, final_fraction=bad)
    for bad in (0.0, -1e-3, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="learning_rate"):
            default_optimizer(10, learning_rate=bad)
    with pytest.raises(ValueError, match="steps"):
        default_optimizer(0)


def test_bad_training_input_is_rejected(tmp_path):
    task = ConjugateGaussian(1)
    wrong = DistributionTransformer(key=jax.random.key(0), dim=2, obs_dim=1, d_model=8, num_heads=2)
    with pytest.raises(ValueError, match="model"):
        train(wrong, task, key=jax.random.key(0), steps=2)
    model = DistributionTransformer(key=jax.random.key(0), d_model=8, num_heads=2, **task.model_options())
    with pytest.raises(TypeError, match="key"):
        train(model, task, key=0, steps=2)
    with pytest.raises(TypeError, match="task"):
        train(model, "task", key=jax.random.key(0), steps=2)
    with pytest.raises(ValueError, match="checkpoint_path"):
        train(model, task, key=jax.random.key(0), steps=2, checkpoint_every=1)
    with pytest.raises(ValueError, match="checkpoint_path"):
        train(model, task, key=jax.random.key(0), steps=2, resume=True)
    with pytest.raises(ValueError, match="steps"):
        train(model, task, key=jax.random.key(0), steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="path"):
            load_checkpoint(_write(tmp_path / "x.pkl"))


def _write(path):
    import probinf

    probinf.save(path, {"something": 1})
    return path




def test_a_second_call_with_the_same_shapes_compiles_nothing(record_compilations):
    """default_optimizer returns one object per setting, so the compiled loop is reused."""
    task = ConjugateGaussian(1, num_observations=(1, 3))
    model = DistributionTransformer(key=jax.random.key(0), d_model=8, num_heads=2, num_encoder_layers=1,
                                    num_decoder_layers=1, **task.model_options())

    def fit(seed):
        return train(model, task, key=jax.random.key(seed), steps=4, batch_size=16, chunk_size=2, progress=False)

    fit(0)
    with record_compilations() as compiled:
        fit(1)
    assert compiled == []
    assert default_optimizer(4) is default_optimizer(4)
