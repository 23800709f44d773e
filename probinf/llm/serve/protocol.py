"""The OpenAI wire format of ``probinf serve``: request parsing and validation, response bodies.

Pure functions on plain dicts (no web framework), so every rule is testable without a
server. A request that cannot be served raises :class:`APIError`, which carries the HTTP
status and OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``.

**Choosing the method.** From the model id — ``NAME`` (the server's defaults),
``NAME:METHOD`` or ``NAME:METHOD:N`` (e.g. ``probinf:pf:8``, ``probinf:best_of_n:16``) —
and from the extra request field ``"probinf"``, which wins::

    {"probinf": {"method": "pf", "n": 8, "reward": "arithmetic"}}

Its fields: ``method``, ``n`` (particles / samples / beams), ``reward`` (a name the
server knows), ``selection`` (particle methods: ``argmax``, ``sample``, ``vote``),
``max_steps``, ``max_step_tokens``, ``delimiter``, ``stop_at_answer``, ``timeout``
(seconds, at most the server's) and ``return_particles`` (add every particle's answer and
weight to the response). The OpenAI fields ``temperature``, ``top_p``, ``stop`` and
``seed`` map to the same settings; ``max_tokens`` (or ``max_completion_tokens``) caps
every particle's length: the per-step cap becomes ``min(max_step_tokens, max_tokens)``
and the step cap ``max(1, min(max_steps, max_tokens // max_step_tokens))``, so that no
particle generates more than ``max_tokens`` tokens.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from probinf.llm.base import DecodeConfig
from probinf.llm.serve.decoder import PARTICLE_METHODS, resolve_method

__all__ = ["APIError", "RequestSpec", "parse_chat_request", "parse_completion_request", "parse_model_id",
           "chat_response", "completion_response", "chat_chunks", "completion_chunks", "error_body", "Limits"]


class APIError(Exception):
    """A request that gets an error response: HTTP ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or _ERROR_TYPES.get(status, "server_error")
        self.code = code
        self.headers = headers or {}

    @property
    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 429: "rate_limit_error", 502: "upstream_error",
                504: "timeout_error"}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
        max_prompt_chars: the longest prompt (all message texts together), in characters.
        max_particles: the largest ``n``.
        max_timeout: the longest (and the default) per-request deadline, in seconds.
    """

    max_prompt_chars: int = 32_000
    max_particles: int = 64
    max_timeout: float = 300.0


@dataclass
class RequestSpec:
    """A validated request: what to decode and how to answer."""

    kind: str  # "chat" or "completion"
    model: str
    question: str
    system: str | None
    prompt: str | None  # an already formatted prompt (completions), else None
    method: str
    n: int | None
    reward: str | None
    config: DecodeConfig
    seed: int
    options: dict = field(default_factory=dict)
    timeout: float = 300.0
    return_particles: bool = False
    stream: bool = False
    include_usage: bool = False

    @property
    def particles(self) -> int:
        """The budget the run will use."""
        return 1 if self.method == "greedy" else (self.n or self.config.n_particles)


# -- small checks ----------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_name(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _positive_int(value, param: str, limit: int | None = None) -> int:
    if not _is_int(value) or value < 1:
        raise _bad(f"`{param}` must be an integer >= 1, got {value!r}", param)
    if limit is not None and value > limit:
        raise _bad(f"`{param}` must be at most {limit} on this server, got {value}", param)
    return value


def _bool(value, param: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"`{param}` must be true or false, got {_type_name(value)}", param)
    return value


# -- the model id ------------------------------------------------------------------------------


def parse_model_id(model, served: str, default_method: str) -> tuple[str, int | None]:
    """``(method, n)`` from a model id ``NAME``, ``NAME:METHOD`` or ``NAME:METHOD:N``.

    Raises:
        APIError: 404 for another model name, 400 for an unknown method or a bad ``N``.
    """
    if model is None:
        return default_method, None
    if not isinstance(model, str):
        raise _bad(f"`model` must be a string, got {_type_name(model)}", "model")
    parts = model.split(":")
    if parts[0] != served or len(parts) > 3:
        raise APIError(404, f"The model {model!r} does not exist on this server; it serves {served!r}, "
                       f"{served + ':METHOD'!r} and {served + ':METHOD:N'!r} (see /v1/models)",
                       param="model", code="model_not_found")
    method = default_method
    if len(parts) >= 2:
        try:
            method = resolve_method(parts[1], "model")
        except ValueError:
            from probinf.llm.samplers import METHODS
            from probinf.llm.serve.decoder import METHOD_ALIASES

            known = ", ".join(sorted(METHODS) + sorted(METHOD_ALIASES))
            raise _bad(f"`model` {model!r}: unknown method {parts[1]!r}; the methods are {known}", "model") from None
    n = None
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise _bad(f"`model` {model!r}: the budget N after the second ':' must be an integer >= 1", "model")
        n = int(parts[2])
    return method, n


# -- request bodies ----------------------------------------------------------------------------

_PROBINF_FIELDS = ("method", "n", "reward", "selection", "max_steps", "max_step_tokens", "delimiter",
                   "stop_at_answer", "timeout", "return_particles")


def _message_text(message, index: int) -> str:
    content = message.get("content")
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"`{param}[{j}]` must be a text part {{\"type\": \"text\", \"text\": ...}}; "
                           "only text is supported", param)
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"`{param}` must be a string or an array of text parts, got {_type_name(content)}", param)


def _parse_messages(messages) -> tuple[str, str | None]:
    """``(question, system)`` from the chat messages: system (or developer) messages, then one user message."""
    if messages is None:
        raise _bad("`messages` is required: a non-empty array of messages", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad(f"`messages` must be a non-empty array of messages, got {_type_name(messages)}"
                   + (" (empty)" if messages == [] else ""), "messages")
    systems, users = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"`messages[{i}]` must be an object with `role` and `content`, got {_type_name(message)}",
                       f"messages[{i}]")
        role = message.get("role")
        if role in ("system", "developer"):
            if users:
                raise _bad(f"`messages[{i}]`: system messages must come before the user message", f"messages[{i}]")
            systems.append(_message_text(message, i))
        elif role == "user":
            users.append(_message_text(message, i))
        elif role in ("assistant", "tool", "function"):
            raise _bad(f"`messages[{i}]`: multi-turn conversations are not supported (role {role!r}); send "
                       "system messages and one user message with the question", f"messages[{i}].role")
        else:
            raise _bad(f"`messages[{i}].role` must be 'system', 'developer' or 'user', got {role!r}",
                       f"messages[{i}].role")
    if len(users) != 1:
        raise _bad(f"`messages` must hold exactly one user message (the question), got {len(users)}", "messages")
    if not users[0].strip():
        raise _bad("`messages`: the user message is empty", "messages")
    return users[0], ("\n\n".join(systems) if systems else None)


def _common(body: dict, spec_kind: str, question: str, system: str | None, prompt: str | None,
            served: str, default_method: str, config: DecodeConfig, rewards, limits: Limits) -> RequestSpec:
    method, n = parse_model_id(body.get("model"), served, default_method)
    extra = body.get("probinf", {})
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise _bad(f"`probinf` must be an object, got {_type_name(extra)}", "probinf")
    unknown = sorted(set(extra) - set(_PROBINF_FIELDS))
    if unknown:
        raise _bad(f"`probinf` has unknown field(s) {unknown}; known: {', '.join(_PROBINF_FIELDS)}", "probinf")
    if "method" in extra:
        try:
            method = resolve_method(extra["method"], "probinf.method")
        except ValueError as err:
            raise _bad(str(err), "probinf.method") from None
    if "n" in extra:
        n = extra["n"]
    if n is not None:
        n = _positive_int(n, "probinf.n" if "n" in extra else "model", limits.max_particles)
        if method == "greedy" and n != 1:
            raise _bad(f"greedy decoding makes one solution: the budget n must be 1 or absent, got {n}",
                       "probinf.n" if "n" in extra else "model")
    reward = extra.get("reward")
    if reward is not None and (not isinstance(reward, str) or reward not in rewards):
        raise _bad(f"`probinf.reward` must be one of {sorted(rewards)}, got {reward!r}", "probinf.reward")
    options = {}
    if "selection" in extra:
        if method not in PARTICLE_METHODS:
            raise _bad(f"`probinf.selection` applies to {', '.join(PARTICLE_METHODS)} only, not {method}",
                       "probinf.selection")
        if extra["selection"] not in ("argmax", "sample", "vote"):
            raise _bad(f"`probinf.selection` must be 'argmax', 'sample' or 'vote', got {extra['selection']!r}",
                       "probinf.selection")
        options["selection"] = extra["selection"]
    timeout = limits.max_timeout
    if "timeout" in extra:
        value = extra["timeout"]
        if not _is_number(value) or value <= 0:
            raise _bad(f"`probinf.timeout` must be a positive number of seconds, got {value!r}", "probinf.timeout")
        if value > limits.max_timeout:
            raise _bad(f"`probinf.timeout` must be at most {limits.max_timeout:g} s on this server, got {value}",
                       "probinf.timeout")
        timeout = float(value)
    return_particles = _bool(extra["return_particles"], "probinf.return_particles") \
        if "return_particles" in extra else False

    # Decoding settings: the server's config, changed field by field (each validated).
    changes: dict = {}
    for name in ("max_steps", "max_step_tokens"):
        if name in extra:
            changes[name] = _positive_int(extra[name], f"probinf.{name}")
    if "delimiter" in extra:
        value = extra["delimiter"]
        if value is not None and (not isinstance(value, str) or not value):
            raise _bad(f"`probinf.delimiter` must be a non-empty string or null, got {value!r}", "probinf.delimiter")
        changes["delimiter"] = value
    if "stop_at_answer" in extra:
        changes["stop_at_answer"] = _bool(extra["stop_at_answer"], "probinf.stop_at_answer")
    for name, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not (low <= value <= high) or (name == "top_p" and value == 0):
            bounds = "in (0, 1]" if name == "top_p" else f"in [{low:g}, {high:g}]"
            raise _bad(f"`{name}` must be a number {bounds}, got {value!r}", name)
        changes[name] = float(value)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise _bad("`stop` must be a non-empty string or an array of at most 4 non-empty strings, "
                       f"got {stop!r}", "stop")
        changes["stop"] = tuple(stops)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        cap = _positive_int(value, name)
        step_tokens = min(changes.get("max_step_tokens", config.max_step_tokens), cap)
        changes["max_step_tokens"] = step_tokens
        changes["max_steps"] = max(1, min(changes.get("max_steps", config.max_steps), cap // step_tokens))
    try:
        config = config.replace(**changes)
    except (ValueError, TypeError) as err:
        raise _bad(f"invalid decoding settings: {err}", None) from None
    seed = body.get("seed")
    if seed is None:
        seed = 0
    elif not _is_int(seed) or not 0 <= seed < 2**63:
        raise _bad(f"`seed` must be a non-negative integer, got {seed!r}", "seed")

    # OpenAI features a run cannot honour: refused by name rather than silently ignored.
    choices = body.get("n")
    if choices is not None and choices != 1:
        raise _bad(f"`n` (choices) must be 1: one selected answer per request; the number of particles is "
                   f"`probinf.n` or the model id 'NAME:METHOD:N' (got n={choices!r})", "n")
    for name in ("logprobs", "echo"):
        if body.get(name) not in (None, False, 0):
            raise _bad(f"`{name}` is not supported by this server", name)
    for name in ("tools", "functions", "suffix"):
        if body.get(name):
            raise _bad(f"`{name}` is not supported by this server", name)
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _bad(f"`{name}` is not supported by this server (only 0)", name)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise _bad("`response_format` is not supported by this server (only {\"type\": \"text\"})",
                   "response_format")
    stream = body.get("stream")
    stream = False if stream is None else _bool(stream, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _bad(f"`stream_options` must be an object, got {_type_name(stream_options)}", "stream_options")
    include_usage = stream_options.get("include_usage", False)
    include_usage = _bool(include_usage, "stream_options.include_usage")

    length = len(question) + len(system or "")
    if length > limits.max_prompt_chars:
        param = "messages" if spec_kind == "chat" else "prompt"
        raise _bad(f"`{param}`: the prompt has {length} characters, more than this server's limit of "
                   f"{limits.max_prompt_chars}", param, code="context_length_exceeded")
    model_id = body.get("model") if isinstance(body.get("model"), str) else served
    return RequestSpec(spec_kind, model_id, question, system, prompt, method, n, reward, config, seed, options,
                       timeout, return_particles, stream, include_usage)


def parse_chat_request(body, *, served: str, default_method: str, config: DecodeConfig, rewards,
                       limits: Limits = Limits()) -> RequestSpec:
    """Validate a ``/v1/chat/completions`` body.

    Raises:
        APIError: 400 naming the field (or 404 for an unknown model).
    """
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {_type_name(body)}", None)
    question, system = _parse_messages(body.get("messages"))
    return _common(body, "chat", question, system, None, served, default_method, config, rewards, limits)


def parse_completion_request(body, *, served: str, default_method: str, config: DecodeConfig, rewards,
                             limits: Limits = Limits()) -> RequestSpec:
    """Validate a ``/v1/completions`` body. The prompt is used as it is (no chat template)
    and is also the question the reward sees.

    Raises:
        APIError: 400 naming the field (or 404 for an unknown model).
    """
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {_type_name(body)}", None)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise _bad("`prompt` is required: a non-empty string", "prompt")
    if not isinstance(prompt, str):
        raise _bad(f"`prompt` must be a string (or an array of one string), got {_type_name(prompt)}", "prompt")
    if not prompt.strip():
        raise _bad("`prompt` is empty", "prompt")
    return _common(body, "completion", prompt, None, prompt, served, default_method, config, rewards, limits)


# -- responses ------------------------------------------------------------------------------


def _finish_reason(result) -> str:
    # "length": the answer was cut by a cap (out of steps, or its last step hit the token cap).
    particle = result.particles[result.index]
    cut = particle.finish_reason == "max_steps" or bool(particle.history and particle.history[-1].truncated)
    return "length" if cut else "stop"


def usage(result, prompt_tokens: int | None) -> dict:
    """Tokens spent: the prompt once (it is evaluated once and shared by the particles;
    0 when a text-only backend does not count it) and every token every particle generated
    (look-ahead included)."""
    prompt = int(prompt_tokens or 0)
    completion = int(result.budget.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def particles_field(result, spec: RequestSpec, prompt_tokens: int | None) -> dict:
    """The extra ``probinf`` field: the method, every particle's answer and weight, the budget."""
    from probinf.llm.rewards import extract_answer

    weights = result.weights
    return {
        "method": result.method,
        "n": len(result.particles),
        "answer": result.answer,
        "selected": int(result.index),
        "prompt_tokens_counted": prompt_tokens is not None,
        "particles": [
            {"text": p.text, "answer": extract_answer(p.text), "weight": float(w),
             "log_weight": float(lw) if np.isfinite(lw) else None,
             "score": float(p.score) if np.isfinite(p.score) else None,
             "num_tokens": int(p.num_tokens), "finish_reason": p.finish_reason}
            for p, w, lw in zip(result.particles, weights, result.log_weights, strict=True)
        ],
        "budget": result.budget.as_dict(),
    }


def _base(kind: str, spec: RequestSpec) -> dict:
    prefix, obj = ("chatcmpl", "chat.completion") if kind == "chat" else ("cmpl", "text_completion")
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": obj, "created": int(time.time()), "model": spec.model}


def chat_response(result, spec: RequestSpec, prompt_tokens: int | None) -> dict:
    """A ``chat.completion`` body."""
    body = _base("chat", spec)
    body["choices"] = [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None},
                        "logprobs": None, "finish_reason": _finish_reason(result)}]
    body["usage"] = usage(result, prompt_tokens)
    body["system_fingerprint"] = None
    if spec.return_particles:
        body["probinf"] = particles_field(result, spec, prompt_tokens)
    return body


def completion_response(result, spec: RequestSpec, prompt_tokens: int | None) -> dict:
    """A ``text_completion`` body."""
    body = _base("completion", spec)
    body["choices"] = [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": _finish_reason(result)}]
    body["usage"] = usage(result, prompt_tokens)
    if spec.return_particles:
        body["probinf"] = particles_field(result, spec, prompt_tokens)
    return body


def chat_chunks(result, spec: RequestSpec, prompt_tokens: int | None, base: dict) -> list[dict]:
    """The ``chat.completion.chunk`` bodies that follow the first (role) chunk: the selected
    answer one step per chunk, the finish reason, then (when asked) usage and particles."""
    base = {**base, "object": "chat.completion.chunk"}
    steps = result.particles[result.index].steps or (result.text,)
    chunks = [{**base, "choices": [{"index": 0, "delta": {"content": step}, "logprobs": None, "finish_reason": None}]}
              for step in steps if step]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": _finish_reason(result)}]})
    return chunks + _closing_chunk(result, spec, prompt_tokens, base)


def _closing_chunk(result, spec: RequestSpec, prompt_tokens: int | None, base: dict) -> list[dict]:
    """The last stream body, when asked for: usage and/or the particles, no choices."""
    if not (spec.include_usage or spec.return_particles):
        return []
    last = {**base, "choices": []}
    if spec.include_usage:
        last["usage"] = usage(result, prompt_tokens)
    if spec.return_particles:
        last["probinf"] = particles_field(result, spec, prompt_tokens)
    return [last]


def completion_chunks(result, spec: RequestSpec, prompt_tokens: int | None, base: dict) -> list[dict]:
    """The ``text_completion`` stream bodies: one step per chunk, then the finish reason."""
    steps = result.particles[result.index].steps or (result.text,)
    chunks = [{**base, "choices": [{"index": 0, "text": step, "logprobs": None, "finish_reason": None}]}
              for step in steps if step]
    chunks.append({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                        "finish_reason": _finish_reason(result)}]})
    return chunks + _closing_chunk(result, spec, prompt_tokens, base)
