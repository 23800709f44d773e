"""Demo step: a particle filter checked against the Kalman filter, and tempered SMC on a bimodal target."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from probinf.demo import DemoStep, phase_bar

MODE_WEIGHT = 0.3  # mass of the left mode of the bimodal target


def _tracking_model(num_steps: int):
    from probinf.smc import LinearGaussianSSM

    # A 2-d constant-velocity tracker observed in position only.
    model = LinearGaussianSSM(
        initial_mean=jnp.zeros(2),
        initial_cov=jnp.eye(2),
        transition_matrix=jnp.array([[1.0, 0.1], [0.0, 1.0]]),
        transition_cov=jnp.array([[0.01, 0.0], [0.0, 0.05]]),
        observation_matrix=jnp.array([[1.0, 0.0]]),
        observation_cov=jnp.array([[0.1]]),
        observations=jnp.zeros((num_steps, 1)),
    )
    states, y = model.simulate(jax.random.key(11), num_steps)
    return model.with_observations(y), states


def _bimodal_log_density(z):
    left = jnp.log(MODE_WEIGHT) + jax.scipy.stats.norm.logpdf(z[0], -2.5, 0.5)
    right = jnp.log(1 - MODE_WEIGHT) + jax.scipy.stats.norm.logpdf(z[0], 2.5, 0.5)
    return jnp.logaddexp(left, right)  # normalised: log Z = 0


def smc_step(key, quick: bool, progress: bool | None = None) -> DemoStep:
    import probinf
    from probinf import smc

    num_steps = 50 if quick else 100
    num_particles = 256 if quick else 1000
    replicates = 8
    with phase_bar(1 if quick else 2, desc="smc", progress=progress) as phase:
        phase(f"{replicates} particle filters")
        model, states = _tracking_model(num_steps)
        exact = smc.kalman_filter(model)
        bootstrap = smc.Bootstrap(model)

        key_runs, key_tempered = jax.random.split(key)
        # Independent runs in one compiled call; the first one's history is drawn.
        runs = jax.jit(jax.vmap(lambda k: smc.particle_filter(k, bootstrap, num_particles, store_history=True)))
        batch = runs(jax.random.split(key_runs, replicates))
        result = jax.tree.map(lambda x: x[0], batch)
        weights = np.exp(np.asarray(result.history.log_weights))
        particles = np.asarray(result.history.particles)
        pf_mean = np.einsum("tn,tnd->td", weights, particles)
        pf_sd = np.sqrt(np.einsum("tn,tnd->td", weights, (particles - pf_mean[:, None]) ** 2))
        log_z_runs = np.asarray(batch.log_evidence)
        exact_log_z = float(exact.log_evidence)
        exact_mean = np.asarray(exact.filtered_means)
        exact_sd = np.sqrt(np.asarray(jnp.diagonal(exact.filtered_covs, axis1=1, axis2=2)))
        if not quick:
            phase("tempered SMC")
            target = probinf.from_logdensity(_bimodal_log_density, 1)
            reference = probinf.MeanFieldGaussian.init(1, scale=4.0)
            tempered = smc.tempered_smc(key_tempered, target, 2000, reference=reference, kernel="hmc",
                                        progress=False)

    lines = [
        f"Bootstrap particle filter ({num_particles} particles, {replicates} runs) on a {num_steps}-step "
        "linear-Gaussian tracker, checked against the exact Kalman filter:",
        f"log evidence: particle filter {log_z_runs.mean():.3f} ± {log_z_runs.std(ddof=1):.3f} "
        f"(mean ± sd of the runs) vs exact {exact_log_z:.3f}",
        f"filtered means: max |particle filter - exact| = {np.max(np.abs(pf_mean - exact_mean) / exact_sd):.2f} "
        f"exact sds; resampled at {int(result.resampled.sum())} of {num_steps} steps (ESS < N/2)",
    ]

    panels = []

    def draw_filter(ax):
        t = np.arange(num_steps)
        ax.plot(t, np.asarray(states[:, 0]), color="0.6", lw=1, label="true position")
        ax.plot(t, np.asarray(model.observations[:, 0]), ".", ms=3, color="0.4", label="observations")
        ax.plot(t, exact_mean[:, 0], color="k", lw=1.5, label="Kalman mean")
        ax.fill_between(t, exact_mean[:, 0] - 2 * exact_sd[:, 0], exact_mean[:, 0] + 2 * exact_sd[:, 0],
                        color="k", alpha=0.12)
        ax.plot(t, pf_mean[:, 0], "--", color="C1", lw=1.2, label="particle filter mean")
        ax.fill_between(t, pf_mean[:, 0] - 2 * pf_sd[:, 0], pf_mean[:, 0] + 2 * pf_sd[:, 0],
                        color="C1", alpha=0.15)
        ax.set_xlabel("t")
        ax.set_title("SMC: particle filter vs Kalman (±2 sd)")
        ax.legend(frameon=False, fontsize=7)

    panels.append(draw_filter)

    if not quick:
        draws = np.asarray(tempered.particles[:, 0])
        left = float(np.mean(draws < 0))
        lines += [
            f"Adaptive tempered SMC (2000 particles, HMC moves, {int(tempered.num_stages)} stages) on a "
            "two-mode target whose Z = 1:",
            f"log Z {float(tempered.log_evidence):+.3f} vs exact 0; left-mode mass {left:.3f} vs exact {MODE_WEIGHT}",
        ]

        def draw_tempered(ax):
            grid = np.linspace(-5, 5, 400)
            density = np.exp(np.asarray(jax.vmap(_bimodal_log_density)(jnp.asarray(grid)[:, None])))
            ax.hist(draws, bins=60, density=True, color="C0", alpha=0.5, label="tempered SMC")
            ax.plot(grid, density, color="k", lw=1.2, label="exact density")
            ax.set_title("SMC: tempered SMC on a bimodal target")
            ax.legend(frameon=False, fontsize=8)

        panels.append(draw_tempered)

    return DemoStep(lines, panels)
