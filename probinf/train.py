"""The training engine: one state, one step protocol, one compiled driver.

Every trainer in the library is a **step** with one signature (the shape of optax's
``GradientTransformation(init, update)`` and blackjax's ``SamplingAlgorithm(init, step)``
over NamedTuple states)::

    step(state: TrainState, key, batch) -> (state: TrainState, info: StepInfo)

* `init` builds the `TrainState` ``(params, opt_state, step)`` from a model (any pytree or
  equinox module) and an optax optimizer.
* `make_step` turns a loss ``loss_fn(params, key, batch) -> loss`` (or ``(loss, aux)``) and
  an optimizer into a gradient step,

  .. math::
      g_t = \\nabla_\\theta\\, \\mathcal L(\\theta_t;\\ \\xi_t, B_t), \\qquad
      (u_t, s_{t+1}) = \\mathrm{update}(g_t, s_t, \\theta_t), \\qquad
      \\theta_{t+1} = \\theta_t + u_t,

  with $\\xi_t$ the step's key and $B_t$ its batch (stochastic approximation, Robbins and
  Monro 1951). Only the floating-point arrays of ``params`` are trained.
* EM and other non-gradient updates are steps written by hand with the same signature.
* `run` drives any step: a compiled ``jax.lax.while_loop`` over chunks of steps, with one
  non-finite policy, a progress bar, minibatches over a dataset in shuffled epochs,
  validation with patience (early stopping), an optional host-side stopping rule, and
  checkpoints that resume bit-exactly. It returns one `TrainResult`.

**Keys.** Step ``t`` (counted from 0 over the whole run, across resumes) uses
``fold_in(key, t)``; the row order of epoch ``e`` uses
``fold_in(fold_in(key, SHUFFLE_STREAM), e)``. Nothing depends on how the steps are cut into
chunks, so a run resumed from a checkpoint, or continued from a returned state with the same
key, reproduces an uninterrupted run bit for bit. Typed (``jax.random.key``) and raw
(``jax.random.PRNGKey``) keys are both accepted.

**Compilation.** The compiled loop is cached on the step object, the shapes of the state and
data and a few integers. `make_step` returns an object that compares equal when built from
the same loss function and the same optimizer *object*: reuse one optimizer instance
(`DEFAULT_OPTIMIZER` is shared) and a module-level loss, and a second call with the same
shapes compiles nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from probinf._progress import progress_bar
from probinf._tree import all_finite
from probinf.validation import check_key, check_positive_int

__all__ = [
    "DEFAULT_OPTIMIZER",
    "GradientStep",
    "StepInfo",
    "TimeLimit",
    "TrainResult",
    "TrainState",
    "IterateAverageState",
    "init",
    "iterate_average",
    "load_checkpoint",
    "make_step",
    "replicate",
    "run",
    "split_sharding",
]

# Shared, so that the compiled loop is reused by every call that relies on the default.
DEFAULT_OPTIMIZER = optax.adam(1e-3)
# Adaptive chunks (chunk_size=None): the most steps per compiled call and the wall time a
# chunk aims at. Chunk buffers are a power of two long, so runs of different lengths share a
# handful of compiled loops.
MAX_CHUNK = 1024
CHUNK_SECONDS = 0.2
# Validation without minibatches (no epochs to count): every this many steps by default.
DEFAULT_VALIDATE_EVERY = 100
# The key of epoch e's row order is fold_in(fold_in(key, SHUFFLE_STREAM), e): a stream no
# step's index reaches (vi.fit's diagnostics use 0xFFFFFFFF).
SHUFFLE_STREAM = 0xFFFFFFFE
CHECKPOINT_FORMAT = "probinf-train-checkpoint-v1"


class TrainState(NamedTuple):
    """What a step carries.

    Attributes:
        params: the model: any pytree or equinox module (its floating-point arrays are what
            `make_step` trains; other leaves ride along unchanged).
        opt_state: the optimizer state (``None`` for steps without an optimizer).
        step: ``int32`` scalar, the number of steps applied so far.
    """

    params: Any
    opt_state: Any
    step: jax.Array


class StepInfo(NamedTuple):
    """What a step reports.

    Attributes:
        loss: scalar loss of the step (recorded at every step).
        finite: boolean scalar, false when the step's loss or new state is non-finite
            (`run` then stops and keeps the state before this step).
        aux: any pytree of arrays, recorded at every step (keep it small), or ``None``.
    """

    loss: jax.Array
    finite: jax.Array
    aux: Any = None


def _check_optimizer(optimizer: object) -> optax.GradientTransformation:
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "`optimizer` must be an optax GradientTransformation (e.g. optax.adam(1e-3)), "
            f"got {type(optimizer).__name__}"
        )
    return optimizer


def _typed_key(key: object) -> jax.Array:
    """``key`` as a typed PRNG key; raw ``uint32`` keys (``PRNGKey``) are wrapped."""
    key = check_key(key)
    return key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


def init(params: Any, optimizer: optax.GradientTransformation | None = None) -> TrainState:
    """The state at step 0: ``TrainState(params, optimizer.init(trainable), 0)``.

    Args:
        params: the model (pytree or equinox module).
        optimizer: an optax transformation (default: the shared `DEFAULT_OPTIMIZER`,
            Adam with learning rate $10^{-3}$). Its state covers the floating-point arrays
            of ``params``, which is what `make_step` trains.
    """
    optimizer = _check_optimizer(optimizer)
    trainable = eqx.filter(params, eqx.is_inexact_array)
    if not jtu.tree_leaves(trainable):
        raise ValueError(
            f"nothing to train: `params` ({type(params).__name__}) holds no floating-point array"
        )
    return TrainState(params, optimizer.init(trainable), jnp.asarray(0, jnp.int32))


class IterateAverageState(NamedTuple):
    """State of `iterate_average`: the wrapped optimizer's state, the running averages of
    the parameters after each update (the pytree the optimizer sees) with time constants
    ``horizon`` and ``2 * horizon``, and the update count."""

    inner: Any
    average: Any
    slow_average: Any
    count: jax.Array


@functools.lru_cache(maxsize=64)
def iterate_average(optimizer: optax.GradientTransformation,
                    horizon: int) -> optax.GradientTransformation:
    """``optimizer``, also keeping a running average of the iterates in its state.

    After update $t$ (counted from 1) the average is

    .. math::
        \\bar\\theta_t = \\bar\\theta_{t-1} + w_t\\,(\\theta_t - \\bar\\theta_{t-1}),
        \\qquad w_t = \\max(1/t,\\ 1/h),

    the plain mean of all iterates for the first $h$ = ``horizon`` updates, then an
    exponential moving average with time constant $h$ steps (``state.average``; and the
    same with $2h$, ``state.slow_average``, to tell a fluctuating sequence from one
    still converging: see `fluctuates`). Near a stationary point the
    iterates of a constant-step stochastic optimizer fluctuate around the optimum, and
    their average is much closer to it than the last iterate (Polyak and Juditsky 1992;
    for stochastic VI, Dhaka et al. 2020, "Robust, Accurate Stochastic Optimization for
    Variational Inference"). The updates themselves are the wrapped optimizer's, so the
    trajectory is unchanged; read the average from ``state.average`` and the state to
    continue training from ``state.inner``.

    Cached on ``(optimizer, horizon)``: the same optimizer object gives the same wrapper,
    so compiled loops keyed on it are reused. Start from an existing inner state with
    ``IterateAverageState(inner, params, params, jnp.zeros((), jnp.int32))``.
    """
    _check_optimizer(optimizer)
    horizon = check_positive_int(horizon, "horizon")

    def init_fn(params):
        return IterateAverageState(optimizer.init(params), params, params,
                                   jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("iterate_average needs the parameters in `update`")
        updates, inner = optimizer.update(updates, state.inner, params)
        count = state.count + 1
        new_params = optax.apply_updates(params, updates)

        def moving(average, time_constant):
            weight = jnp.maximum(1.0 / count, 1.0 / time_constant)
            return jtu.tree_map(lambda mean, value: mean + weight.astype(mean.dtype)
                                * (value - mean), average, new_params)

        return updates, IterateAverageState(inner, moving(state.average, horizon),
                                            moving(state.slow_average, 2 * horizon), count)

    return optax.GradientTransformation(init_fn, update_fn)


def fluctuates(state: IterateAverageState, params: Any) -> bool:
    """Whether the iterates fluctuate around a point (their average is then nearer it than
    ``params``, the last iterate) rather than still converging to it.

    Fluctuating iterates (noise of a stochastic gradient) leave the last iterate about one
    fluctuation away from the average, while the two averages, of nearly the same noise,
    agree much more closely. A converging sequence (an exact or zero-variance gradient)
    reaches its limit ahead of both averages, the slower one lagging the most: the last
    iterate is then nearer the fast average than the two averages are to each other. So:
    ``|params - average| > |average - slow_average|`` (Euclidean, over every array).
    """

    def squared(a, b):
        leaves = jtu.tree_leaves(jtu.tree_map(lambda x, y: jnp.sum(jnp.square(x - y)), a, b))
        return float(sum(np.asarray(leaf, np.float64) for leaf in leaves))

    params = eqx.filter(params, eqx.is_inexact_array)
    return squared(params, state.average) > squared(state.average, state.slow_average)


class TimeLimit:
    """A stopping rule for `run` (``stop_rule=``): stop once ``seconds`` of wall-clock time
    have passed since the rule was made.

    It is checked after each compiled chunk, so a run may overshoot by one chunk (about
    `CHUNK_SECONDS`, or one step when a step takes longer). One instance can be passed to
    consecutive runs so that they share a single budget. Where a run stops then depends on
    the machine's speed: results are reproducible only when the limit is not reached.

    Raises:
        ValueError: if ``seconds`` is not a positive finite number.
    """

    reason = "time_limit"

    def __init__(self, seconds: float):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"`seconds` must be a positive finite number, got {seconds!r}")
        self.seconds = float(seconds)
        self.deadline = time.perf_counter() + self.seconds

    @property
    def remaining(self) -> float:
        """Seconds left before the limit (negative once it has passed)."""
        return self.deadline - time.perf_counter()

    def update(self, losses: np.ndarray) -> int | None:
        return len(losses) if self.remaining <= 0 else None


def _split_loss(output) -> tuple[jax.Array, Any]:
    loss, aux = output if isinstance(output, (tuple, list)) and len(output) == 2 else (output, None)
    loss = jnp.asarray(loss)
    if loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise TypeError(
            "`loss_fn` must return a floating-point scalar loss, or a pair (loss, aux); got "
            f"{loss.dtype}{list(loss.shape)}"
        )
    return loss, aux


@dataclasses.dataclass(frozen=True)
class GradientStep:
    """The step `make_step` returns: one optimizer update on the gradient of ``loss_fn``.

    Compares equal (and hashes alike) when ``loss_fn``, ``optimizer`` and ``step_index`` are
    the same objects, so `run` reuses its compiled loop.
    """

    loss_fn: Callable
    optimizer: optax.GradientTransformation
    step_index: bool = False

    def __call__(self, state: TrainState, key: jax.Array, batch: Any) -> tuple[TrainState, StepInfo]:
        trainable, frozen = eqx.partition(state.params, eqx.is_inexact_array)

        def loss_of(trainable):
            params = eqx.combine(trainable, frozen)
            if self.step_index:
                return _split_loss(self.loss_fn(params, key, batch, state.step))
            return _split_loss(self.loss_fn(params, key, batch))

        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, trainable)
        trainable = eqx.apply_updates(trainable, updates)
        # The loss and the new parameters: a non-finite gradient reaches the parameters
        # through the update (Adam, SGD, clipping), and a finite one can still overflow them.
        finite = jnp.isfinite(loss) & all_finite(trainable)
        new_state = TrainState(eqx.combine(trainable, frozen), opt_state, state.step + 1)
        return new_state, StepInfo(loss, finite, aux)


def make_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation | None = None,
    *,
    step_index: bool = False,
) -> GradientStep:
    """A gradient step ``step(state, key, batch) -> (state, StepInfo)`` for `run`.

    The step evaluates ``loss_fn(state.params, key, batch)``, differentiates it with respect
    to the floating-point arrays of ``params`` and applies ``optimizer``'s update (see the
    module docstring). Its `StepInfo` holds the loss, the finite flag (loss and new
    parameters finite: a non-finite gradient reaches the parameters through the update,
    unless the optimizer discards it, e.g. ``optax.apply_if_finite``) and ``aux`` when
    ``loss_fn`` returns ``(loss, aux)``.

    Args:
        loss_fn: ``(params, key, batch) -> loss`` or ``-> (loss, aux)``: a scalar to
            minimise; ``batch`` is what `run` passes (a minibatch, the whole ``data``, or
            ``None``). A module-level function (not a fresh lambda per call) lets the
            compiled loop be reused.
        optimizer: an optax transformation (default: the shared `DEFAULT_OPTIMIZER`); use
            the one given to `init`.
        step_index: pass the step count as a fourth argument,
            ``loss_fn(params, key, batch, step)`` (for schedules inside the loss).
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}")
    if not isinstance(step_index, bool):
        raise TypeError(f"`step_index` must be True or False, got {step_index!r}")
    return GradientStep(loss_fn, _check_optimizer(optimizer), step_index)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `run` returns.

    Attributes:
        state: the last finite state (continue training from it).
        best_state: the state with the lowest validation loss, or ``None`` without
            ``validate``.
        losses: ``(num_steps,)`` loss of every step taken, from the first step of the run
            (steps restored from a checkpoint included).
        aux: the steps' ``StepInfo.aux`` stacked along a leading ``num_steps`` axis
            (NumPy arrays), or ``None``.
        num_steps: steps taken (``len(losses)``).
        stop_reason: why training ended:

            * ``"completed"``: every requested step ran;
            * ``"early_stopping"``: ``patience`` validations without improvement;
            * the ``reason`` of ``stop_rule`` (``"converged"`` by default): the rule stopped it;
            * ``"non_finite"``: step ``nonfinite_step`` gave a non-finite loss or state.
        nonfinite_step: the index of the non-finite step, else ``None``.
        validation_steps: the step counts at which validation ran.
        validation_losses: the validation losses there.
        best_step: the step count of ``best_state``, or ``None``.
        seconds: wall-clock time of this call.
    """

    state: TrainState
    best_state: TrainState | None
    losses: np.ndarray
    aux: Any
    num_steps: int
    stop_reason: str
    nonfinite_step: int | None
    validation_steps: np.ndarray
    validation_losses: np.ndarray
    best_step: int | None
    seconds: float

    @property
    def params(self) -> Any:
        """The parameters of ``best_state`` when validation ran, else of ``state``."""
        return (self.state if self.best_state is None else self.best_state).params


# ---------------------------------------------------------------------------- the compiled loop


def _leading_rows(data: Any) -> int:
    leaves = jtu.tree_leaves(data)
    if not leaves:
        raise ValueError("`data` must hold at least one array to take minibatches from")
    rows = set()
    for leaf in leaves:
        if not eqx.is_array(leaf) or leaf.ndim == 0:
            raise ValueError(
                "with `batch_size`, every leaf of `data` must be an array with a leading axis of "
                f"rows, got {type(leaf).__name__}{'' if not eqx.is_array(leaf) else ' of shape ()'}"
            )
        rows.add(leaf.shape[0])
    if len(rows) != 1:
        raise ValueError(f"the arrays of `data` must share their number of rows, got {sorted(rows)}")
    return rows.pop()


def _check_info(info: object) -> StepInfo:
    if not isinstance(info, StepInfo):
        raise TypeError(
            "`step` must return (state, StepInfo(loss, finite, aux)), got info of type "
            f"{type(info).__name__}"
        )
    shapes = tuple(tuple(getattr(x, "shape", np.shape(x))) for x in (info.loss, info.finite))
    if shapes != ((), ()):
        raise TypeError(
            f"`step`'s StepInfo needs scalar `loss` and `finite`, got shapes {shapes[0]} and {shapes[1]}"
        )
    return info


# The step as its own compiled function: its trace is cached, so reading the shapes of its
# info (filter_eval_shape) and running it in the loop trace the step once, not twice.
_apply_step = eqx.filter_jit(lambda step, state, key, batch: step(state, key, batch))


def split_sharding(mesh: Any, size: int | None = None, what: str = "`batch_size`"):
    """The sharding that splits an array's leading axis over ``mesh``'s first axis.

    The one check of every data-parallel trainer: ``mesh`` must be a `jax.sharding.Mesh`
    (a TypeError naming ``sharding`` otherwise), and ``size``, the length to split (e.g.
    ``batch_size``), a multiple of that axis's size (a ValueError starting with ``what``).
    """
    from jax.sharding import NamedSharding, PartitionSpec

    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError("`sharding` must be a jax.sharding.Mesh (its first axis splits the "
                        f"batches), got {type(mesh).__name__}")
    axis = mesh.axis_names[0]
    width = mesh.shape[axis]
    if size is not None and size % width:
        raise ValueError(f"{what} ({size}) must be a multiple of the mesh's '{axis}' axis "
                         f"size ({width}) to split each batch over it")
    return NamedSharding(mesh, PartitionSpec(axis))


def replicate(tree: Any, mesh: Any) -> Any:
    """``tree`` with every array placed whole on every device of ``mesh``."""
    from jax.sharding import NamedSharding, PartitionSpec

    replicated = NamedSharding(mesh, PartitionSpec())
    return jtu.tree_map(lambda x: jax.device_put(x, replicated) if eqx.is_array(x) else x, tree)


def _shard(mesh, state, data, validation_data, batch_size):
    """Replicate the state and validation data over ``mesh``; split ``data``'s rows on its
    first axis. Returns them and the sharding every minibatch is constrained to."""
    rows = split_sharding(mesh, batch_size)
    axis = mesh.axis_names[0]
    width = mesh.shape[axis]

    def split_rows(leaf):
        if eqx.is_array(leaf) and leaf.ndim and leaf.shape[0] % width == 0:
            return jax.device_put(leaf, rows)
        return replicate(leaf, mesh)

    if batch_size is None:
        lengths = {leaf.shape[0] for leaf in jtu.tree_leaves(data)
                   if eqx.is_array(leaf) and leaf.ndim}
        if not lengths or any(length % width for length in lengths):
            raise ValueError(f"with `sharding` and no `batch_size`, `data`'s arrays are split on "
                             f"their leading axis, whose length must be a multiple of the mesh's "
                             f"'{axis}' axis size ({width}); got leading lengths {sorted(lengths)}")
        rows = None
    return (replicate(state, mesh), jtu.tree_map(split_rows, data),
            replicate(validation_data, mesh), rows)


@eqx.filter_jit
def _run_chunk(step, state, key, data, start, num_steps, chunk_len, batch_size,
               batch_sharding=None):
    """Steps ``start, ..., start + num_steps - 1`` (``num_steps <= chunk_len``).

    Stops after the first step whose info is non-finite and returns its index as
    ``bad_step`` (else -1); the returned state then includes that step, and `run` recovers
    the state before it by re-running the chunk that far (same keys, same result). Keeping
    the last finite state inside the loop instead (a select over the whole state at every
    step) made microsecond-sized steps two to three times slower on CPU (vi.fit's
    measurement).
    """
    dynamic, static = eqx.partition(state, eqx.is_array)
    # One vectorised fold_in for the chunk, not one hash per step.
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        key, start + jnp.arange(chunk_len, dtype=jnp.int32)
    )
    if batch_size is None:
        order = jnp.zeros(0, jnp.int32)

        def batch_at(t, order):
            return data, order

        example_batch = data
    else:
        num_rows = jtu.tree_leaves(data)[0].shape[0]
        num_batches = num_rows // batch_size
        shuffle_key = jax.random.fold_in(key, SHUFFLE_STREAM)

        def permutation(epoch):
            return jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_rows).astype(jnp.int32)

        order = permutation(start // num_batches)

        def batch_at(t, order):
            index = t % num_batches
            order = jax.lax.cond(index == 0, lambda: permutation(t // num_batches), lambda: order)
            rows = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
            batch = jtu.tree_map(lambda x: jnp.take(x, rows, axis=0, mode="clip"), data)
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return batch, order

        example_batch = batch_at(start, order)[0]  # for its shapes only (unused, so compiled away)

    output_shape = eqx.filter_eval_shape(_apply_step, step, state, keys[0], example_batch)
    if not (isinstance(output_shape, tuple) and len(output_shape) == 2):
        raise TypeError(f"`step` must return a pair (state, StepInfo), got {type(output_shape).__name__}")
    info_shape = _check_info(output_shape[1])
    losses = jnp.full(chunk_len, jnp.nan, info_shape.loss.dtype)
    aux = jtu.tree_map(lambda s: jnp.zeros((chunk_len, *s.shape), s.dtype), info_shape.aux)

    # A non-finite step's loss is written as NaN and the loop stops after it: the condition
    # reads the last loss. (A separate "first bad step" scalar in the carry, computed from
    # the step's finite flag, made microsecond-sized steps 1.7x slower on CPU.)
    def keep_going(carry):
        _, i, losses, _, _ = carry
        return (i < num_steps) & ((i == 0) | ~jnp.isnan(losses[jnp.maximum(i - 1, 0)]))

    def body(carry):
        dynamic, i, losses, aux, order = carry
        t = start + i
        batch, order = batch_at(t, order)
        new_state, info = _apply_step(step, eqx.combine(dynamic, static), keys[i], batch)
        info = _check_info(info)
        if not isinstance(new_state, TrainState):
            raise TypeError(f"`step` must return a TrainState, got {type(new_state).__name__}")
        new_state = new_state._replace(step=t + 1)  # the driver's count is the truth
        new_dynamic, new_static = eqx.partition(new_state, eqx.is_array)
        if jtu.tree_structure(new_dynamic) != jtu.tree_structure(dynamic):
            raise TypeError("`step` changed the structure of the state it was given")
        del new_static
        finite = jnp.asarray(info.finite, bool) & jnp.isfinite(info.loss)
        losses = losses.at[i].set(jnp.where(finite, info.loss, jnp.nan))
        aux = jtu.tree_map(lambda buffer, value: buffer.at[i].set(value), aux, info.aux)
        return new_dynamic, i + 1, losses, aux, order

    carry = (dynamic, jnp.asarray(0, jnp.int32), losses, aux, order)
    dynamic, ran, losses, aux, _ = jax.lax.while_loop(keep_going, body, carry)
    bad = jnp.isnan(losses) & (jnp.arange(chunk_len) < ran)
    bad_step = jnp.where(jnp.any(bad), start + jnp.argmax(bad), -1).astype(jnp.int32)
    return eqx.combine(dynamic, static), bad_step, losses, aux


@eqx.filter_jit
def _evaluate(validate, params, validation_data):
    return validate(params, validation_data)


# ---------------------------------------------------------------------------- checkpoints


def _partial_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _host_copy(tree: Any) -> Any:
    """``tree`` with every array spread over several processes as this process's copy.
    Such an array must be replicated (each process then holds all of it)."""

    def local(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.sharding.is_fully_replicated:
                raise ValueError("a checkpoint of a multi-process run needs the training state "
                                 "replicated over the processes (as `sharding=` makes it); this "
                                 f"array is split: {leaf.sharding}")
            return np.asarray(leaf.addressable_data(0))
        return leaf

    return jtu.tree_map(local, tree)


def _write_checkpoint(path: pathlib.Path, payload: dict) -> None:
    """Write ``payload`` atomically. Across processes the state is replicated, so process 0
    alone writes (to a file system every process reads, for a resume)."""
    from probinf import save

    if jax.process_count() > 1:
        payload = _host_copy(payload)
        if jax.process_index() != 0:
            return
    partial = _partial_path(path)
    save(partial, payload)
    os.replace(partial, path)  # atomic: an interruption mid-write leaves the old checkpoint


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by `run`.

    Returns a dict with ``state`` (the last `TrainState`), ``best_state``, ``step`` (its step
    count), ``first_step``, ``losses``, ``aux``, ``validation_steps``, ``validation_losses``,
    ``stop_reason`` and the run's ``key_data``, ``batch_size`` and ``num_rows``.

    Raises:
        ValueError: the file is not a checkpoint written by `run`.
    """
    from probinf import load

    payload = load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"`path` {os.fspath(path)!r} is not a checkpoint written by probinf.train.run")
    return payload


def _restore_like(saved: Any, like: Any, path: pathlib.Path, what: str) -> Any:
    """``saved``'s arrays in the structure of ``like`` (shapes and dtypes must agree)."""
    like_arrays, like_static = eqx.partition(like, eqx.is_array)
    like_leaves, treedef = jtu.tree_flatten(like_arrays)
    saved_leaves = jtu.tree_leaves(eqx.filter(saved, eqx.is_array))
    if len(saved_leaves) != len(like_leaves):
        raise ValueError(
            f"`checkpoint` {os.fspath(path)!r} holds a {what} with {len(saved_leaves)} arrays, but "
            f"this run's has {len(like_leaves)}: it was written by a run of another model"
        )
    restored = []
    for index, (old, new) in enumerate(zip(saved_leaves, like_leaves, strict=True)):
        old = jnp.asarray(old)
        if old.shape != new.shape or old.dtype != new.dtype:
            raise ValueError(
                f"`checkpoint` {os.fspath(path)!r}: array {index} of its {what} is "
                f"{old.dtype}{list(old.shape)}, this run's is {new.dtype}{list(new.shape)}"
            )
        restored.append(old)
    return eqx.combine(jtu.tree_unflatten(treedef, restored), like_static)


# ---------------------------------------------------------------------------- the driver


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _as_device_arrays(tree: Any) -> Any:
    return jtu.tree_map(lambda x: jnp.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else x, tree)


def run(
    step: Callable,
    state: TrainState,
    key: jax.Array,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    data: Any = None,
    batch_size: int | None = None,
    validate: Callable | None = None,
    validation_data: Any = None,
    validate_every: int | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    patience_rule: str = "best",
    stop_rule: Any = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    checkpoint_meta: dict | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    warn: bool = True,
    name: str = "train",
    sharding: jax.sharding.Mesh | None = None,
) -> TrainResult:
    """Run ``step`` from ``state`` for ``steps`` steps in compiled chunks.

    The steps run inside a ``jax.lax.while_loop``, a chunk of them per compiled call, with
    one host sync and one progress-bar update per chunk. With ``chunk_size=None`` chunks
    adapt: they start at one step (the first call also compiles) and grow to about 0.2 s of
    work each (at most 1,024 steps), so microsecond steps are not dominated by the per-call
    overhead and slow steps still move the bar. Chunks also end at every validation and
    checkpoint step. Results do not depend on the chunking (see the module docstring).

    **Batches.** With ``data`` and ``batch_size`` (minibatch training, random reshuffling:
    Gürbüzbalaban, Ozdaglar and Parrilo 2021): every leaf of ``data`` is an array of ``n``
    rows; each epoch draws a fresh permutation of the rows and cuts it into
    ``n // batch_size`` batches of ``batch_size`` rows, so within an epoch no row is used
    twice. The ``n % batch_size`` rows left over at the end of each permutation are not
    used in that epoch (a different random set each epoch; every row is used equally often
    in expectation). ``batch_size=n`` is full-batch training. Without ``batch_size`` the
    whole ``data`` (any pytree: a dataset, a simulator, constants) is passed to every step,
    and without ``data`` the batch is ``None``.

    **Non-finite policy.** When a step reports ``finite=False`` or a non-finite loss,
    training stops, the returned ``state`` is the one before that step (bit-exact),
    ``stop_reason="non_finite"``, ``nonfinite_step`` is the step's index, and a
    ``RuntimeWarning`` says so (``warn=False`` leaves reporting to the caller).

    **Validation and early stopping** (Prechelt 1998): ``validate(params, validation_data)``
    returns a scalar (lower is better), evaluated compiled between chunks after every
    ``validate_every`` steps (default: one epoch with minibatches, else 100 steps).
    ``best_state`` keeps the state with the lowest value; with ``patience``, training stops
    (``"early_stopping"``) after that many validations in a row that did not improve on the
    best by more than ``min_delta`` (``patience_rule="best"``), or, with
    ``patience_rule="successive"``, after that many validations in a row that each rose
    above the one before (Prechelt's $UP_s$ criterion with $s$ = ``patience``).

    **Stopping rules.** ``stop_rule`` is any object with ``update(losses) -> int | None``,
    fed each chunk's losses (a NumPy array) in order; when it returns ``k`` the run keeps
    the state after the first ``k`` of those steps and stops with ``stop_reason`` equal to
    the rule's ``reason`` attribute (default ``"converged"``). `probinf.vi.convergence`'s
    ``ConvergenceMonitor`` is one; `TimeLimit` stops on a wall-clock budget.

    **Data-parallel training.** With ``sharding=mesh`` (a `jax.sharding.Mesh`; its first
    axis is the data axis) the parameters and optimizer state are replicated on every device
    of the mesh and each batch's leading axis is split over the data axis: with
    ``batch_size``, every minibatch is constrained to that layout (``batch_size`` must be a
    multiple of the axis size; the dataset's rows are split too when their number is);
    without, the leaves of ``data`` are split on their leading axis (whose length must be a
    multiple of the axis size). The step itself is unchanged: JAX's SPMD partitioner turns
    its sums over rows (a loss, a gradient, EM's sufficient statistics) into per-device sums
    and one all-reduce, so the result equals the single-device run up to the order of
    floating-point sums. The same code runs across hosts after
    ``jax.distributed.initialize()``, with a mesh over ``jax.devices()`` (every process
    passes the same global data); adaptive chunks then double in length instead of
    following the clock, so that every process runs the same steps per compiled call.

    **Checkpoints.** With ``checkpoint=path`` the run's state, best state, loss history,
    validation history and stop reason are written with `probinf.save` (atomically: to a
    side file, then renamed) every ``checkpoint_every`` steps, at the end, and when the run
    is interrupted (``KeyboardInterrupt``: the state after the last finished chunk).
    ``resume=True`` continues from the file: called with the same arguments, the result
    equals an uninterrupted run's bit for bit. A checkpoint of a run that already stopped
    (early stopping, a stopping rule, a non-finite step) is returned as it is. Bit-exact
    re-runs and resumes assume deterministic kernels: so on CPU; on GPU, scatter-adds in
    gradients are deterministic only with ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``.

    Args:
        step: ``step(state, key, batch) -> (state, StepInfo)``: `make_step`'s, or any.
        state: the `TrainState` to start from (`init`); training runs from step
            ``state.step`` to ``state.step + steps``.
        key: PRNG key, typed or raw.
        steps: number of steps; or give ``epochs``.
        epochs: with ``batch_size``: ``steps = epochs * (n // batch_size)``.
        data: the dataset (any pytree of arrays with ``n`` rows), or what every step gets.
        batch_size: rows per minibatch (``<= n``), or ``None`` for no minibatching.
        validate: ``(params, validation_data) -> scalar``, or ``None``.
        validation_data: the second argument of ``validate``.
        validate_every: steps between validations.
        patience: validations without improvement before stopping (needs ``validate``).
        min_delta: the improvement that counts, for ``patience`` with the ``"best"`` rule.
        patience_rule: ``"best"`` or ``"successive"`` (see above).
        stop_rule: a host-side stopping rule (see above), or ``None``.
        checkpoint: file to write checkpoints to (and to resume from).
        checkpoint_every: steps between checkpoints (default: only at the end).
        resume: continue from ``checkpoint`` (which must exist).
        checkpoint_meta: settings the step depends on that a resume must not change (e.g.
            ``{"batch_size": 256}`` for a step that simulates its batch): stored in the
            checkpoint, and ``resume=True`` refuses a checkpoint whose settings differ.
        chunk_size: a fixed number of steps per compiled call, or ``None`` (adaptive).
        progress: show a progress bar (default: only on a terminal).
        warn: emit the ``RuntimeWarning`` of the non-finite policy.
        name: label of the progress bar and the warning.
        sharding: a `jax.sharding.Mesh` to train data-parallel on (see above), or ``None``.

    Returns:
        A `TrainResult`.

    Raises:
        TypeError: a step, state, key or stopping rule of the wrong kind.
        ValueError: an invalid option, data whose arrays disagree on their rows, a
            ``batch_size`` above the number of rows, or a checkpoint from another run
            (other key, model or data).
    """
    started = time.perf_counter()
    if not callable(step):
        raise TypeError(f"`step` must be callable (step(state, key, batch)), got {type(step).__name__}")
    if not isinstance(state, TrainState):
        raise TypeError(f"`state` must be a probinf.train.TrainState (see init()), got {type(state).__name__}")
    key = _typed_key(key)
    first_step = int(state.step)
    if first_step < 0:
        raise ValueError(f"`state.step` must be >= 0, got {first_step}")
    state = state._replace(step=jnp.asarray(first_step, jnp.int32))
    data = _as_device_arrays(data)
    validation_data = _as_device_arrays(validation_data)

    num_rows = None
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
        if data is None:
            raise ValueError("`batch_size` needs `data` to take minibatches from")
        num_rows = _leading_rows(data)
        if batch_size > num_rows:
            raise ValueError(f"`batch_size` ({batch_size}) exceeds the number of rows of `data` ({num_rows})")
    steps_per_epoch = None if batch_size is None else num_rows // batch_size
    batch_sharding = None
    if sharding is not None:
        state, data, validation_data, batch_sharding = _shard(sharding, state, data,
                                                              validation_data, batch_size)
    if (steps is None) == (epochs is None):
        raise ValueError(f"give exactly one of `steps` and `epochs`, got steps={steps!r}, epochs={epochs!r}")
    if epochs is not None:
        if batch_size is None:
            raise ValueError("`epochs` needs `data` and `batch_size` (an epoch is a pass over the rows)")
        steps = check_positive_int(epochs, "epochs") * steps_per_epoch
    steps = check_positive_int(steps, "steps")
    end = first_step + steps

    if validate is not None and not callable(validate):
        raise TypeError(f"`validate` must be callable (validate(params, data)), got {type(validate).__name__}")
    if validate is None and (patience is not None or validate_every is not None):
        raise ValueError("`patience` and `validate_every` need `validate`")
    if validate is not None:
        validate_every = check_positive_int(
            validate_every if validate_every is not None else steps_per_epoch or DEFAULT_VALIDATE_EVERY,
            "validate_every")
    if patience is not None:
        patience = check_positive_int(patience, "patience")
    if patience_rule not in ("best", "successive"):
        raise ValueError(f"`patience_rule` must be 'best' or 'successive', got {patience_rule!r}")
    if isinstance(min_delta, bool) or not (isinstance(min_delta, (int, float)) and 0 <= min_delta < math.inf):
        raise ValueError(f"`min_delta` must be a non-negative number, got {min_delta!r}")
    if stop_rule is not None and not callable(getattr(stop_rule, "update", None)):
        raise TypeError(f"`stop_rule` must have a method update(losses), got {type(stop_rule).__name__}")
    rule_reason = str(getattr(stop_rule, "reason", "converged"))
    if checkpoint is None and (checkpoint_every is not None or resume):
        raise ValueError("`checkpoint_every` and `resume=True` need `checkpoint` (a file path)")
    path = None if checkpoint is None else pathlib.Path(checkpoint)
    if checkpoint_every is not None:
        checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    if not isinstance(resume, bool):
        raise TypeError(f"`resume` must be True or False, got {resume!r}")
    checkpoint_meta = {} if checkpoint_meta is None else checkpoint_meta
    if not isinstance(checkpoint_meta, dict) or not all(isinstance(k, str) for k in checkpoint_meta):
        raise TypeError(f"`checkpoint_meta` must be a dict with str keys, got {checkpoint_meta!r}")

    # The run's host-side record; a checkpoint is a snapshot of it.
    history: list[np.ndarray] = []
    aux_history: list[Any] = []
    validation_steps: list[int] = []
    validation_losses: list[float] = []
    best_state, best_value, best_step, waited = None, math.inf, None, 0
    stop_reason, nonfinite_step = "completed", None
    key_data = np.asarray(jax.random.key_data(key))

    if resume:
        if not path.exists():
            raise ValueError(f"`resume=True` but `checkpoint` {os.fspath(path)!r} does not exist")
        saved = load_checkpoint(path)
        if not np.array_equal(np.asarray(saved["key_data"]), key_data):
            raise ValueError(f"`key` differs from the key of `checkpoint` {os.fspath(path)!r}")
        if int(saved["first_step"]) != first_step:
            raise ValueError(
                f"`state.step` ({first_step}) differs from the first step of `checkpoint`'s run "
                f"({int(saved['first_step'])})"
            )
        saved_meta = dict(saved["meta"])
        if saved_meta != checkpoint_meta:
            differ = sorted(k for k in set(saved_meta) | set(checkpoint_meta)
                            if saved_meta.get(k) != checkpoint_meta.get(k))
            raise ValueError(
                f"`checkpoint` {os.fspath(path)!r} was written with other settings: "
                + ", ".join(f"{k}={saved_meta.get(k)!r} there, {checkpoint_meta.get(k)!r} now" for k in differ)
            )
        saved_batch = None if int(saved["batch_size"]) == 0 else int(saved["batch_size"])
        saved_rows = None if int(saved["num_rows"]) == 0 else int(saved["num_rows"])
        if (saved_batch, saved_rows) != (batch_size, num_rows):
            raise ValueError(
                f"`batch_size` and the rows of `data` ({batch_size}, {num_rows}) differ from "
                f"`checkpoint`'s ({saved_batch}, {saved_rows})"
            )
        if int(saved["step"]) > end:
            raise ValueError(
                f"`checkpoint` is at step {int(saved['step'])}, beyond the {steps} `steps` asked for"
            )
        state = _restore_like(saved["state"], state, path, "state")
        if saved["best_state"] is not None:
            best_state = _restore_like(saved["best_state"], state, path, "best state")
        if sharding is not None:  # the restored state goes where `_shard` put the fresh one
            state, best_state = replicate((state, best_state), sharding)
        losses = np.asarray(saved["losses"], np.float64)
        history = [losses]
        if saved["aux"] is not None:
            aux_history = [jtu.tree_map(np.asarray, saved["aux"])]
        validation_steps = [int(s) for s in np.asarray(saved["validation_steps"])]
        validation_losses = [float(v) for v in np.asarray(saved["validation_losses"])]
        best_value, waited = float(saved["best_value"]), int(saved["waited"])
        best_step = None if int(saved["best_step"]) < 0 else int(saved["best_step"])
        stop_reason = str(saved["stop_reason"])
        nonfinite_step = None if int(saved["nonfinite_step"]) < 0 else int(saved["nonfinite_step"])
        if stop_rule is not None and len(losses):
            stop_rule.update(losses)  # replay: the rule's state then matches the uninterrupted run
    start = int(state.step)

    def aux_so_far():
        if not aux_history:
            return None
        return jtu.tree_map(lambda *parts: np.concatenate(parts), *aux_history)

    def snapshot(current_state):
        losses = np.concatenate(history) if history else np.zeros(0)
        return {
            "format": CHECKPOINT_FORMAT,
            "state": current_state,
            "best_state": best_state,
            "step": int(current_state.step),
            "first_step": first_step,
            "losses": losses,
            "aux": aux_so_far(),
            "validation_steps": np.asarray(validation_steps, np.int64),
            "validation_losses": np.asarray(validation_losses, np.float64),
            "best_value": float(best_value),
            "best_step": -1 if best_step is None else int(best_step),
            "waited": int(waited),
            "stop_reason": stop_reason,
            "nonfinite_step": -1 if nonfinite_step is None else int(nonfinite_step),
            "key_data": key_data,
            "batch_size": 0 if batch_size is None else batch_size,
            "num_rows": 0 if num_rows is None else num_rows,
            "meta": dict(checkpoint_meta),
        }

    # The compiled buffers: no longer than the longest possible chunk (a power of two when
    # adaptive, so runs of different lengths share compiled loops).
    longest = steps
    for every in (validate_every, checkpoint_every):
        if every is not None:
            longest = min(longest, every)
    if chunk_size is None:
        chunk_len = min(MAX_CHUNK, _next_power_of_two(longest))
        num_steps = 1  # the first call also compiles; later chunks grow to CHUNK_SECONDS
    else:
        chunk_len = num_steps = min(chunk_size, longest)

    multi_process = jax.process_count() > 1

    def launch(state, start, count):
        return _run_chunk(step, state, key, data, np.asarray(start, np.int32),
                          np.asarray(count, np.int32), chunk_len, batch_size, batch_sharding)

    def validation_due():
        return (validate is not None and start > first_step and start % validate_every == 0
                and (not validation_steps or validation_steps[-1] != start))

    ran = False  # whether this call changed anything (else a resumed checkpoint stays as it is)
    saved_at = start
    with progress_bar(total=end - first_step, enabled=progress, desc=name,
                      initial=start - first_step) as bar:
        try:
            # A state the run ends on is validated too when it falls on a validation step
            # (so `best_state` can be the last state after a stop rule or a non-finite step).
            while True:
                if validation_due():
                    value = float(_evaluate(validate, state.params, validation_data))
                    validation_steps.append(start)
                    validation_losses.append(value)
                    if patience_rule == "best":
                        waited = 0 if value < best_value - min_delta else waited + 1
                    else:
                        waited = waited + 1 if len(validation_losses) > 1 and value > validation_losses[-2] else 0
                    if value < best_value:
                        best_state, best_value, best_step = state, value, start
                    ran = True
                    if patience is not None and waited >= patience and stop_reason == "completed":
                        stop_reason = "early_stopping"
                        break
                if start >= end or stop_reason != "completed":
                    break
                if path is not None and checkpoint_every is not None and start % checkpoint_every == 0 \
                        and start != saved_at:
                    _write_checkpoint(path, snapshot(state))
                    saved_at = start
                boundary = end
                for every in (validate_every, checkpoint_every):
                    if every is not None:
                        boundary = min(boundary, (start // every + 1) * every)
                count = min(num_steps, boundary - start)
                began = time.perf_counter()
                new_state, bad_step, losses, aux = launch(state, start, count)
                losses = np.asarray(losses, np.float64)[:count]
                bad_step = int(bad_step)
                elapsed = time.perf_counter() - began
                ran, kept = True, count
                if bad_step >= 0:
                    kept = bad_step - start
                    stop_reason, nonfinite_step = "non_finite", bad_step
                elif stop_rule is not None:
                    used = stop_rule.update(losses)
                    if used is not None:
                        if isinstance(used, bool) or not isinstance(used, (int, np.integer)) \
                                or not 0 <= used <= count:
                            raise ValueError(
                                f"`stop_rule.update` returned {used!r}; expected None or a step count "
                                f"in [0, {count}]"
                            )
                        kept, stop_reason = int(used), rule_reason
                if kept < count:
                    # The chunk went past the state to keep: re-run it that far from its start.
                    new_state = state if kept == 0 else launch(state, start, kept)[0]
                history.append(losses[:kept])
                if aux is not None:
                    aux_history.append(jtu.tree_map(lambda a, k=kept: np.asarray(a)[:k], aux))
                state, start = new_state, start + kept
                bar.update(kept)
                if kept:
                    bar.set_postfix(loss=f"{losses[:kept].mean():.4g}")
                if chunk_size is None:
                    # Across processes every one must run the same steps per call (each chunk's
                    # collectives pair up), so chunks double instead of following the clock.
                    grow = 2.0 if multi_process else CHUNK_SECONDS / max(elapsed, 1e-9)
                    num_steps = max(1, min(chunk_len, int(num_steps * min(grow, 10.0))))
        except KeyboardInterrupt:
            if path is not None:
                _write_checkpoint(path, snapshot(state))
            raise
    if path is not None and ran:
        _write_checkpoint(path, snapshot(state))

    if stop_reason == "non_finite" and warn:
        warnings.warn(
            f"{name} stopped: non-finite loss or state at step {nonfinite_step}; kept the state "
            f"before it (after {nonfinite_step - first_step} steps of this run)",
            RuntimeWarning,
            stacklevel=2,
        )
    losses = np.concatenate(history) if history else np.zeros(0)
    return TrainResult(
        state=state,
        best_state=best_state,
        losses=losses,
        aux=aux_so_far(),
        num_steps=len(losses),
        stop_reason=stop_reason,
        nonfinite_step=nonfinite_step,
        validation_steps=np.asarray(validation_steps, np.int64),
        validation_losses=np.asarray(validation_losses, np.float64),
        best_step=best_step,
        seconds=time.perf_counter() - started,
    )
