"""Sampling parameters, step segmentation and token sampling (the backends' shared code)."""

import numpy as np
import pytest
from scipy import stats

from probinf.llm import SamplingParams, StepResult, TokenText
from probinf.llm.backends._decode import (
    ByteText,
    WindowText,
    decode_step,
    find_stop,
    sample_token,
    split_at_delimiter,
)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1}, "temperature"),
    ({"top_k": -2}, "top_k"),
    ({"top_p": 0}, "top_p"),
    ({"min_p": 1.0}, "min_p"),
    ({"max_step_tokens": 0}, "max_step_tokens"),
    ({"delimiter": ""}, "delimiter"),
    ({"stop": "END"}, "stop"),
])
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_split_at_delimiter_needs_content_first():
    assert split_at_delimiter("\n\nabc\n\ndef", "\n\n") == len("\n\nabc\n\n")
    assert split_at_delimiter("abc", "\n\n") is None
    assert split_at_delimiter("abc\n\n", None) is None


def test_sample_token_truncation_matches_exact_distribution():
    # Probabilities 0.5, 0.3, 0.15, 0.05: top_k=3 drops the last, min_p=0.35 then drops
    # the third (0.15 < 0.35 * 0.5), temperature 1 leaves 0.5 : 0.3 -> 0.625 : 0.375.
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    params = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.35)
    rng = np.random.default_rng(0)
    draws = [sample_token(logits, rng, params)[0] for _ in range(4000)]
    counts = np.bincount(draws, minlength=4)
    assert counts[2] == counts[3] == 0
    assert stats.binomtest(counts[0], 4000, 0.625).pvalue > 1e-3
    token, log_prob = sample_token(logits, rng, SamplingParams(temperature=0.0))
    assert token == 0 and log_prob == pytest.approx(np.log(0.5))
    # top_p = 0.7 keeps {0, 1} (cumulative 0.5 < 0.7 <= 0.8); temperature 0.5 squares the odds.
    params = SamplingParams(temperature=0.5, top_k=0, top_p=0.7, min_p=0.0)
    draws = [sample_token(logits, rng, params)[0] for _ in range(4000)]
    counts = np.bincount(draws, minlength=4)
    assert counts[2] == counts[3] == 0
    assert stats.binomtest(counts[0], 4000, 0.25 / (0.25 + 0.09)).pvalue > 1e-3


# A byte vocabulary in which a blank line can be one token or two, and "é" (two UTF-8
# bytes) is split over two tokens.
VOCABULARY = {0: b"a", 1: b"\n\n", 2: b"END", 3: b"<eos>", 4: b"\n", 5: b"\xc3", 6: b"\xa9", 7: b"x\n\ny"}


def run_step(sequence, params, room=100, context=(), before=""):
    """decode_step driven by a model that emits ``sequence``; returns the step and the appended ids."""
    tokens = iter(sequence)
    state = {"next": next(tokens)}
    appended = []

    def logits():
        out = np.full(len(VOCABULARY), -10.0)
        out[state["next"]] = 10.0
        return out

    def append(token):
        appended.append(token)
        state["next"] = next(tokens)

    text = ByteText(VOCABULARY.__getitem__, context)
    step = decode_step(logits, append, text, lambda t: t == 3, np.random.default_rng(0), params, room, before)
    return step, appended


def test_decode_step_stops_at_delimiter_stop_string_eos_and_cap():
    greedy = SamplingParams(temperature=0.0, max_step_tokens=5, stop=("END",))
    step, appended = run_step([0, 0, 1, 0], greedy)
    assert (step.text, step.tokens, step.finished, step.truncated) == ("aa\n\n", (0, 0, 1), False, False)
    assert appended == [0, 0]  # the step's last token starts the next step's context
    # The delimiter is found on tokens: two "\n" tokens end the step just as one "\n\n" does,
    # and the ids are kept as emitted (never merged).
    step, _ = run_step([0, 4, 4, 0], greedy)
    assert (step.text, step.tokens) == ("a\n\n", (0, 4, 4))
    # A stop string ends the generation at the token that completes it, and stays in the text.
    step, _ = run_step([0, 2, 0], greedy)
    assert (step.text, step.tokens, step.finished) == ("aEND", (0, 2), True)
    step, _ = run_step([0, 3], greedy)
    assert (step.text, step.num_tokens, step.tokens, step.finished) == ("a", 1, (0,), True)
    step, _ = run_step([0] * 9, greedy)
    assert (step.text, step.num_tokens, step.truncated, step.finished) == ("aaaaa", 5, True, False)
    step, _ = run_step([0] * 9, greedy, room=2)  # the context window is full: the generation ends
    assert (step.num_tokens, step.truncated, step.finished) == (2, True, True)


def test_decode_step_keeps_a_token_that_straddles_the_delimiter():
    # The token "x\n\ny" completes the delimiter: the step ends at it and keeps all its text.
    step, _ = run_step([0, 7, 0], SamplingParams(temperature=0.0, max_step_tokens=5))
    assert (step.text, step.tokens) == ("ax\n\ny", (0, 7))


def test_stop_string_straddling_the_step_boundary():
    params = SamplingParams(temperature=0.0, max_step_tokens=5, delimiter=None, stop=("a\n\na",))
    step, _ = run_step([0, 0, 0], params, before="xa\n\n")
    assert (step.text, step.tokens, step.finished) == ("a", (0,), True)
    assert find_stop("xa\n", "\na", ("a\n\na",)) == "a\n\na"
    assert find_stop("a\n\na", "b", ("a\n\na",)) is None  # ended before this text: not this step's
    assert find_stop("", "abc", ("zz", "bc")) == "bc"


def test_multibyte_character_split_across_tokens_and_steps():
    # "é" = C3 A9 over two tokens: nothing is shown until its second byte arrives.
    text = ByteText(VOCABULARY.__getitem__)
    assert [text.push(t) for t in (0, 5, 6, 0)] == ["a", "", "é", "a"]
    assert text.flush() == ""
    # Across a step boundary: the earlier step ended on the first byte; the new step
    # starts from that context and releases the whole character.
    step, _ = run_step([6, 0, 1, 0], SamplingParams(temperature=0.0, max_step_tokens=5), context=(0, 5))
    assert (step.text, step.tokens) == ("éa\n\n", (6, 0, 1))
    # A generation that ends on an incomplete character shows it as U+FFFD.
    step, _ = run_step([0, 5, 3], SamplingParams(temperature=0.0, max_step_tokens=5))
    assert (step.text, step.tokens, step.finished) == ("a\ufffd", (0, 5), True)


def test_window_text_matches_full_decoding():
    # A SentencePiece-like tokenizer: "▁" is a space except at the very start, and
    # byte-fallback tokens make up multi-byte characters.
    pieces = {0: "▁Hello", 1: "▁wor", 2: "ld", 3: "<0xC3>", 4: "<0xA9>", 5: "!"}

    def decode(ids):
        data = b""
        for i in ids:
            piece = pieces[i]
            data += bytes([int(piece[3:5], 16)]) if piece.startswith("<0x") else piece.replace("▁", " ").encode()
        return data.decode("utf-8", errors="replace").removeprefix(" ")

    sequence = [0, 1, 2, 3, 4, 5, 1, 3, 4]
    for split in range(1, len(sequence)):
        context, rest = sequence[:split], sequence[split:]
        text = WindowText(decode, context)
        # What the context shows (held back: a trailing incomplete character) ...
        shown = decode(context).rstrip("\ufffd")
        new = "".join(text.push(t) for t in rest) + text.flush()
        assert shown + new == decode(sequence), split


def test_token_text_and_step_result_validation():
    assert TokenText("ab", [1, 2]).tokens == (1, 2)
    with pytest.raises(ValueError, match="tokens"):
        TokenText("a", (1, -2))
    with pytest.raises(TypeError, match="text"):
        TokenText(3)
    with pytest.raises(ValueError, match="num_tokens"):
        StepResult("ab", 3, tokens=(1, 2))
