"""Demo step: learn a circuit on NLTCS and check its queries against brute-force enumeration."""

from __future__ import annotations

import itertools

import jax
import numpy as np

from probinf.demo import DemoStep, StepSkipped, phase_bar


def circuits_step(key, quick: bool, progress: bool | None = None) -> DemoStep:
    import circuits

    with phase_bar(4, desc="circuits", progress=progress) as phase:
        phase("fit_debd on NLTCS")
        try:
            data = circuits.load_debd("nltcs")  # shipped with the package
        except (FileNotFoundError, ValueError) as err:
            raise StepSkipped(f"the NLTCS data could not be loaded: {err}") from None
        key_fit, key_sample = jax.random.split(key)
        # The recipe (a mixture of hidden Chow-Liu trees, regularised EM), with fewer epochs.
        units = 4 if quick else 12
        pc, result = circuits.fit_debd(data["train"], data["valid"], key=key_fit, latent=units,
                                       minibatch_epochs=1 if quick else 3,
                                       fullbatch_epochs=1 if quick else 3, progress=False)
        test_ll = circuits.average_log_likelihood(pc, data["test"])

        phase("enumerating all 2^16 states")
        v = pc.num_variables
        domain = np.asarray(list(itertools.product((0, 1), repeat=v)), np.int8)
        joint = np.asarray(pc.log_prob(domain), np.float64)
        total = np.exp(joint).sum()

        phase("marginal, conditional and MAP queries")
        # One batch of queries: P(x0=1, x5=0), P(x3=1, x0=1) / P(x0=1), and P(x_v=1) for all v.
        x = np.ones((3 + v, v), np.int8)
        x[0, [0, 5]] = [1, 0]
        masks = np.zeros((3 + v, v), bool)
        masks[0, [0, 5]] = masks[1, [0, 3]] = masks[2, 0] = True
        masks[3:] = np.eye(v, dtype=bool)
        queries = np.asarray(pc.log_marginal(x, masks), np.float64)
        evidence = np.zeros(v, bool)
        evidence[:4] = True
        given = np.array([1, 1, 0, 1] + [0] * (v - 4), np.int8)
        assignment, _ = pc.map(given, evidence)
        map_log_p = float(pc.log_prob(np.asarray(assignment)))

        phase("sampling")
        samples = np.asarray(pc.sample(key_sample, 2000 if quick else 20000))

    model_marginals = np.exp(queries[3:])

    def enumerated(mask, row):
        agree = np.all((domain == row) | ~mask, axis=1)
        return np.exp(joint[agree]).sum()

    marginal, marginal_bf = np.exp(queries[0]), enumerated(masks[0], x[0])
    conditional = np.exp(queries[1] - queries[2])
    conditional_bf = enumerated(masks[1], x[1]) / enumerated(masks[2], x[2])
    agree = np.all((domain == given) | ~evidence, axis=1)
    best = np.flatnonzero(agree)[np.argmax(joint[agree])]
    same = "same assignment" if np.array_equal(assignment, domain[best]) else "DIFFERENT assignment"
    sample_marginals = samples.mean(0)
    worst = int(np.argmax(np.abs(sample_marginals - model_marginals)))

    lines = [
        f"Mixture of 4 hidden Chow-Liu trees on NLTCS (16 binary variables), CP layers, "
        f"K={units}, {pc.num_parameters} parameters, {len(pc.structure.stages)} folded stages;",
        f"circuits.fit_debd, {result.num_epochs} EM epoch(s) in {result.seconds:.1f} s: "
        f"test log-likelihood {test_ll:.3f} nats/sample. Checked by enumerating all 2^16 states:",
        f"sum of p(x) over all states: {total:.6f} vs exact 1",
        f"P(x0=1, x5=0):  circuit {marginal:.6f} vs enumeration {marginal_bf:.6f}",
        f"P(x3=1 | x0=1): circuit {conditional:.6f} vs enumeration {conditional_bf:.6f}",
        f"MAP given x0..x3: log p {map_log_p:.4f} (max-product) vs enumerated maximum "
        f"{joint[best]:.4f} ({same})",
        f"{len(samples)} ancestral samples: frequency of x{worst}=1 (the worst of the 16) "
        f"{sample_marginals[worst]:.4f} vs exact {model_marginals[worst]:.4f} (sampling sd "
        f"{np.sqrt(model_marginals[worst] * (1 - model_marginals[worst]) / len(samples)):.4f})",
    ]

    def draw_marginals(ax):
        index = np.arange(v)
        ax.bar(index - 0.25, data["test"].mean(0), 0.25, label="test data")
        ax.bar(index, model_marginals, 0.25, label="circuit P(x_v=1)")
        ax.bar(index + 0.25, samples.mean(0), 0.25, label="samples")
        ax.set_xlabel("variable")
        ax.set_xticks(index[::3])
        ax.set_title("Circuits: NLTCS marginals")
        ax.legend(frameon=False, fontsize=8, loc="upper left")

    def draw_joint(ax):
        order = np.argsort(joint)[::-1][:40]
        codes = samples.astype(np.int64) @ (1 << np.arange(v - 1, -1, -1))
        counts = np.bincount(codes, minlength=2**v) / len(samples)
        ax.plot(np.exp(joint[order]), "o-", ms=3, label="exact p(x)")
        ax.plot(counts[order], "s", ms=3, label="sample frequency")
        ax.set_xlabel("40 most probable assignments")
        ax.set_title("Circuits: joint vs samples")
        ax.legend(frameon=False, fontsize=8)

    return DemoStep(lines, [draw_marginals, draw_joint])
