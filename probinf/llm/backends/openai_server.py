"""Any OpenAI-compatible *completions* server (vLLM, llama.cpp's server, ...) over HTTP.

Only the standard library is used (``urllib``), so this backend needs no extra package.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Sequence

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


class OpenAICompletionsModel:
    """A ``/v1/completions`` endpoint as a :class:`~probinf.llm.base.LanguageModel`.

    Each step is one request with the step delimiter as a stop string; the server's
    own prefix cache (llama.cpp's and vLLM's both keep one) re-uses shared prefixes.
    A step that ends on a stop string is told apart from one that ends on the
    end-of-sequence token by asking for one more step: a server that immediately
    returns nothing has finished the generation. Requests carry a ``seed``; servers
    that honour it (llama.cpp, vLLM) make runs repeatable.

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
        timeout: seconds to wait for each request; a server that does not answer in
            time raises :class:`~probinf.llm.base.LLMBackendError` instead of hanging.
        system_prompt: system message used by :meth:`format_prompt` when none is given.
        chat_template: ``"chatml"`` (default) or a callable ``(question, system) -> str``.
            Plain ChatML adds no system message when none is given; a model whose own
            template inserts a default one (SmolLM2's does) needs it passed as ``system``
            to see the same prompt as through llama.cpp or transformers.
    """

    supports_seeding = True

    def __init__(
        self, base_url: str, model: str = "default", *, api_key: str | None = None,
        timeout: float = 60.0, system_prompt: str | None = None, chat_template="chatml",
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"`base_url` must be an http(s) URL, got {base_url!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"`timeout` must be a positive number of seconds, got {timeout!r}")
        if chat_template != "chatml" and not callable(chat_template):
            raise ValueError("`chat_template` must be 'chatml' or a callable (question, system) -> str")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = float(timeout)
        self.system_prompt = system_prompt
        self.chat_template = chat_template

    def format_prompt(self, question: str, system: str | None = None) -> str:
        system = system if system is not None else self.system_prompt
        if callable(self.chat_template):
            return self.chat_template(question, system)
        return chatml(question, system)

    def _post(self, payload: dict) -> dict:
        url = f"{self.base_url}/completions"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            url, data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", errors="replace")
            raise LLMBackendError(f"server at {url} answered HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as err:
            raise LLMBackendError(
                f"cannot reach the completions server at {url} (timeout {self.timeout:g} s): {err}"
            ) from err
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            if not isinstance(choice.get("text"), str):
                raise TypeError("choices[0].text is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise LLMBackendError(
                f"server at {url} returned malformed JSON (expected an OpenAI completions "
                f"response with choices[0].text): {body[:200]!r}"
            ) from err
        return data

    def encode_prompt(self, prompt: str) -> TokenText:
        """The prompt as text (``tokens=None``): the server tokenises it."""
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
        prompt = self.encode_prompt(prompt)
        prefixes = [as_token_text(p, "prefixes") for p in prefixes]
        return [self._extend_one(int(s), prompt.text, p.text, params)
                for s, p in zip(seeds, prefixes, strict=True)]

    def _extend_one(self, seed: int, prompt: str, before: str, params: SamplingParams) -> StepResult:
        stops = list(params.stop) + ([params.delimiter] if params.delimiter else [])
        payload = {
            "model": self.model,
            "prompt": prompt + before,
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
        data = self._post(payload)
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
        out = []
        for i, context in enumerate(contexts):
            text = self.encode_prompt(context).text
            if prefixes is not None:
                text += as_token_text(prefixes[i], "prefixes").text
            data = self._post({
                "model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0.0,
                "logprobs": int(top_k), "stream": False,
            })
            try:
                top = data["choices"][0]["logprobs"]["top_logprobs"][0]
                out.append({str(k): float(v) for k, v in top.items()})
            except (KeyError, IndexError, TypeError, ValueError) as err:
                raise LLMBackendError(
                    f"server at {self.base_url} returned no top_logprobs for a logprobs request"
                ) from err
        return out
