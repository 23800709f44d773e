"""Samplers against exact answers, with a language model whose step distribution is known.

The backends are tested for real in test_backends.py; here a ToyStepModel (which
implements the same protocol) makes exact probabilities available.
"""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from probinf.llm import (
    ArithmeticVerifier,
    Budget,
    DecodeConfig,
    ToyStepModel,
    beam_search,
    best_of_n,
    entropic_particle_filter,
    generate,
    majority_vote,
    particle_filter,
    particle_gibbs,
)
from probinf.llm.rewards import extract_answer
from probinf.llm.samplers import annealing_exponent

QUESTION = "Tom has 3 apples and gets 4 more. How many apples does Tom have now?"
CONFIG = DecodeConfig(temperature=1.0, max_step_tokens=16, delimiter="\n\n", max_steps=12)

# Two steps: a claim (correct with probability Q), then the answer the claim implies.
Q = 0.3
CLAIMS = [("3 + 4 = 7", Q), ("3 + 4 = 8", 0.4), ("3 + 4 = 6", 0.3)]


def arithmetic_transition(steps):
    if not steps:
        return CLAIMS
    if len(steps) == 1:
        return [(f"The answer is {steps[0].split('= ')[1]}.", 1.0)]
    return []


# A two-step model with six complete outcomes of known probability.
FIRST = [("A", 0.5), ("B", 0.3), ("C", 0.2)]
SECOND = {"A": [("x", 0.7), ("y", 0.3)], "B": [("x", 0.2), ("y", 0.8)], "C": [("x", 0.5), ("y", 0.5)]}


def letters_transition(steps):
    if not steps:
        return FIRST
    if len(steps) == 1:
        return SECOND[steps[0]]
    return []


EXACT_LETTERS = {f"{a}\n\n{b}": pa * pb for a, pa in FIRST for b, pb in SECOND[a]}


def constant(question, solution):
    return 0.7


def chi_square_pvalue(texts, exact):
    keys = sorted(exact)
    observed = np.array([sum(t == k for t in texts) for k in keys])
    expected = np.array([exact[k] for k in keys]) * len(texts)
    assert observed.sum() == len(texts), "a sample fell outside the known support"
    return stats.chisquare(observed, expected).pvalue


def test_constant_reward_systematic_is_exactly_independent_sampling():
    # Equal weights + systematic resampling keep every particle in place, so the N
    # particles are N independent draws from the LM: test their distribution.
    model = ToyStepModel(letters_transition)
    result = particle_filter(jax.random.key(0), model, QUESTION, constant, n_particles=1000,
                             config=CONFIG, scheme="systematic")
    assert np.all(result.ancestors == np.arange(1000))
    assert chi_square_pvalue([p.text for p in result.particles], EXACT_LETTERS) > 1e-3
    np.testing.assert_allclose(result.weights, 1 / 1000)


def test_constant_reward_multinomial_particles_follow_the_lm():
    # With multinomial resampling particles are correlated within a run, but each one is
    # still a draw from the LM: particle 0 across independent runs.
    model = ToyStepModel(letters_transition)
    texts = []
    for seed in range(150):
        result = particle_filter(jax.random.key(seed), model, QUESTION, constant, n_particles=3,
                                 config=CONFIG, scheme="multinomial")
        texts.append(result.particles[0].text)
    assert chi_square_pvalue(texts, EXACT_LETTERS) > 1e-3


def exact_pf_accuracy(n, z_correct=2.0, z_wrong=-4.0, q=Q):
    """P(PF answers correctly) with the exact verifier: some correct particle must survive step 1."""
    total = 0.0
    for k in range(n + 1):
        pk = k * math.exp(z_correct) / (k * math.exp(z_correct) + (n - k) * math.exp(z_wrong))
        total += stats.binom.pmf(k, n, q) * (1 - (1 - pk) ** n)
    return total


@pytest.mark.parametrize("n_particles, runs", [(1, 80), (4, 100), (16, 40)])
def test_particle_filter_concentrates_on_correct_answers(n_particles, runs):
    model = ToyStepModel(arithmetic_transition)
    verifier = ArithmeticVerifier()
    correct = 0
    for seed in range(runs):
        result = particle_filter(jax.random.key(seed), model, QUESTION, verifier,
                                 n_particles=n_particles, config=CONFIG)
        correct += result.answer == "7"
    exact = exact_pf_accuracy(n_particles)
    assert stats.binomtest(correct, runs, exact).pvalue > 1e-3
    # The exact accuracy grows with N: 0.3, ~0.76, ~0.997.
    assert exact_pf_accuracy(1) == pytest.approx(Q)
    assert exact_pf_accuracy(1) < exact_pf_accuracy(4) < exact_pf_accuracy(16) > 0.99


def test_verifier_log_odds_used_by_exact_formula():
    verifier = ArithmeticVerifier()
    assert verifier.log_odds(QUESTION, "3 + 4 = 7\n\n") == 2.0
    assert verifier.log_odds(QUESTION, "3 + 4 = 8\n\n") == -4.0


def test_beam_search_keeps_the_best_first_step():
    # Width 2 over 4 beams: the answer is right iff one of the 4 first steps is right.
    model = ToyStepModel(arithmetic_transition)
    runs = 100
    correct = sum(
        beam_search(jax.random.key(s), model, QUESTION, ArithmeticVerifier(), n_particles=4,
                    beam_width=2, config=CONFIG).answer == "7"
        for s in range(runs)
    )
    assert stats.binomtest(correct, runs, 1 - (1 - Q) ** 4).pvalue > 1e-3


def test_entropic_annealing_exponent():
    # 1/beta = max(1, (N / ESS) (1 - t/T))
    assert annealing_exponent(ess=2.0, n=8, step=0, horizon=10) == pytest.approx(1 / 4)
    assert annealing_exponent(ess=2.0, n=8, step=5, horizon=10) == pytest.approx(1 / 2)
    assert annealing_exponent(ess=8.0, n=8, step=0, horizon=10) == 1.0
    assert annealing_exponent(ess=2.0, n=8, step=9, horizon=10) == 1.0


def exact_fraction_after_resampling(n, beta_fn, z_correct=2.0, z_wrong=-4.0, q=Q):
    """E[fraction of correct particles after the step-1 resampling] (any tempering rule)."""
    total = 0.0
    for k in range(n + 1):
        log_w = np.array([z_correct] * k + [z_wrong] * (n - k))
        ess = np.exp(2 * np.logaddexp.reduce(log_w) - np.logaddexp.reduce(2 * log_w))
        beta = beta_fn(ess)
        pk = k * math.exp(beta * z_correct) / (k * math.exp(beta * z_correct) + (n - k) * math.exp(beta * z_wrong))
        total += stats.binom.pmf(k, n, q) * pk
    return total


def test_entropic_particle_filter_resamples_from_the_annealed_distribution():
    n, runs, horizon = 4, 150, 4
    model = ToyStepModel(arithmetic_transition)
    fractions = []
    for seed in range(runs):
        result = entropic_particle_filter(
            jax.random.key(seed), model, QUESTION, ArithmeticVerifier(), n_particles=n,
            config=CONFIG.replace(max_steps=horizon), anneal_threshold=1.0,
        )
        fractions.append(np.mean([p.steps[0].startswith("3 + 4 = 7") for p in result.particles]))
    annealed = exact_fraction_after_resampling(n, lambda ess: annealing_exponent(ess, n, 0, horizon))
    plain = exact_fraction_after_resampling(n, lambda ess: 1.0)
    standard_error = np.std(fractions, ddof=1) / np.sqrt(runs)
    assert abs(np.mean(fractions) - annealed) < 4 * standard_error
    assert abs(plain - annealed) > 3 * standard_error  # the test can tell the two apart


def test_particle_gibbs_keeps_the_reference():
    model = ToyStepModel(arithmetic_transition)
    result = particle_gibbs(jax.random.key(1), model, QUESTION, ArithmeticVerifier(), n_particles=4,
                            iterations=3, config=CONFIG)
    assert len(result.iterations) == 3
    for before, after in zip(result.iterations, result.iterations[1:], strict=False):
        reference = after["particles"][-1]
        assert reference.text in {p.text for p in before["particles"]}
    # Three sweeps of four particles, two steps each.
    assert result.budget.lm_calls == 3 * 4 * 2 - 2 * 2  # the reference is never re-generated


def test_best_of_n_and_majority_vote_on_shared_samples():
    model = ToyStepModel(arithmetic_transition)
    from probinf.llm import sample_independent

    samples, budget = sample_independent(jax.random.key(3), model, QUESTION, n=12, config=CONFIG)
    answers = [p.text.rsplit(" ", 1)[1].rstrip(".") for p in samples]
    best = best_of_n(jax.random.key(0), model, QUESTION, ArithmeticVerifier(), n_particles=12, samples=samples)
    assert best.answer == ("7" if "7" in answers else best.answer)
    vote = majority_vote(jax.random.key(0), model, QUESTION, n_particles=12, samples=samples)
    counts = {a: answers.count(a) for a in set(answers)}
    assert counts[vote.answer] == max(counts.values())
    # Weighted vote with the verifier: one correct sample outweighs many wrong ones.
    weighted = majority_vote(jax.random.key(0), model, QUESTION, ArithmeticVerifier(), n_particles=12,
                             samples=samples)
    assert weighted.answer == ("7" if "7" in answers else weighted.answer)
    assert budget.tokens == sum(p.num_tokens for p in samples)


class CountingModel(ToyStepModel):
    """Records every step it returns, to check the budget independently."""

    def __init__(self, transition):
        super().__init__(transition)
        self.steps = []

    def extend(self, seeds, prompt, prefixes, params):
        out = super().extend(seeds, prompt, prefixes, params)
        self.steps.extend(out)
        return out


@pytest.mark.parametrize("method", ["particle_filter", "entropic_particle_filter", "beam_search",
                                    "best_of_n", "majority_vote", "greedy", "particle_gibbs"])
def test_budget_accounting(method):
    model = CountingModel(arithmetic_transition)
    calls = []

    def reward(question, solution):
        calls.append(solution)
        return 0.5 + 0.1 * ("= 7" in solution)

    result = generate(model, QUESTION, reward=reward, answer_fn=extract_answer, method=method, n_particles=4,
                      config=CONFIG.replace(max_steps=5))
    budget = result.budget
    assert isinstance(budget, Budget)
    assert budget.tokens == sum(s.num_tokens for s in model.steps)
    assert budget.lm_calls == len(model.steps)
    assert budget.reward_calls == len(calls)
    assert budget.lm_seconds + budget.reward_seconds + budget.overhead_seconds == pytest.approx(
        budget.total_seconds)


def test_genealogy_is_consistent():
    model = ToyStepModel(arithmetic_transition)
    result = particle_filter(jax.random.key(5), model, QUESTION, ArithmeticVerifier(), n_particles=6,
                             config=CONFIG)
    assert result.ancestors.shape == (2, 6)
    assert result.resampled.tolist() == [True, False]
    assert len(result.lineage()) == 3
    for i in range(len(result.particles)):
        path = result.lineage(i)
        assert path[-1] == i and path[1] == i  # no resampling after the last step
        # The first step of a particle is the first step of its step-0 ancestor's child.
        assert path[0] == result.ancestors[0, i]
    assert set(result.answer_distribution()) <= {"7", "8", "6"}
    assert sum(result.answer_distribution().values()) == pytest.approx(1.0)


def test_same_key_same_output():
    model = ToyStepModel(arithmetic_transition)
    a = particle_filter(jax.random.key(9), model, QUESTION, ArithmeticVerifier(), n_particles=5, config=CONFIG)
    b = particle_filter(jax.random.key(9), model, QUESTION, ArithmeticVerifier(), n_particles=5, config=CONFIG)
    assert [p.text for p in a.particles] == [p.text for p in b.particles]
    np.testing.assert_array_equal(a.ancestors, b.ancestors)


@pytest.mark.parametrize("selection", ["argmax", "sample", "vote"])
def test_selection_modes_return_a_particle(selection):
    model = ToyStepModel(arithmetic_transition)
    result = particle_filter(jax.random.key(2), model, QUESTION, ArithmeticVerifier(), n_particles=8,
                             config=CONFIG, selection=selection)
    assert result.text == result.particles[result.index].text


@pytest.mark.parametrize("tilt", ["final", "every_step"])
def test_likelihood_weighting_and_ess_threshold(tilt):
    model = ToyStepModel(arithmetic_transition)
    result = particle_filter(jax.random.key(2), model, QUESTION, ArithmeticVerifier(), n_particles=8,
                             config=CONFIG, weighting="likelihood", ess_threshold=0.0, tilt=tilt)
    assert not result.resampled.any()
    # Never resampled: the final log weight is the log score of the whole solution
    # (tilt="final") or the sum of log scores of both prefixes ("every_step").
    verifier = ArithmeticVerifier()
    for particle, log_w in zip(result.particles, result.log_weights, strict=True):
        logs = [math.log(verifier.score(QUESTION, ["".join(particle.steps[:k + 1])])[0]) for k in range(2)]
        assert log_w == pytest.approx(logs[-1] if tilt == "final" else sum(logs))


# -- bad input ---------------------------------------------------------------------------------


def test_empty_prompt():
    with pytest.raises(ValueError, match="prompt"):
        generate(ToyStepModel(arithmetic_transition), "   ", reward=constant, answer_fn=extract_answer)


@pytest.mark.parametrize("method", ["particle_filter", "entropic_particle_filter", "particle_gibbs",
                                    "best_of_n", "beam_search"])
def test_generate_requires_a_reward_and_an_answer_extractor(method):
    # No arithmetic default: the error names what is missing and how to get the arithmetic ones.
    model = ToyStepModel(arithmetic_transition)
    with pytest.raises(TypeError, match=r"`reward`.*from probinf\.llm\.rewards import arithmetic") as missing:
        generate(model, QUESTION, method=method, answer_fn=extract_answer)
    assert "`answer_fn`" not in str(missing.value).split(":")[0]
    with pytest.raises(TypeError, match=r"needs `answer_fn`.*answer_fn=arithmetic\.extract_answer"):
        generate(model, QUESTION, reward=constant, method=method)
    with pytest.raises(TypeError, match=r"needs `reward`.* and `answer_fn`"):
        generate(model, QUESTION, method=method)
    with pytest.raises(TypeError, match="`answer_fn` must be a callable"):
        generate(model, QUESTION, reward=constant, answer_fn="extract_answer", method=method)


@pytest.mark.parametrize("method", ["greedy", "majority_vote"])
def test_methods_without_a_reward_still_need_an_answer_extractor(method):
    model = ToyStepModel(arithmetic_transition)
    with pytest.raises(TypeError, match="needs `answer_fn`"):
        generate(model, QUESTION, method=method)
    result = generate(model, QUESTION, method=method, answer_fn=lambda text: f"<{text.strip()[-2]}>",
                      config=CONFIG, key=jax.random.key(2))
    assert result.answer == f"<{result.text.strip()[-2]}>"  # the extractor given, not the arithmetic one
    assert np.all(result.log_weights == 0.0)  # greedy: one particle; majority vote: unweighted


def test_generate_with_the_arithmetic_ones_is_the_method_itself():
    from probinf.llm.rewards import arithmetic

    model = ToyStepModel(arithmetic_transition)
    key = jax.random.key(5)
    via_generate = generate(model, QUESTION, reward=arithmetic.ArithmeticVerifier(),
                            answer_fn=arithmetic.lenient_answer, n_particles=6, config=CONFIG, key=key,
                            selection="vote")
    direct = particle_filter(key, model, QUESTION, ArithmeticVerifier(), n_particles=6, config=CONFIG,
                             answer_fn=arithmetic.lenient_answer, selection="vote")
    assert [p.text for p in via_generate.particles] == [p.text for p in direct.particles]
    assert via_generate.log_weights.tolist() == direct.log_weights.tolist()
    assert (via_generate.answer, via_generate.index) == (direct.answer, direct.index)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_particle_count(n):
    with pytest.raises(ValueError, match="n_particles"):
        generate(ToyStepModel(arithmetic_transition), QUESTION, reward=constant, answer_fn=extract_answer,
                 n_particles=n)


def test_unknown_method_and_options():
    model = ToyStepModel(arithmetic_transition)
    with pytest.raises(ValueError, match="method"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, method="magic")
    with pytest.raises(ValueError, match="weighting"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, weighting="odds")
    with pytest.raises(ValueError, match="scheme"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, scheme="lottery")
    with pytest.raises(ValueError, match="selection"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, selection="best")
    with pytest.raises(ValueError, match="tilt"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, tilt="sometimes")
    with pytest.raises(ValueError, match="ess_threshold"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, ess_threshold=2.0)
    with pytest.raises(ValueError, match="max_steps"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, config=CONFIG.replace(max_steps=0))
    with pytest.raises(TypeError, match="config"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, max_steps=3)
    with pytest.raises(TypeError, match="config"):
        generate(model, QUESTION, reward=constant, answer_fn=extract_answer, config={"max_steps": 3})
    with pytest.raises(ValueError, match="process reward"):
        from probinf.llm import AnswerMatch

        generate(model, QUESTION, reward=AnswerMatch("7"), answer_fn=extract_answer)
    with pytest.raises(TypeError, match="reward"):
        generate(model, QUESTION, reward=42, answer_fn=extract_answer)


@pytest.mark.parametrize("bad, match", [
    (lambda q, s: float("nan"), "NaN"),
    (lambda q, s: 1.5, r"\[0, 1\]"),
    (lambda q, s: "high", "numbers"),
])
def test_bad_reward_values(bad, match):
    with pytest.raises(ValueError, match=match):
        generate(ToyStepModel(arithmetic_transition), QUESTION, reward=bad, answer_fn=extract_answer, n_particles=2)


def test_reward_with_wrong_count():
    from probinf.llm import CallableReward

    reward = CallableReward(lambda q, solutions: [0.5], batched=True)
    with pytest.raises(ValueError, match="exactly one score per solution"):
        generate(ToyStepModel(arithmetic_transition), QUESTION, reward=reward, answer_fn=extract_answer,
                 n_particles=3)


def test_token_cap_truncates_and_max_steps_ends_runs():
    # A model that never emits the delimiter within the cap: each step is cut at the cap
    # (flagged), and the run ends after max_steps instead of hanging.
    def rambling(steps):
        return [("word " * 100, 1.0)]

    result = particle_filter(jax.random.key(0), ToyStepModel(rambling), QUESTION, constant, n_particles=2,
                             config=CONFIG.replace(max_step_tokens=5, max_steps=3))
    assert all(p.finished for p in result.particles)
    assert all(p.truncated_steps == 3 and len(p.steps) == 3 for p in result.particles)
    assert result.budget.tokens == 2 * 3 * 5


def test_look_ahead_modulation_is_charged_to_the_budget():
    model = CountingModel(arithmetic_transition)
    result = entropic_particle_filter(jax.random.key(0), model, QUESTION, ArithmeticVerifier(), n_particles=4,
                                      config=CONFIG, lookahead=1)
    # Step 1 (4 calls) + one look-ahead step per particle before resampling (4) + step 2 (4).
    assert result.budget.lm_calls == len(model.steps) == 12
    assert result.budget.tokens == sum(s.num_tokens for s in model.steps)
    assert all(len(p.steps) == 2 for p in result.particles)  # look-ahead text is discarded


# -- finished particles are frozen -------------------------------------------------------------

# "stop" finishes at step 1; "go" goes on for two more steps. Likelihood weighting with
# tau = 1 makes the potential the reward itself, so the Feynman-Kac target is explicit.
def stop_or_go(steps):
    if not steps:
        return [("stop", 0.3), ("go", 0.7)]
    if steps == ("go",):
        return [("x", 0.5), ("y", 0.5)]
    if len(steps) == 2:
        return [("z", 1.0)]
    return []


STOP_OR_GO_REWARD = {"stop": 0.4, "go\n\n": 0.6, "go\n\nx\n\n": 0.9, "go\n\ny\n\n": 0.2,
                     "go\n\nx\n\nz": 0.5, "go\n\ny\n\nz": 0.5}
# sum over complete paths of p(path) * prod_t G_t(path), a finished path taking G = 1 after it ends
STOP_OR_GO_TARGET = {"stop": 0.3 * 0.4, "go\n\nx\n\nz": 0.7 * 0.6 * 0.5 * 0.9 * 0.5,
                     "go\n\ny\n\nz": 0.7 * 0.6 * 0.5 * 0.2 * 0.5}
# tilt="final": the ratio potentials telescope to p(path) * G(final reward of the path)
STOP_OR_GO_FINAL_TARGET = {"stop": 0.3 * 0.4, "go\n\nx\n\nz": 0.7 * 0.5 * 0.5,
                           "go\n\ny\n\nz": 0.7 * 0.5 * 0.5}


def stop_or_go_reward(question, solution):
    return STOP_OR_GO_REWARD[solution]


@pytest.mark.parametrize("tilt, target", [("every_step", STOP_OR_GO_TARGET), ("final", STOP_OR_GO_FINAL_TARGET)])
@pytest.mark.parametrize("method, options", [
    ("particle_filter", {}),
    ("particle_filter", {"ess_threshold": 0.5, "scheme": "systematic"}),
    ("entropic_particle_filter", {"anneal_threshold": 1.0, "keep_residual_weights": True}),
])
def test_frozen_particles_keep_the_weighted_sample_unbiased(method, options, tilt, target):
    # Resampling only the live particles, each live slot taking an equal share of the live
    # mass (or w / (m q) when annealed), keeps E[(1/N) sum_i w_i 1{x_i = path}] equal to
    # the exact unnormalised target of every path. Resampling finished particles with the
    # live ones, and re-applying their last potential, would not.
    model = ToyStepModel(stop_or_go)
    n, runs = 6, 300
    estimates = {path: [] for path in target}
    for seed in range(runs):
        result = generate(model, QUESTION, reward=stop_or_go_reward, answer_fn=extract_answer, method=method,
                          n_particles=n, config=CONFIG, weighting="likelihood", tilt=tilt,
                          key=jax.random.key(seed), **options)
        weights = np.exp(result.log_weights)
        for path in target:
            estimates[path].append(sum(w for p, w in zip(result.particles, weights, strict=True) if p.text == path) / n)
    for path, exact in target.items():
        values = np.array(estimates[path])
        standard_error = values.std(ddof=1) / np.sqrt(runs)
        assert abs(values.mean() - exact) < 4 * standard_error, (path, values.mean(), exact)
    total = sum(np.mean(v) for v in estimates.values())
    assert total == pytest.approx(sum(target.values()), abs=4 * np.std(
        np.sum([estimates[p] for p in estimates], axis=0), ddof=1) / np.sqrt(runs))


@pytest.mark.parametrize("method", ["particle_filter", "entropic_particle_filter", "particle_gibbs"])
def test_finished_particles_are_kept_not_extended_resampled_or_duplicated(method):
    model = CountingModel(stop_or_go)
    n = 8
    result = generate(model, QUESTION, reward=stop_or_go_reward, answer_fn=extract_answer, method=method,
                      n_particles=n, config=CONFIG, weighting="likelihood", key=jax.random.key(3))
    sweeps = result.iterations or [{"particles": result.particles, "log_weights": result.log_weights,
                                    "ancestors": result.ancestors}]
    first_steps = [s.text for s in model.steps[:n]]  # the first call extends all N particles
    for k, sweep in enumerate(sweeps):
        stopped = [i for i, p in enumerate(sweep["particles"]) if p.steps == ("stop",)]
        for i in stopped:
            particle = sweep["particles"][i]
            # Its weight is the step-1 potential, untouched by the two later steps.
            assert sweep["log_weights"][i] == pytest.approx(math.log(0.4), abs=1e-12)
            assert particle.text == "stop" and particle.finished and particle.finish_reason == "model"
            assert all(row[i] == i for row in np.asarray(sweep["ancestors"])[1:])
        if k == 0:
            # Neither duplicated nor resampled away: as many as the LM drew at step 1.
            assert len(stopped) == first_steps.count("stop") > 0
    if method != "particle_gibbs":
        # A frozen particle is never extended: N first steps, then two per "go" particle.
        assert result.budget.lm_calls == n + 2 * first_steps.count("go\n\n")


def test_beam_search_sets_finished_beams_aside():
    # "stop" has the best reward; beam search used to copy it beam_width times.
    def reward(question, solution):
        return {"stop": 0.99}.get(solution, STOP_OR_GO_REWARD[solution])

    for seed in range(5):
        model = CountingModel(stop_or_go)
        result = beam_search(jax.random.key(seed), model, QUESTION, reward, n_particles=8, beam_width=2,
                             config=CONFIG)
        drawn = [s.text for s in model.steps[:8]].count("stop")
        assert [p.text for p in result.particles].count("stop") == drawn
        assert result.answer is None and result.text == ("stop" if drawn else result.text)


def test_a_stated_answer_finishes_a_particle():
    def chatty(steps):
        return [("3 + 4 = 7. The answer is 7.", 1.0)] if not steps else [("More words.", 1.0)]

    model = CountingModel(chatty)
    result = particle_filter(jax.random.key(0), model, QUESTION, constant, n_particles=3, config=CONFIG)
    assert all(p.finish_reason == "answer" and len(p.steps) == 1 for p in result.particles)
    assert result.answer == "7" and len(model.steps) == 3
    result = particle_filter(jax.random.key(0), model, QUESTION, constant, n_particles=3,
                             config=CONFIG.replace(stop_at_answer=False, max_steps=3))
    assert all(p.finish_reason == "max_steps" and len(p.steps) == 3 for p in result.particles)


def test_particle_prefix_replays_its_steps_and_frozen_particles_cannot_grow():
    from probinf.llm import StepResult
    from probinf.llm.samplers import Particle

    particle = Particle().extended(StepResult("a\n", 2, -1.0, tokens=(1, 2)))
    particle = replace_scores(particle, (0.5,)).extended(StepResult("b", 1, -0.5, finished=True, tokens=(3,)))
    assert particle.tokens == (1, 2, 3) and particle.text == "a\nb" and particle.finish_reason == "model"
    head = particle.prefix(1)
    assert (head.text, head.tokens, head.num_tokens, head.log_prob, head.finished) == ("a\n", (1, 2), 2, -1.0, False)
    assert head.scores == (0.5,)
    with pytest.raises(ValueError, match="frozen"):
        particle.extended(StepResult("c", 1))
    text_only = Particle().extended(StepResult("a", 1))
    assert text_only.tokens is None


def replace_scores(particle, scores):
    from dataclasses import replace

    return replace(particle, scores=scores)


def test_decode_config_validation_names_the_field():
    for kwargs, name in [({"n_particles": 0}, "n_particles"), ({"max_steps": 1.5}, "max_steps"),
                         ({"max_step_tokens": 0}, "max_step_tokens"), ({"stop_at_answer": "yes"}, "stop_at_answer"),
                         ({"temperature": -0.1}, "temperature"), ({"delimiter": ""}, "delimiter"),
                         ({"top_p": 0}, "top_p")]:
        with pytest.raises(ValueError, match=name):
            DecodeConfig(**kwargs)
    with pytest.raises(TypeError, match="no field"):
        CONFIG.replace(max_tokens=3)
    sampling = CONFIG.sampling
    assert (sampling.temperature, sampling.max_step_tokens, sampling.delimiter) == (1.0, 16, "\n\n")
