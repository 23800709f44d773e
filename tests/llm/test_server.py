"""`probinf serve` (probinf/llm/serve/): the OpenAI wire format, concurrency, faults.

Every server listens on 127.0.0.1 on an ephemeral port, in a background thread that a
fixture shuts down. Answers are checked against the library called directly
(`probinf.llm.generate` with the same seed), token counts against a count kept inside
the backend, and errors against OpenAI's error JSON.
"""

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import numpy as np
import pytest

from probinf.llm import (
    ArithmeticVerifier,
    DecodeConfig,
    OpenAICompletionsModel,
    StepResult,
    TokenText,
    ToyStepModel,
    best_of_n,
    generate,
    particle_filter,
)
from probinf.llm.rewards import extract_answer
from probinf.llm.serve import BatchScheduler, Decoder, RequestCancelled, running_server
from probinf.llm.serve.app import ServerSettings
from probinf.llm.serve.protocol import APIError, Limits, parse_chat_request

openai = pytest.importorskip("openai")

QUESTION = "Tom has 3 apples and gets 4 more. How many apples does Tom have now?"
CONFIG = DecodeConfig(temperature=1.0, max_step_tokens=16, delimiter="\n\n", max_steps=4)
CLAIMS = [("3 + 4 = 7", 0.3), ("3 + 4 = 8", 0.4), ("3 + 4 = 6", 0.3)]


def arithmetic_transition(steps):
    """A claim (correct with probability 0.3), then the answer it implies."""
    if not steps:
        return CLAIMS
    if len(steps) == 1:
        return [(f"The answer is {steps[0].split('= ')[1]}.", 1.0)]
    return []


def endless_transition(steps):
    return [("and so on", 1.0)]


class CountingToy(ToyStepModel):
    """A toy model that counts what it generates (the reference for token accounting),
    optionally slowed down or held at a gate."""

    def __init__(self, transition, delay: float = 0.0, gate: threading.Event | None = None):
        super().__init__(transition)
        self.delay = delay
        self.gate = gate
        self.lock = threading.Lock()
        self.tokens = 0
        self.calls = 0

    def extend(self, seeds, prompt, prefixes, params):
        if self.gate is not None:
            assert self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        steps = super().extend(seeds, prompt, prefixes, params)
        with self.lock:
            self.calls += 1
            self.tokens += sum(s.num_tokens for s in steps)
        return steps


@pytest.fixture(scope="module")
def toy():
    return CountingToy(arithmetic_transition)


@pytest.fixture(scope="module")
def server(toy):
    settings = ServerSettings(max_running=8, max_queued=64, max_prompt_chars=2000, timeout=30)
    with Decoder(toy, config=CONFIG) as decoder, running_server(decoder, settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=20)


def post(url: str, path: str, body, headers=None) -> tuple[int, dict, dict]:
    """A raw POST (bytes or JSON); returns status, JSON body and headers."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", "/v1" + path, body=payload,
                       headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    data = json.loads(response.read())
    connection.close()
    return response.status, data, dict(response.getheaders())


def get(url: str, path: str, headers=None) -> tuple[int, dict]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    data = json.loads(response.read())
    connection.close()
    return response.status, data


def chat(question=QUESTION, **fields) -> dict:
    return {"model": "probinf", "messages": [{"role": "user", "content": question}], **fields}


# What a Decoder uses unless told otherwise: its reward "arithmetic" (the exact verifier)
# and the samplers' answer extractor; `generate` takes both explicitly.
SERVER_DEFAULTS = dict(reward=ArithmeticVerifier(), answer_fn=extract_answer)


def direct(method: str, n: int | None, seed: int):
    """The library itself on a fresh toy model: what the server must answer."""
    return generate(ToyStepModel(arithmetic_transition), QUESTION, method=method, n_particles=n, config=CONFIG,
                    seed=seed, **SERVER_DEFAULTS)


def assert_error(status, body, expected_status, param=None):
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body


def wait_until(condition, timeout=10.0):
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "condition not reached in time"
        time.sleep(0.02)


# -- answers and token accounting ---------------------------------------------------------------


@pytest.mark.parametrize("model, extra, method, n", [
    ("probinf:pf:4", {}, "particle_filter", 4),
    ("probinf", {"method": "bon", "n": 3}, "best_of_n", 3),
    ("probinf:beam_search", {"n": 4}, "beam_search", 4),
    ("probinf:mv:5", {}, "majority_vote", 5),
    ("probinf:greedy", {}, "greedy", None),
    ("probinf:epf:3", {"n": 2}, "entropic_particle_filter", 2),  # the request field wins
])
def test_chat_completion_is_the_librarys_answer(client, toy, model, extra, method, n):
    before = toy.tokens
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], seed=11,
        extra_body={"probinf": {**extra, "return_particles": True}})
    expected = direct(method, n, 11)
    assert response.object == "chat.completion" and response.model == model
    assert response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == "stop"
    # Every token the particles generated, as counted inside the backend and by the library.
    assert response.usage.completion_tokens == expected.budget.tokens == toy.tokens - before
    assert response.usage.prompt_tokens == 0  # a text-only backend does not count the prompt
    assert response.usage.total_tokens == response.usage.completion_tokens
    extra_field = response.probinf
    assert extra_field["method"] == method and extra_field["answer"] == expected.answer
    assert [p["text"] for p in extra_field["particles"]] == [p.text for p in expected.particles]
    np.testing.assert_allclose([p["weight"] for p in extra_field["particles"]], expected.weights, rtol=1e-12)
    assert extra_field["selected"] == expected.index and extra_field["prompt_tokens_counted"] is False


def test_completions_models_and_health(client, server):
    response = client.completions.create(model="probinf:bon:3", prompt=QUESTION, seed=5)
    # /v1/completions uses the prompt as it is (no chat template) and as the question.
    expected = best_of_n(jax.random.key(5), ToyStepModel(arithmetic_transition), QUESTION, ArithmeticVerifier(),
                         n_particles=3, config=CONFIG, prompt=QUESTION)
    assert response.object == "text_completion" and response.choices[0].text == expected.text
    assert response.usage.completion_tokens == expected.budget.tokens
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "probinf" and "probinf:particle_filter" in ids and "probinf:greedy" in ids
    assert client.models.retrieve("probinf:pf:8").id == "probinf:pf:8"
    status, health = get(server.url, "/health")
    assert status == 200 and health["status"] == "ok" and health["running"] == 0


def test_max_tokens_caps_every_particle():
    config = DecodeConfig(max_step_tokens=16, max_steps=4)
    spec = parse_chat_request(chat(max_tokens=40), served="probinf", default_method="particle_filter",
                              config=config, rewards={"arithmetic"})
    assert (spec.config.max_step_tokens, spec.config.max_steps) == (16, 2)  # 32 <= 40 tokens
    spec = parse_chat_request(chat(max_tokens=5), served="probinf", default_method="particle_filter",
                              config=config, rewards={"arithmetic"})
    assert (spec.config.max_step_tokens, spec.config.max_steps) == (5, 1)


def test_stream_sends_the_same_answer(client):
    stream = client.chat.completions.create(
        model="probinf:pf:4", messages=[{"role": "user", "content": QUESTION}], seed=3, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    expected = direct("particle_filter", 4, 3)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected.budget.tokens
    pieces = list(client.completions.create(model="probinf:pf:4", prompt=QUESTION, seed=3, stream=True))
    expected = particle_filter(jax.random.key(3), ToyStepModel(arithmetic_transition), QUESTION,
                               ArithmeticVerifier(), n_particles=4, config=CONFIG, prompt=QUESTION)
    assert "".join(p.choices[0].text for p in pieces) == expected.text
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_a_stream_past_its_deadline_ends_with_an_error_event():
    model = CountingToy(endless_transition, delay=0.05)
    with Decoder(model, config=CONFIG.replace(max_steps=200)) as decoder, running_server(decoder) as running:
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0, timeout=20)
        stream = client.chat.completions.create(model="probinf", messages=chat()["messages"], stream=True,
                                                extra_body={"probinf": {"timeout": 0.3}})
        with pytest.raises(openai.APIError, match="deadline of 0.3 s"):
            list(stream)
        wait_until(lambda: get(running.url, "/health")[1]["running"] == 0)


# -- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("body, status, param", [
    (chat(probinf={"method": "magic"}), 400, "probinf.method"),
    (chat(model="probinf:magic"), 400, "model"),
    (chat(probinf={"n": 0}), 400, "probinf.n"),
    (chat(model="probinf:pf:0"), 400, "model"),
    (chat(probinf={"n": "8"}), 400, "probinf.n"),
    (chat(probinf={"n": 100000}), 400, "probinf.n"),
    ({"model": "probinf"}, 400, "messages"),
    (chat(messages="hello"), 400, "messages"),
    ({"model": "probinf", "messages": []}, 400, "messages"),
    ({"model": "probinf", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ({"model": "probinf", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    (chat(temperature="hot"), 400, "temperature"),
    (chat(stream="yes"), 400, "stream"),
    (chat(probinf={"reward": "vibes"}), 400, "probinf.reward"),
    (chat(probinf={"colour": "red"}), 400, "probinf"),
    (chat(probinf={"timeout": -1}), 400, "probinf.timeout"),
    (chat(probinf={"method": "bon", "selection": "vote"}), 400, "probinf.selection"),
    (chat(n=2), 400, "n"),
    (chat(model="probinf:greedy:4"), 400, "model"),
    (chat(question="x" * 5000), 400, "messages"),
    (chat(model="gpt-4"), 404, "model"),
    ([1, 2], 400, None),
    (b"{not json", 400, None),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    code, data, _ = post(server.url, "/chat/completions", body)
    assert_error(code, data, status, param)
    if param:
        assert f"`{param}" in data["error"]["message"] or param == "model"


def test_bad_request_through_the_client_and_server_keeps_serving(client):
    with pytest.raises(openai.BadRequestError, match="probinf.n"):
        client.chat.completions.create(model="probinf", messages=[{"role": "user", "content": QUESTION}],
                                       extra_body={"probinf": {"n": 0}})
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model="probinf", prompt="")
    response = client.chat.completions.create(model="probinf:greedy", messages=[{"role": "user", "content": QUESTION}])
    assert response.choices[0].message.content == direct("greedy", None, 0).text


def test_api_key():
    with Decoder(ToyStepModel(arithmetic_transition), config=CONFIG) as decoder, \
            running_server(decoder, ServerSettings(api_key="sesame")) as running:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            status, body, _ = post(running.url, "/chat/completions", chat(), headers)
            assert_error(status, body, 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=running.url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=running.url, api_key="sesame", max_retries=0)
        assert good.chat.completions.create(model="probinf:greedy", messages=chat()["messages"]).choices
        assert get(running.url, "/health")[0] == 200  # no key needed


# -- limits and faults ------------------------------------------------------------------------


def test_full_queue_gets_429_and_deadline_gets_504():
    gate = threading.Event()
    model = CountingToy(arithmetic_transition, gate=gate)
    settings = ServerSettings(max_running=1, max_queued=0, timeout=30)
    with Decoder(model, config=CONFIG) as decoder, running_server(decoder, settings) as running:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, running.url, "/chat/completions", chat(probinf={"timeout": 0.5}))
            wait_until(lambda: get(running.url, "/health")[1]["running"] == 1)
            status, body, headers = post(running.url, "/chat/completions", chat())
            assert_error(status, body, 429)
            assert headers.get("retry-after") == "1"
            status, body, _ = first.result(timeout=20)  # held at the gate past its deadline
            assert_error(status, body, 504)
            assert "deadline" in body["error"]["message"]
            gate.set()
        # The timed-out run stopped at its next step; the slot is free again.
        wait_until(lambda: get(running.url, "/health")[1]["running"] == 0)
        assert decoder.scheduler.open_sessions == 0
        status, body, _ = post(running.url, "/chat/completions", chat(seed=2))
        assert status == 200 and body["choices"][0]["message"]["content"] == direct("particle_filter", None, 2).text


class _JunkHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server hook
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"<html>this is not JSON</html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("upstream", ["down", "junk"])
def test_upstream_failures_give_502(upstream):
    junk = None
    if upstream == "junk":
        junk = ThreadingHTTPServer(("127.0.0.1", 0), _JunkHandler)
        threading.Thread(target=junk.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{junk.server_address[1]}/v1"
    else:
        url = f"http://127.0.0.1:{_closed_port()}/v1"
    backend = OpenAICompletionsModel(url, max_retries=0, timeout=5)
    try:
        with Decoder(backend, config=CONFIG) as decoder, running_server(decoder) as running:
            for _ in range(2):  # and again: the server still serves
                status, body, _ = post(running.url, "/chat/completions", chat())
                assert_error(status, body, 502)
                assert ("malformed JSON" if upstream == "junk" else "cannot reach") in body["error"]["message"]
            assert get(running.url, "/health")[1]["running"] == 0
    finally:
        if junk is not None:
            junk.shutdown()
            junk.server_close()


def test_client_disconnect_mid_stream_cancels_the_run():
    model = CountingToy(endless_transition, delay=0.05)
    config = CONFIG.replace(max_steps=200)
    with Decoder(model, config=config) as decoder, running_server(decoder) as running:
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        body = json.dumps(chat(stream=True)).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"data:" not in received:  # the stream has started (the role chunk)
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200")
        wait_until(lambda: model.calls >= 2)
        sock.close()
        wait_until(lambda: get(running.url, "/health")[1]["running"] == 0)
        calls = model.calls
        time.sleep(0.3)
        assert model.calls == calls  # nothing decodes for the departed client
        assert decoder.scheduler.open_sessions == 0
        health = get(running.url, "/health")[1]
        assert health["requests"]["cancelled"] == 1
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0, timeout=20)
        response = client.chat.completions.create(model="probinf:greedy", messages=chat()["messages"],
                                                  extra_body={"probinf": {"max_steps": 2}})
        assert response.choices[0].message.content == "and so on\n\nand so on\n\n"
        assert response.choices[0].finish_reason == "length"


def test_client_leaving_a_plain_request_cancels_the_run():
    model = CountingToy(endless_transition, delay=0.05)
    with Decoder(model, config=CONFIG.replace(max_steps=200)) as decoder, running_server(decoder) as running:
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
        body = json.dumps(chat()).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: model.calls >= 2)
        sock.close()
        wait_until(lambda: get(running.url, "/health")[1]["running"] == 0)
        assert model.calls < 200 and decoder.scheduler.open_sessions == 0
        assert get(running.url, "/health")[1]["requests"]["cancelled"] == 1


def test_serve_command_line():
    from probinf.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "0", "--method", "bon", "--particles", "4",
                                      "--max-queued", "0", "--delimiter", "\\n\\n"])
    assert (args.port, args.method, args.particles, args.max_queued, args.delimiter) == (0, "bon", 4, 0, "\n\n")
    for bad in (["--port", "70000"], ["--particles", "0"], ["--timeout", "-1"], ["--method", "magic"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["serve", *bad])
        assert exit_info.value.code == 2


@pytest.mark.timeout(60)
def test_load_50_requests_8_concurrent(server, toy):
    """Every request gets a well-formed answer (the library's own, for its seed) or a
    well-formed error, and the tokens reported add up to the tokens generated."""
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=20)
    plan = []
    for i in range(50):
        if i % 10 == 9:
            plan.append(("bad", i))
        elif i % 10 == 4:
            plan.append(("beam_search", i))
        else:
            plan.append(("particle_filter", i))

    def one(item):
        kind, seed = item
        try:
            if kind == "bad":
                client.chat.completions.create(model="probinf", messages=[{"role": "user", "content": QUESTION}],
                                               extra_body={"probinf": {"n": -seed}})
                return kind, seed, None, "no error"
            response = client.chat.completions.create(
                model=f"probinf:{kind}:4", messages=[{"role": "user", "content": QUESTION}], seed=seed)
            return kind, seed, response, None
        except openai.APIStatusError as err:
            return kind, seed, None, err

    before, start = toy.tokens, time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, plan))
    elapsed = time.monotonic() - start
    reported = 0
    for kind, seed, response, error in outcomes:
        if kind == "bad":
            assert isinstance(error, openai.BadRequestError) and error.status_code == 400
            assert error.body["param"] == "probinf.n" and "probinf.n" in error.body["message"]
            continue
        assert error is None, error
        expected = direct(kind, 4, seed)
        assert response.choices[0].message.content == expected.text
        assert response.usage.completion_tokens == expected.budget.tokens
        assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
        reported += response.usage.completion_tokens
    assert reported == toy.tokens - before
    assert elapsed < 30  # bounded: a hang fails here or at the test timeout
    health = get(server.url, "/health")[1]
    assert health["running"] == 0 and health["queued"] == 0


# -- the scheduler on a token-level backend -----------------------------------------------------


class TokenEcho:
    """A token-level fake backend whose step is a function of (seed, full context ids,
    prefix text): it shows what a merged call passed for each particle."""

    supports_seeding = True

    def __init__(self):
        self.calls = []

    def format_prompt(self, question, system=None):
        return f"Q:{question}|"

    def encode_prompt(self, prompt):
        text = prompt.text if isinstance(prompt, TokenText) else prompt
        return TokenText(text, tuple(ord(c) % 251 for c in text))

    def extend(self, seeds, prompt, prefixes, params):
        self.calls.append(len(prefixes))
        out = []
        for seed, prefix in zip(seeds, prefixes, strict=True):
            context = tuple(prompt.tokens) + tuple(prefix.tokens)
            token = (hash(context) + int(seed)) % 97
            out.append(StepResult(f"[{len(context)}:{prefix.text[-2:]}:{token}]", 1, -1.0, tokens=(token,)))
        return out

    def next_token_logprobs(self, contexts, top_k=20, prefixes=None):
        return [{" Yes": -0.1, " No": -2.0} for _ in contexts]


def test_concurrent_sessions_share_one_backend_call_with_unchanged_steps():
    model = TokenEcho()
    params = CONFIG.sampling
    jobs = []
    for k in range(3):
        prompt = model.encode_prompt(f"question {k}" * (k + 1))
        prefixes = [TokenText(f"ab{k}{i}", (k, i)) for i in range(k + 1)]
        jobs.append(([100 * k + i for i in range(k + 1)], prompt, prefixes))
    expected = [model.extend(seeds, prompt, prefixes, params) for seeds, prompt, prefixes in jobs]
    model.calls.clear()
    scheduler = BatchScheduler(model, max_wait=10.0)  # waits for all three: one call
    sessions = [scheduler.session() for _ in jobs]
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda k: sessions[k].extend(*jobs[k], params), range(3)))
    finally:
        for s in sessions:
            s.close()
        scheduler.close()
    assert model.calls == [1 + 2 + 3]
    assert results == expected
    assert scheduler.stats.merged_calls == 1 and scheduler.stats.largest_merge == 3


class ShortWindow(TokenEcho):
    def extend(self, seeds, prompt, prefixes, params):
        if any(len(prompt.tokens) + len(p.tokens) > 20 for p in prefixes):
            raise ValueError("the context does not fit the model's window")
        return super().extend(seeds, prompt, prefixes, params)


def test_one_runs_bad_context_does_not_fail_the_runs_merged_with_it():
    model = ShortWindow()
    params = CONFIG.sampling
    prompts = [model.encode_prompt("short"), model.encode_prompt("a prompt far too long for the window")]
    expected = model.extend([7], prompts[0], [TokenText()], params)
    scheduler = BatchScheduler(model, max_wait=10.0)
    sessions = [scheduler.session() for _ in prompts]

    def step(k):
        try:
            return sessions[k].extend([7], prompts[k], [TokenText()], params)
        except ValueError as err:
            return err

    try:
        with ThreadPoolExecutor(2) as pool:
            good, bad = pool.map(step, range(2))
    finally:
        for s in sessions:
            s.close()
        scheduler.close()
    assert good == expected
    assert isinstance(bad, ValueError) and "window" in str(bad)


def test_a_lone_session_is_not_held_back_and_cancel_stops_it():
    model = TokenEcho()
    scheduler = BatchScheduler(model, max_wait=10.0)
    idle = scheduler.session()  # open but idle: the barrier must not wait for it forever...
    idle.cancel()  # ...once cancelled
    with scheduler.session() as session:
        start = time.monotonic()
        prompt = session.encode_prompt("hi")
        session.extend([1], prompt, [TokenText()], CONFIG.sampling)
        assert time.monotonic() - start < 5
        session.cancel()
        with pytest.raises(RequestCancelled):
            session.extend([1], prompt, [TokenText()], CONFIG.sampling)
    idle.close()
    scheduler.close()


def test_decoder_threads_get_the_librarys_answers():
    with Decoder(ToyStepModel(arithmetic_transition), config=CONFIG) as decoder:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda s: decoder(QUESTION, method="pf", n=4, key=jax.random.key(s)),
                                    range(8)))
    for seed, result in enumerate(results):
        assert result.text == direct("particle_filter", 4, seed).text


def test_limits_are_checked():
    with pytest.raises(APIError, match="at most 3"):
        parse_chat_request(chat(probinf={"n": 4}), served="probinf", default_method="particle_filter",
                           config=CONFIG, rewards={"arithmetic"}, limits=Limits(max_particles=3))
    with pytest.raises(ValueError, match="max_running"):
        ServerSettings(max_running=0)


def test_cli_aliases_match_the_library():
    from probinf.llm.serve.cli import _ALIASES
    from probinf.llm.serve.decoder import METHOD_ALIASES

    assert set(_ALIASES) == set(METHOD_ALIASES)


# -- the embedded model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install -e '.[llm]'")
    from probinf.llm import LlamaCppModel

    try:
        return LlamaCppModel.smollm2(n_ctx=512, max_sequences=8)
    except ImportError as err:
        pytest.skip(str(err))


@pytest.mark.llm_extra
def test_embedded_model_through_the_openai_client(smollm2):
    config = DecodeConfig(n_particles=2, max_steps=2, max_step_tokens=12)
    question = "Mia has 12 apples and gets 7 more. How many apples does Mia have now?"
    expected = generate(smollm2, question, method="particle_filter", config=config, seed=4, **SERVER_DEFAULTS)
    prompt_tokens = len(smollm2.encode_prompt(smollm2.format_prompt(question)).tokens)
    with Decoder(smollm2, config=config) as decoder, running_server(decoder) as running:
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0, timeout=60)
        response = client.chat.completions.create(model="probinf", seed=4,
                                                  messages=[{"role": "user", "content": question}])
    assert response.choices[0].message.content == expected.text
    assert response.usage.completion_tokens == expected.budget.tokens
    assert response.usage.prompt_tokens == prompt_tokens


@pytest.mark.llm_extra
def test_merged_llama_steps_are_bit_identical(smollm2):
    # Two runs with different prompts in one batched call: each particle's step is the one
    # it gets alone (same ids, text and log-probability).
    params = DecodeConfig(max_step_tokens=6).sampling
    prompts = [smollm2.encode_prompt(smollm2.format_prompt(q)) for q in ("What is 2 + 3?", "Name a colour.")]
    seeds = [[1, 2], [3]]
    alone = [smollm2.extend(s, p, [TokenText()] * len(s), params) for s, p in zip(seeds, prompts, strict=True)]
    scheduler = BatchScheduler(smollm2, max_wait=10.0)
    sessions = [scheduler.session() for _ in prompts]
    try:
        with ThreadPoolExecutor(2) as pool:
            merged = list(pool.map(lambda k: sessions[k].extend(seeds[k], prompts[k], [TokenText()] * len(seeds[k]),
                                                                params), range(2)))
    finally:
        for s in sessions:
            s.close()
        scheduler.close()
    assert scheduler.stats.merged_calls == 1
    assert merged == alone


@pytest.mark.llm_extra
@pytest.mark.slow  # loads and dequantises the embedded model with transformers (~20 s)
def test_two_lines_from_a_transformers_model_and_tokenizer():
    for name in ("torch", "transformers", "gguf", "accelerate"):
        pytest.importorskip(name, reason=f"the transformers integration needs {name}: pip install -e '.[llm]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probinf.llm import Decoder
    from probinf.llm.backends import smollm2_path

    torch.set_num_threads(1)
    folder, name = smollm2_path().rsplit("/", 1)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()
    config = DecodeConfig(n_particles=2, max_steps=2, max_step_tokens=8)
    question = "What is 2 + 3?"

    result = Decoder.from_transformers(model, tokenizer, config=config)(question, method="pf", seed=1)

    expected = generate((model, tokenizer), question, method="particle_filter", config=config, seed=1,
                        **SERVER_DEFAULTS)
    assert result.text == expected.text and result.budget.tokens == expected.budget.tokens
    assert [p.tokens for p in result.particles] == [p.tokens for p in expected.particles]


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "expected a port number in [0, 65535], got '70000'"),
    (["--timeout", "abc"], "expected a positive number of seconds, got 'abc'"),
    (["--timeout", "nan"], "expected a positive number of seconds, got 'nan'"),
    (["--timeout", "0"], "expected a positive number of seconds, got '0'"),
])
def test_serve_arguments_are_checked_before_anything_starts(args, message, capsys):
    from probinf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
