"""`Decoder`: one backend, one reward registry and one `DecodeConfig`, callable from many threads.

The object behind ``probinf serve`` and the two-line ``transformers`` integration::

    decoder = Decoder.from_transformers(model, tokenizer)
    result = decoder("Mia has 12 apples and gets 7 more. How many now?", method="pf", n=8)

Each call is one run of :func:`probinf.llm.samplers.generate` on a
:class:`~probinf.llm.serve.batching.Session` of the decoder's
:class:`~probinf.llm.serve.batching.BatchScheduler`, so concurrent calls (threads, or the
server's requests) share batched backend calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from probinf.llm.base import DEFAULT_CONFIG, CallableReward, DecodeConfig, RewardModel
from probinf.llm.serve.batching import BatchScheduler, Session

__all__ = ["Decoder", "METHOD_ALIASES", "resolve_method", "DEFAULT_REWARDS", "PARTICLE_METHODS"]

# Short names accepted wherever a method is named (model ids such as "probinf:pf:8", the
# request field "probinf.method", Decoder calls); every full name of METHODS is accepted too.
METHOD_ALIASES = {
    "pf": "particle_filter",
    "epf": "entropic_particle_filter",
    "pg": "particle_gibbs",
    "bon": "best_of_n",
    "mv": "majority_vote",
    "vote": "majority_vote",
    "beam": "beam_search",
}

# The methods that take `selection` (they weight a population of particles).
PARTICLE_METHODS = ("particle_filter", "entropic_particle_filter", "particle_gibbs")


def resolve_method(name: str, field: str = "method") -> str:
    """The full method name of ``name`` (a name of ``probinf.llm.METHODS`` or an alias).

    Raises:
        ValueError: naming ``field`` for an unknown name.
    """
    from probinf.llm.samplers import METHODS

    if isinstance(name, str):
        full = METHOD_ALIASES.get(name, name)
        if full in METHODS:
            return full
    known = sorted(METHODS) + sorted(METHOD_ALIASES)
    raise ValueError(f"`{field}` must be one of {', '.join(known)}; got {name!r}")


def _arithmetic(model) -> RewardModel:
    from probinf.llm.rewards import ArithmeticVerifier

    return ArithmeticVerifier()


def _judge(model) -> RewardModel:
    from probinf.llm.rewards import LMJudgeReward

    return LMJudgeReward(model)  # the run's own session: its calls share the backend safely


def _constant(model) -> RewardModel:
    return CallableReward(lambda question, solution: 0.5)


# Reward name -> factory(model) -> RewardModel; the factory receives the run's language
# model (a session of the shared backend), so a judge reward can use the generator.
DEFAULT_REWARDS: dict[str, Callable] = {"arithmetic": _arithmetic, "judge": _judge, "none": _constant}


class Decoder:
    """Reward-guided decoding with one backend, safe to call from many threads at once.

    Args:
        model: anything :func:`~probinf.llm.backends.as_language_model` accepts: a
            :class:`~probinf.llm.base.LanguageModel`, ``"smollm2"``, a ``.gguf`` path, a
            server URL, a ``llama_cpp.Llama`` or a ``(model, tokenizer)`` pair from
            ``transformers``.
        config: the default decoding settings (a call may pass its own).
        method: the default method (a name of ``probinf.llm.METHODS`` or an alias:
            ``pf``, ``epf``, ``pg``, ``bon``, ``mv``, ``beam``).
        reward: the default reward: a name in ``rewards``, a
            :class:`~probinf.llm.base.RewardModel` or a callable ``(question, solution) ->
            float``.
        rewards: extra named rewards, ``name -> RewardModel`` or ``name -> factory(model)``
            (a factory gets the run's language model), added to ``"arithmetic"`` (the exact
            :class:`~probinf.llm.rewards.ArithmeticVerifier`), ``"judge"``
            (:class:`~probinf.llm.rewards.LMJudgeReward` with the same model) and ``"none"``
            (a constant 1/2: no guidance).
        system: default system message (``None``: the model's own).
        merge, max_wait: how concurrent runs share backend calls (see
            :class:`~probinf.llm.serve.batching.BatchScheduler`).
    """

    def __init__(self, model, *, config: DecodeConfig | None = None, method: str = "particle_filter",
                 reward="arithmetic", rewards: Mapping[str, object] | None = None, system: str | None = None,
                 merge: bool = True, max_wait: float = 0.05):
        from probinf.llm.backends import as_language_model

        config = DEFAULT_CONFIG if config is None else config
        if not isinstance(config, DecodeConfig):
            raise TypeError(f"`config` must be a DecodeConfig, got {type(config).__name__}")
        self.model = as_language_model(model)
        self.config = config
        self.method = resolve_method(method)
        self.rewards: dict[str, object] = dict(DEFAULT_REWARDS)
        for name, value in (rewards or {}).items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"`rewards` keys must be non-empty strings, got {name!r}")
            if not (isinstance(value, RewardModel) or callable(value)):
                raise TypeError(f"`rewards[{name!r}]` must be a RewardModel or a factory(model), "
                                f"got {type(value).__name__}")
            self.rewards[name] = value
        if isinstance(reward, str) and reward not in self.rewards:
            raise ValueError(f"`reward` must be one of {sorted(self.rewards)} or a RewardModel, got {reward!r}")
        self.reward = reward
        if system is not None and not isinstance(system, str):
            raise TypeError(f"`system` must be a str or None, got {type(system).__name__}")
        self.system = system
        self.scheduler = BatchScheduler(self.model, merge=merge, max_wait=max_wait)

    @classmethod
    def from_transformers(cls, model, tokenizer, *, batched: bool = True, **kwargs) -> Decoder:
        """A decoder on a loaded ``transformers`` causal LM and its tokenizer (the batched
        :class:`~probinf.llm.backends.TransformersModel`); ``kwargs`` as for :class:`Decoder`."""
        from probinf.llm.backends import TransformersModel

        return cls(TransformersModel(model, tokenizer, batched=batched), **kwargs)

    def session(self, timeout: float | None = None) -> Session:
        """A session of the shared backend for one run (see :meth:`decode`'s ``session``)."""
        return self.scheduler.session(timeout)

    def reward_for(self, reward, model) -> RewardModel | Callable:
        """The reward a run uses: ``reward`` by name (built for ``model``), or as given."""
        reward = self.reward if reward is None else reward
        if isinstance(reward, str):
            if reward not in self.rewards:
                raise ValueError(f"`reward` must be one of {sorted(self.rewards)}, got {reward!r}")
            reward = self.rewards[reward]
            return reward if isinstance(reward, RewardModel) else reward(model)
        return reward

    def decode(self, question: str, *, method: str | None = None, n: int | None = None, reward=None,
               config: DecodeConfig | None = None, system: str | None = None, prompt: str | None = None,
               key=None, seed: int = 0, timeout: float | None = None, session: Session | None = None,
               **options):
        """Decode one question; returns a :class:`~probinf.llm.samplers.DecodeResult`.

        Args:
            question: the question (given to the reward; formatted with the model's chat
                template unless ``prompt`` is given).
            method: a method name or alias (default: the decoder's).
            n: the number of particles / samples / beams (default: ``config.n_particles``).
            reward: a reward name, a RewardModel or a callable (default: the decoder's).
            config: decoding settings (default: the decoder's).
            system: system message (default: the decoder's).
            prompt: an already formatted prompt (skips the chat template).
            key, seed: randomness (``key`` wins; else ``jax.random.key(seed)``).
            timeout: seconds the run may take; past it the next backend call raises
                :class:`~probinf.llm.serve.batching.DeadlineExceeded`.
            session: run on this session (made with :meth:`session`, so that another
                thread can cancel it); it is closed at the end.
            **options: passed to the method (``selection``, ``weighting``, ...).

        Raises:
            ValueError, TypeError: for bad arguments (naming them).
            LLMBackendError: when the backend fails.
            RequestCancelled, DeadlineExceeded: when the session was cancelled or timed out.
        """
        import jax

        from probinf.llm.samplers import METHODS

        method = resolve_method(self.method if method is None else method)
        config = self.config if config is None else config
        system = self.system if system is None else system
        session = self.session(timeout) if session is None else session
        with session:
            reward_model = self.reward_for(reward, session)
            options.setdefault("progress", False)
            key = jax.random.key(seed) if key is None else key
            if method != "greedy":  # greedy has no budget N
                options["n_particles"] = n
            # The method itself, not `generate`, whose own `prompt` argument is the question.
            return METHODS[method](key, session, question, reward_model, config=config, system=system,
                                   prompt=prompt, **options)

    __call__ = decode

    def close(self) -> None:
        """Stop the scheduler's worker thread (runs still in flight raise ``RequestCancelled``)."""
        self.scheduler.close()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
