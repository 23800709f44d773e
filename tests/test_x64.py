"""Every core algorithm under ``jax_enable_x64``: float64 in, float64 out, exact answers.

x64 is process-global (and read when JAX starts), so the checks run in ONE subprocess
with ``JAX_ENABLE_X64=1``. Each check prints a JSON line; the tests below read them.

Tolerances:

* exact (deterministic) quantities: ``EXACT = 1e-9`` absolute. float64 rounding of these
  O(1-10) numbers is ~1e-14, float32 rounding ~1e-6, so a silent float32 downgrade fails;
* Monte Carlo evidences: Z-hat is unbiased (Del Moral, 2004), so the mean of Z-hat / Z over
  independent runs is tested against 1 with a t-test at two-sided level 1e-4 (and the
  runs' standard error must be below 0.1, so that the test has power);
* stochastic-gradient VI that cannot converge exactly (mean field): 0.02 absolute.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from scipy import stats

EXACT = 1e-9
HERE = pathlib.Path(__file__).resolve().parent

SCRIPT = r'''
import json, math, sys, time, traceback, warnings

import probinf  # first: it configures XLA before JAX starts
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import special, stats

from probinf.exact import linear_gaussian_posterior

assert jax.config.jax_enable_x64, "run with JAX_ENABLE_X64=1"
warnings.filterwarnings("error", category=RuntimeWarning, module="probinf")
REFERENCE_PATH = sys.argv[1]


def emit(name, seconds, cpu_seconds, **values):
    print(json.dumps({"check": name, "seconds": round(seconds, 2),
                      "cpu_seconds": round(cpu_seconds, 2), **values}), flush=True)


def dtypes(tree):
    """The sorted floating dtypes of the array leaves of ``tree``."""
    return sorted({str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)
                   if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)})


def run(check):
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        values = check()
    except Exception:  # one failing check must not hide the others
        values = {"error": traceback.format_exc()[-4000:]}
    emit(check.__name__, time.perf_counter() - start, time.process_time() - cpu_start, **values)


def evidence_ratio(log_evidence, exact):
    ratio = np.exp(np.asarray(log_evidence) - exact)
    return {"ratio_mean": float(ratio.mean()),
            "ratio_se": float(ratio.std(ddof=1) / np.sqrt(ratio.size)), "runs": int(ratio.size)}


# A conjugate linear-Gaussian problem: x ~ N(M0, S0), y | x ~ N(A x, R).
M0 = np.array([0.5, -1.0])
S0 = np.diag([1.0, 2.0])
A = np.array([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
R = 0.5 * np.eye(3)
Y = np.array([1.0, -0.5, 2.0])
POST_MEAN, POST_COV, LOG_Z = linear_gaussian_posterior(M0, S0, A, Y, R)


def conjugate_log_density(x):
    prior = jax.scipy.stats.multivariate_normal.logpdf(x, jnp.asarray(M0), jnp.asarray(S0))
    return prior + jax.scipy.stats.multivariate_normal.logpdf(
        jnp.asarray(Y), jnp.asarray(A) @ x, jnp.asarray(R))


CONJUGATE = probinf.from_logdensity(conjugate_log_density, 2)


def tempered_smc_numpyro():
    """mu ~ N(0, 2), tau ~ LogNormal(0, 0.5), y_i | mu ~ N(mu, 0.7): Z is mu's evidence."""
    import numpyro
    import numpyro.distributions as dist
    from probinf import smc

    y = np.array([0.8, 1.3, 0.2, 1.9, 1.1])

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        numpyro.sample("tau", dist.LogNormal(0.0, 0.5))
        numpyro.sample("y", dist.Normal(mu, 0.7), obs=y)

    target = probinf.from_numpyro(model, jnp.asarray(y))
    exact = linear_gaussian_posterior([0.0], [[4.0]], np.ones((5, 1)), y, 0.49 * np.eye(5))[2]
    # The log density at a point, by hand (tau = e^u adds the log-Jacobian u).
    z = jnp.asarray([0.3, -0.4])
    site = target.constrain(z)
    mu, tau = float(site["mu"]), float(site["tau"])
    by_hand = (stats.norm.logpdf(mu, 0, 2) + stats.norm.logpdf(y, mu, 0.7).sum()
               + stats.norm.logpdf(math.log(tau), 0, 0.5))
    run_one = lambda k: smc.tempered_smc(k, target, 256, kernel="hmc", num_mcmc_steps=2,
                                         num_integration_steps=4)
    result = jax.jit(jax.vmap(run_one))(jax.random.split(jax.random.key(5), 16))
    result.check()
    return {"log_density_error": abs(float(target.log_density(z)) - by_hand),
            **evidence_ratio(result.log_evidence, exact),
            "dtypes": dtypes((target.log_density(z), target.init_position, result))}


def particle_filter():
    """A 1-d linear-Gaussian SSM: the evidence from the joint Gaussian of the trajectory."""
    from probinf import smc
    m0, p0, f, q, h, r = 0.0, 1.0, 0.9, 0.5, 1.0, 0.3
    y = np.array([0.3, -0.2, 0.8, 1.1, 0.4, -0.5, 0.0, 0.6])
    steps = y.size
    # x = L w, w ~ N(0, I): x_t = f x_{t-1} + sqrt(q) w_t, x_0 = m0 + sqrt(p0) w_0.
    powers = np.array([[f ** (t - k) if t >= k else 0.0 for k in range(steps)] for t in range(steps)])
    factor = powers * np.array([math.sqrt(p0)] + [math.sqrt(q)] * (steps - 1))[None, :]
    exact = linear_gaussian_posterior(m0 * f ** np.arange(steps), factor @ factor.T,
                                      h * np.eye(steps), y, r * np.eye(steps))[2]
    model = smc.LinearGaussianSSM([m0], [[p0]], [[f]], [[q]], [[h]], [[r]], y[:, None])
    kalman = {m: smc.kalman_filter(model, m) for m in ("sequential", "parallel")}
    run_one = lambda k: smc.particle_filter(k, smc.Bootstrap(model), 256)
    result = jax.jit(jax.vmap(run_one))(jax.random.split(jax.random.key(1), 32))
    return {"kalman_error": max(abs(float(k.log_evidence) - exact) for k in kalman.values()),
            **evidence_ratio(result.log_evidence, exact), "dtypes": dtypes((model, kalman, result))}


def hmm():
    """A 3-state HMM, T = 5: forward-backward against the sum over all 3^5 paths."""
    from probinf import smc
    rng = np.random.default_rng(0)
    initial, transition = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3), size=3)
    likelihoods = rng.random((5, 3))
    paths = np.array(np.meshgrid(*[np.arange(3)] * 5, indexing="ij")).reshape(5, -1).T
    joint = (initial[paths[:, 0]] * np.prod(transition[paths[:, :-1], paths[:, 1:]], axis=1)
             * np.prod(likelihoods[np.arange(5), paths], axis=1))
    last = np.bincount(paths[:, -1], weights=joint, minlength=3) / joint.sum()
    args = (np.log(initial), np.log(transition), np.log(likelihoods))
    out = {m: smc.hmm_smoother(*args, method=m) for m in ("sequential", "parallel")}
    return {"evidence_error": max(abs(float(o.log_evidence) - math.log(joint.sum()))
                                  for o in out.values()),
            "filtered_error": max(float(np.abs(np.exp(o.log_filtered[-1]) - last).max())
                                  for o in out.values()),
            "dtypes": dtypes(out)}


def vi():
    from probinf import vi as pvi
    # At the exact posterior log p~(z) - log q(z) = log Z for every z: the ELBO estimate is
    # exact whatever the draws.
    exact_q = probinf.FullRankGaussian.init(2, loc=POST_MEAN, scale_tril=np.linalg.cholesky(POST_COV))
    out = {"elbo_error": abs(-float(pvi.ELBO(num_samples=8)(jax.random.key(2), exact_q, CONJUGATE))
                             - LOG_Z)}
    # Known optima: full rank -> the posterior, where the STL gradient is exactly zero, so
    # adam converges to rounding; mean field -> the posterior mean and the inverse diagonal
    # of the posterior precision, where the STL gradient stays noisy (the step decays).
    precision = np.linalg.inv(POST_COV)
    for name, family, cov, optimizer in (
        ("full_rank", probinf.FullRankGaussian.init(2), POST_COV, optax.adam(1e-2)),
        ("mean_field", probinf.MeanFieldGaussian.init(2), np.diag(1.0 / np.diag(precision)),
         optax.adam(optax.exponential_decay(1e-2, 1500, 1e-2))),
    ):
        result = probinf.fit(pvi.ELBO(num_samples=4, estimator=pvi.STL()), family, CONJUGATE,
                             key=jax.random.key(3), optimizer=optimizer, steps=1500,
                             chunk_size=1500, progress=False)  # one chunk: one compilation
        q = result.family
        draws = q.sample(jax.random.key(4), 2)
        out[name] = {"mean_error": float(np.abs(np.asarray(q.mean) - POST_MEAN).max()),
                     "cov_error": float(np.abs(np.asarray(q.covariance) - cov).max()),
                     "dtypes": dtypes((q, result.losses, draws, q.log_prob(draws)))}
    return out


def flows_check():
    import flows
    rng = np.random.default_rng(0)
    # A 1-d MAF with a spline transformer fitted a few epochs: its density integrates to one
    # (trapezoid rule; the Gaussian tails beyond +-25 are below 1e-100), and sampling
    # (forward pass) agrees with the density (inverse pass) at the flow's own draws.
    data = np.concatenate([rng.normal(-2, 0.5, 128), rng.normal(1.5, 0.8, 128)])[:, None]
    flow = flows.masked_autoregressive_flow(jax.random.key(9), 1, num_layers=2, width=8, depth=1,
                                            transformer="spline")
    fit = flows.fit_to_data(jax.random.key(10), flow, data, max_epochs=3, batch_size=64,
                            validation_fraction=0.0, progress=False)
    x, log_q = fit.flow.sample_and_log_prob(jax.random.key(8), 64)
    grid = np.linspace(-25.0, 25.0, 200_001)
    log_p = fit.flow.log_prob(jnp.concatenate([x, jnp.asarray(grid[:, None])]))  # one call
    density = np.exp(np.asarray(log_p[64:]))
    return {"integral_error": abs(float(np.trapezoid(density, grid)) - 1.0),
            "consistency_error": float(np.abs(np.asarray(log_p[:64] - log_q)).max()),
            "losses_finite": bool(np.isfinite(fit.train_losses).all()),
            "dtypes": dtypes((fit.flow, x, log_q, log_p))}


def circuits_check():
    """A 5-variable circuit against an independent float64 evaluator and enumeration."""
    import importlib.util
    import circuits

    spec = importlib.util.spec_from_file_location("circuit_reference", REFERENCE_PATH)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    graph = circuits.random_binary_tree(jax.random.key(13), 5, 2, 2)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 3, "cp", key=jax.random.key(14))
    rng = np.random.default_rng(1)
    data = (rng.random((64, 5)) < np.array([0.2, 0.5, 0.7, 0.4, 0.9])).astype(int)
    trained = circuits.em(circuit, data, num_epochs=2, keep_best=False, progress=False).circuit
    domain = reference.all_assignments(5, 2)
    log_p = np.asarray(trained.log_prob(domain))
    observed = rng.random((32, 5)) < 0.5  # 32 rows: the compiled log_prob is reused
    x = domain[rng.integers(0, 32, 32)]
    gaussian = circuits.compile_circuit(graph, circuits.Gaussian(), 2, "cp", key=jax.random.key(16))
    points = rng.normal(size=(8, 5))
    h, log_w = rng.normal(size=(1, 4, 3)), rng.normal(size=(1, 2, 3))
    fused = circuits.fused_log_matmul_exp(jnp.asarray(h), jnp.asarray(log_w))  # interpret mode
    return {
        # EM never lowers the training log-likelihood (Dempster, Laird and Rubin, 1977);
        # both measured by the reference evaluator.
        "em_gain": float(np.mean(reference.log_normalised(trained, data, domain))
                         - np.mean(reference.log_normalised(circuit, data, domain))),
        "log_prob_error": float(np.abs(log_p - reference.log_normalised(trained, domain, domain)).max()),
        "total_mass_error": abs(float(special.logsumexp(log_p))),
        "marginal_error": float(np.abs(np.asarray(trained.log_marginal(x, observed))
                                       - reference.enumerated_log_marginal(log_p, domain, x, observed)).max()),
        "gaussian_error": float(np.abs(np.asarray(gaussian.log_prob(points))
                                       - reference.log_unnormalised(gaussian, points)).max()),
        "fused_kernel_error": float(np.abs(np.asarray(fused) - special.logsumexp(
            h[:, :, None, :] + log_w[:, None, :, :], axis=-1)).max()),
        "dtypes": dtypes((trained, log_p, gaussian, gaussian.log_prob(points), fused)),
    }


def pcn_check():
    """Relaxing a linear PCN is exact Gaussian conditioning; a backprop step is plain SGD."""
    from probinf import pcn
    keys = jax.random.split(jax.random.key(17), 4)
    # x0 ~ N(m0, 2 I), y | x0 ~ N(W x0 + b, 0.5 I): the relaxed node 0 is the posterior mean.
    layer = pcn.Dense(2, 3, key=keys[0])
    m0 = np.array([0.3, -0.6])
    net = pcn.PCN([layer], (2,), variances=[0.5], prior_variance=2.0, prior_mean=jnp.asarray(m0))
    y = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.3]])
    relaxed = pcn.infer(net, None, jnp.asarray(y), steps=400, step_size=0.2, method="heun")
    w, b = np.asarray(layer.linear.weight), np.asarray(layer.linear.bias)
    exact = np.stack([linear_gaussian_posterior(m0, 2.0 * np.eye(2), w, row - b, 0.5 * np.eye(3))[0]
                      for row in y])
    mlp = pcn.mlp(keys[1], [3, 4, 2])
    x, target = jax.random.normal(keys[2], (5, 3)), jax.random.normal(keys[3], (5, 2))
    params = [(l.linear.weight, l.linear.bias) for l in mlp.layers]

    def loss(params):  # the feed-forward loss, written out
        (w1, b1), (w2, b2) = params
        prediction = jnp.tanh(x @ w1.T + b1) @ w2.T + b2
        return jnp.mean(0.5 * jnp.sum((target - prediction) ** 2, axis=1))

    grads = jax.grad(loss)(params)
    optimizer = optax.sgd(0.1)
    state = optimizer.init(eqx.filter(mlp, eqx.is_inexact_array))
    stepped, _, energies = pcn.train_step(jax.random.key(0), mlp, state, optimizer, x, target,
                                          algorithm="backprop")
    pc_net, _, pc_energies = pcn.train_step(jax.random.key(0), mlp, state, optimizer, x, target,
                                            algorithm="pc", steps=8, step_size=0.1)
    total = np.asarray(pc_energies).sum(1)[:-1]  # the last row is after the weight update
    return {
        "posterior_mean_error": float(np.abs(np.asarray(relaxed.activities[0]) - exact).max()),
        "backprop_step_error": max(
            float(np.abs(np.asarray(new.linear.weight) - (old - 0.1 * grad)).max())
            for new, (old, _), (grad, _) in zip(stepped.layers, params, grads, strict=True)),
        "backprop_loss_error": abs(float(energies[0, -1]) - float(loss(params))),
        # Gradient descent with a small step on a smooth energy never goes up.
        "pc_energy_rise": float(np.max(np.diff(total))),
        "dtypes": dtypes((relaxed, stepped, energies, pc_net, pc_energies)),
    }


def amortized_check():
    """An untrained Distribution Transformer returns its prior; the conjugate update is exact."""
    from amortized import DistributionTransformer, GaussianMixture, condition_linear_gaussian
    prior = GaussianMixture.from_covariances(
        [0.3, 0.7], [[0.0, 1.0], [2.0, -1.0]], [np.eye(2), [[2.0, 0.5], [0.5, 1.0]]])
    observations = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)))
    model = DistributionTransformer(2, 3, key=jax.random.key(18), d_model=8, num_heads=2,
                                    num_encoder_layers=1, num_decoder_layers=1)
    posterior = model(prior, observations)
    single = GaussianMixture.from_covariances([1.0], [M0], [S0])
    obs = np.array([[0.4], [1.2], [-0.1]])
    updated, log_evidence = condition_linear_gaussian(
        single, jnp.asarray(obs), jnp.asarray(A[:1]), jnp.asarray(R[:1, :1]))
    mean, cov, exact = linear_gaussian_posterior(M0, S0, np.repeat(A[:1], 3, 0), obs[:, 0],
                                                 R[0, 0] * np.eye(3))
    chol = np.asarray(updated.scale_tril[0])
    return {
        "identity_error": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in (
            (posterior.log_weights, prior.log_weights), (posterior.means, prior.means),
            (posterior.scale_tril, prior.scale_tril))),
        "conjugate_mean_error": float(np.abs(np.asarray(updated.means[0]) - mean).max()),
        "conjugate_cov_error": float(np.abs(chol @ chol.T - cov).max()),
        "log_evidence_error": abs(float(log_evidence) - exact),
        "dtypes": dtypes((model, posterior, updated, log_evidence)),
    }


for check in (tempered_smc_numpyro, particle_filter, hmm, vi, flows_check, circuits_check,
              pcn_check, amortized_check):
    run(check)
'''


@pytest.fixture(scope="module")
def checks():
    # At XLA's default optimisation level (tests/conftest.py turns it off for the rest).
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
    env = os.environ | {"JAX_ENABLE_X64": "1", "XLA_FLAGS": " ".join(flags.split())}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(HERE / "circuits" / "reference.py")],
        env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=600,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 and not lines:
        pytest.fail(f"the x64 script failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {"stderr": proc.stderr, **{line["check"]: line for line in lines}}


def get(checks, name):
    if name not in checks:
        pytest.fail(f"check {name!r} printed nothing; the script's stderr ends:\n{checks['stderr'][-4000:]}")
    result = checks[name]
    assert "error" not in result, result["error"]
    return result


def assert_float64(result):
    assert result["dtypes"] == ["float64"], result["dtypes"]


def assert_unbiased(result):
    """Mean of Z-hat / Z over independent runs equals 1: a t-test at two-sided level 1e-4."""
    t = stats.t.isf(5e-5, result["runs"] - 1)
    assert result["ratio_se"] < 0.1, result
    assert abs(result["ratio_mean"] - 1.0) < t * result["ratio_se"], result


def test_tempered_smc_on_a_numpyro_model(checks):
    result = get(checks, "tempered_smc_numpyro")
    assert result["log_density_error"] < EXACT
    assert_unbiased(result)
    assert_float64(result)


def test_particle_filter_and_kalman_filter(checks):
    result = get(checks, "particle_filter")
    assert result["kalman_error"] < EXACT
    assert_unbiased(result)
    assert_float64(result)


def test_hmm_forward_backward(checks):
    result = get(checks, "hmm")
    assert result["evidence_error"] < EXACT and result["filtered_error"] < EXACT
    assert_float64(result)


def test_vi_reaches_the_known_optima(checks):
    result = get(checks, "vi")
    assert result["elbo_error"] < EXACT
    full = result["full_rank"]
    assert full["mean_error"] < EXACT and full["cov_error"] < EXACT
    mean_field = result["mean_field"]
    assert mean_field["mean_error"] < 0.02 and mean_field["cov_error"] < 0.02
    assert full["dtypes"] == mean_field["dtypes"] == ["float64"]


def test_flows_density_and_sampling(checks):
    result = get(checks, "flows_check")
    assert result["integral_error"] < 1e-6  # trapezoid rule on a 2.5e-4 grid
    assert result["consistency_error"] < EXACT
    assert result["losses_finite"]
    assert_float64(result)


def test_circuits_against_enumeration(checks):
    result = get(checks, "circuits_check")
    assert result["em_gain"] > -EXACT
    for key in ("log_prob_error", "total_mass_error", "marginal_error", "gaussian_error",
                "fused_kernel_error"):
        assert result[key] < EXACT, (key, result[key])
    assert_float64(result)


def test_pcn_inference_and_learning(checks):
    result = get(checks, "pcn_check")
    assert result["posterior_mean_error"] < EXACT
    assert result["backprop_step_error"] < EXACT and result["backprop_loss_error"] < EXACT
    assert result["pc_energy_rise"] <= EXACT
    assert_float64(result)


def test_amortized_forward_pass_and_conjugate_update(checks):
    result = get(checks, "amortized_check")
    for key in ("identity_error", "conjugate_mean_error", "conjugate_cov_error", "log_evidence_error"):
        assert result[key] < EXACT, (key, result[key])
    assert_float64(result)

