"""The twelve posteriordb models of the suite, translated from Stan to numpyro.

Each function's arguments are the Stan program's ``data`` block, by name; the
Stan file it translates is named in its docstring. Translation rules:

* Same densities, including Stan's improper priors: a parameter with no prior
  statement has a flat density over its declared support, written
  ``numpyro.sample(name, ImproperUniform(support, (), event_shape))``.
* ``x ~ normal(...)`` on a parameter declared ``<lower=0>`` is the half-normal
  (half-Cauchy, ...) distribution: it differs from Stan's unnormalised density by a
  constant only, so the posterior is the same.
* ``target += lpdf(...)`` terms that are not the density of a single parameter
  (the ARMA errors, the HMM forward algorithm) are ``numpyro.factor`` sites.
* Stan's ``transformed data`` is computed with numpy from the (concrete) data.
* Stan ``transformed parameters`` that posteriordb reports (eight schools' ``theta``,
  the GP's ``f``) are ``numpyro.deterministic`` sites; generated quantities are left out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "arma11",
    "blr",
    "diamonds",
    "eight_schools_noncentered",
    "gp_pois_regr",
    "hmm_example",
    "kidscore_momhsiq",
    "kilpisjarvi",
    "logearn_interaction_z",
    "logmesquite_logvas",
    "nes",
]


def _flat(name: str, support: constraints.Constraint, event_shape: tuple[int, ...] = ()):
    """Stan's implicit prior: an improper flat density over the declared support."""
    return numpyro.sample(name, dist.ImproperUniform(support, (), event_shape))


def _vector(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def eight_schools_noncentered(J: int, y, sigma) -> None:
    """``eight_schools_noncentered.stan``: the non-centred eight schools model.

    theta_trans ~ N(0, 1), mu ~ N(0, 5), tau ~ half-Cauchy(0, 5),
    theta = mu + tau * theta_trans, y_j ~ N(theta_j, sigma_j).
    """
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([J]).to_event(1))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", theta_trans * tau + mu)
    numpyro.sample("y", dist.Normal(theta, _vector(sigma)).to_event(1), obs=_vector(y))


def blr(N: int, D: int, X, y) -> None:
    """``blr.stan``: Bayesian linear regression.

    beta_d ~ N(0, 10), sigma ~ half-N(0, 10), y ~ N(X beta, sigma).
    """
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([D]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    numpyro.sample("y", dist.Normal(_vector(X) @ beta, sigma).to_event(1), obs=_vector(y))


def diamonds(N: int, Y, K: int, X, prior_only: int) -> None:
    """``diamonds.stan`` (brms): linear regression on centred predictors.

    The first column of ``X`` is the intercept column and is dropped; the others are
    centred (transformed data). b_k ~ N(0, 1), Intercept ~ Student-t(3, 8, 10),
    sigma ~ half-Student-t(3, 0, 10) (Stan's ``- student_t_lccdf(0 | 3, 0, 10)``
    normalises the truncation: the folded Student-t is the same density),
    Y ~ N(Intercept + Xc b, sigma) unless ``prior_only``.
    """
    design = _vector(X)
    means_X = design[:, 1:].mean(axis=0)
    Xc = design[:, 1:] - means_X
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([K - 1]).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    if not prior_only:
        numpyro.sample("Y", dist.Normal(intercept + Xc @ b, sigma).to_event(1), obs=_vector(Y))


def kilpisjarvi(N: int, x, y, xpred: float, pmualpha: float, psalpha: float,
                pmubeta: float, psbeta: float) -> None:
    """``kilpisjarvi.stan``: linear trend with adjustable priors.

    alpha ~ N(pmualpha, psalpha), beta ~ N(pmubeta, psbeta), sigma flat on (0, inf),
    y ~ N(alpha + beta x, sigma). ``xpred`` is only used by Stan's generated quantities.
    """
    alpha = numpyro.sample("alpha", dist.Normal(pmualpha, psalpha))
    beta = numpyro.sample("beta", dist.Normal(pmubeta, psbeta))
    sigma = _flat("sigma", constraints.positive)
    numpyro.sample("y", dist.Normal(alpha + beta * _vector(x), sigma).to_event(1), obs=_vector(y))


def arma11(T: int, y) -> None:
    """``arma11.stan``: ARMA(1, 1) with the first error's predecessor set to 0.

    mu ~ N(0, 10), phi ~ N(0, 2), theta ~ N(0, 2), sigma ~ half-Cauchy(0, 2.5);
    nu_1 = mu + phi mu, nu_t = mu + phi y_{t-1} + theta err_{t-1},
    err_t = y_t - nu_t, and ``err ~ normal(0, sigma)`` adds
    sum_t log N(err_t | 0, sigma) to the log density.
    """
    series = _vector(y)
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    phi = numpyro.sample("phi", dist.Normal(0.0, 2.0))
    theta = numpyro.sample("theta", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    first_error = series[0] - (mu + phi * mu)

    def step(previous_error, y_pair):
        y_previous, y_now = y_pair
        error = y_now - (mu + phi * y_previous + theta * previous_error)
        return error, error

    _, later_errors = jax.lax.scan(step, first_error, (series[:-1], series[1:]))
    errors = jnp.concatenate([jnp.reshape(first_error, (1,)), later_errors])
    numpyro.factor("err", dist.Normal(0.0, sigma).log_prob(errors).sum())


def logearn_interaction_z(N: int, earn, height, male) -> None:
    """``logearn_interaction_z.stan``: log earnings on standardised height, sex and their product.

    Flat priors on beta (R^4) and sigma (0, inf);
    log(earn) ~ N(beta_1 + beta_2 z + beta_3 male + beta_4 z male, sigma) with
    z = (height - mean) / sd (Stan's ``sd`` is the sample sd, ddof = 1).
    """
    log_earn = np.log(_vector(earn))
    heights = _vector(height)
    z_height = (heights - heights.mean()) / heights.std(ddof=1)
    male = _vector(male)
    inter = z_height * male
    beta = _flat("beta", constraints.real_vector, (4,))
    sigma = _flat("sigma", constraints.positive)
    mean = beta[0] + beta[1] * z_height + beta[2] * male + beta[3] * inter
    numpyro.sample("log_earn", dist.Normal(mean, sigma).to_event(1), obs=log_earn)


def kidscore_momhsiq(N: int, kid_score, mom_iq, mom_hs) -> None:
    """``kidscore_momhsiq.stan``: kid's score on mother's high school and IQ.

    Flat prior on beta (R^3), sigma ~ half-Cauchy(0, 2.5),
    kid_score ~ N(beta_1 + beta_2 mom_hs + beta_3 mom_iq, sigma).
    """
    beta = _flat("beta", constraints.real_vector, (3,))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    mean = beta[0] + beta[1] * _vector(mom_hs) + beta[2] * _vector(mom_iq)
    numpyro.sample("kid_score", dist.Normal(mean, sigma).to_event(1), obs=_vector(kid_score))


def logmesquite_logvas(N: int, weight, diam1, diam2, canopy_height, total_height,
                       density, group) -> None:
    """``logmesquite_logvas.stan``: log weight of mesquite bushes on log size measures.

    Flat priors on beta (R^7) and sigma (0, inf);
    log(weight) ~ N(beta_1 + beta_2 log(canopy volume) + beta_3 log(canopy area)
    + beta_4 log(canopy shape) + beta_5 log(total height) + beta_6 log(density)
    + beta_7 group, sigma).
    """
    diam1, diam2 = _vector(diam1), _vector(diam2)
    covariates = np.stack([
        np.ones_like(diam1),
        np.log(diam1 * diam2 * _vector(canopy_height)),  # canopy volume
        np.log(diam1 * diam2),  # canopy area
        np.log(diam1 / diam2),  # canopy shape
        np.log(_vector(total_height)),
        np.log(_vector(density)),
        _vector(group),
    ], axis=1)
    beta = _flat("beta", constraints.real_vector, (7,))
    sigma = _flat("sigma", constraints.positive)
    numpyro.sample("log_weight", dist.Normal(covariates @ beta, sigma).to_event(1),
                   obs=np.log(_vector(weight)))


def nes(N: int, partyid7, real_ideo, race_adj, educ1, gender, income, age_discrete) -> None:
    """``nes.stan``: party identification on ideology, race, age group, education, sex, income.

    Age enters as three indicators (age_discrete == 2, 3, 4). Flat priors on beta
    (R^9) and sigma (0, inf); partyid7 ~ N(covariates beta, sigma).
    """
    age = np.asarray(age_discrete)
    covariates = np.stack([
        np.ones(age.shape),
        _vector(real_ideo),
        _vector(race_adj),
        (age == 2).astype(np.float64),
        (age == 3).astype(np.float64),
        (age == 4).astype(np.float64),
        _vector(educ1),
        _vector(gender),
        _vector(income),
    ], axis=1)
    beta = _flat("beta", constraints.real_vector, (9,))
    sigma = _flat("sigma", constraints.positive)
    numpyro.sample("partyid7", dist.Normal(covariates @ beta, sigma).to_event(1),
                   obs=_vector(partyid7))


def gp_pois_regr(N: int, x, k) -> None:
    """``gp_pois_regr.stan``: Poisson regression with a latent squared-exponential GP.

    rho ~ Gamma(25, 4) (shape, rate), alpha ~ half-N(0, 2), f_tilde ~ N(0, I),
    f = L f_tilde with L L^T = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + jitter I,
    k_i ~ Poisson(exp(f_i)).

    Stan's jitter is 1e-10, which is used in float64. That is below float32
    resolution: the kernel matrix's smallest eigenvalue falls under float32
    round-off for rho >~ 8 (inside the posterior) and the float32 Cholesky factor
    is NaN. Under float32 the jitter is therefore ``1e-6 * alpha^2`` (about eight
    float32 epsilons of the kernel's diagonal), which changes f's prior variance
    by one part in a million.
    """
    inputs = _vector(x)
    squared_distances = (inputs[:, None] - inputs[None, :]) ** 2
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([N]).to_event(1))
    if jnp.result_type(rho) == jnp.float64:
        jitter = 1e-10
    else:
        jitter = 1e-6 * alpha**2
    cov = alpha**2 * jnp.exp(-squared_distances / (2.0 * rho**2)) + jitter * jnp.eye(N)
    f = numpyro.deterministic("f", jnp.linalg.cholesky(cov) @ f_tilde)
    numpyro.sample("k", dist.Poisson(jnp.exp(f)).to_event(1), obs=np.asarray(k))


def hmm_example(N: int, K: int, y) -> None:
    """``hmm_example.stan``: two-state Gaussian HMM with the states summed out.

    theta1, theta2 (rows of the transition matrix) are flat on the simplex;
    mu is flat on positive ordered vectors plus ``normal_lpdf(mu[1] | 3, 1)`` and
    ``normal_lpdf(mu[2] | 10, 1)``; y_t | z_t = k ~ N(mu_k, 1). The forward
    algorithm gives log p(y) = logsumexp_k gamma_N(k) with
    gamma_1(k) = log N(y_1 | mu_k, 1),
    gamma_t(k) = logsumexp_j [gamma_{t-1}(j) + log theta_{jk}] + log N(y_t | mu_k, 1).
    """
    if K != 2:
        raise ValueError(f"`K` must be 2 (the Stan program hard-codes two states); got {K}")
    series = _vector(y)
    theta1 = _flat("theta1", constraints.simplex, (K,))
    theta2 = _flat("theta2", constraints.simplex, (K,))
    mu = _flat("mu", constraints.positive_ordered_vector, (K,))
    numpyro.factor("mu_prior", dist.Normal(jnp.array([3.0, 10.0]), 1.0).log_prob(mu).sum())
    log_transition = jnp.log(jnp.stack([theta1, theta2]))  # [from j, to k]
    emission = dist.Normal(mu, 1.0).log_prob(series[:, None])  # [t, k]

    def forward(gamma_previous, emission_now):
        gamma = jax.nn.logsumexp(gamma_previous[:, None] + log_transition, axis=0) + emission_now
        return gamma, None

    gamma_last, _ = jax.lax.scan(forward, emission[0], emission[1:])
    numpyro.factor("log_likelihood", jax.nn.logsumexp(gamma_last))
