"""Reward-guided decoding behind an OpenAI-compatible endpoint, and for many threads at once.

* :class:`Decoder` — one backend, named rewards and one ``DecodeConfig``, callable from
  many threads; concurrent runs share batched backend calls (:mod:`.batching`). Also the
  two-line ``transformers`` integration: ``Decoder.from_transformers(model, tokenizer)(question)``.
* :func:`create_app`, :func:`serve`, :func:`running_server` — ``probinf serve``: an
  OpenAI-compatible HTTP server (FastAPI, uvicorn and sse-starlette, imported only here).

See ``docs/llm-server.md``.
"""

from probinf.llm.serve.batching import BatchScheduler, DeadlineExceeded, RequestCancelled, Session
from probinf.llm.serve.decoder import METHOD_ALIASES, Decoder, resolve_method

__all__ = [
    "Decoder",
    "BatchScheduler",
    "Session",
    "RequestCancelled",
    "DeadlineExceeded",
    "METHOD_ALIASES",
    "resolve_method",
    "ServerSettings",
    "create_app",
    "serve",
    "running_server",
]


def __getattr__(name):
    # The HTTP layer imports FastAPI; only when it is asked for.
    if name in ("ServerSettings", "create_app", "serve", "running_server"):
        from probinf.llm.serve import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
