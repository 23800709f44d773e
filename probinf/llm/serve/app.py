"""The HTTP layer of ``probinf serve``: an OpenAI-compatible FastAPI app over a `Decoder`.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``
(and ``/v1/models/{id}``), ``GET /health``. FastAPI, uvicorn and sse-starlette come with
llama-cpp-python's ``server`` extra (in probinf's ``llm`` extra).

**Concurrency.** The app is asynchronous; each admitted request runs its decoding in a
worker thread (at most ``max_running`` at once) on its own session of the decoder's
:class:`~probinf.llm.serve.batching.BatchScheduler`, which merges the runs' steps into
shared batched backend calls. Up to ``max_queued`` more requests wait for a worker; a
request beyond that is refused at once with HTTP 429 (and ``Retry-After``).

**Failures.** A bad request gets 400 with OpenAI's error JSON naming the field; a missing
or wrong API key 401; an unknown model 404; an oversized body 413; a backend failure
(upstream server down, malformed answer) 502 with the cause; a request past its deadline
(``probinf.timeout``, at most the server's ``timeout``) 504; anything unexpected 500. A
streamed request reports a failure that happens after the stream started as a final
``data: {"error": ...}`` event (what OpenAI's servers do; the ``openai`` client raises
it). A client that disconnects cancels its run at the next step boundary. No request can
stop the server.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request).
import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from probinf.llm.base import LLMBackendError
from probinf.llm.serve.batching import DeadlineExceeded, RequestCancelled
from probinf.llm.serve.decoder import Decoder
from probinf.llm.serve.protocol import (
    APIError,
    Limits,
    RequestSpec,
    chat_chunks,
    chat_response,
    completion_chunks,
    completion_response,
    error_body,
    parse_chat_request,
    parse_completion_request,
)

__all__ = ["ServerSettings", "create_app", "serve", "running_server"]

logger = logging.getLogger("probinf.serve")


@dataclass(frozen=True)
class ServerSettings:
    """How ``probinf serve`` admits and bounds requests.

    Attributes:
        model_name: the served model id (``NAME``; ``NAME:METHOD[:N]`` pick a method).
        api_key: when set, every ``/v1`` request must send ``Authorization: Bearer <key>``.
        max_running: requests decoded at once (their steps share backend calls).
        max_queued: requests waiting for a worker; more get HTTP 429.
        timeout: the default and largest per-request deadline, in seconds (queueing included).
        max_prompt_chars: the longest prompt, in characters.
        max_particles: the largest ``n`` a request may ask for.
        max_body_bytes: the largest request body.
    """

    model_name: str = "probinf"
    api_key: str | None = None
    max_running: int = 8
    max_queued: int = 32
    timeout: float = 300.0
    max_prompt_chars: int = 32_000
    max_particles: int = 64
    max_body_bytes: int = 1_000_000

    def __post_init__(self):
        if not isinstance(self.model_name, str) or not self.model_name or ":" in self.model_name:
            raise ValueError(f"`model_name` must be a non-empty string without ':', got {self.model_name!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("`api_key` must be a non-empty string or None")
        for name in ("max_running", "max_prompt_chars", "max_particles", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if isinstance(self.max_queued, bool) or not isinstance(self.max_queued, int) or self.max_queued < 0:
            raise ValueError(f"`max_queued` must be an int >= 0, got {self.max_queued!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"`timeout` must be a positive number of seconds, got {self.timeout!r}")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_prompt_chars, self.max_particles, float(self.timeout))


class _ClientGone(Exception):
    pass


class _Ticket:
    """An admitted request's place in the queue, left exactly once (also by a stream that
    never started: the client went away first)."""

    def __init__(self, service: "_Service"):
        self._service = service
        self._queued = True

    def leave_queue(self) -> None:
        if self._queued:
            self._queued = False
            self._service.queued -= 1


class _Service:
    """The state behind the endpoints: admission, worker threads, counters."""

    def __init__(self, decoder: Decoder, settings: ServerSettings):
        self.decoder = decoder
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=settings.max_running, thread_name_prefix="probinf-serve")
        self.running = 0
        self.queued = 0
        self.slots: asyncio.Semaphore | None = None  # made in the server's event loop
        self.counts = {"completed": 0, "failed": 0, "rejected": 0, "cancelled": 0,
                       "prompt_tokens": 0, "completion_tokens": 0}

    def parse(self, kind: str, body) -> RequestSpec:
        parse = parse_chat_request if kind == "chat" else parse_completion_request
        return parse(body, served=self.settings.model_name, default_method=self.decoder.method,
                     config=self.decoder.config, rewards=self.decoder.rewards, limits=self.settings.limits)

    def admit(self) -> _Ticket:
        """A place in the queue; refused at once (429) when the workers and the queue are all taken."""
        if self.running + self.queued >= self.settings.max_running + self.settings.max_queued:
            self.counts["rejected"] += 1
            raise APIError(429, f"the server is busy: {self.running} requests running and {self.queued} queued "
                           f"(max_running={self.settings.max_running}, max_queued={self.settings.max_queued}); "
                           "retry later", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.queued += 1
        return _Ticket(self)

    async def run(self, spec: RequestSpec, ticket: _Ticket, is_disconnected) -> tuple:
        """Decode an admitted request; returns ``(result, prompt_tokens)`` or raises APIError."""
        start = time.monotonic()
        deadline = start + spec.timeout
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.settings.max_running)
        try:
            try:
                await asyncio.wait_for(self.slots.acquire(), timeout=spec.timeout)
            except TimeoutError:
                self.counts["failed"] += 1
                raise self._timeout(spec) from None
        finally:
            ticket.leave_queue()
        def decode():
            return self.decoder.decode(
                spec.question, method=spec.method, n=spec.n, reward=spec.reward, config=spec.config,
                system=spec.system, prompt=spec.prompt, seed=spec.seed, session=session, **spec.options)

        session = None
        try:
            session = self.decoder.session(timeout=max(deadline - time.monotonic(), 1e-3))
            future = asyncio.get_running_loop().run_in_executor(self.executor, decode)
        except (RequestCancelled, RuntimeError) as err:  # the decoder or the executor was closed
            if session is not None:
                session.close()
            self.slots.release()
            self.counts["failed"] += 1
            raise APIError(503, f"the server is shutting down: {err}", type="server_error") from None
        self.running += 1

        def release(done):
            self.running -= 1
            self.slots.release()
            if not done.cancelled():
                done.exception()  # retrieved: a run nobody waits for any more may have failed

        future.add_done_callback(release)  # when the thread ends, not when the client is answered
        try:
            while not future.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    session.cancel("deadline")
                    raise self._timeout(spec)
                await asyncio.wait({future}, timeout=min(remaining, 0.25))
                if not future.done() and is_disconnected is not None and await is_disconnected():
                    raise _ClientGone
            try:
                result = future.result()
            except DeadlineExceeded:
                raise self._timeout(spec) from None
            except RequestCancelled:
                raise _ClientGone from None
            except LLMBackendError as err:
                raise APIError(502, f"the language-model backend failed: {err}", code="upstream_error") from None
            except (ValueError, TypeError) as err:
                raise APIError(400, str(err)) from None
            except Exception as err:
                logger.exception("decoding failed")
                raise APIError(500, f"internal error while decoding: {type(err).__name__}: {err}") from None
        except (_ClientGone, asyncio.CancelledError):  # CancelledError: a stream whose client left
            self.counts["cancelled"] += 1
            raise
        except APIError:
            self.counts["failed"] += 1
            raise
        finally:
            if not future.done():
                session.cancel()  # a client that left, a passed deadline, a cancelled stream
        self.counts["completed"] += 1
        self.counts["prompt_tokens"] += int(session.prompt_tokens or 0)
        self.counts["completion_tokens"] += int(result.budget.tokens)
        return result, session.prompt_tokens

    @staticmethod
    def _timeout(spec: RequestSpec) -> APIError:
        return APIError(504, f"the request did not finish within its deadline of {spec.timeout:g} s",
                        code="deadline_exceeded")

    def health(self) -> dict:
        return {"status": "ok", "model": self.settings.model_name, "running": self.running, "queued": self.queued,
                "requests": dict(self.counts), "scheduler": self.decoder.scheduler.stats.as_dict(),
                "open_sessions": self.decoder.scheduler.open_sessions}


def create_app(decoder: Decoder, settings: ServerSettings | None = None):
    """The FastAPI application serving ``decoder`` (see the module docstring).

    Args:
        decoder: a :class:`~probinf.llm.serve.Decoder` (the backend, the rewards, the
            default method and ``DecodeConfig``).
        settings: admission, limits and the API key.
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse
        from sse_starlette import EventSourceResponse
        from starlette.background import BackgroundTask
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError as err:
        raise ImportError("`probinf serve` needs fastapi, uvicorn and sse-starlette (llama-cpp-python's "
                          "server extra): pip install -e '.[llm]'") from err
    if not isinstance(decoder, Decoder):
        raise TypeError(f"`decoder` must be a probinf.llm.serve.Decoder, got {type(decoder).__name__}")
    settings = ServerSettings() if settings is None else settings
    service = _Service(decoder, settings)
    app = FastAPI(title="probinf", description="Reward-guided decoding behind an OpenAI-compatible API",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    def error_response(err: APIError):
        return JSONResponse(err.body, status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, err: APIError):
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, err):
        return JSONResponse(error_body(str(err.detail), "invalid_request_error" if err.status_code < 500 else
                                       "server_error"), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request, err):
        logger.exception("unexpected error")
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", "server_error"), status_code=500)

    def check_key(request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send it as `Authorization: Bearer <key>`",
                           code="invalid_api_key")

    async def read_json(request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise APIError(413, f"the request body has {declared} bytes, more than this server's limit of "
                           f"{settings.max_body_bytes}", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise APIError(413, f"the request body is larger than this server's limit of "
                               f"{settings.max_body_bytes} bytes", code="body_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks) or b"null")
        except (ValueError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from None

    def model_card(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "probinf"}

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        from probinf.llm.samplers import METHODS

        ids = [settings.model_name] + [f"{settings.model_name}:{m}" for m in METHODS]
        return {"object": "list", "data": [model_card(i) for i in ids]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request):
        check_key(request)
        from probinf.llm.serve.protocol import parse_model_id

        parse_model_id(model_id, settings.model_name, decoder.method)
        return model_card(model_id)

    async def completions(request, kind: str):
        check_key(request)
        spec = service.parse(kind, await read_json(request))
        ticket = service.admit()
        if not spec.stream:
            try:
                result, prompt_tokens = await service.run(spec, ticket, request.is_disconnected)
            except _ClientGone:
                return JSONResponse(error_body("the client disconnected", "client_closed_request"), status_code=499)
            build = chat_response if kind == "chat" else completion_response
            return JSONResponse(build(result, spec, prompt_tokens))
        return EventSourceResponse(_stream(service, spec, ticket, kind), ping=15, sep="\n",
                                   background=BackgroundTask(ticket.leave_queue))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await completions(request, "chat")

    @app.post("/v1/completions")
    async def completion(request: Request):
        return await completions(request, "completion")

    return app


async def _stream(service: _Service, spec: RequestSpec, ticket: _Ticket, kind: str):
    """Server-sent events: a first chunk at once, the selected answer when decoding ends."""
    import uuid

    if kind == "chat":
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": spec.model, "system_fingerprint": None}
        first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}]}
    else:
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": spec.model}
        first = None
    if first is not None:
        yield {"data": json.dumps(first)}
    try:
        # Disconnects are noticed by sse-starlette, which cancels this generator.
        result, prompt_tokens = await service.run(spec, ticket, None)
    except APIError as err:
        yield {"data": json.dumps(err.body)}
        return
    except _ClientGone:
        return
    build = chat_chunks if kind == "chat" else completion_chunks
    for chunk in build(result, spec, prompt_tokens, base):
        yield {"data": json.dumps(chunk)}
    yield {"data": "[DONE]"}


def _warn_if_exposed(host: str, settings: ServerSettings) -> None:
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        logger.warning("probinf serve listens on %s without an API key: anyone who can reach it can use it", host)


def serve(decoder: Decoder, *, host: str = "127.0.0.1", port: int = 8000, settings: ServerSettings | None = None,
          log_level: str = "info") -> None:
    """Serve ``decoder`` until interrupted (uvicorn; binds the loopback interface by default)."""
    import uvicorn

    settings = ServerSettings() if settings is None else settings
    _warn_if_exposed(host, settings)
    uvicorn.run(create_app(decoder, settings), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=5)


@dataclass
class RunningServer:
    """A server started by :func:`running_server`: its base URL (``.../v1``) and app."""

    url: str
    port: int
    app: object

    @property
    def service(self) -> _Service:
        return self.app.state.service


@contextlib.contextmanager
def running_server(decoder: Decoder, settings: ServerSettings | None = None, *, host: str = "127.0.0.1",
                   port: int = 0, log_level: str = "warning") -> Iterator[RunningServer]:
    """Serve ``decoder`` from a background thread while the ``with`` block runs (port 0: a
    free ephemeral port); the server is shut down at the end. For tests, benchmarks and
    notebooks::

        with running_server(Decoder("smollm2")) as server:
            client = openai.OpenAI(base_url=server.url, api_key="none")
    """
    import uvicorn

    settings = ServerSettings() if settings is None else settings
    app = create_app(decoder, settings)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="probinf-uvicorn", daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > give_up:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield RunningServer(f"http://{host}:{port}/v1", port, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        app.state.service.executor.shutdown(wait=False, cancel_futures=True)
