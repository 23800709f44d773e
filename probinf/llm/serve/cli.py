"""The ``probinf serve`` subcommand: argument setup and handler (wired in by `probinf.cli`).

``probinf serve --model smollm2 --port 8000`` serves reward-guided decoding behind an
OpenAI-compatible API on 127.0.0.1 (see ``docs/llm-server.md``). Building the parser
imports neither JAX nor the web framework.
"""

from __future__ import annotations

import argparse
import os

from probinf.llm.base import DEFAULT_CONFIG
from probinf.llm.cli import METHOD_NAMES, _delimiter, _positive, _require_llm_extra

__all__ = ["add_serve_parser", "cmd_serve"]

_ALIASES = ("pf", "epf", "pg", "bon", "mv", "vote", "beam")  # kept equal to METHOD_ALIASES by a test


def _checked(parse, accept, expected: str):
    """An argparse ``type``: ``parse`` the text and ``accept`` the value, else one clear error."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


_seconds = _checked(float, lambda v: v > 0, "a positive number of seconds")
_port = _checked(int, lambda v: 0 <= v <= 65535, "a port number in [0, 65535]")
_non_negative = _checked(int, lambda v: v >= 0, "an integer >= 0")


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``argparse`` subparsers object; returns its parser."""
    serve = subparsers.add_parser(
        "serve",
        help="serve reward-guided decoding behind an OpenAI-compatible HTTP API",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models and /health; every answer is "
        "decoded by a probinf method (particle filtering by default) over the chosen backend. Clients pick "
        "the method and budget with the model id NAME:METHOD:N (e.g. probinf:pf:8) or the extra request "
        "field \"probinf\": {\"method\": ..., \"n\": ...}. Needs the `llm` extra (FastAPI, uvicorn).",
    )
    defaults = DEFAULT_CONFIG
    serve.add_argument("--model", default="smollm2",
                       help="'smollm2' (embedded), a .gguf path, a transformers model folder (with "
                       "--backend transformers), or an upstream OpenAI-compatible server URL such as "
                       "http://127.0.0.1:8001/v1 (default: %(default)s)")
    serve.add_argument("--backend", choices=["llama_cpp", "transformers"], default="llama_cpp",
                       help="how a local model is run (default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default: %(default)s)")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' (default: the PROBINF_API_KEY environment "
                       "variable, else none)")
    serve.add_argument("--model-name", default="probinf", help="the served model id (default: %(default)s)")
    serve.add_argument("--method", choices=METHOD_NAMES + _ALIASES, default="particle_filter",
                       help="default decoding method (default: %(default)s)")
    serve.add_argument("--particles", type=_positive, default=defaults.n_particles,
                       help="default number of particles N (default: %(default)s)")
    serve.add_argument("--reward", choices=["arithmetic", "judge", "none"], default="arithmetic",
                       help="default reward (default: %(default)s)")
    serve.add_argument("--system", default=None, help="default system message (default: the model's own)")
    serve.add_argument("--max-steps", type=_positive, default=defaults.max_steps,
                       help="default step cap (default: %(default)s)")
    serve.add_argument("--max-step-tokens", type=_positive, default=defaults.max_step_tokens,
                       help="default token cap of one step (default: %(default)s)")
    serve.add_argument("--delimiter", type=_delimiter, default=defaults.delimiter,
                       help=f"default step delimiter, with backslash escapes, or 'none' (default: {defaults.delimiter!r})")
    serve.add_argument("--temperature", type=float, default=defaults.temperature,
                       help="default sampling temperature (default: %(default)s)")
    serve.add_argument("--max-running", type=_positive, default=8,
                       help="requests decoded at once, sharing batched backend calls (default: %(default)s)")
    serve.add_argument("--max-queued", type=_non_negative, default=32,
                       help="requests waiting for a slot; more get HTTP 429 (default: %(default)s)")
    serve.add_argument("--timeout", type=_seconds, default=300.0,
                       help="default and largest per-request deadline in seconds; past it: HTTP 504 "
                       "(default: %(default)s)")
    serve.add_argument("--max-particles", type=_positive, default=64,
                       help="the largest N a request may ask for (default: %(default)s)")
    serve.add_argument("--n-ctx", type=_positive, default=1024,
                       help="llama.cpp: context window per sequence (default: %(default)s)")
    serve.add_argument("--max-sequences", type=_positive, default=64,
                       help="llama.cpp: sequences decoded in one batch; size it to max-running x N so that "
                       "every running particle stays cached (default: %(default)s)")
    serve.add_argument("--threads", type=_positive, default=1, help="llama.cpp: CPU threads (default: %(default)s)")
    serve.set_defaults(handler=cmd_serve)
    return serve


def build_model(args: argparse.Namespace):
    """The backend ``probinf serve`` decodes with."""
    model = args.model
    if model.startswith(("http://", "https://")):
        from probinf.llm.backends import OpenAICompletionsModel

        return OpenAICompletionsModel(model)
    if args.backend == "transformers":
        from probinf.llm.backends import TransformersModel

        if model == "smollm2":
            return TransformersModel.smollm2()
        if model.endswith(".gguf"):
            return TransformersModel.from_gguf(model)
        if not os.path.isdir(model):
            raise ValueError(f"--model: {model!r} is not 'smollm2', a .gguf file or a transformers model folder")
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise ValueError("--backend transformers needs torch and transformers: pip install -e '.[llm]'") from err
        return TransformersModel(AutoModelForCausalLM.from_pretrained(model).eval(), AutoTokenizer.from_pretrained(model))
    _require_llm_extra(model)
    from probinf.llm.backends import LlamaCppModel

    options = {"n_ctx": args.n_ctx, "n_threads": args.threads, "max_sequences": min(args.max_sequences, 256)}
    return LlamaCppModel.smollm2(**options) if model == "smollm2" else LlamaCppModel.from_path(model, **options)


def cmd_serve(args: argparse.Namespace) -> int:
    """Handler of ``probinf serve``; returns the exit status when the server stops."""
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    try:
        import fastapi  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        from probinf.llm.cli import LLM_EXTRA_INSTALL, MissingExtraError

        raise MissingExtraError(f"`probinf serve` needs FastAPI, uvicorn and sse-starlette (the `llm` extra): "
                                f"{LLM_EXTRA_INSTALL}") from None
    from probinf.llm.serve import Decoder, ServerSettings, serve

    config = DEFAULT_CONFIG.replace(
        n_particles=args.particles, max_steps=args.max_steps, max_step_tokens=args.max_step_tokens,
        delimiter=args.delimiter, temperature=args.temperature,
    )
    settings = ServerSettings(
        model_name=args.model_name, api_key=args.api_key or os.environ.get("PROBINF_API_KEY") or None,
        max_running=args.max_running, max_queued=args.max_queued, timeout=args.timeout,
        max_particles=args.max_particles,
    )
    decoder = Decoder(build_model(args), config=config, method=args.method, reward=args.reward, system=args.system)
    try:
        print(f"probinf serve: {args.model} as {args.model_name!r} on http://{args.host}:{args.port}/v1 "
              f"(method {decoder.method}, N={config.n_particles}, reward {args.reward})", flush=True)
        serve(decoder, host=args.host, port=args.port, settings=settings)
    finally:
        decoder.close()
    return 0
