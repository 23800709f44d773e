"""Demo step: a Distribution Transformer, a prior changed on the fly, checked against exact posteriors.

The demo uses weights shipped with the package (``probinf/demos/data/demo_transformer.weights``,
written by :func:`train_demo_model`; regenerate with ``python -m probinf.demos.amortized``)
so that it runs in seconds; if the file is missing it trains a small model on the spot.
"""

from __future__ import annotations

import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from probinf.demo import DemoStep, phase_bar

WEIGHTS = pathlib.Path(__file__).parent / "data" / "demo_transformer.weights"
DEMO_SIZE = dict(d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2)
DEMO_STEPS, DEMO_BATCH = 3000, 128


def demo_task():
    """theta ~ random 1-2 component mixture on R, y_j ~ N(theta, 1), 1-8 observations."""
    from amortized.tasks import ConjugateGaussian

    return ConjugateGaussian(1, max_components=2, num_observations=(1, 8))


def _skeleton(task, *, shapes_only: bool = False):
    from amortized import DistributionTransformer

    def build():
        return DistributionTransformer(key=jax.random.key(0), **DEMO_SIZE, **task.model_options())

    # For loading, only the structure is needed: no random initialisation to compile.
    return eqx.filter_eval_shape(build) if shapes_only else build()


def train_demo_model(path: str | pathlib.Path = WEIGHTS, *, steps: int = DEMO_STEPS):
    """Train the demo model and write its weights with :func:`equinox.tree_serialise_leaves`."""
    from amortized import train

    task = demo_task()
    result = train(_skeleton(task), task, key=jax.random.key(2025), steps=steps, batch_size=DEMO_BATCH,
                   learning_rate=2e-3, progress=True)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(path, result.model)
    return result


def amortized_step(key, quick: bool, progress: bool | None = None) -> DemoStep:
    with phase_bar(3, desc="amortized", progress=progress) as phase:
        return _amortized_step(key, quick, phase)


def _amortized_step(key, quick: bool, phase) -> DemoStep:
    from amortized import GaussianMixture, monte_carlo_kl, train

    task = demo_task()
    k_train, k_test, k_kl, k_data = jax.random.split(key, 4)
    result = None
    phase("loading the model" if WEIGHTS.exists() else "training a small model")
    if WEIGHTS.exists():
        dt = eqx.tree_deserialise_leaves(WEIGHTS, _skeleton(task, shapes_only=True))
        origin = (f"shipped weights ({DEMO_STEPS} Adam steps x {DEMO_BATCH} fresh simulations, "
                  "probinf.demos.amortized.train_demo_model)")
    else:  # weights not installed: a small model trained here
        result = train(_skeleton(task), task, key=k_train, steps=300 if quick else 1000, batch_size=128,
                       learning_rate=2e-3, progress=False)
        dt = result.model
        origin = f"trained here in {result.seconds:.1f} s ({result.num_steps} steps x 128 simulations)"

    num_test = 50 if quick else 200
    test = task.simulate(k_test, num_test)

    # On-the-fly prior adaptation: the same data under two priors the model never saw. They
    # join the test batch (padded to its shapes) so that one compiled program scores all.
    data = 1.5 + jax.random.normal(k_data, (4, 1))
    priors = {
        "bimodal prior": GaussianMixture.from_covariances([0.5, 0.5], [[-2.0], [2.5]], [[[0.4]], [[0.6]]]),
        "sceptical prior": GaussianMixture.gaussian([-1.0], 0.3).pad(2),
    }
    names = list(priors)
    padded_data = jnp.zeros((task.max_observations, 1)).at[:4].set(data)
    padded_mask = jnp.arange(task.max_observations) < 4
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *priors.values())
    everything = (
        jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), test.prior, stacked),
        jnp.concatenate([test.observations, jnp.stack([padded_data] * 2)]),
        jnp.concatenate([test.mask, jnp.stack([padded_mask] * 2)]),
    )

    @eqx.filter_jit
    def evaluate(model, priors, observations, mask, key):
        def one(prior, y, m, k):
            exact = task.exact_posterior(prior, y, m)
            approx = model.update(prior, y, m)
            return (monte_carlo_kl(k, exact, approx, 4000), monte_carlo_kl(k, exact, prior, 4000),
                    exact, approx)

        return jax.vmap(one)(priors, observations, mask, jax.random.split(key, observations.shape[0]))

    phase(f"scoring {num_test + len(names)} posteriors against the exact ones")
    kls, kls_prior, exacts, approxes = evaluate(dt, *everything, k_kl)
    kl_dt, kl_prior = kls[:num_test], kls_prior[:num_test]
    adapted_kl = {name: float(kls[num_test + i]) for i, name in enumerate(names)}
    adapted = {name: (priors[name], jax.tree_util.tree_map(lambda x, i=i: x[num_test + i], exacts),
                      jax.tree_util.tree_map(lambda x, i=i: x[num_test + i], approxes))
               for i, name in enumerate(names)}

    phase("timing one posterior")
    dt(priors["bimodal prior"], data)  # compile once; time warm calls
    started = time.perf_counter()
    for _ in range(20):
        jax.block_until_ready(dt(priors["bimodal prior"], data).means)
    per_posterior_ms = (time.perf_counter() - started) / 20 * 1e3

    def mean(mixture):
        return float(np.sum(np.asarray(mixture.weights) * np.asarray(mixture.means[:, 0])))

    _, exact_bimodal, dt_bimodal = adapted["bimodal prior"]
    lines = [
        "Task: theta ~ mixture prior (1-2 components, drawn at random), y_j ~ N(theta, 1), 1-8 data;",
        "the exact posterior is a mixture (closed form), so every DT posterior is checked against it.",
        f"Distribution Transformer: {origin}.",
        f"mean KL(exact || DT) on {num_test} new (prior, data) pairs: {float(kl_dt.mean()):.3f} vs 0 for "
        f"exact posteriors (the prior itself: KL(exact || prior) {float(kl_prior.mean()):.3f})",
        "Prior changed on the fly (no retraining), same 4 data points: "
        + ", ".join(f"{name} KL {max(kl, 0.0):.3f}" for name, kl in adapted_kl.items()) + ";",
        f"   posterior mean under the bimodal prior: DT {mean(dt_bimodal):.3f} vs exact {mean(exact_bimodal):.3f}",
        f"one posterior: {per_posterior_ms:.2f} ms (prior + data in, mixture out)",
    ]

    grid = np.linspace(-4.5, 5.0, 400)

    def density(mixture):
        # NumPy on purpose: a handful of curves is not worth compiling for.
        w, m, s = (np.asarray(a, np.float64) for a in (mixture.weights, mixture.means[:, 0], mixture.scale_tril[:, 0, 0]))
        return np.sum(w * np.exp(-0.5 * ((grid[:, None] - m) / s) ** 2) / (s * np.sqrt(2 * np.pi)), axis=1)

    def draw_adaptation(ax):
        from matplotlib.lines import Line2D

        colours = ("C0", "C3")
        for (prior, exact, approx), colour in zip(adapted.values(), colours, strict=True):
            ax.plot(grid, density(prior), color=colour, ls=":", lw=1)
            ax.plot(grid, density(exact), color=colour, lw=2, alpha=0.5)
            ax.plot(grid, density(approx), color=colour, ls="--", lw=1.2)
        ax.plot(np.asarray(data[:, 0]), np.zeros(4), "k|", ms=10)
        # Colour says which prior, line style what is drawn: one legend entry each.
        handles = [Line2D([], [], color=c, lw=2, label=name) for name, c in zip(adapted, colours, strict=True)]
        handles += [Line2D([], [], color="0.4", ls=":", lw=1, label="prior"),
                    Line2D([], [], color="0.4", lw=2, alpha=0.5, label="exact posterior"),
                    Line2D([], [], color="0.4", ls="--", lw=1.2, label="DT posterior"),
                    Line2D([], [], color="k", marker="|", ls="", ms=10, label="data")]
        ax.legend(handles=handles, frameon=False, fontsize=7, loc="upper left")
        ax.set_title("Distribution Transformer: prior swapped on the fly")
        ax.set_xlabel(r"$\theta$")

    def draw_kl(ax):
        bins = np.linspace(-3, 1, 30)
        ax.hist(np.log10(np.maximum(np.asarray(kl_prior), 1e-3)), bins=bins, alpha=0.5, label="prior (untrained DT)")
        ax.hist(np.log10(np.maximum(np.asarray(kl_dt), 1e-3)), bins=bins, alpha=0.7, label="trained DT")
        ax.set_xlabel(r"$\log_{10}$ KL(exact $\|$ approximation)")
        ax.set_ylabel("data sets")
        ax.set_title("DT posteriors vs exact, new priors and data")
        ax.legend(frameon=False, fontsize=7)

    return DemoStep(lines, [draw_adaptation, draw_kl])


if __name__ == "__main__":
    trained = train_demo_model()
    print(f"wrote {WEIGHTS} after {trained.num_steps} steps, final NLL {trained.losses[-100:].mean():.3f}")
