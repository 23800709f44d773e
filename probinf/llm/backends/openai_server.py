"""Any OpenAI-compatible *completions* server (vLLM, llama.cpp's server, ...) over HTTP.

Only the standard library is used (``http.client`` and threads), so this backend needs no
extra package.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from probinf.llm.backends._decode import find_stop, split_at_delimiter
from probinf.llm.base import (
    LLMBackendError,
    SamplingParams,
    StepResult,
    TokenText,
    as_token_text,
    chatml,
)

__all__ = ["OpenAICompletionsModel"]

# Statuses worth another try: request timeout, rate limiting and server-side failures.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    """A failure that another attempt may not meet: a timeout, a dropped connection, a 5xx."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Cancelled(Exception):
    """The call was given up (another request failed, or the deadline passed)."""


class _DeadlinePassed(Exception):
    pass


class _Call:
    """The requests of one backend call: a cancel flag and the open connections, so that
    a failure or the deadline closes every outstanding request's connection (a server
    notices the closed connection and stops generating for it)."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline  # time.monotonic() value, or None
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[http.client.HTTPConnection] = set()

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def register(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.add(connection)
        if self.cancelled.is_set():  # cancelled before it was registered: it was not closed
            raise _Cancelled

    def unregister(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
                except OSError:
                    pass


class OpenAICompletionsModel:
    """A ``/v1/completions`` endpoint as a :class:`~probinf.llm.base.LanguageModel`.

    Each step is one request with the step delimiter as a stop string; the server's
    own prefix cache (llama.cpp's and vLLM's both keep one) re-uses shared prefixes.
    A step that ends on a stop string is told apart from one that ends on the
    end-of-sequence token by asking for one more step: a server that immediately
    returns nothing has finished the generation. Requests carry a ``seed``; servers
    that honour it (llama.cpp, vLLM) make runs repeatable.

    **Concurrent requests.** :meth:`extend` sends one request per particle, up to
    ``max_concurrency`` at a time from a thread pool, so a server that decodes requests
    in parallel (vLLM; llama.cpp's server with several slots) batches the particles
    itself; results come back in particle order whatever order the answers arrive in.
    One request per particle, rather than one request with a list of prompts or ``n``
    choices, because each particle has its own seed: a list shares one seed, so resampled
    siblings (equal prompts) would get equal continuations from a seeded server. A server
    with fewer slots than ``max_concurrency`` queues the rest; their ``timeout`` runs while
    they wait.

    **Failures.** A request that times out, loses its connection (reset, refused, closed
    early, or a body shorter than its declared ``Content-Length``) or gets HTTP 408, 429
    or 5xx is retried up to ``max_retries`` times after ``backoff * 2**k`` seconds
    (``k = 0, 1, ...``; longer if the server sends ``Retry-After``); any other error, or a
    request that still fails, raises :class:`~probinf.llm.base.LLMBackendError` naming the
    server and the cause. Then, or when the ``deadline`` passes, every outstanding request
    of the call is cancelled by closing its connection (servers stop generating for a
    closed connection) and the call raises ``LLMBackendError``.

    **Not token-faithful.** The plain OpenAI completions schema returns text, not token
    ids, so this backend is text-based: each request sends ``prompt + generated text``
    and the server *re-tokenises* it. Wherever the model's own tokens differ from the
    tokenizer's encoding of their text (SmolLM2 emits a blank line as two ``"\n"``
    tokens, its tokenizer encodes ``"\n\n"`` as one) every later step is conditioned on
    a sequence the model never produced, and step-wise greedy decoding can differ from
    the server's own greedy completion right after such a place. Steps report
    ``tokens=None``. The local backends (:class:`LlamaCppModel`,
    :class:`TransformersModel`) have no such gap.

    Stop strings follow the local backends' rule (the text keeps the stop string) when
    the server says which one matched (vLLM's ``stop_reason``, llama.cpp's
    ``stopping_word``, or the text itself when the server honours vLLM's
    ``include_stop_str_in_output``); otherwise the stripped stop cannot be put back.

    Args:
        base_url: e.g. ``"http://127.0.0.1:8000/v1"``.
        model: the model name sent with each request (servers hosting one model ignore it).
        api_key: sent as a bearer token when given.
        timeout: seconds to wait for the server on each attempt of a request (connecting,
            or between bytes of its answer).
        system_prompt: system message used by :meth:`format_prompt` when none is given.
        chat_template: ``"chatml"`` (default) or a callable ``(question, system) -> str``.
            Plain ChatML adds no system message when none is given; a model whose own
            template inserts a default one (SmolLM2's does) needs it passed as ``system``
            to see the same prompt as through llama.cpp or transformers.
        max_concurrency: the most requests in flight at once (``1``: one after another).
        max_retries: further attempts of a request after a retryable failure.
        backoff: seconds before the first retry; doubled for each later one.
        deadline: seconds a *run* may take: counted from :meth:`encode_prompt`, which a
            sampler calls once at the start of each run, to the end of every call made
            with that prompt; a call whose prompt was not encoded here counts from its own
            start. ``None``: no deadline (each attempt is still bounded by ``timeout``).
    """

    supports_seeding = True

    def __init__(
        self, base_url: str, model: str = "default", *, api_key: str | None = None,
        timeout: float = 60.0, system_prompt: str | None = None, chat_template="chatml",
        max_concurrency: int = 8, max_retries: int = 3, backoff: float = 0.5, deadline: float | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"`base_url` must be an http(s) URL, got {base_url!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}")
        if chat_template != "chatml" and not callable(chat_template):
            raise ValueError("`chat_template` must be 'chatml' or a callable (question, system) -> str")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be a positive int, got {max_concurrency!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an int >= 0, got {max_retries!r}")
        if not (isinstance(backoff, (int, float)) and not isinstance(backoff, bool) and backoff >= 0):
            raise ValueError(f"`backoff` must be a number of seconds >= 0, got {backoff!r}")
        if deadline is not None and not (isinstance(deadline, (int, float)) and deadline > 0):
            raise ValueError(f"`deadline` must be a positive number of seconds or None, got {deadline!r}")
        self.base_url = base_url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.base_url)
        if not parsed.hostname:
            raise ValueError(f"`base_url` has no host: {base_url!r}")
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._path = f"{parsed.path}/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.system_prompt = system_prompt
        self.chat_template = chat_template
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.deadline = None if deadline is None else float(deadline)
        self._run_starts: OrderedDict[str, float] = OrderedDict()

    def format_prompt(self, question: str, system: str | None = None) -> str:
        system = system if system is not None else self.system_prompt
        if callable(self.chat_template):
            return self.chat_template(question, system)
        return chatml(question, system)

    # -- HTTP ------------------------------------------------------------------------------

    @property
    def _url(self) -> str:
        return f"{self.base_url}/completions"

    def _post_once(self, payload: bytes, call: _Call) -> dict:
        """One attempt of one request; raises :class:`_Retryable` for what may pass."""
        remaining = call.remaining()
        timeout = self.timeout if remaining is None else max(min(self.timeout, remaining), 1e-3)
        connection_class = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        connection = connection_class(self._host, self._port, timeout=timeout)
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            connection.connect()
            call.register(connection)
            connection.request("POST", self._path, body=payload, headers=headers)
            response = connection.getresponse()
            status = response.status
            retry_after = response.getheader("Retry-After")
            body = response.read()
        except http.client.IncompleteRead as err:
            if call.cancelled.is_set():
                raise _Cancelled from err
            raise _Retryable(
                f"the server sent a truncated body: {len(err.partial)} bytes, "
                f"{err.expected} more were declared (Content-Length)"
            ) from err
        except TimeoutError as err:
            if call.cancelled.is_set():
                raise _Cancelled from err
            raise _Retryable(f"no answer within the timeout of {timeout:g} s") from err
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine) as err:
            if call.cancelled.is_set():
                raise _Cancelled from err
            raise _Retryable(f"cannot reach the server: {err!r}") from err
        except OSError as err:
            if call.cancelled.is_set():
                raise _Cancelled from err
            raise LLMBackendError(f"cannot reach the completions server at {self._url}: {err}") from err
        finally:
            call.unregister(connection)
            connection.close()
        if status >= 400:
            detail = body[:300].decode("utf-8", errors="replace")
            if status in _RETRY_STATUSES:
                try:
                    wait_s = float(retry_after) if retry_after is not None else None
                except ValueError:
                    wait_s = None
                raise _Retryable(f"HTTP {status}: {detail}", retry_after=wait_s)
            raise LLMBackendError(f"server at {self._url} answered HTTP {status}: {detail}")
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            if not isinstance(choice.get("text"), str):
                raise TypeError("choices[0].text is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise LLMBackendError(
                f"server at {self._url} returned malformed JSON (expected an OpenAI completions "
                f"response with choices[0].text): {body[:200]!r}"
            ) from err
        return data

    def _post_with_retries(self, payload: bytes, call: _Call) -> dict:
        attempt = 0
        while True:
            if call.cancelled.is_set():
                raise _Cancelled
            remaining = call.remaining()
            if remaining is not None and remaining <= 0:
                raise _DeadlinePassed
            try:
                return self._post_once(payload, call)
            except _Retryable as err:
                attempt += 1
                if attempt > self.max_retries:
                    raise LLMBackendError(
                        f"the completions server at {self._url} failed {attempt} time(s) "
                        f"(max_retries={self.max_retries}); last: {err}"
                    ) from err
                delay = self.backoff * 2 ** (attempt - 1)
                if err.retry_after is not None:
                    delay = max(delay, err.retry_after)
                remaining = call.remaining()
                if remaining is not None and delay >= remaining:
                    raise _DeadlinePassed from err
                if call.cancelled.wait(delay):
                    raise _Cancelled from err

    def _post_all(self, payloads: list[dict], deadline: float | None) -> list[dict]:
        """POST every payload, ``max_concurrency`` at a time; answers in payload order."""
        call = _Call(deadline)
        bodies = [json.dumps(p).encode("utf-8") for p in payloads]
        if not bodies:
            return []
        workers = min(self.max_concurrency, len(bodies))
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probinf-openai")
        try:
            futures = [executor.submit(self._post_with_retries, body, call) for body in bodies]
            pending = set(futures)
            deadline_passed = False
            while pending and not deadline_passed:
                remaining = call.remaining()
                if remaining is not None and remaining <= 0:
                    deadline_passed = True
                    break
                done, pending = wait(pending, timeout=remaining, return_when=FIRST_EXCEPTION)
                for future in futures:  # the first failure in particle order
                    if future in done and future.exception() is not None:
                        if isinstance(future.exception(), _DeadlinePassed):
                            deadline_passed = True
                        else:
                            call.cancel()
                            raise future.exception()
            if deadline_passed or pending:
                call.cancel()
                unanswered = sum(1 for f in futures if not f.done() or f.exception() is not None)
                raise LLMBackendError(
                    f"the deadline of {self.deadline:g} s passed with {unanswered} of {len(futures)} "
                    f"requests to {self._url} unanswered; they were cancelled (connections closed)"
                )
            return [f.result() for f in futures]
        finally:
            call.cancel()  # frees workers still blocked on a connection or a back-off
            executor.shutdown(wait=False, cancel_futures=True)

    def _deadline_for(self, prompt_text: str | None, call_start: float) -> float | None:
        if self.deadline is None:
            return None
        start = self._run_starts.get(prompt_text, call_start) if prompt_text is not None else call_start
        return start + self.deadline

    def encode_prompt(self, prompt: str) -> TokenText:
        """The prompt as text (``tokens=None``): the server tokenises it. Starts a run: the
        ``deadline`` of later calls with this prompt counts from here."""
        encoded = self._as_text(prompt)
        self._run_starts[encoded.text] = time.monotonic()
        self._run_starts.move_to_end(encoded.text)
        while len(self._run_starts) > 64:  # runs long over; keep the record small
            self._run_starts.popitem(last=False)
        return encoded

    @staticmethod
    def _as_text(prompt) -> TokenText:
        if isinstance(prompt, TokenText):
            return TokenText(prompt.text, None)
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a str or a TokenText, got {type(prompt).__name__}")
        return TokenText(prompt, None)

    def extend(
        self, seeds: Sequence[int], prompt: TokenText | str, prefixes: Sequence[TokenText], params: SamplingParams,
    ) -> list[StepResult]:
        if len(seeds) != len(prefixes):
            raise ValueError(f"`seeds` has {len(seeds)} entries for {len(prefixes)} prefixes")
        stops = list(params.stop) + ([params.delimiter] if params.delimiter else [])
        if len(stops) > 4:
            raise ValueError(
                "the OpenAI completions API allows at most four stop strings; `params` has "
                f"{len(params.stop)} stop strings plus the delimiter: {stops!r}"
            )
        call_start = time.monotonic()
        prompt = self._as_text(prompt)
        prefixes = [as_token_text(p, "prefixes") for p in prefixes]
        payloads = [self._step_payload(int(seed), prompt.text + prefix.text, params)
                    for seed, prefix in zip(seeds, prefixes, strict=True)]
        answers = self._post_all(payloads, self._deadline_for(prompt.text, call_start))
        return [self._step_from_answer(data, prefix.text, params) for data, prefix in zip(answers, prefixes, strict=True)]

    def _step_payload(self, seed: int, text: str, params: SamplingParams) -> dict:
        stops = list(params.stop) + ([params.delimiter] if params.delimiter else [])
        payload = {
            "model": self.model,
            "prompt": text,
            "max_tokens": params.max_step_tokens,
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "top_k": int(params.top_k),
            "min_p": float(params.min_p),
            "seed": int(seed),
            # Servers differ in their default repetition penalties (llama.cpp's is 1.1);
            # the local backends use none, so ask for none (the neutral value 1.0).
            "repeat_penalty": 1.0,
            "repetition_penalty": 1.0,
            "logprobs": 1,
            "stream": False,
        }
        if stops:
            payload["stop"] = stops
            payload["include_stop_str_in_output"] = True  # vLLM; other servers ignore it
        return payload

    def _step_from_answer(self, data: dict, before: str, params: SamplingParams) -> StepResult:
        stops = list(params.stop) + ([params.delimiter] if params.delimiter else [])
        choice = data["choices"][0]
        text = choice["text"]
        reason = choice.get("finish_reason")
        token_log_probs = ((choice.get("logprobs") or {}).get("token_logprobs")) or []
        usage = data.get("usage") or {}
        num_tokens = int(usage.get("completion_tokens", len(token_log_probs)))
        log_prob = float(sum(x for x in token_log_probs if x is not None)) if token_log_probs else math.nan
        # Which stop string ended the step: in the text (the server kept it) or as reported.
        matched = find_stop(before, text, params.stop) if params.stop else None
        if matched is None:
            reported = choice.get("stop_reason", choice.get("stopping_word"))
            if isinstance(reported, str) and reported in stops:
                matched = reported
                if not text.endswith(reported):  # stripped (a server stops at its first occurrence)
                    text += reported  # the text keeps it, as with the local backends
        if matched is not None and matched in params.stop:
            return StepResult(text, num_tokens, log_prob, finished=True)
        if reason == "length":
            return StepResult(text, num_tokens, log_prob, truncated=True)
        if params.delimiter and split_at_delimiter(text, params.delimiter) is not None:
            return StepResult(text, num_tokens, log_prob)  # the delimiter is in the text already
        if not text.strip():
            # Nothing before the stop: the end-of-sequence token (or only blank lines).
            return StepResult(text, num_tokens, log_prob, finished=True)
        if params.delimiter and reason == "stop" and (matched == params.delimiter or matched is None):
            # Stopped on the delimiter (stripped by the server): put it back so prefixes stay exact.
            return StepResult(text + params.delimiter, num_tokens, log_prob)
        return StepResult(text, num_tokens, log_prob, finished=True)

    def next_token_logprobs(
        self, contexts: Sequence[TokenText | str], top_k: int = 20, prefixes: Sequence[TokenText] | None = None,
    ) -> list[dict[str, float]]:
        if prefixes is not None and len(prefixes) != len(contexts):
            raise ValueError(f"`prefixes` has {len(prefixes)} entries for {len(contexts)} contexts")
        call_start = time.monotonic()
        texts = [self._as_text(context).text for context in contexts]
        run_prompt = texts[0] if len(set(texts)) == 1 else None  # one run's prompt: its deadline
        if prefixes is not None:
            texts = [text + as_token_text(prefix, "prefixes").text for text, prefix in zip(texts, prefixes, strict=True)]
        payloads = [{"model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0.0,
                     "logprobs": int(top_k), "stream": False} for text in texts]
        out = []
        for data in self._post_all(payloads, self._deadline_for(run_prompt, call_start)):
            try:
                top = data["choices"][0]["logprobs"]["top_logprobs"][0]
                out.append({str(k): float(v) for k, v in top.items()})
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
                raise LLMBackendError(
                    f"server at {self.base_url} returned no top_logprobs for a logprobs request"
                ) from err
        return out
