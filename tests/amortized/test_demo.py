"""The demo step runs in quick mode, and the shipped weights still give near-exact posteriors."""

import re

import jax

from probinf.demos.amortized import WEIGHTS, amortized_step


def test_amortized_demo_step_reports_accurate_posteriors():
    report = amortized_step(jax.random.key(0), quick=True)
    assert len(report.panels) == 2
    text = "\n".join(report.lines)
    kl_dt, kl_prior = map(float, re.search(
        r"KL\(exact \|\| DT\).*?: ([\d.]+) vs 0 .*?KL\(exact \|\| prior\) ([\d.]+)\)", text).groups())
    means = re.search(r"posterior mean under the bimodal prior: DT (-?[\d.]+) vs exact (-?[\d.]+)", text)
    assert abs(float(means[1]) - float(means[2])) < 0.1
    if WEIGHTS.exists():  # the shipped model: near-exact on fresh priors and data
        assert kl_dt < 0.03 < 0.3 < kl_prior
    assert kl_dt < kl_prior
