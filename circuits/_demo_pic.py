"""Demo step: integral circuits materialised by quadrature, checked against their exact values."""

from __future__ import annotations

import jax
import numpy as np

from probinf.demo import DemoStep

_RULES = ("trapezoidal", "midpoint", "simpson", "gauss_legendre")


def pic_step(key, quick: bool) -> DemoStep:
    import circuits
    from circuits.analytic import exact_log_marginal, exponential_circuit, linear_gaussian_circuit
    from circuits.quadrature import CONVERGENCE_ORDER, quadrature_rule

    key_gauss, key_exp, key_x = jax.random.split(key, 3)
    graph = circuits.linear_chain(4)
    sizes = (5, 9) if quick else (5, 9, 17, 33)
    gauss_legendre_sizes = (3, 5) if quick else (3, 5, 9)
    with jax.enable_x64(True):
        # 1. An exponential-sum PIC on [0, 1] over 4 binary variables (CP merges): its
        #    integrals are closed-form, and its integrands smooth but not periodic, so each
        #    rule shows its textbook rate.
        expo = exponential_circuit(key_exp, graph)
        domain = np.asarray(np.unravel_index(np.arange(16), (2,) * 4)).T
        exact_exp = exact_log_marginal(expo, domain)
        curves = {}
        for name in _RULES:
            ks = gauss_legendre_sizes if name == "gauss_legendre" else sizes
            errors = [float(np.abs(np.asarray(
                expo.materialize(quadrature_rule(name, k, expo.domain)).log_prob(domain))
                - exact_exp).max()) for k in ks]
            curves[name] = (np.asarray(ks), np.maximum(np.asarray(errors), 1e-16))
        total = float(np.exp(np.asarray(expo.materialize(
            quadrature_rule("gauss_legendre", gauss_legendre_sizes[-1], expo.domain)).log_prob(
            domain))).sum())

        # 2. A linear-Gaussian PIC on the same chain (Gaussian inputs): Gaussian integrals,
        #    exact log p(x); quadrature on [-6, 6] converges to it faster than any power.
        gauss = linear_gaussian_circuit(key_gauss, graph)
        x = np.round(np.asarray(jax.random.normal(key_x, (16, 4))) * 8) / 8
        exact_gauss = exact_log_marginal(gauss, x)
        gauss_sizes = (9, 17) if quick else (9, 17, 33)
        gauss_curves = {}
        for name in ("trapezoidal",) if quick else ("trapezoidal", "gauss_legendre"):
            gauss_curves[name] = np.maximum([float(np.abs(np.asarray(
                gauss.materialize(quadrature_rule(name, k, (-6.0, 6.0))).log_prob(x))
                - exact_gauss).max()) for k in gauss_sizes], 1e-16)

    def slope(name):
        ks, errors = curves[name]
        spacing = 1.0 / ks if name == "midpoint" else 1.0 / (ks - 1)
        return float(np.polyfit(np.log(spacing), np.log(errors), 1)[0])

    lines = [
        "Exponential-sum PIC on [0, 1] over 4 binary variables (CP merges): log p(x) exact by "
        "closed-form integrals;",
        "its QPC's error against it, fitted slope in the node spacing h (promised): " +
        ", ".join(f"{n} {slope(n):.2f} ({CONVERGENCE_ORDER[n]})"
                  for n in ("trapezoidal", "midpoint", "simpson")) +
        f"; Gauss-Legendre {curves['gauss_legendre'][1][-1]:.1e} at "
        f"K={curves['gauss_legendre'][0][-1]} (geometric).",
        f"The QPC is an ordinary normalised circuit: sum of p over all 16 assignments = "
        f"{total:.12f} (exact: 1).",
        "Linear-Gaussian PIC (Gaussian inputs): exact log p(x) by Gaussian integrals; QPC on "
        "[-6, 6], max error over 16 points: " +
        "; ".join(f"{n} " + ", ".join(f"K={k}: {e:.1e}" for k, e in zip(gauss_sizes, errs,
                                                                        strict=True))
                  for n, errs in gauss_curves.items()) + ".",
    ]

    def draw_rates(ax):
        for name, (ks, errors) in curves.items():
            ax.loglog(ks, errors, "o-", ms=3, label=name.replace("_", "-"))
        ax.set_xlabel("K (quadrature points per latent)")
        ax.set_ylabel("max |log p_QPC - log p_exact|")
        ax.set_title("PIC: quadrature error (exponential sums)")
        ax.legend(frameon=False, fontsize=8)

    def draw_gauss(ax):
        for name, errors in gauss_curves.items():
            ax.semilogy(gauss_sizes, errors, "o-", ms=3, label=name.replace("_", "-"))
        ax.set_xlabel("K (quadrature points per latent)")
        ax.set_ylabel("max |log p_QPC - log p_exact|")
        ax.set_title("PIC: quadrature error (linear-Gaussian)")
        ax.legend(frameon=False, fontsize=8)

    return DemoStep("Probabilistic integral circuits (circuits.integral)", lines,
                    [draw_rates, draw_gauss])
