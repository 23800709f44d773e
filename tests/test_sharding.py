"""Data-parallel training (`probinf.train.run(..., sharding=mesh)`): on 4 forced host
devices every trainer gives the single-device result up to the order of float sums.

The devices are forced with XLA_FLAGS, which must be set before JAX starts: the checks run
in one subprocess, which prints a JSON report the tests read.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

DEVICES = 4

SCRIPT = textwrap.dedent(r'''
    import json
    import jax, jax.numpy as jnp, numpy as np, optax, equinox as eqx
    from jax.sharding import Mesh
    from probinf import train as engine

    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    report = {}

    def spread(tree):
        """Largest relative difference between the arrays of two pytrees (equinox modules also
        hold functions, such as an MLP's activation)."""
        a, b = tree
        leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                         / (1e-6 + np.max(np.abs(np.asarray(y, np.float64)))))
                   for x, y in leaves if not callable(x))

    def devices_of(tree):
        return min(len(leaf.sharding.device_set) for leaf in jax.tree.leaves(tree)
                   if isinstance(leaf, jax.Array))

    def circuit_report(one, four, model):
        """A circuits TrainResult pair, compared through the log-likelihood."""
        return {"difference": abs(four.final_train_log_likelihood
                                  - one.final_train_log_likelihood)
                / abs(one.final_train_log_likelihood),
                "devices": devices_of(model),
                "losses": spread((np.asarray(four.train_log_likelihood),
                                  np.asarray(one.train_log_likelihood)))}

    # The engine itself: linear regression, minibatches of 32 rows, then the full batch.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 5)), jnp.float32)
    y = x @ jnp.arange(1.0, 6.0) + 0.1 * jnp.asarray(rng.normal(size=256), jnp.float32)

    def squared_error(w, key, batch):
        xb, yb = batch
        return jnp.mean((xb @ w - yb) ** 2)

    optimizer = optax.adam(0.05)
    step = engine.make_step(squared_error, optimizer)
    for name, kwargs in (("engine_minibatch", dict(epochs=5, batch_size=32)),
                         ("engine_full_batch", dict(steps=40))):
        one, four = (engine.run(step, engine.init(jnp.zeros(5), optimizer), jax.random.key(0),
                                data=(x, y), progress=False, sharding=mesh_, **kwargs)
                     for mesh_ in (None, mesh))
        report[name] = {"difference": spread((four.params, one.params)),
                        "devices": devices_of(four.params),
                        "losses": spread((four.losses, one.losses))}

    # flows.fit_to_data
    import flows
    flow = flows.masked_autoregressive_flow(jax.random.key(1), 2, num_layers=2)
    data = jnp.asarray(rng.normal(size=(512, 2)) * [1.0, 0.3] + [0.5, -1.0], jnp.float32)
    one, four = (flows.fit_to_data(jax.random.key(2), flow, data, batch_size=64, max_epochs=3,
                                   progress=False, sharding=mesh_) for mesh_ in (None, mesh))
    report["flows"] = {"difference": spread((four.flow, one.flow)),
                       "devices": devices_of(four.flow),
                       "losses": spread((four.train_losses, one.train_losses))}

    # vi.fit on a subsampled numpyro model (logistic regression, batches of 40 of 400 rows),
    # from vi.initialize's start, with the control variate and iterate averaging.
    import numpyro, numpyro.distributions as dist
    import probinf
    from probinf import vi

    features = rng.normal(size=(400, 3)).astype(np.float32)
    outcomes = (rng.random(400) < 1 / (1 + np.exp(-features @ [1.0, -0.5, 0.2]))).astype(np.float32)

    def logistic(x, y, subsample_size):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        with numpyro.plate("rows", x.shape[0], subsample_size=subsample_size) as rows:
            numpyro.sample("y", dist.Bernoulli(logits=x[rows] @ w), obs=y[rows])

    target = probinf.from_numpyro(logistic, jnp.asarray(features), jnp.asarray(outcomes), 40)
    start = vi.initialize(jax.random.key(10), target)
    one, four = (vi.fit(vi.ELBO(4), start, target, key=jax.random.key(11), steps=1200,
                        progress=False, diagnose=False, sharding=mesh_) for mesh_ in (None, mesh))
    assert one.averaged and four.averaged and one.control_variate_from == 0
    report["vi_subsampled"] = {"difference": spread((four.family, one.family)),
                               "devices": devices_of(four.family),
                               "losses": spread((four.losses, one.losses))}
    uneven = probinf.from_numpyro(logistic, jnp.asarray(features), jnp.asarray(outcomes), 30)
    try:
        vi.fit(vi.ELBO(4), start, uneven, key=jax.random.key(11), steps=2, sharding=mesh)
        report["vi_uneven_error"] = ""
    except ValueError as error:
        report["vi_uneven_error"] = str(error)

    # amortized.train: each step's 16 simulations split over the devices.
    import amortized
    from amortized.tasks import ConjugateGaussian
    task = ConjugateGaussian(1, num_observations=(1, 3))
    transformer = amortized.DistributionTransformer(
        key=jax.random.key(12), d_model=8, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, **task.model_options())
    one, four = (amortized.train(transformer, task, key=jax.random.key(13), steps=6,
                                 batch_size=16, chunk_size=3, optimizer=optax.adam(1e-3),
                                 progress=False, sharding=mesh_) for mesh_ in (None, mesh))
    # Compared through the loss on fresh simulations: Adam's first steps turn rounding
    # differences in the ~0 gradients of some parameters into different values, of no
    # consequence, as for the integral circuit below.
    check = task.simulate(jax.random.key(14), 256)
    from amortized.training import negative_log_likelihood
    scores = [float(sum(negative_log_likelihood(run.model, check))) for run in (four, one)]
    report["amortized"] = {"difference": spread(([scores[0]], [scores[1]])),
                           "devices": devices_of(four.model),
                           "losses": spread((four.losses, one.losses))}

    # circuits: mini-batch EM and gradient training
    import circuits
    from circuits.region_graph import RegionGraph
    regions = [tuple(range(6))] + [(v,) for v in range(6)]
    graph = RegionGraph(6, regions, [(0, tuple(range(1, 7)))])
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 3, key=jax.random.key(3))
    binary = (rng.random((400, 6)) < 0.3 + 0.4 * rng.random(6)).astype(np.int8)
    one, four = (circuits.em(circuit, binary, num_epochs=3, batch_size=40, step_size=0.5,
                             key=jax.random.key(4), progress=False, sharding=mesh_)
                 for mesh_ in (None, mesh))
    report["circuits_em"] = circuit_report(one, four, four.circuit)
    # Full-batch EM: 398 rows, so the chunk of rows is padded to a multiple of 4.
    one, four = (circuits.em(circuit, binary[:398], num_epochs=3, progress=False,
                             sharding=mesh_) for mesh_ in (None, mesh))
    report["circuits_em_full_batch"] = circuit_report(one, four, four.circuit)
    one, four = (circuits.fit_gradient(circuit, binary, optax.adam(0.05), key=jax.random.key(5),
                                       num_epochs=3, batch_size=40, progress=False,
                                       sharding=mesh_) for mesh_ in (None, mesh))
    report["circuits_gradient"] = circuit_report(one, four, four.circuit)

    # circuits.fit_integral (a PIC materialised by quadrature inside every step)
    from circuits.integral import integral_circuit, fit_integral
    from circuits.quadrature import quadrature_rule
    pic = integral_circuit(circuits.linear_chain(6), circuits.Bernoulli(), key=jax.random.key(8),
                           inner_sharing="composite", hidden=8, num_features=8, data=binary)
    one, four = (fit_integral(pic, binary, optax.adam(1e-2), quadrature_rule("trapezoidal", 5),
                              key=jax.random.key(9), num_epochs=2, batch_size=40,
                              progress=False, sharding=mesh_) for mesh_ in (None, mesh))
    # Compared through the likelihood: the functions' output biases are not identified (a
    # constant shift cancels in the normalisation), so Adam turns rounding differences in
    # their ~0 gradients into different values of no consequence.
    report["circuits_integral"] = circuit_report(one, four, four.pic)

    # pcn.train
    from probinf import pcn
    net = pcn.mlp(jax.random.key(6), [4, 8, 3], output="categorical")
    features = jnp.asarray(rng.normal(size=(128, 4)), jnp.float32)
    labels = jax.nn.one_hot(jnp.asarray(rng.integers(0, 3, 128)), 3)
    one, four = (pcn.train(jax.random.key(7), net, optax.adam(1e-3), features, labels, epochs=2,
                           batch_size=32, steps=5, step_size=0.05, progress=False,
                           sharding=mesh_) for mesh_ in (None, mesh))
    report["pcn"] = {"difference": spread((four.net, one.net)), "devices": devices_of(four.net),
                     "losses": 0.0}
    try:
        engine.run(step, engine.init(jnp.zeros(5), optimizer), jax.random.key(0), epochs=1,
                   data=(x, y), batch_size=30, progress=False, sharding=mesh)
        report["uneven_batch_error"] = ""
    except ValueError as error:
        report["uneven_batch_error"] = str(error)
    print("REPORT" + json.dumps(report))
''')


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                        + f" --xla_force_host_platform_device_count={DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


@pytest.mark.parametrize("part", ["engine_minibatch", "engine_full_batch", "flows",
                                  "vi_subsampled", "amortized",
                                  "circuits_em", "circuits_em_full_batch",
                                  "circuits_gradient", "circuits_integral",
                                  "pcn"])
def test_four_devices_give_the_single_device_result(report, part):
    entry = report[part]
    assert entry["devices"] == DEVICES
    # The same steps on the same rows: only the order of the float32 sums differs
    # (measured: 1e-8 to 3e-7 relative).
    assert entry["difference"] < 1e-5, entry
    assert entry["losses"] < 1e-5, entry


def test_a_batch_that_does_not_split_evenly_is_refused(report):
    assert "`batch_size` (30) must be a multiple of the mesh's 'data' axis size (4)" in (
        report["uneven_batch_error"])


def test_vi_refuses_a_batch_that_does_not_split_and_a_target_without_batches(report):
    assert ("plate 'rows': its subsample_size (30) must be a multiple of the mesh's 'data' "
            "axis size (4)") in report["vi_uneven_error"]
    import jax
    import numpy as np
    from jax.sharding import Mesh

    import probinf
    from probinf import vi

    target = probinf.from_logdensity(lambda z: -0.5 * z @ z, 2)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="needs a target with a subsampled plate"):
        vi.fit(vi.ELBO(1), probinf.FullRankGaussian.init(2), target, key=jax.random.key(0),
               steps=2, sharding=mesh)
    with pytest.raises(TypeError, match="`sharding` must be a jax.sharding.Mesh"):
        vi.fit(vi.ELBO(1), probinf.FullRankGaussian.init(2), target, key=jax.random.key(0),
               steps=2, sharding="data")


def test_a_one_device_mesh_equals_no_mesh_and_a_non_mesh_is_refused():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh

    from probinf import train as engine

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    optimizer = optax.sgd(0.005)
    step = engine.make_step(lambda w, key, batch: jnp.sum((batch * w) ** 2), optimizer)
    with pytest.raises(TypeError, match="`sharding` must be a jax.sharding.Mesh"):
        engine.run(step, engine.init(jnp.ones(2), optimizer), jax.random.key(0), steps=2,
                   data=jnp.ones((4, 2)), sharding="data")
    # A one-device mesh splits nothing: the same steps, the same parameters.
    data = jnp.arange(8.0).reshape(4, 2)
    sharded, plain = (engine.run(step, engine.init(jnp.ones(2), optimizer), jax.random.key(0),
                                 steps=4, data=data, batch_size=2, sharding=mesh_,
                                 progress=False) for mesh_ in (mesh, None))
    assert sharded.num_steps == plain.num_steps == 4
    np.testing.assert_allclose(sharded.params, plain.params, rtol=1e-6)
    np.testing.assert_allclose(sharded.losses, plain.losses, rtol=1e-6)
