"""ArviZ export of particle filters (filtering and smoothing draws) and particle Gibbs.

Draws of states become a ``posterior`` variable with a ``time`` dimension; the
observation log densities $\\log g_t(y_t \\mid x_t)$ of a state-space model become
the pointwise ``log_likelihood`` (one observation per time step), so `arviz.loo` works
on smoothing and particle Gibbs draws (draws of the whole trajectory given every
observation). Everything goes through `probinf.diagnostics.to_inference_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from probinf.smc.resampling import _systematic

STATE_NAME = "x"
OBSERVATION_NAME = "y"


def state_space_model(model: Any) -> Any:
    """The `StateSpaceModel` inside a Feynman–Kac model (``Bootstrap`` / ``Guided`` hold it
    as ``ssm``, ``Auxiliary`` wraps another model), or ``None``."""
    for _ in range(8):  # wrappers nest a few levels at most
        if callable(getattr(model, "log_observation", None)):
            return model
        inner = getattr(model, "ssm", None)
        if inner is None:
            inner = getattr(model, "model", None)
        if inner is None:
            return None
        model = inner
    return None


def named_leaves(tree: Any, prefix: str) -> dict[str, Any]:
    """``{name: leaf}``: ``prefix`` for a single array, else ``prefix_<path>`` per leaf
    (dict keys, NamedTuple fields, sequence indices)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if len(leaves) == 1 and not leaves[0][0]:
        return {prefix: leaves[0][1]}
    named = {}
    for path, leaf in leaves:
        parts = []
        for entry in path:
            for attribute in ("key", "name", "idx"):
                if hasattr(entry, attribute):
                    parts.append(str(getattr(entry, attribute)))
                    break
        named["_".join([prefix, *parts])] = leaf
    return named


def observed_data_of(ssm: Any, num_steps: int) -> dict[str, np.ndarray]:
    """``{"y": observations}`` when the model holds ``observations`` with ``T`` rows."""
    observations = getattr(ssm, "observations", None)
    if observations is None or np.shape(observations)[:1] != (num_steps,):
        return {}
    return {OBSERVATION_NAME: np.asarray(observations)}


@eqx.filter_jit
def _trajectory_log_likelihood(ssm, states):
    """``(m, T)`` $\\log g_t(y_t \\mid x_t)$ for trajectories with leaves ``(m, T, ...)``."""
    num_steps = jax.tree.leaves(states)[0].shape[1]

    def at(t):
        return ssm.log_observation(t, jax.tree.map(lambda leaf: leaf[:, t], states))

    return jax.lax.map(at, jnp.arange(num_steps)).T


def trajectory_log_likelihood(ssm: Any, states: Any) -> np.ndarray:
    """Pointwise log likelihood of trajectories with leaves ``(chains, draws, T, ...)``:
    ``(chains, draws, T)``."""
    chains, draws = jax.tree.leaves(states)[0].shape[:2]
    flat = jax.tree.map(lambda leaf: jnp.reshape(leaf, (chains * draws, *leaf.shape[2:])), states)
    values = np.asarray(_trajectory_log_likelihood(ssm, flat), np.float64)
    return values.reshape(chains, draws, -1)


@eqx.filter_jit
def _filtering_draws(key, states, log_weights, num_draws):
    """Per step, ``num_draws`` states resampled from the filtering weights (systematic,
    then shuffled): leaves ``(num_draws, T, ...)``."""
    num_steps = log_weights.shape[0]

    def at(t):
        key_pick, key_shuffle = jax.random.split(jax.random.fold_in(key, t))
        ancestors = jax.random.permutation(key_shuffle, _systematic(key_pick, log_weights[t], num_draws))
        return jax.tree.map(lambda leaf: leaf[t][ancestors], states)

    per_step = jax.lax.map(at, jnp.arange(num_steps))
    return jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), per_step)


def _runs(result: Any) -> list[Any]:
    """A batch of runs (``jax.vmap`` over keys) as a list of single runs."""
    if np.ndim(result.log_evidence) == 0:
        return [result]
    count = int(np.shape(result.log_evidence)[0])
    return [jax.tree.map(lambda leaf, i=i: leaf[i], result) for i in range(count)]


def filter_inference_data(result: Any, key: Any, model: Any, *, smoothing: bool,
                          num_draws: int | None, observed_data: Mapping[str, Any] | None):
    """See `probinf.smc.FilterResult.to_inference_data`."""
    from probinf.diagnostics import to_inference_data
    from probinf.smc.feynman_kac import backward_sampling
    from probinf.validation import check_positive_int

    if not callable(getattr(model, "states", None)):
        raise TypeError(f"`model` must be the FeynmanKac model that was filtered, got "
                        f"{type(model).__name__}")
    runs = _runs(result)
    for run in runs:
        run.check()
    num_particles = int(np.shape(runs[0].log_weights)[-1])
    num_draws = num_particles if num_draws is None else check_positive_int(num_draws, "num_draws")
    if smoothing and result.history is None:
        raise ValueError("smoothing draws need the filter's history: run "
                         "particle_filter(..., store_history=True)")
    per_run = []
    for index, run in enumerate(runs):
        run_key = jax.random.fold_in(key, index)
        if smoothing:
            trajectories = backward_sampling(run_key, model, run, num_draws)  # (T, m, ...)
            per_run.append(jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), trajectories))
        elif run.history is not None:
            states = jax.vmap(model.states)(run.history.particles)
            per_run.append(_filtering_draws(run_key, states, run.history.log_weights, num_draws))
        else:  # the last step's cloud only
            states = model.states(run.particles)
            pick = _filtering_draws(run_key, jax.tree.map(lambda leaf: leaf[None], states),
                                    run.log_weights[None], num_draws)
            per_run.append(jax.tree.map(lambda leaf: leaf[:, 0], pick))
    draws = jax.tree.map(lambda *leaves: np.stack([np.asarray(v) for v in leaves]), *per_run)
    samples = named_leaves(draws, STATE_NAME)
    timed = smoothing or result.history is not None
    dims = {name: ["time"] for name in samples} if timed else {}
    stats = {
        "log_evidence": (("chain",), np.stack([np.asarray(r.log_evidence) for r in runs])),
        "log_evidence_increment": (("chain", "time"),
                                   np.stack([np.asarray(r.log_evidence_increments) for r in runs])),
        "ess": (("chain", "time"), np.stack([np.asarray(r.ess) for r in runs])),
        "resampled": (("chain", "time"), np.stack([np.asarray(r.resampled) for r in runs])),
    }
    groups: dict[str, Any] = {}
    ssm = state_space_model(model)
    num_steps = int(np.shape(runs[0].ess)[0])
    if smoothing and ssm is not None:
        groups["log_likelihood"] = {OBSERVATION_NAME: trajectory_log_likelihood(ssm, draws)}
        dims[OBSERVATION_NAME] = ["time"]
    observed = dict(observed_data) if observed_data is not None else (
        observed_data_of(ssm, num_steps) if ssm is not None else {})
    if observed:
        groups["observed_data"] = observed
        dims.setdefault(OBSERVATION_NAME, ["time"])
    idata = to_inference_data(samples, sample_stats=stats, dims=dims, **groups)
    idata.posterior.attrs["draws"] = ("smoothing: trajectories by backward sampling" if smoothing
                                      else "filtering: states resampled per step from p(x_t | y_0:t)"
                                      if timed else "filtering: the last step's cloud, resampled")
    return idata


def particle_gibbs_inference_data(result: Any, build_model: Callable | None, *, burn_in: int,
                                  observed_data: Mapping[str, Any] | None):
    """See `probinf.smc.ParticleGibbsResult.to_inference_data`."""
    from probinf.diagnostics import to_inference_data

    result.check()
    failure = np.asarray(result.failure)
    batched = failure.ndim == 2
    iterations = failure.shape[-1]
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) \
            or not 0 <= burn_in < iterations:
        raise ValueError(f"`burn_in` must be an integer in [0, {iterations}) (the iterations), "
                         f"got {burn_in!r}")

    def kept(leaf):
        leaf = np.asarray(leaf)
        leaf = leaf if batched else leaf[None]
        return leaf[:, burn_in:]

    parameters = jax.tree.map(kept, result.parameters)
    states = jax.tree.map(kept, result.trajectories)
    samples = {**named_leaves(parameters, "theta"), **named_leaves(states, STATE_NAME)}
    if len(samples) != len(jax.tree.leaves(parameters)) + len(jax.tree.leaves(states)):
        raise ValueError("parameter and state names collide; name the parameters' pytree leaves "
                         f"differently from {sorted(named_leaves(states, STATE_NAME))}")
    dims = {name: ["time"] for name in named_leaves(states, STATE_NAME)}
    groups: dict[str, Any] = {}
    if build_model is not None:
        if not callable(build_model):
            raise TypeError(f"`build_model` must be callable, got {type(build_model).__name__}")
        if state_space_model(build_model(jax.tree.map(lambda leaf: leaf[0, 0], parameters))) is None:
            raise ValueError("`build_model(theta)` holds no StateSpaceModel (with log_observation), so "
                             "there is no observation density to score: pass build_model=None")
        groups["log_likelihood"] = {
            OBSERVATION_NAME: np.asarray(_gibbs_log_likelihood(build_model, parameters, states),
                                         np.float64)}
        dims[OBSERVATION_NAME] = ["time"]
    if observed_data:
        groups["observed_data"] = dict(observed_data)
        dims.setdefault(OBSERVATION_NAME, ["time"])
    stats = {"failure": failure.reshape(-1, iterations)[:, burn_in:]}
    return to_inference_data(samples, sample_stats=stats, dims=dims, **groups)


@eqx.filter_jit
def _gibbs_log_likelihood(build_model, parameters, states):
    """``(chains, draws, T)``: $\\log g_t(y_t \\mid x_t, \\theta)$ with the model each draw's
    parameters build."""
    def one(theta, trajectory):
        ssm = state_space_model(build_model(theta))
        num_steps = jax.tree.leaves(trajectory)[0].shape[0]

        def at(t):
            return ssm.log_observation(t, jax.tree.map(lambda leaf: leaf[t][None], trajectory))[0]

        return jax.lax.map(at, jnp.arange(num_steps))

    return jax.vmap(jax.vmap(one))(parameters, states)
