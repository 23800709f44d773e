"""Sampling parameters, step segmentation and token sampling (the backends' shared code)."""

import numpy as np
import pytest
from scipy import stats

from probinf.llm import SamplingParams
from probinf.llm.backends._decode import decode_step, sample_token, split_at_delimiter


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


def test_decode_step_stops_at_delimiter_stop_string_eos_and_cap():
    vocabulary = {0: b"a", 1: b"\n\n", 2: b"END", 3: b"<eos>"}

    def run(sequence, params, room=100):
        tokens = iter(sequence)
        state = {"next": next(tokens)}

        def logits():
            out = np.full(4, -10.0)
            out[state["next"]] = 10.0
            return out

        def append(token):
            state["next"] = next(tokens)

        return decode_step(logits, append, lambda ids: b"".join(vocabulary[i] for i in ids),
                           lambda t: t == 3, np.random.default_rng(0), params, room)

    greedy = SamplingParams(temperature=0.0, max_step_tokens=5, stop=("END",))
    step = run([0, 0, 1, 0], greedy)
    assert (step.text, step.num_tokens, step.finished, step.truncated) == ("aa\n\n", 3, False, False)
    step = run([0, 2, 0], greedy)
    assert (step.text, step.finished) == ("a", True)
    step = run([0, 3], greedy)
    assert (step.text, step.num_tokens, step.finished) == ("a", 1, True)
    step = run([0] * 9, greedy)
    assert (step.text, step.num_tokens, step.truncated, step.finished) == ("aaaaa", 5, True, False)
    step = run([0] * 9, greedy, room=2)  # the context window is full: the generation ends
    assert (step.num_tokens, step.truncated, step.finished) == (2, True, True)
