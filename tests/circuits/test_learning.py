"""EM and gradient training against hand-written EM and closed-form maximum likelihood."""

import gzip

import jax
import numpy as np
import optax
import pytest
from scipy import special

import circuits
from circuits.region_graph import RegionGraph


def latent_class_graph(num_variables):
    """One partition of the root into singletons: with CP, a mixture of product distributions."""
    regions = [tuple(range(num_variables))] + [(v,) for v in range(num_variables)]
    return RegionGraph(num_variables, regions, [(0, tuple(range(1, num_variables + 1)))])


@pytest.fixture(scope="module")
def binary_data():
    rng = np.random.default_rng(0)
    centres = rng.random((3, 8))
    labels = rng.integers(0, 3, 300)
    return (rng.random((300, 8)) < centres[labels]).astype(np.int8)


def hand_em_step(weights, probs, data, alpha, per="child"):
    """One EM step for a mixture of product Bernoullis, written out by hand (float64).

    ``per="child"``: ``alpha`` on every count; ``"node"``: ``alpha`` per distribution,
    ``alpha / C`` on each of its ``C`` counts (Juice.jl's rule)."""
    x = data.astype(np.float64)
    log_lik = x @ np.log(probs) + (1 - x) @ np.log1p(-probs) + np.log(weights)  # (N, K)
    resp = np.exp(log_lik - special.logsumexp(log_lik, axis=1, keepdims=True))
    weight_alpha = alpha if per == "child" else alpha / len(weights)
    value_alpha = alpha if per == "child" else alpha / 2
    new_weights = (resp.sum(0) + weight_alpha) / (len(x) + len(weights) * weight_alpha)
    new_probs = (x.T @ resp + value_alpha) / (resp.sum(0) + 2 * value_alpha)
    return new_weights, new_probs


def test_one_em_step_equals_hand_written_em_for_a_latent_class_model(binary_data):
    circuit = circuits.compile_circuit(latent_class_graph(8), circuits.Bernoulli(), 3,
                                       key=jax.random.key(1))
    weights = np.exp(np.asarray(circuit.log_weights()[0][0][0, 0], np.float64))
    probs = special.expit(np.asarray(circuit.input_params["logits"], np.float64))  # (V, K)
    for alpha, per in ((0.0, "child"), (0.5, "child"), (3.0, "node")):
        expected_w, expected_p = hand_em_step(weights, probs, binary_data, alpha, per)
        result = circuits.em(circuit, binary_data, num_epochs=1, pseudocount=alpha,
                             pseudocount_per=per, progress=False)
        fitted = result.circuit
        np.testing.assert_allclose(np.exp(np.asarray(fitted.log_weights()[0][0][0, 0])),
                                   expected_w, rtol=2e-4)
        np.testing.assert_allclose(special.expit(np.asarray(fitted.input_params["logits"])),
                                   expected_p, rtol=2e-4, atol=1e-6)


def test_one_gaussian_em_step_equals_hand_written_em():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(-2, 0.5, (60, 3)), rng.normal(1.5, 1.0, (90, 3))])
    circuit = circuits.compile_circuit(latent_class_graph(3), circuits.Gaussian(), 2,
                                       key=jax.random.key(2), data=data)
    w = np.exp(np.asarray(circuit.log_weights()[0][0][0, 0], np.float64))
    loc = np.asarray(circuit.input_params["loc"], np.float64)
    scale = np.exp(np.asarray(circuit.input_params["log_scale"], np.float64))
    from scipy import stats

    log_lik = stats.norm.logpdf(data[:, :, None], loc[None], scale[None]).sum(1) + np.log(w)
    resp = np.exp(log_lik - special.logsumexp(log_lik, axis=1, keepdims=True))
    count = resp.sum(0)
    mean = data.T @ resp / count
    var = (data.T**2) @ resp / count - mean**2
    fitted = circuits.em(circuit, data, num_epochs=1, pseudocount=0.0, progress=False).circuit
    np.testing.assert_allclose(np.asarray(fitted.input_params["loc"]), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.exp(2 * np.asarray(fitted.input_params["log_scale"])), var,
                               rtol=1e-3)
    np.testing.assert_allclose(np.exp(np.asarray(fitted.log_weights()[0][0][0, 0])),
                               count / len(data), rtol=1e-4)


@pytest.mark.parametrize("graph", [
    lambda: circuits.random_binary_tree(jax.random.key(0), 8, depth=2, num_repetitions=2),
    lambda: circuits.quad_graph(2, 4),
], ids=["rbt-cp", "quadgraph-with-mixing"])
def test_full_batch_em_never_decreases_the_training_log_likelihood(graph, binary_data):
    circuit = circuits.compile_circuit(graph(), circuits.Bernoulli(), 3, key=jax.random.key(3))
    result = circuits.em(circuit, binary_data, num_epochs=12, pseudocount=0.0, progress=False)
    history = np.append(result.train_log_likelihood, result.final_train_log_likelihood)
    # float32 accumulation over 300 rows: allow 1e-5 nats per sample of rounding.
    assert np.all(np.diff(history) >= -1e-5), np.diff(history)
    assert history[-1] > history[0] + 0.1
    assert result.stop_reason == "completed" and result.num_epochs == 12


def test_mini_batch_em_with_one_batch_is_full_batch_em_blended_by_the_step_size(binary_data):
    graph = circuits.quad_graph(2, 4)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 2, key=jax.random.key(4))
    full = circuits.em(circuit, binary_data, num_epochs=1, pseudocount=0.1,
                       progress=False).circuit
    step = 0.3
    mini = circuits.em(circuit, binary_data, num_epochs=1, batch_size=len(binary_data),
                       step_size=step, pseudocount=0.1, key=jax.random.key(0),
                       progress=False).circuit
    for old, new, got in zip(circuit.log_weights()[0], full.log_weights()[0],
                             mini.log_weights()[0], strict=True):
        expected = (1 - step) * np.exp(np.asarray(old)) + step * np.exp(np.asarray(new))
        np.testing.assert_allclose(np.exp(np.asarray(got)), expected, rtol=1e-4, atol=1e-7)
    expected = ((1 - step) * special.expit(np.asarray(circuit.input_params["logits"]))
                + step * special.expit(np.asarray(full.input_params["logits"])))
    np.testing.assert_allclose(special.expit(np.asarray(mini.input_params["logits"])), expected,
                               rtol=1e-4)


def test_em_and_gradient_training_reach_the_closed_form_mle_of_a_product_model(binary_data):
    # With one unit per region every sum has a single input: the circuit is a product of
    # Bernoullis, whose maximum-likelihood estimate is the data mean of each variable.
    graph = circuits.random_binary_tree(jax.random.key(5), 8, depth=2)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 1, key=jax.random.key(6))
    mean = binary_data.mean(0)
    alpha = 0.2
    fitted = circuits.em(circuit, binary_data, num_epochs=1, pseudocount=alpha,
                         progress=False).circuit
    expected = (binary_data.sum(0) + alpha) / (len(binary_data) + 2 * alpha)
    probs = special.expit(np.asarray(fitted.input_params["logits"]))[:, 0]
    np.testing.assert_allclose(probs, expected[circuit.structure.slot_variable], rtol=1e-5)
    result = circuits.fit_gradient(circuit, binary_data, optax.adam(0.1), key=jax.random.key(7),
                                   num_epochs=200, batch_size=300, progress=False)
    probs = special.expit(np.asarray(result.circuit.input_params["logits"]))[:, 0]
    np.testing.assert_allclose(probs, mean[circuit.structure.slot_variable], atol=2e-3)
    entropy = -np.sum(mean * np.log(mean) + (1 - mean) * np.log1p(-mean))
    assert result.final_train_log_likelihood == pytest.approx(-entropy, abs=1e-4)


def test_gradient_training_of_an_unnormalised_circuit_divides_by_z(binary_data):
    graph = circuits.random_binary_tree(jax.random.key(5), 8, depth=2)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 1, key=jax.random.key(6))
    circuit = circuit.with_params(sum_logits=tuple(w + 3.0 for w in circuit.sum_logits),
                                  normalized=False)
    result = circuits.fit_gradient(circuit, binary_data, optax.adam(0.1), key=jax.random.key(7),
                                   num_epochs=200, batch_size=300, progress=False)
    mean = binary_data.mean(0)
    entropy = -np.sum(mean * np.log(mean) + (1 - mean) * np.log1p(-mean))
    assert result.final_train_log_likelihood == pytest.approx(-entropy, abs=1e-4)


def test_non_finite_training_is_reported_and_its_update_discarded(binary_data):
    graph = circuits.random_binary_tree(jax.random.key(5), 8, depth=2)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 2, key=jax.random.key(6))
    result = circuits.fit_gradient(circuit, binary_data, optax.scale(float("nan")), key=jax.random.key(0),
                                   num_epochs=3, batch_size=100, progress=False)
    assert result.stop_reason.startswith("stopped at epoch 0")
    assert result.num_epochs == 0
    assert np.isfinite(result.final_train_log_likelihood)


def test_validation_history_and_keep_best(binary_data):
    graph = circuits.quad_graph(2, 4)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 2, key=jax.random.key(8))
    result = circuits.em(circuit, binary_data[:200], num_epochs=4, batch_size=50, step_size=0.5,
                         key=jax.random.key(1), valid=binary_data[200:], progress=False)
    assert result.valid_log_likelihood.shape == (4,)
    best = circuits.average_log_likelihood(result.circuit, binary_data[200:])
    assert best == pytest.approx(result.valid_log_likelihood.max(), abs=1e-5)


@pytest.mark.parametrize("entropy_reg", [0.0, 0.01])
def test_pseudocount_per_node_is_alpha_over_the_fan_out_when_every_unit_has_two_children(
        binary_data, entropy_reg):
    # CP layers of 2 units over a quad graph: every sum, every mixing unit (2 partitions
    # per mixed region) and every Bernoulli input has two children, so spreading alpha
    # over the children is adding alpha / 2 to each, in both M-steps.
    graph = circuits.quad_graph(2, 3)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 2, "cp", key=jax.random.key(0))
    assert all(shape[-1] == 2 for shape in circuit.structure.sum_shapes())
    mixing = [m for _, m in circuit.structure.stages if m is not None]
    assert mixing and all(np.all(np.asarray(m.valid).sum(-1) == 2) for m in mixing)
    data = binary_data[:, : graph.num_variables]
    node = circuits.em(circuit, data, num_epochs=2, pseudocount=0.6, pseudocount_per="node",
                       entropy_reg=entropy_reg, progress=False).circuit
    child = circuits.em(circuit, data, num_epochs=2, pseudocount=0.3, pseudocount_per="child",
                        entropy_reg=entropy_reg, progress=False).circuit
    for a, b in zip(jax.tree_util.tree_leaves(node), jax.tree_util.tree_leaves(child), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kwargs, message", [
    ({"step_size": 0.0}, "step_size"),
    ({"pseudocount": -1.0}, "pseudocount"),
    ({"pseudocount_per": "unit"}, "pseudocount_per"),
    ({"num_epochs": 0}, "num_epochs"),
    ({"batch_size": 10}, "`key` is required"),
])
def test_em_arguments_are_checked(kwargs, message, binary_data):
    circuit = circuits.compile_circuit(latent_class_graph(8), circuits.Bernoulli(), 2,
                                       key=jax.random.key(0))
    with pytest.raises(ValueError, match=message):
        circuits.em(circuit, binary_data, progress=False, **kwargs)


def test_em_rejects_unnormalised_circuits_and_bad_data(binary_data):
    circuit = circuits.compile_circuit(latent_class_graph(8), circuits.Bernoulli(), 2,
                                       key=jax.random.key(0))
    with pytest.raises(ValueError, match="normalized=False"):
        circuits.em(circuit.with_params(normalized=False), binary_data, progress=False)
    bad = binary_data.astype(float)
    bad[4, 5] = 3
    with pytest.raises(ValueError, match=r"`data` variable 5 has value 3"):
        circuits.em(circuit, bad, progress=False)
    with pytest.raises(TypeError, match="optimizer"):
        circuits.fit_gradient(circuit, binary_data, "adam", key=jax.random.key(0))


# -------------------------------------------------------------- DEBD loader
def _write(path, rows, compress):
    text = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def test_debd_loader_reads_gzip_and_plain_files(tmp_path):
    rows = np.array([[0, 1, 1], [1, 0, 0]])
    _write(tmp_path / "toy.train.data.gz", rows, True)
    _write(tmp_path / "toy.valid.data", rows[:1], False)
    _write(tmp_path / "toy.test.data.gz", rows[1:], True)
    data = circuits.load_debd("toy", tmp_path)
    np.testing.assert_array_equal(data["train"], rows)
    np.testing.assert_array_equal(data["valid"], rows[:1])
    assert circuits.list_debd(tmp_path) == ["toy"]


def test_debd_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        circuits.load_debd("toy", tmp_path / "missing")
    _write(tmp_path / "toy.train.data.gz", [[0, 1]], True)
    with pytest.raises(ValueError, match=r"no toy.valid.data\[.gz\].*datasets there: none"):
        circuits.load_debd("toy", tmp_path)
    _write(tmp_path / "toy.valid.data.gz", [[0, 2]], True)
    _write(tmp_path / "toy.test.data.gz", [[0, 1]], True)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        circuits.load_debd("toy", tmp_path)
    _write(tmp_path / "toy.valid.data.gz", [[0, 1], [1]], True)
    with pytest.raises(ValueError, match="different lengths"):
        circuits.load_debd("toy", tmp_path)
    with pytest.raises(ValueError, match=r"`name` 'nope'.*datasets there: toy"):
        circuits.load_debd("nope", tmp_path)


def test_debd_loader_names_a_corrupt_or_truncated_file(tmp_path):
    _write(tmp_path / "toy.train.data", [[0, 1]], False)
    _write(tmp_path / "toy.test.data", [[0, 1]], False)
    corrupt = tmp_path / "toy.valid.data.gz"
    corrupt.write_bytes(b"not gzip at all")  # before: gzip.BadGzipFile without the file's name
    with pytest.raises(ValueError, match=f"{corrupt} could not be read as gzip-compressed text "
                                         r"\(the file may be corrupt or truncated\): BadGzipFile"):
        circuits.load_debd("toy", tmp_path)
    _write(corrupt, [[0, 1], [1, 0]], True)
    corrupt.write_bytes(corrupt.read_bytes()[:-6])  # cut off the gzip trailer
    with pytest.raises(ValueError, match=f"{corrupt} could not be read .*: EOFError"):
        circuits.load_debd("toy", tmp_path)
    corrupt.unlink()
    binary = tmp_path / "toy.valid.data"
    binary.write_bytes(b"\xff\xfe\x00\x01")  # before: a bare UnicodeDecodeError
    with pytest.raises(ValueError, match=f"{binary} could not be read as text .*UnicodeDecodeError"):
        circuits.load_debd("toy", tmp_path)


def test_debd_loader_on_the_shared_data(shared_data):
    data = circuits.load_debd("nltcs", shared_data / "debd")
    assert data["train"].shape == (16181, 16)
    assert data["valid"].shape[1] == data["test"].shape[1] == 16
    assert set(np.unique(data["train"])) == {0, 1}
    assert "nltcs" in circuits.list_debd(shared_data / "debd")


def test_em_early_stopping_keeps_the_best_validation_epoch():
    # Five training rows, no pseudocount: EM overfits them, so the likelihood of other
    # rows peaks early and then stops improving.
    rng = np.random.default_rng(7)
    train = (rng.random((5, 6)) < 0.5).astype(np.int8)
    valid = (rng.random((200, 6)) < 0.5).astype(np.int8)
    circuit = circuits.compile_circuit(circuits.quad_graph(2, 3), circuits.Bernoulli(), 3,
                                       key=jax.random.key(0))
    result = circuits.em(circuit, train, num_epochs=60, pseudocount=0.0, valid=valid,
                         patience=2, progress=False)
    history = result.valid_log_likelihood
    best = int(np.argmax(history))
    assert result.stop_reason.startswith("early stop")
    # It stopped after exactly `patience` epochs that did not beat the best one...
    assert len(history) == best + 1 + 2 == result.num_epochs
    # ... and returned the parameters of that epoch.
    assert circuits.average_log_likelihood(result.circuit, valid) == pytest.approx(
        history[best], abs=1e-5)


def test_a_second_em_run_with_the_same_shapes_compiles_nothing(binary_data, record_compilations):
    circuit = circuits.compile_circuit(circuits.quad_graph(2, 4), circuits.Bernoulli(), 2,
                                       key=jax.random.key(4))
    for schedule in (("linear", 0.9, 0.1), ("cosine", 0.5, 0.1)):
        if schedule[0] == "cosine":
            with record_compilations() as compiled:
                circuits.em(circuit, binary_data, num_epochs=3, batch_size=64, step_size=schedule,
                            key=jax.random.key(1), valid=binary_data[:50], progress=False)
            assert compiled == []
        else:
            circuits.em(circuit, binary_data, num_epochs=3, batch_size=64, step_size=schedule,
                        key=jax.random.key(1), valid=binary_data[:50], progress=False)
