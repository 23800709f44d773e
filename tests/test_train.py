"""probinf.train: the engine against exact answers.

Gradient descent on least squares against its closed-form iterates and the normal equations;
the non-finite policy at a known step (the state before it, bit for bit); checkpoints that
resume (also after an interrupt) to the uninterrupted result bit for bit; minibatch epochs that
use each row once; early stopping on a known validation sequence; and no compilation on a
second call with the same shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probinf import train

RNG = np.random.default_rng(0)
X = RNG.normal(size=(48, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -2.0, 0.5]) + 0.3 * RNG.normal(size=48)).astype(np.float32)
SGD = optax.sgd(0.05)
ADAM = optax.adam(0.05)


def squared_error(params, key, batch):
    x, y = batch
    return jnp.mean((x @ params - y) ** 2)


def squared_error_nan_at(params, key, batch, step):
    """The least-squares loss, NaN at step 7 (NaN * 0 keeps the gradient NaN too)."""
    loss = squared_error(params, key, batch)
    return loss + jnp.where(step == 7, jnp.nan, 0.0) * loss


def _leaves_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_full_batch_gradient_descent_follows_the_closed_form_iterates():
    """theta_t = theta* + (I - 2 eta X'X / n)^t (theta_0 - theta*) for the mean squared error."""
    steps, eta = 60, 0.05
    result = train.run(train.make_step(squared_error, SGD), train.init(jnp.zeros(3), SGD),
                       jax.random.key(0), steps=steps, data=(X, Y), progress=False)
    x, y = X.astype(np.float64), Y.astype(np.float64)
    optimum = np.linalg.solve(x.T @ x, x.T @ y)
    contraction = np.eye(3) - 2 * eta * x.T @ x / len(x)
    expected = optimum + np.linalg.matrix_power(contraction, steps) @ (np.zeros(3) - optimum)
    np.testing.assert_allclose(result.params, expected, rtol=1e-5, atol=1e-6)
    assert result.stop_reason == "completed" and result.num_steps == steps == int(result.state.step)
    # The recorded loss of step t is the loss at theta_t (before the update).
    theta = np.zeros(3)
    for t in (0, 1):
        np.testing.assert_allclose(result.losses[t], np.mean((x @ theta - y) ** 2), rtol=1e-5)
        theta = optimum + contraction @ (theta - optimum)
    long = train.run(train.make_step(squared_error, SGD), train.init(jnp.zeros(3), SGD),
                     jax.random.key(0), steps=2000, data=(X, Y), progress=False)
    np.testing.assert_allclose(long.params, optimum, rtol=1e-5, atol=1e-5)


def test_iterate_average_is_the_mean_then_the_moving_average_of_the_closed_form_iterates():
    """With SGD the iterates are known in closed form; the wrapper's average must be their
    plain mean for the first `horizon` updates, then the exponential moving average."""
    steps, eta, horizon = 50, 0.05, 20
    averaged = train.iterate_average(SGD, horizon)
    assert train.iterate_average(SGD, horizon) is averaged  # cached: compiled loops are reused
    result = train.run(train.make_step(squared_error, averaged),
                       train.init(jnp.zeros(3), averaged), jax.random.key(0), steps=steps,
                       data=(X, Y), progress=False)
    x, y = X.astype(np.float64), Y.astype(np.float64)
    theta, iterates = np.zeros(3), []
    for _ in range(steps):
        theta = theta - eta * 2 * x.T @ (x @ theta - y) / len(x)
        iterates.append(theta)
    mean = np.mean(iterates[:horizon], axis=0)
    for theta_t in iterates[horizon:]:
        mean = mean + (theta_t - mean) / horizon
    np.testing.assert_allclose(result.state.opt_state.average, mean, rtol=1e-5, atol=1e-6)
    # Long after converging, gradient descent is ahead of both averages (the slower lags
    # more); SGD on single rows fluctuates around the optimum, away from them.
    converged = train.run(train.make_step(squared_error, averaged),
                          train.init(jnp.zeros(3), averaged), jax.random.key(0), steps=400,
                          data=(X, Y), progress=False)
    assert not train.fluctuates(converged.state.opt_state, converged.params)
    noisy = train.run(train.make_step(squared_error, averaged),
                      train.init(jnp.zeros(3), averaged), jax.random.key(0), epochs=10,
                      batch_size=1, data=(X, Y), progress=False)
    assert train.fluctuates(noisy.state.opt_state, noisy.params)
    np.testing.assert_allclose(result.params, theta, rtol=1e-5, atol=1e-6)  # the trajectory is SGD's
    assert int(result.state.opt_state.count) == steps
    with pytest.raises(ValueError, match="`horizon`"):
        train.iterate_average(SGD, 0)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_non_finite_step_stops_with_the_state_before_it(chunk_size):
    step = train.make_step(squared_error_nan_at, SGD, step_index=True)
    state = train.init(jnp.zeros(3), SGD)
    with pytest.warns(RuntimeWarning, match="non-finite loss or state at step 7"):
        result = train.run(step, state, jax.random.key(0), steps=20, data=(X, Y),
                           chunk_size=chunk_size, progress=False)
    assert result.stop_reason == "non_finite" and result.nonfinite_step == 7
    assert result.num_steps == 7 and np.isfinite(result.losses).all()
    clean = train.run(train.make_step(squared_error, SGD), state, jax.random.key(0), steps=7,
                      data=(X, Y), progress=False)
    _leaves_equal(result.state, clean.state)
    np.testing.assert_array_equal(result.losses, clean.losses)


def test_non_finite_first_step_keeps_the_initial_state():
    def broken(params, key, batch):
        return jnp.sum(params) * jnp.nan

    state = train.init(jnp.ones(3), SGD)
    with pytest.warns(RuntimeWarning, match="step 0"):
        result = train.run(train.make_step(broken, SGD), state, jax.random.key(0), steps=5, progress=False)
    assert result.num_steps == 0 and result.nonfinite_step == 0
    _leaves_equal(result.state, state)
    result = train.run(train.make_step(broken, SGD), state, jax.random.key(0), steps=5, progress=False,
                       warn=False)  # the caller reports instead
    assert result.stop_reason == "non_finite"


def root_of_distance_to(target):
    """sqrt|x - target| summed: finite everywhere, its gradient infinite at x = target."""
    return lambda params, key, batch: jnp.sum(jnp.sqrt(jnp.abs(params - target)))


@pytest.mark.parametrize("optimizer", [SGD, ADAM, optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05))],
                         ids=["sgd", "adam", "clipped-adam"])
def test_a_finite_loss_with_an_infinite_gradient_stops_at_that_step(optimizer):
    # Started at the kink of sqrt|x - 1|: the loss is finite (0), the gradient infinite, and
    # the update makes the parameters non-finite (SGD: -inf; Adam, clipping: inf/inf = NaN),
    # so step 0 stops and the initial state is kept.
    state = train.init(jnp.ones(2), optimizer)
    with pytest.warns(RuntimeWarning, match="step 0"):
        result = train.run(train.make_step(root_of_distance_to(1.0), optimizer), state, jax.random.key(0),
                           steps=5, progress=False)
    assert result.stop_reason == "non_finite" and result.nonfinite_step == 0 and result.num_steps == 0
    _leaves_equal(result.state, state)


def test_an_optimizer_that_skips_non_finite_updates_keeps_training():
    # optax.apply_if_finite drops the update of an infinite gradient: the parameters stay
    # finite, so the run goes on (the gradient itself is not the engine's concern).
    optimizer = optax.apply_if_finite(SGD, max_consecutive_errors=100)
    state = train.init(jnp.ones(2), optimizer)
    result = train.run(train.make_step(root_of_distance_to(1.0), optimizer), state, jax.random.key(0),
                       steps=5, progress=False)
    assert result.stop_reason == "completed" and result.num_steps == 5
    np.testing.assert_array_equal(result.params, np.ones(2))


def row_ids(params, key, batch):
    return jnp.sum(params) * 0.0, batch


def test_minibatch_epochs_use_each_row_once():
    """10 rows in batches of 3: each epoch uses 9 distinct rows (the leftover row differs),
    in the order of the documented permutation fold_in(fold_in(key, SHUFFLE_STREAM), epoch)."""
    ids = jnp.arange(10)
    key = jax.random.key(3)
    result = train.run(train.make_step(row_ids, SGD), train.init(jnp.zeros(1), SGD), key, epochs=4,
                       data=ids, batch_size=3, progress=False)
    seen = result.aux.reshape(4, 9)
    assert result.num_steps == 12
    for epoch in range(4):
        assert len(set(seen[epoch].tolist())) == 9
        order = jax.random.permutation(
            jax.random.fold_in(jax.random.fold_in(key, train.SHUFFLE_STREAM), epoch), 10)
        np.testing.assert_array_equal(seen[epoch], np.asarray(order)[:9])
    assert len({tuple(row) for row in seen.tolist()}) == 4  # a fresh order every epoch
    # Chunking changes nothing: one step per compiled call gives the same batches.
    one_by_one = train.run(train.make_step(row_ids, SGD), train.init(jnp.zeros(1), SGD), key, epochs=4,
                           data=ids, batch_size=3, chunk_size=1, progress=False)
    np.testing.assert_array_equal(one_by_one.aux, result.aux)


def test_typed_and_raw_keys_give_the_same_run():
    runs = [train.run(train.make_step(squared_error, ADAM), train.init(jnp.zeros(3), ADAM), key,
                      steps=30, data=(X, Y), batch_size=8, progress=False)
            for key in (jax.random.key(5), jax.random.PRNGKey(5))]
    _leaves_equal(runs[0].state, runs[1].state)


class Counter:
    """A non-gradient step (the shape of EM): params counts the steps taken."""

    def __call__(self, state, key, batch):
        params = state.params + 1.0
        return state._replace(params=params, step=state.step + 1), train.StepInfo(params, jnp.array(True))

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, Counter)


def scripted_validation(params, table):
    return table[params.astype(jnp.int32)]


def test_early_stopping_on_a_known_validation_sequence():
    """Validated every 2 steps: values 5, 4, 3, 3.5, 2.95, 3.2, 3.1, ... with min_delta=0.1 and
    patience 3: 2.95 is the best value (kept) but not an improvement that resets the count."""
    table = jnp.full(100, 9.0).at[jnp.arange(2, 16, 2)].set(
        jnp.array([5.0, 4.0, 3.0, 3.5, 2.95, 3.2, 3.1]))
    state = train.TrainState(jnp.asarray(0.0), None, jnp.asarray(0, jnp.int32))
    result = train.run(Counter(), state, jax.random.key(0), steps=90, validate=scripted_validation,
                       validation_data=table, validate_every=2, patience=3, min_delta=0.1, progress=False)
    assert result.stop_reason == "early_stopping"
    np.testing.assert_array_equal(result.validation_steps, [2, 4, 6, 8, 10, 12])
    np.testing.assert_allclose(result.validation_losses, [5.0, 4.0, 3.0, 3.5, 2.95, 3.2])
    assert result.best_step == 10 and float(result.best_state.params) == 10.0 == float(result.params)
    assert float(result.state.params) == 12.0 and result.num_steps == 12


def test_successive_patience_stops_after_that_many_rises_in_a_row():
    """Values 5, 4, 4.5, 4.2, 4.4, 4.6, 4.8, ...: rises at 6 (reset by the fall at 8), then at 10,
    12, 14: three in a row stop the run at step 14 (Prechelt's UP_3); the best is still step 4."""
    table = jnp.full(100, 9.0).at[jnp.arange(2, 16, 2)].set(
        jnp.array([5.0, 4.0, 4.5, 4.2, 4.4, 4.6, 4.8]))
    state = train.TrainState(jnp.asarray(0.0), None, jnp.asarray(0, jnp.int32))
    result = train.run(Counter(), state, jax.random.key(0), steps=90, validate=scripted_validation,
                       validation_data=table, validate_every=2, patience=3,
                       patience_rule="successive", progress=False)
    assert result.stop_reason == "early_stopping"
    np.testing.assert_array_equal(result.validation_steps, [2, 4, 6, 8, 10, 12, 14])
    assert result.best_step == 4 and float(result.state.params) == 14.0
    with pytest.raises(ValueError, match="`patience_rule`"):
        train.run(Counter(), state, jax.random.key(0), steps=9, validate=scripted_validation,
                  validation_data=table, patience=3, patience_rule="up")


class StopAfter:
    """A stopping rule: stop once 23 losses have been seen, keeping exactly 23 steps."""

    reason = "enough"

    def __init__(self):
        self.seen = 0

    def update(self, losses):
        if self.seen + len(losses) >= 23:
            return 23 - self.seen
        self.seen += len(losses)
        return None


def test_stop_rule_keeps_the_state_at_the_step_it_names():
    state = train.TrainState(jnp.asarray(0.0), None, jnp.asarray(0, jnp.int32))
    result = train.run(Counter(), state, jax.random.key(0), steps=100, stop_rule=StopAfter(),
                       chunk_size=10, progress=False)
    assert result.stop_reason == "enough" and result.num_steps == 23
    assert float(result.state.params) == 23.0 and int(result.state.step) == 23


def test_a_state_a_stop_rule_ends_on_is_validated_and_can_be_the_best():
    """Stopped at step 24 (chunks of 8 from 0, the rule keeps all of 16..24): the validations
    every 4 steps include step 24, whose value is the best of the table."""
    table = jnp.full(100, 9.0).at[24].set(1.0)
    state = train.TrainState(jnp.asarray(0.0), None, jnp.asarray(0, jnp.int32))

    class StopAt24:
        reason = "enough"

        def update(self, losses):
            self.seen = getattr(self, "seen", 0) + len(losses)
            return len(losses) if self.seen >= 24 else None

    result = train.run(Counter(), state, jax.random.key(0), steps=90, validate=scripted_validation,
                       validation_data=table, validate_every=4, stop_rule=StopAt24(), chunk_size=8,
                       progress=False)
    assert result.stop_reason == "enough" and result.num_steps == 24
    np.testing.assert_array_equal(result.validation_steps, [4, 8, 12, 16, 20, 24])
    assert result.best_step == 24 and float(result.params) == 24.0


def test_time_limit_stops_after_the_chunk_that_spends_it():
    state = train.TrainState(jnp.asarray(0.0), None, jnp.asarray(0, jnp.int32))
    limit = train.TimeLimit(1e-9)  # already spent when the first chunk ends
    assert limit.remaining < 0
    result = train.run(Counter(), state, jax.random.key(0), steps=90, stop_rule=limit, chunk_size=5,
                       progress=False)
    assert result.stop_reason == "time_limit" and result.num_steps == 5
    assert train.TimeLimit(60).update(np.zeros(3)) is None
    for bad in (0, -1.0, float("nan"), float("inf"), True, "10"):
        with pytest.raises(ValueError, match="`seconds`"):
            train.TimeLimit(bad)


def _options(**extra):
    return dict(data=(X, Y), batch_size=8, validate=lambda p, d: squared_error(p, None, d),
                validation_data=(X[:16], Y[:16]), validate_every=6, progress=False, **extra)


def test_checkpoint_resume_is_bit_exact(tmp_path):
    step, state, key = train.make_step(squared_error, ADAM), train.init(jnp.zeros(3), ADAM), jax.random.key(1)
    full = train.run(step, state, key, steps=40, **_options())
    path = tmp_path / "run.ckpt"
    first = train.run(step, state, key, steps=17, checkpoint=path, checkpoint_every=5, **_options())
    assert train.load_checkpoint(path)["step"] == 17 == first.num_steps
    resumed = train.run(step, state, key, steps=40, checkpoint=path, resume=True, **_options())
    for field in ("state", "best_state"):
        _leaves_equal(getattr(resumed, field), getattr(full, field))
    np.testing.assert_array_equal(resumed.losses, full.losses)
    np.testing.assert_array_equal(resumed.validation_losses, full.validation_losses)
    assert resumed.best_step == full.best_step
    _leaves_equal(train.load_checkpoint(path)["state"], full.state)
    with pytest.raises(ValueError, match="key"):
        train.run(step, state, jax.random.key(2), steps=40, checkpoint=path, resume=True, **_options())
    with pytest.raises(ValueError, match="other settings: lr=None there, 0.1 now"):
        train.run(step, state, key, steps=40, checkpoint=path, resume=True, checkpoint_meta={"lr": 0.1},
                  **_options())


class InterruptAt:
    """A stopping rule that presses Ctrl-C once the run has passed ``step`` steps."""

    def __init__(self, step):
        self.step, self.seen = step, 0

    def update(self, losses):
        self.seen += len(losses)
        if self.seen >= self.step:
            raise KeyboardInterrupt
        return None


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    step, state, key = train.make_step(squared_error, ADAM), train.init(jnp.zeros(3), ADAM), jax.random.key(1)
    full = train.run(step, state, key, steps=40, **_options())
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train.run(step, state, key, steps=40, checkpoint=path, stop_rule=InterruptAt(20), chunk_size=4,
                  **_options())
    # Chunks of 4 cut at the validations every 6 steps end at 4, 6, 10, 12, 16, 18, 22: the
    # interrupt at 22 leaves the state after the last finished chunk, 18.
    assert train.load_checkpoint(path)["step"] == 18
    resumed = train.run(step, state, key, steps=40, checkpoint=path, resume=True, **_options())
    _leaves_equal(resumed.state, full.state)
    np.testing.assert_array_equal(resumed.losses, full.losses)




def test_a_second_call_with_the_same_shapes_compiles_nothing(record_compilations):
    def fit(seed):
        return train.run(train.make_step(squared_error), train.init(jnp.zeros(3)), jax.random.key(seed),
                         steps=50, data=(X, Y), batch_size=8, validate=squared_error_validation,
                         validation_data=(X[:16], Y[:16]), progress=False)

    fit(0)
    with record_compilations() as compiled:
        fit(1)
    assert compiled == []
    assert train.make_step(squared_error) == train.make_step(squared_error, train.DEFAULT_OPTIMIZER)


def squared_error_validation(params, batch):
    return squared_error(params, None, batch)


def test_bad_input_is_rejected(tmp_path):
    step, state = train.make_step(squared_error, SGD), train.init(jnp.zeros(3), SGD)
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="key"):
        train.run(step, state, 0, steps=2)
    with pytest.raises(TypeError, match="state"):
        train.run(step, jnp.zeros(3), key, steps=2)
    with pytest.raises(ValueError, match="steps"):
        train.run(step, state, key, steps=0)
    with pytest.raises(ValueError, match="exactly one of `steps` and `epochs`"):
        train.run(step, state, key, steps=2, epochs=2, data=(X, Y), batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        train.run(step, state, key, steps=2, data=(X, Y), batch_size=49)
    with pytest.raises(ValueError, match="rows"):
        train.run(step, state, key, steps=2, data=(X, Y[:5]), batch_size=4)
    with pytest.raises(ValueError, match="patience"):
        train.run(step, state, key, steps=2, patience=3)
    with pytest.raises(ValueError, match="checkpoint"):
        train.run(step, state, key, steps=2, checkpoint_every=1)
    with pytest.raises(ValueError, match="does not exist"):
        train.run(step, state, key, steps=2, checkpoint=tmp_path / "none", resume=True)
    with pytest.raises(TypeError, match="optimizer"):
        train.make_step(squared_error, "adam")
    with pytest.raises(TypeError, match="StepInfo"):
        train.run(lambda s, k, b: (s, 0.0), state, key, steps=2, progress=False)
    with pytest.raises(TypeError, match="loss_fn"):
        train.run(train.make_step(lambda p, k, b: p, SGD), state, key, steps=2, progress=False)
    with pytest.raises(ValueError, match="nothing to train"):
        train.init(jnp.arange(3), SGD)
