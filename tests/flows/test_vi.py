"""Flow-based VI through probinf.fit against exact answers: the Rezende–Mohamed
potentials (log Z by quadrature), Neal's funnel (log Z = 0) and eight schools
(posterior moments against posteriordb's NUTS reference draws).

Budgets are small (the benchmark trains longer); each tolerance is a VI-quality
requirement on top of Monte Carlo error, stated where it is used.
"""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flows
import probinf
from probinf import vi

STEPS = 1200
OPTIMIZER = optax.adam(optax.cosine_decay_schedule(5e-3, STEPS))  # shared: one compile per problem type


def _elbo_and_standard_error(key, family, target, n=50_000):
    z, log_q = family.sample_and_log_prob(key, n)
    log_w = np.asarray(target.log_density(z) - log_q, np.float64)
    return log_w.mean(), log_w.std() / np.sqrt(n)


def test_rezende_mohamed_potentials():
    """ELBO is a lower bound of the exact log Z and gets within 0.2 nats of it on U1–U4
    (the four share one compiled training loop: the potential lives in the target's params)."""
    flow = flows.spline_flow(jax.random.key(0), 2, num_layers=6, width=32)
    objective = vi.ELBO(32, vi.STL())
    for index, (name, prior_scale) in enumerate([("U1", None), ("U2", 2.0), ("U3", 2.0), ("U4", 2.0)]):
        target, log_z = flows.potentials.rezende_mohamed(name, prior_scale=prior_scale)
        # The ELBO gap is the quantity under test. fit's PSIS diagnostics are off: after
        # this short budget the flows' tails are too light for importance sampling on U1
        # and U2 (k-hat 0.86-0.94 on 2,000 draws, 0.57-0.62 on U3/U4) although the ELBO
        # is within 0.13 nats; fit would rightly warn about that.
        result = probinf.fit(objective, flow, target, key=jax.random.key(index), steps=STEPS,
                             optimizer=OPTIMIZER, chunk_size=STEPS, progress=False,
                             diagnose=False)
        elbo, se = _elbo_and_standard_error(jax.random.key(10 + index), result.family, target)
        assert elbo <= log_z + 4 * se, name
        assert log_z - elbo < 0.2, (name, log_z - elbo)


def test_neal_funnel():
    """log Z = 0 exactly. With the spline interval covering the funnel's wide mouth
    (bound 15), the gap is below 0.15 nats and the ELBO stays below 0."""
    target, log_z = flows.potentials.neal_funnel(2)
    flow = flows.spline_flow(jax.random.key(0), 2, num_layers=6, width=32, bound=15.0)
    result = probinf.fit(vi.ELBO(32), flow, target, key=jax.random.key(1), steps=STEPS,
                         optimizer=OPTIMIZER, chunk_size=STEPS, progress=False)
    elbo, se = _elbo_and_standard_error(jax.random.key(2), result.family, target)
    assert elbo <= log_z + 4 * se
    assert log_z - elbo < 0.15


def eight_schools_noncentered(sigma, y=None):
    """posteriordb's eight_schools_noncentered, in numpyro."""
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


@pytest.mark.slow
def test_eight_schools_against_nuts(shared_data):
    """A spline-flow guide matches the NUTS reference: every posterior mean within 0.25
    reference sds, every sd within 25% (the reference's own Monte Carlo error is ~1%)."""
    folder = shared_data / "posteriordb"
    data = json.loads(gzip.open(folder / "eight_schools.data.json.gz").read())
    chains = json.loads(gzip.open(folder / "eight_schools-eight_schools_noncentered.reference_draws.json.gz").read())
    reference = {k: np.concatenate([np.asarray(c[k]) for c in chains]) for k in chains[0]}
    sigma, y = jnp.asarray(data["sigma"], jnp.float32), jnp.asarray(data["y"], jnp.float32)
    guide = flows.FlowGuide(eight_schools_noncentered, sigma, model_kwargs={"y": y},
                            key=jax.random.key(0), num_layers=4, width=32, init_scale=1.0)
    result = probinf.fit(vi.ELBO(16), guide.flow, guide.target, key=jax.random.key(1), steps=1500,
                         optimizer=optax.adam(optax.cosine_decay_schedule(5e-3, 1500)),
                         chunk_size=1500, progress=False)
    draws = guide.sample_posterior(jax.random.key(2), 20_000, result.family)
    names = ["mu", "tau"] + [f"theta[{j + 1}]" for j in range(8)]
    ours = np.column_stack([draws["mu"], draws["tau"], draws["theta"]])
    theirs = np.column_stack([reference[n] for n in names])
    z_scores = (ours.mean(0) - theirs.mean(0)) / theirs.std(0)
    sd_ratio = ours.std(0) / theirs.std(0)
    assert np.all(np.abs(z_scores) < 0.25), dict(zip(names, z_scores.round(3), strict=True))
    assert np.all(np.abs(sd_ratio - 1) < 0.25), dict(zip(names, sd_ratio.round(3), strict=True))
