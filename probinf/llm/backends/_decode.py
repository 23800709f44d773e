"""Token sampling, incremental detokenisation and step segmentation for the local backends.

Both local backends (llama.cpp, transformers) expose two primitives — the next-token
logits after a context, and "append this token" — and this module turns them into one
reasoning step: draw tokens with the requested truncation and temperature, turn them into
text incrementally, stop at the delimiter, a stop string, the end-of-sequence token or the
token cap, and sum the model's log-probabilities. The step boundary is found on tokens:
after each token the text so far is searched, and the step ends at that token; the ids are
kept exactly as drawn and the next step continues from them (never from re-tokenised text).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from probinf.llm.base import SamplingParams, StepResult, TokenText, as_token_text

__all__ = [
    "sample_token",
    "StepDecoder",
    "decode_step",
    "decode_steps_in_lockstep",
    "split_at_delimiter",
    "find_stop",
    "IncrementalText",
    "ByteText",
    "WindowText",
    "context_tokens",
    "extend_in_context_order",
    "top_token_logprobs",
]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def sample_token(logits: np.ndarray, rng: np.random.Generator, params: SamplingParams) -> tuple[int, float]:
    """Draw one token; returns ``(token, log-probability under the untempered model)``.

    The truncations follow llama.cpp's order: top-k, then top-p, then min-p, all on the
    temperature-1 distribution, and the temperature is applied last to what survives.
    Temperature 0 is the argmax (the first one on ties, as ``numpy.argmax``).
    """
    logits = np.asarray(logits, dtype=np.float64)
    log_probs = _log_softmax(logits)
    if params.greedy:
        token = int(np.argmax(logits))
        return token, float(log_probs[token])
    candidates = np.arange(logits.shape[0])
    if params.top_k and params.top_k < candidates.size:
        candidates = np.argpartition(-logits, params.top_k - 1)[: params.top_k]
    candidates = candidates[np.argsort(-logits[candidates], kind="stable")]
    probs = np.exp(log_probs[candidates])
    if params.top_p < 1.0:
        cumulative = np.cumsum(probs) / probs.sum()
        keep = int(np.searchsorted(cumulative, params.top_p, side="left")) + 1
        candidates, probs = candidates[:keep], probs[:keep]
    if params.min_p > 0:
        mask = probs >= params.min_p * probs[0]
        candidates, probs = candidates[mask], probs[mask]
    tempered = logits[candidates] / params.temperature
    tempered = np.exp(tempered - tempered.max())
    token = int(candidates[rng.choice(candidates.size, p=tempered / tempered.sum())])
    return token, float(log_probs[token])


def split_at_delimiter(text: str, delimiter: str | None) -> int | None:
    """Index just past the first delimiter that follows some non-blank text, else ``None``.

    A delimiter at the very start of a step (blank lines the model emits before
    writing anything) does not end the step: a step must say something.
    """
    if delimiter is None:
        return None
    start = 0
    while True:
        index = text.find(delimiter, start)
        if index < 0:
            return None
        if text[:index].strip():
            return index + len(delimiter)
        start = index + 1


def find_stop(before: str, text: str, stops: Sequence[str]) -> str | None:
    """The first stop string (in ``stops`` order) that ends inside ``text``, searched in
    ``before + text`` so that one straddling the two is found; ``None`` if none does."""
    for stop in stops:
        tail = before[max(len(before) - len(stop) + 1, 0):] if len(stop) > 1 else ""
        if stop in tail + text:
            return stop
    return None


# -- incremental detokenisation --------------------------------------------------------------


class IncrementalText(Protocol):
    """Text of a growing token sequence, released in whole characters only."""

    def push(self, token: int) -> str:
        """Add a token; returns the text it completes (``""`` while a character is incomplete)."""
        ...

    def flush(self) -> str:
        """The text still held back (an incomplete character, shown as U+FFFD); call at the end."""
        ...


class ByteText:
    """Incremental UTF-8 decoding of tokens whose bytes are known (llama.cpp's pieces).

    Bytes are concatenated and decoded with Python's incremental UTF-8 decoder, so a
    character split across tokens (byte-fallback tokens, byte-level BPE) is released
    when its last byte arrives. The decoder starts in the state left by ``context`` (the
    particle's earlier tokens: a character may be pending across a step boundary).
    """

    def __init__(self, token_bytes: Callable[[int], bytes], context: Sequence[int] = ()):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._decoder.decode(b"".join(token_bytes(t) for t in context))

    def push(self, token: int) -> str:
        return self._decoder.decode(self._token_bytes(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class WindowText:
    """Incremental detokenisation by a tokenizer's ``decode`` on a sliding window (for
    tokenizers whose per-token bytes are not exposed, e.g. Hugging Face's).

    The new text of a token is ``decode(ids[p:]) - decode(ids[p:r])`` where ``r`` marks
    what has been released and ``p`` a few tokens before it (so that SentencePiece's
    leading spaces and merges are decoded in context); text ending in U+FFFD (an
    incomplete character) is held back. This is the scheme of Hugging Face's
    text-generation-inference and vLLM.
    """

    WINDOW = 6

    def __init__(self, decode: Callable[[list[int]], str], context: Sequence[int] = ()):
        self._decode = decode
        self._ids = list(context)
        read = len(self._ids)
        # Tokens at the end that do not form a whole character yet have not been released.
        while read > 0 and len(self._ids) - read < 4 and self._window_text(read).endswith("\ufffd"):
            read -= 1
        self._read = read
        self._prefix = max(read - self.WINDOW, 0)

    def _window_text(self, read: int) -> str:
        return self._decode(self._ids[max(read - self.WINDOW, 0): read])

    def _advance(self, final: bool) -> str:
        shown = self._decode(self._ids[self._prefix: self._read])
        full = self._decode(self._ids[self._prefix:])
        if len(full) > len(shown) and (final or not full.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self._ids)
            return full[len(shown):]
        return ""

    def push(self, token: int) -> str:
        self._ids.append(int(token))
        return self._advance(final=False)

    def flush(self) -> str:
        return self._advance(final=True)


# -- one step --------------------------------------------------------------------------------


class StepDecoder:
    """One particle's step, one token at a time: the state machine behind :func:`decode_step`
    and the batched backends, which advance many of them in lockstep.

    :meth:`feed` takes the logits of the next token and returns the drawn token when the
    step goes on (the caller appends it to the particle's sequence and feeds the next
    logits), or ``None`` when the step has ended; :attr:`result` is then set. After every
    drawn token the step's text so far is searched for a stop string (in ``before`` + the
    step's text, so one may straddle the step boundary) and for the delimiter; the step
    ends at the token that completes one. The result's text is the detokenisation of its
    ids (a character still incomplete is carried into the next step, or flushed when the
    generation ends); nothing is cut out of it.

    Args:
        text: incremental detokeniser, in the state after the particle's earlier tokens.
        is_end_of_sequence: whether a token ends the generation (it is neither counted
            nor kept: it has no text).
        rng: source of randomness (unused when greedy).
        params: sampling parameters.
        room: tokens left in the context window; when it runs out the generation is
            finished (a documented fallback, never an error mid-decoding).
        before: the text the particle generated before this step (for stop strings).
    """

    def __init__(self, text: IncrementalText, is_end_of_sequence: Callable[[int], bool],
                 rng: np.random.Generator, params: SamplingParams, room: int, before: str = ""):
        self._text = text
        self._is_end = is_end_of_sequence
        self._rng = rng
        self._params = params
        self._before = before
        self.limit = min(params.max_step_tokens, max(room, 0))
        self.tokens: list[int] = []
        self._log_prob = 0.0
        self._step_text = ""
        self.result: StepResult | None = None
        if self.limit == 0:
            self._finish(finished=True, truncated=True)

    def _finish(self, finished: bool, truncated: bool = False) -> None:
        text = self._step_text + (self._text.flush() if finished else "")
        self.result = StepResult(text, len(self.tokens), self._log_prob, finished=finished,
                                 truncated=truncated, tokens=tuple(self.tokens))

    def feed(self, logits: np.ndarray) -> int | None:
        """Draw the next token from ``logits``; the token if the step goes on, else ``None``."""
        if self.result is not None:
            raise RuntimeError("the step has ended; it takes no more logits")
        params = self._params
        token, token_log_prob = sample_token(logits, self._rng, params)
        if self._is_end(token):
            self._finish(finished=True)
            return None
        self.tokens.append(token)
        self._log_prob += token_log_prob
        self._step_text += self._text.push(token)
        if params.stop and find_stop(self._before, self._step_text, params.stop) is not None:
            self._finish(finished=True)
        elif split_at_delimiter(self._step_text, params.delimiter) is not None:
            self._finish(finished=False)
        elif len(self.tokens) >= self.limit:
            # Cut at the cap; at the end of the context window the generation is over.
            self._finish(finished=self.limit < params.max_step_tokens, truncated=True)
        return None if self.result is not None else token


def decode_step(
    next_logits: Callable[[], np.ndarray],
    append: Callable[[int], None],
    text: IncrementalText,
    is_end_of_sequence: Callable[[int], bool],
    rng: np.random.Generator,
    params: SamplingParams,
    room: int,
    before: str = "",
) -> StepResult:
    """Generate one step from the current context (see :class:`StepDecoder`).

    Args:
        next_logits: logits of the next token after the current context.
        append: feed a drawn token to the model (extends the context); not called for
            the step's last token, which the next step's context starts with.
        text, is_end_of_sequence, rng, params, room, before: as for :class:`StepDecoder`.
    """
    decoder = StepDecoder(text, is_end_of_sequence, rng, params, room, before)
    while decoder.result is None:
        token = decoder.feed(next_logits())
        if token is not None:
            append(token)
    return decoder.result


def decode_steps_in_lockstep(
    decoders: Sequence[StepDecoder],
    first_logits: Sequence[np.ndarray | None],
    forward: Callable[[list[tuple[int, int]]], Sequence[np.ndarray]],
) -> list[StepResult]:
    """Advance several :class:`StepDecoder` together: one ``forward`` per token position
    for all the particles whose step goes on.

    Args:
        decoders: one per particle.
        first_logits: the logits after each particle's context (``None`` for a decoder
            that has already ended).
        forward: ``[(particle index, token), ...] -> logits after each``; it appends each
            token to that particle's sequence.
    """
    pending: dict[int, int] = {}
    for i, (decoder, logits) in enumerate(zip(decoders, first_logits, strict=True)):
        if decoder.result is None:
            token = decoder.feed(logits)
            if token is not None:
                pending[i] = token
    while pending:
        batch = sorted(pending.items())
        next_logits = forward(batch)
        pending = {}
        for (i, _), logits in zip(batch, next_logits, strict=True):
            token = decoders[i].feed(logits)
            if token is not None:
                pending[i] = token
    return [decoder.result for decoder in decoders]  # type: ignore[misc]


def context_tokens(prompt: TokenText, prefix, tokenize: Callable[[str], list[int]]) -> list[int]:
    """``prompt.tokens + prefix.tokens``; a prefix without ids (user-written text) is tokenised."""
    prefix = as_token_text(prefix)
    if prompt.tokens is None:
        raise ValueError("`prompt` has no token ids; encode it with the model's encode_prompt")
    generated = list(prefix.tokens) if prefix.tokens is not None else (tokenize(prefix.text) if prefix.text else [])
    return list(prompt.tokens) + generated


def logprob_contexts(encode_prompt: Callable[[str], TokenText], contexts, prefixes,
                     tokenize: Callable[[str], list[int]]) -> list[list[int]]:
    """The token ids ``next_token_logprobs`` scores: each context (a prompt) followed by its
    prefix (none when ``prefixes`` is ``None``)."""
    if prefixes is not None and len(prefixes) != len(contexts):
        raise ValueError(f"`prefixes` has {len(prefixes)} entries for {len(contexts)} contexts")
    return [context_tokens(encode_prompt(context), TokenText() if prefixes is None else prefixes[i], tokenize)
            for i, context in enumerate(contexts)]


def extend_in_context_order(
    seeds: Sequence[int], contexts: Sequence[list[int]], extend_one: Callable[[int, list[int], int], StepResult],
) -> list[StepResult]:
    """``extend`` of a one-sequence-at-a-time backend: one step per context, visited in the
    order of their ids so that resampled siblings (equal contexts) follow each other and
    reuse the cached prefix. ``extend_one(seed, context, index)`` makes one step."""
    if len(seeds) != len(contexts):
        raise ValueError(f"`seeds` has {len(seeds)} entries for {len(contexts)} prefixes")
    results: list[StepResult | None] = [None] * len(contexts)
    for i in sorted(range(len(contexts)), key=lambda i: contexts[i]):
        results[i] = extend_one(int(seeds[i]), contexts[i], i)
    return results  # type: ignore[return-value]


def top_token_logprobs(logits: np.ndarray, top_k: int, detokenize: Callable[[int], str]) -> dict[str, float]:
    """The ``top_k`` most likely next tokens as ``{text: log-probability}``; tokens that
    decode to the same text have their probabilities added."""
    log_probs = _log_softmax(logits)
    entry: dict[str, float] = {}
    for token in np.argsort(-log_probs)[:top_k]:
        text = detokenize(int(token))
        entry[text] = float(np.logaddexp(entry.get(text, -np.inf), log_probs[token]))
    return entry
