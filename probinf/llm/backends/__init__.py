"""Language-model backends: llama.cpp, Hugging Face transformers, OpenAI-compatible servers, a toy.

Each backend module imports its third-party package only when a model is built, so
``import probinf.llm`` works without any of them.
"""

from __future__ import annotations

import os

from probinf.llm.backends.llama_cpp import LlamaCppModel, smollm2_path
from probinf.llm.backends.openai_server import OpenAICompletionsModel
from probinf.llm.backends.toy import ToyStepModel
from probinf.llm.backends.transformers import TransformersModel
from probinf.llm.base import LanguageModel

__all__ = [
    "LlamaCppModel",
    "TransformersModel",
    "OpenAICompletionsModel",
    "ToyStepModel",
    "smollm2_path",
    "as_language_model",
]


def as_language_model(model_or_backend) -> LanguageModel:
    """Turn what the user has into a :class:`~probinf.llm.base.LanguageModel`.

    Accepted: a ``LanguageModel`` (returned as is); ``"smollm2"`` (the embedded model via
    llama.cpp); a path to a ``.gguf`` file; an ``http(s)://`` URL of an OpenAI-compatible
    server; a ``llama_cpp.Llama``; a ``(model, tokenizer)`` pair from ``transformers``.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(model_or_backend, LanguageModel):
        return model_or_backend
    if isinstance(model_or_backend, str):
        if model_or_backend == "smollm2":
            return LlamaCppModel.smollm2()
        if model_or_backend.startswith(("http://", "https://")):
            return OpenAICompletionsModel(model_or_backend)
        if model_or_backend.endswith(".gguf") or os.path.isfile(model_or_backend):
            return LlamaCppModel.from_path(model_or_backend)
        raise ValueError(
            f"`model_or_backend`: {model_or_backend!r} is not 'smollm2', a .gguf path or an "
            "http(s) URL"
        )
    if type(model_or_backend).__name__ == "Llama" and hasattr(model_or_backend, "tokenize"):
        return LlamaCppModel(model_or_backend)
    if isinstance(model_or_backend, tuple) and len(model_or_backend) == 2:
        return TransformersModel(*model_or_backend)
    raise TypeError(
        "`model_or_backend` must be a LanguageModel, 'smollm2', a .gguf path, a server URL, a "
        f"llama_cpp.Llama or a (model, tokenizer) pair, got {type(model_or_backend).__name__}"
    )
