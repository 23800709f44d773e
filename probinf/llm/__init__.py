"""Reward-guided particle decoding for language models (inference-time scaling).

Decoding is posterior inference in a state-space model whose states are partial
solutions, whose transition is the language model and whose likelihood is a process
reward; `generate` runs particle filtering (Puri et al., 2025), entropic particle
filtering (Giannone et al., 2025), particle Gibbs, or a baseline (greedy, best-of-N,
majority vote, beam search) on any backend: llama.cpp, Hugging Face transformers, or an
OpenAI-compatible server. The task is the caller's: `generate` takes the reward and the
answer extractor explicitly (the arithmetic ones are in `probinf.llm.rewards.arithmetic`).
Third-party packages are imported only when a backend is built.
"""

from probinf.llm import backends, problems, rewards, serve
from probinf.llm.backends import (
    LlamaCppModel,
    OpenAICompletionsModel,
    ToyStepModel,
    TransformersModel,
    as_language_model,
)
from probinf.llm.base import (
    DEFAULT_CONFIG,
    CallableReward,
    DecodeConfig,
    LanguageModel,
    LLMBackendError,
    RewardModel,
    SamplingParams,
    StepResult,
    TokenText,
    as_reward,
)
from probinf.llm.problems import ArithmeticProblem, make_problems
from probinf.llm.rewards import AnswerMatch, ArithmeticVerifier, LMJudgeReward, extract_answer
from probinf.llm.samplers import (
    METHODS,
    Budget,
    DecodeResult,
    Particle,
    beam_search,
    best_of_n,
    entropic_particle_filter,
    generate,
    greedy,
    majority_vote,
    particle_filter,
    particle_gibbs,
    sample_independent,
    select,
)
from probinf.llm.serve import Decoder

__all__ = [
    "generate",
    "METHODS",
    "particle_filter",
    "entropic_particle_filter",
    "particle_gibbs",
    "greedy",
    "best_of_n",
    "majority_vote",
    "beam_search",
    "sample_independent",
    "select",
    "DecodeResult",
    "Particle",
    "Budget",
    "LanguageModel",
    "RewardModel",
    "CallableReward",
    "as_reward",
    "DecodeConfig",
    "DEFAULT_CONFIG",
    "SamplingParams",
    "StepResult",
    "TokenText",
    "LLMBackendError",
    "LlamaCppModel",
    "TransformersModel",
    "OpenAICompletionsModel",
    "ToyStepModel",
    "as_language_model",
    "ArithmeticVerifier",
    "AnswerMatch",
    "LMJudgeReward",
    "extract_answer",
    "ArithmeticProblem",
    "make_problems",
    "Decoder",
    "backends",
    "rewards",
    "problems",
    "serve",
]
