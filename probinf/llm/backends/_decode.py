"""Token sampling and step segmentation shared by the local backends (llama.cpp, transformers).

Both local backends expose two primitives — the next-token logits after a context, and
"append this token" — and this module turns them into one reasoning step: draw tokens
with the requested truncation and temperature, stop at the delimiter, a stop string,
the end-of-sequence token or the token cap, and sum the model's log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from probinf.llm.base import SamplingParams, StepResult

__all__ = ["sample_token", "decode_step", "split_at_delimiter"]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def sample_token(logits: np.ndarray, rng: np.random.Generator, params: SamplingParams) -> tuple[int, float]:
    """Draw one token; returns ``(token, log-probability under the untempered model)``.

    The truncations follow llama.cpp's order: top-k, then top-p, then min-p, all on the
    temperature-1 distribution, and the temperature is applied last to what survives.
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


def decode_step(
    next_logits: Callable[[], np.ndarray],
    append: Callable[[int], None],
    detokenize: Callable[[list[int]], bytes],
    is_end_of_sequence: Callable[[int], bool],
    rng: np.random.Generator,
    params: SamplingParams,
    room: int,
) -> StepResult:
    """Generate one step from the current context.

    Args:
        next_logits: logits of the next token after the current context.
        append: feed a sampled token to the model (extends the context).
        detokenize: bytes of a list of tokens.
        is_end_of_sequence: whether a token ends the generation.
        rng: source of randomness (unused when greedy).
        params: sampling parameters.
        room: tokens left in the context window; when it runs out the generation is
            finished (a documented fallback, never an error mid-decoding).
    """
    tokens: list[int] = []
    log_prob = 0.0
    limit = min(params.max_step_tokens, max(room, 0))
    text = ""
    while len(tokens) < limit:
        token, token_log_prob = sample_token(next_logits(), rng, params)
        if is_end_of_sequence(token):
            return StepResult(text, len(tokens), log_prob, finished=True)
        tokens.append(token)
        log_prob += token_log_prob
        text = detokenize(tokens).decode("utf-8", errors="ignore")
        for stop in params.stop:
            index = text.find(stop)
            if index >= 0:
                return StepResult(text[:index], len(tokens), log_prob, finished=True)
        cut = split_at_delimiter(text, params.delimiter)
        if cut is not None:
            return StepResult(text[:cut], len(tokens), log_prob)
        if len(tokens) < limit:
            append(token)
    out_of_room = limit < params.max_step_tokens
    return StepResult(text, len(tokens), log_prob, finished=out_of_room, truncated=True)


def extend_in_prefix_order(
    seeds: Sequence[int], prompt: str, prefixes: Sequence[str], params: SamplingParams,
    extend_one: Callable[[int, str, SamplingParams], StepResult],
) -> list[StepResult]:
    """``extend`` of a local backend: one step per prefix, visited in sorted order so that
    resampled siblings (equal prefixes) follow each other and reuse the cached prefix."""
    if len(seeds) != len(prefixes):
        raise ValueError(f"`seeds` has {len(seeds)} entries for {len(prefixes)} prefixes")
    results: list[StepResult | None] = [None] * len(prefixes)
    for i in sorted(range(len(prefixes)), key=lambda i: prefixes[i]):
        results[i] = extend_one(int(seeds[i]), prompt + prefixes[i], params)
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
