"""Demo step: integral circuits materialised by quadrature, checked against their exact values."""

from __future__ import annotations

import jax
import numpy as np

from probinf.demo import DemoStep, phase_bar

_RULES = ("trapezoidal", "midpoint", "simpson", "gauss_legendre")


def pic_step(key, quick: bool, progress: bool | None = None) -> DemoStep:
    import circuits
    from circuits.analytic import exact_log_marginal, exponential_circuit, linear_gaussian_circuit
    from circuits.quadrature import CONVERGENCE_ORDER, quadrature_rule

    key_gauss, key_exp, key_x = jax.random.split(key, 3)
    graph = circuits.linear_chain(4)
    sizes = (5, 9) if quick else (5, 9, 17, 33)
    gauss_legendre_sizes = (3, 5) if quick else (3, 5, 9)
    gauss_sizes = (9, 17) if quick else (9, 17, 33)
    gauss_rules = ("trapezoidal",) if quick else ("trapezoidal", "gauss_legendre")
    num_circuits = (sum(len(gauss_legendre_sizes if n == "gauss_legendre" else sizes) for n in _RULES)
                    + len(gauss_rules) * len(gauss_sizes))
    with jax.enable_x64(True), phase_bar(num_circuits, desc="pic", progress=progress) as phase:
        # 1. An exponential-sum PIC on [0, 1] over 4 binary variables (CP merges): its
        #    integrals are closed-form, and its integrands smooth but not periodic, so each
        #    rule shows its textbook rate.
        expo = exponential_circuit(key_exp, graph)
        domain = np.asarray(np.unravel_index(np.arange(16), (2,) * 4)).T
        exact_exp = exact_log_marginal(expo, domain)
        curves, qpcs = {}, {}
        for name in _RULES:
            ks = gauss_legendre_sizes if name == "gauss_legendre" else sizes
            errors = []
            for k in ks:
                phase(f"{name} K={k}")
                qpcs[name, k] = expo.materialize(quadrature_rule(name, k, expo.domain))
                errors.append(float(np.abs(np.asarray(qpcs[name, k].log_prob(domain)) - exact_exp).max()))
            curves[name] = (np.asarray(ks), np.maximum(np.asarray(errors), 1e-16))
        total = float(np.exp(np.asarray(
            qpcs["gauss_legendre", gauss_legendre_sizes[-1]].log_prob(domain))).sum())

        # 2. A linear-Gaussian PIC on the same chain (Gaussian inputs): Gaussian integrals,
        #    exact log p(x); quadrature on [-6, 6] converges to it faster than any power.
        gauss = linear_gaussian_circuit(key_gauss, graph)
        x = np.round(np.asarray(jax.random.normal(key_x, (16, 4))) * 8) / 8
        exact_gauss = exact_log_marginal(gauss, x)
        gauss_curves = {}
        for name in gauss_rules:
            errors = []
            for k in gauss_sizes:
                phase(f"Gaussian {name} K={k}")
                qpc = gauss.materialize(quadrature_rule(name, k, (-6.0, 6.0)))
                errors.append(float(np.abs(np.asarray(qpc.log_prob(x)) - exact_gauss).max()))
            gauss_curves[name] = np.maximum(errors, 1e-16)

    def slope(name):
        ks, errors = curves[name]
        spacing = 1.0 / ks if name == "midpoint" else 1.0 / (ks - 1)
        return float(np.polyfit(np.log(spacing), np.log(errors), 1)[0])

    def label(name):
        return {"simpson": "Simpson", "gauss_legendre": "Gauss-Legendre"}.get(name, name)

    lines = [
        "Exponential-sum PIC on [0, 1], 4 binary variables: log p(x) of its quadrature circuit (QPC)",
        "vs the exact closed-form integrals; the error's order in the node spacing h, fitted vs theory:",
        "   " + ", ".join(f"{label(n)} {slope(n):.2f} vs {CONVERGENCE_ORDER[n]}"
                          for n in ("trapezoidal", "midpoint", "simpson"))
        + f"; Gauss-Legendre error {curves['gauss_legendre'][1][-1]:.1e} at "
        f"K={curves['gauss_legendre'][0][-1]} (theory: geometric)",
        f"the QPC is a normalised circuit: sum of p over all 16 assignments {total:.12f} vs exact 1",
        "Linear-Gaussian PIC: QPC log p(x) on [-6, 6] vs the exact Gaussian integrals, max error over 16 points:",
    ] + [
        f"   {label(n)}: " + ", ".join(f"{e:.1e} at K={k}" for k, e in zip(gauss_sizes, errs, strict=True))
        for n, errs in gauss_curves.items()
    ]

    def draw_rates(ax):
        import matplotlib.ticker

        for name, (ks, errors) in curves.items():
            ax.loglog(ks, errors, "o-", ms=3, label=label(name))
        # Tick the K values themselves: log-axis minor labels (3x10^0, 4x10^0, ...) overlap.
        ticks = sorted({int(k) for ks, _ in curves.values() for k in ks})
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(k) for k in ticks]))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("K (quadrature points per latent)")
        ax.set_ylabel("max |log p_QPC - log p_exact|")
        ax.set_title("PIC: quadrature error (exponential sums)")
        ax.legend(frameon=False, fontsize=8)

    def draw_gauss(ax):
        for name, errors in gauss_curves.items():
            ax.semilogy(gauss_sizes, errors, "o-", ms=3, label=label(name))
        ax.set_xticks(gauss_sizes)
        ax.set_xlabel("K (quadrature points per latent)")
        ax.set_ylabel("max |log p_QPC - log p_exact|")
        ax.set_title("PIC: quadrature error (linear-Gaussian)")
        ax.legend(frameon=False, fontsize=8)

    return DemoStep(lines, [draw_rates, draw_gauss])
