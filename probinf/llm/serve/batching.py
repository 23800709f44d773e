r"""Share one language-model backend between concurrent decoding runs, merging their steps.

A sampler (:mod:`probinf.llm.samplers`) alternates between one backend call that extends
all its live particles by a step and some host-side work (rewards, weights, resampling).
When several runs are in flight at once — several requests to ``probinf serve``, or
several threads calling one :class:`~probinf.llm.serve.Decoder` — each run talks to its
own :class:`Session`, a :class:`~probinf.llm.base.LanguageModel` that forwards every call
to a :class:`BatchScheduler`. The scheduler owns the backend (the llama.cpp and
transformers backends are not thread-safe): one worker thread makes every backend call.

**Runs in lockstep.** The worker holds back an ``extend`` call until every open session
has one pending (each run is then waiting for its next step), or until ``max_wait``
seconds after the first arrived, and makes them *one* backend call. The particles of all
runs are then decoded together: one forward pass per token position for every particle
of every run, which is where a batched backend gains throughput (one run's particles
rarely fill a batch: their steps end at different tokens and finished ones drop out).
And since every run's particles are in every call, a batched llama.cpp backend keeps all
their key/value sequences cached (it drops the sequences a call does not continue).

**Merging is exact.** Calls with the same sampling parameters and the same prompt are
concatenated. Calls with different prompts are merged when the backend works on token
ids (llama.cpp, transformers): each particle's context ``prompt.tokens + prefix.tokens``
is passed as its prefix after an empty prompt, which is what those backends decode
anyway (the prefix's *text* stays the particle's own, so stop strings are searched in
the generated text only). Each particle keeps its seed, so a run draws the same steps
whether or not it shared a call: on the llama.cpp backend bit for bit, since a
sequence's logits there do not depend on its batch; on transformers up to the rounding
that the batch's padding brings (see ``docs/llm.md``). Calls with different sampling
parameters are made one after another.

A session can be cancelled (a client went away) or given a deadline; its next call then
raises :class:`RequestCancelled` or :class:`DeadlineExceeded`, which ends the run at its
next step boundary (a backend call that is under way is not interrupted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from probinf.llm.base import LLMBackendError, SamplingParams, StepResult, TokenText, as_token_text

__all__ = ["BatchScheduler", "Session", "RequestCancelled", "DeadlineExceeded", "SchedulerStats"]


class RequestCancelled(Exception):
    """The run was cancelled (its client disconnected, or the scheduler was closed)."""


class DeadlineExceeded(RequestCancelled):
    """The run's deadline passed."""


@dataclass
class SchedulerStats:
    """What the scheduler did (for tests, the health endpoint and benchmarks).

    Attributes:
        backend_calls: ``extend`` calls made to the backend.
        extend_jobs: ``extend`` calls received from sessions.
        merged_calls: backend calls that served more than one session's call.
        largest_merge: the most session calls served by one backend call.
        prefixes: particle-steps requested from the backend.
        tokens: tokens the backend generated (``StepResult.num_tokens``, summed).
        sessions_opened: sessions opened so far.
    """

    backend_calls: int = 0
    extend_jobs: int = 0
    merged_calls: int = 0
    largest_merge: int = 0
    prefixes: int = 0
    tokens: int = 0
    sessions_opened: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(eq=False)
class _Job:
    kind: str  # "extend", or the name of another backend method
    session: Session
    args: tuple
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    abandoned: bool = False


def _thread_safe(model) -> bool:
    """Backends whose calls may run concurrently from many threads (no shared decoding state)."""
    from probinf.llm.backends.openai_server import OpenAICompletionsModel

    return isinstance(model, OpenAICompletionsModel)


class BatchScheduler:
    """Owns a backend and serves the calls of many concurrent :class:`Session` objects.

    Args:
        model: any :class:`~probinf.llm.base.LanguageModel`.
        merge: merge the ``extend`` calls of different sessions into one backend call
            (see the module docstring); ``False``: one backend call per session call.
        max_wait: seconds the worker waits, after the first pending ``extend`` call, for
            the other open sessions to submit theirs before it calls the backend with
            what it has. The wait ends as soon as every open session has a call pending,
            so a lone run is never held back.
        concurrent: make the sessions' calls directly and concurrently instead of through
            the worker; ``None``: for backends known to be thread-safe (the
            OpenAI-compatible client, whose requests a server batches itself).
    """

    def __init__(self, model, *, merge: bool = True, max_wait: float = 0.05, concurrent: bool | None = None):
        if not isinstance(merge, bool):
            raise ValueError(f"`merge` must be True or False, got {merge!r}")
        if isinstance(max_wait, bool) or not isinstance(max_wait, (int, float)) or not 0 <= max_wait <= 10:
            raise ValueError(f"`max_wait` must be a number of seconds in [0, 10], got {max_wait!r}")
        self.model = model
        self.merge = merge
        self.max_wait = float(max_wait)
        self.concurrent = _thread_safe(model) if concurrent is None else bool(concurrent)
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._sessions: set[Session] = set()
        self._closed = False
        self._direct_lock = threading.Lock()  # serialises the non-extend calls of a concurrent backend
        self._worker: threading.Thread | None = None

    # -- sessions ---------------------------------------------------------------------------

    def session(self, timeout: float | None = None) -> Session:
        """A new :class:`Session` (a language model for one run); close it when the run ends
        (it is a context manager). ``timeout``: seconds from now after which its calls raise
        :class:`DeadlineExceeded`."""
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"`timeout` must be a positive number of seconds or None, got {timeout!r}")
        with self._cond:
            if self._closed:
                raise RequestCancelled("the scheduler is closed")
            session = Session(self, None if timeout is None else time.monotonic() + timeout)
            self._sessions.add(session)
            self.stats.sessions_opened += 1
            if self._worker is None and not self.concurrent:
                self._worker = threading.Thread(target=self._loop, name="probinf-batcher", daemon=True)
                self._worker.start()
        return session

    @property
    def open_sessions(self) -> int:
        with self._cond:
            return len(self._sessions)

    def _release(self, session: Session) -> None:
        with self._cond:
            self._sessions.discard(session)
            self._cond.notify_all()  # the barrier may now be met

    def close(self) -> None:
        """Stop the worker; calls still pending raise :class:`RequestCancelled`."""
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.error = RequestCancelled("the scheduler was closed")
                job.done.set()
            self._pending.clear()
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=30)

    # -- submitting -------------------------------------------------------------------------

    def _call(self, session: Session, kind: str, args: tuple):
        session.check()
        if self.concurrent:
            if kind == "extend":
                return self._run_direct(kind, args)
            with self._direct_lock:
                return self._run_direct(kind, args)
        job = _Job(kind, session, args)
        with self._cond:
            if self._closed:
                raise RequestCancelled("the scheduler is closed")
            self._pending.append(job)
            self._cond.notify_all()
        while not job.done.wait(0.05):
            try:
                session.check()
            except RequestCancelled:
                with self._cond:
                    if job in self._pending:
                        self._pending.remove(job)
                        self._cond.notify_all()
                    job.abandoned = True  # a backend call under way finishes; its result is dropped
                raise
        if job.error is not None:
            raise job.error
        return job.result

    def _run_direct(self, kind: str, args: tuple):
        if kind == "extend":
            seeds, prompt, prefixes, params = args
            steps = self.model.extend(seeds, prompt, prefixes, params)
            with self._cond:
                self.stats.backend_calls += 1
                self.stats.extend_jobs += 1
                self.stats.largest_merge = max(self.stats.largest_merge, 1)
                self.stats.prefixes += len(prefixes)
                self.stats.tokens += sum(int(s.num_tokens) for s in steps)
            return steps
        return getattr(self.model, kind)(*args)

    # -- the worker -------------------------------------------------------------------------

    def _barrier_met(self) -> bool:
        waiting = {job.session for job in self._pending}
        return all(s in waiting or s.cancelled.is_set() for s in self._sessions)

    def _loop(self) -> None:
        give_up = None  # when to stop waiting for the other sessions' extend calls
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    # Calls other than `extend` (encode a prompt, judge log-probabilities) are
                    # quick and may be what a late session needs before its first step: never
                    # held back, and made before the extend calls wait any longer.
                    solo = [job for job in self._pending if job.kind != "extend"]
                    if solo:
                        self._pending = [job for job in self._pending if job.kind == "extend"]
                        jobs = solo
                        break
                    now = time.monotonic()
                    if self._pending:
                        give_up = now + self.max_wait if give_up is None else give_up
                        if now >= give_up or self._barrier_met():
                            jobs, self._pending, give_up = self._pending, [], None
                            break
                        self._cond.wait(give_up - now)
                    else:
                        give_up = None
                        self._cond.wait()
            self._execute(jobs)

    def _execute(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.kind != "extend":
                self._finish(job, lambda job=job: getattr(self.model, job.kind)(*job.args))
        groups: dict[object, list[_Job]] = {}
        for job in jobs:
            if job.kind == "extend" and not job.abandoned:
                groups.setdefault(self._merge_key(job), []).append(job)
        for group in groups.values():
            self._extend_group(group)

    def _merge_key(self, job: _Job) -> object:
        _, prompt, prefixes, params = job.args
        if not self.merge:
            return id(job)
        if prompt.tokens is not None and all(p.tokens is not None for p in prefixes):
            return ("tokens", params)
        return ("text", params, prompt)

    @staticmethod
    def _finish(job: _Job, fn: Callable[[], object]) -> None:
        try:
            job.result = fn()
        except BaseException as err:  # handed to the session's thread, which raises it
            job.error = err
        job.done.set()

    def _extend_group(self, group: list[_Job]) -> None:
        params: SamplingParams = group[0].args[3]
        if len(group) == 1:
            seeds, prompt, prefixes, _ = group[0].args
        elif group[0].args[1].tokens is not None and all(
            p.tokens is not None for job in group for p in job.args[2]
        ) and len({job.args[1] for job in group}) > 1:
            # Different prompts, token-level backend: each context becomes a prefix of an empty prompt.
            prompt = TokenText("", ())
            prefixes = [TokenText(p.text, job.args[1].tokens + p.tokens) for job in group for p in job.args[2]]
            seeds = [s for job in group for s in job.args[0]]
        else:  # one prompt shared by every call
            prompt = group[0].args[1]
            prefixes = [p for job in group for p in job.args[2]]
            seeds = [s for job in group for s in job.args[0]]
        try:
            steps = self.model.extend(list(seeds), prompt, list(prefixes), params)
            if not isinstance(steps, (list, tuple)) or len(steps) != len(prefixes):
                count = len(steps) if isinstance(steps, (list, tuple)) else type(steps).__name__
                raise LLMBackendError(f"the language model returned {count} steps for {len(prefixes)} prefixes")
        except Exception as err:
            if len(group) > 1:
                # One run's fault (a context too long for the window, say) must not fail the
                # others: each call again on its own, so that only the faulty one raises.
                for job in group:
                    self._extend_group([job])
                return
            group[0].error = err
            group[0].done.set()
            return
        except BaseException as err:
            for job in group:
                job.error = err
                job.done.set()
            raise
        with self._cond:
            self.stats.backend_calls += 1
            self.stats.extend_jobs += len(group)
            self.stats.merged_calls += int(len(group) > 1)
            self.stats.largest_merge = max(self.stats.largest_merge, len(group))
            self.stats.prefixes += len(prefixes)
            self.stats.tokens += sum(int(s.num_tokens) for s in steps)
        offset = 0
        for job in group:
            count = len(job.args[2])
            job.result = list(steps[offset: offset + count])
            offset += count
            job.done.set()


class Session:
    """One run's view of a shared backend: a :class:`~probinf.llm.base.LanguageModel`
    whose calls go through a :class:`BatchScheduler` (made with
    :meth:`BatchScheduler.session`; close it, or use it as a context manager).

    Attributes:
        prompt_tokens: the token count of the last prompt encoded through this session
            (``None`` from a text-only backend, or before any).
        cancelled: set by :meth:`cancel`.
    """

    def __init__(self, scheduler: BatchScheduler, deadline: float | None):
        self._scheduler = scheduler
        self.deadline = deadline
        self.cancelled = threading.Event()
        self.reason = ""
        self.prompt_tokens: int | None = None
        self.supports_seeding = bool(getattr(scheduler.model, "supports_seeding", False))

    def check(self) -> None:
        """Raise :class:`RequestCancelled` / :class:`DeadlineExceeded` if the run must stop."""
        if self.cancelled.is_set():
            raise (DeadlineExceeded if self.reason == "deadline" else RequestCancelled)(self.reason or "cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.cancel("deadline")
            raise DeadlineExceeded("deadline")

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop the run at its next backend call (``reason="deadline"``: as a passed deadline)."""
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
            with self._scheduler._cond:
                self._scheduler._cond.notify_all()

    def close(self) -> None:
        self._scheduler._release(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the LanguageModel protocol ----------------------------------------------------------

    def format_prompt(self, question: str, system: str | None = None) -> str:
        return self._scheduler._call(self, "format_prompt", (question, system))

    def encode_prompt(self, prompt) -> TokenText:
        encoded = self._scheduler._call(self, "encode_prompt", (prompt,))
        self.prompt_tokens = None if encoded.tokens is None else len(encoded.tokens)
        return encoded

    def extend(self, seeds: Sequence[int], prompt, prefixes: Sequence[TokenText],
               params: SamplingParams) -> list[StepResult]:
        if not isinstance(prompt, TokenText):
            prompt = self.encode_prompt(prompt)
        prefixes = [as_token_text(p, "prefixes") for p in prefixes]
        return self._scheduler._call(self, "extend", (list(seeds), prompt, prefixes, params))

    def next_token_logprobs(self, contexts, top_k: int = 20, prefixes=None) -> list[dict[str, float]]:
        return self._scheduler._call(self, "next_token_logprobs", (list(contexts), top_k, prefixes))
