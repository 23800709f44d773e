"""One process of tests/test_multihost.py: a training run and a particle filter on a mesh
over every process's devices (``jax.distributed``); with ``local``, the same on a mesh over
this process's devices; with ``single``, unsharded on one device.

Usage: python _multihost_worker.py single | local | PROCESS_ID NUM_PROCESSES PORT [DIR]
(with DIR, also a run checkpointed to DIR/run.ckpt by process 0, then resumed).
Prints one line, ``RESULT {json}``.
"""

import json
import sys

# Python put this script's folder, tests/, first on the path: its `flows` test package would
# shadow the library's.
del sys.path[0]

import jax  # noqa: E402

if sys.argv[1] not in ("single", "local"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{sys.argv[3]}",
                               num_processes=int(sys.argv[2]), process_id=int(sys.argv[1]))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from probinf import smc  # noqa: E402
from probinf import train as engine  # noqa: E402

single = sys.argv[1] == "single"
mesh = None if single else Mesh(np.array(jax.devices()), ("data",))

# Every process builds the same global data (the engine places it on the mesh).
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 5)).astype(np.float32)
y = (x @ np.arange(1.0, 6.0) + 0.1 * rng.normal(size=256)).astype(np.float32)


def squared_error(w, key, batch):
    xb, yb = batch
    return jnp.mean((xb @ w - yb) ** 2)


optimizer = optax.adam(0.05)
trained = engine.run(engine.make_step(squared_error, optimizer),
                     engine.init(jnp.zeros(5), optimizer), jax.random.key(0), epochs=5,
                     batch_size=32, data=(x, y), progress=False, sharding=mesh)

# A checkpointed run over the processes (process 0 writes it), interrupted after 3 of the 5
# epochs and resumed: the uninterrupted result, bit for bit.
checkpointed = None
if len(sys.argv) > 4:
    from jax.experimental import multihost_utils

    path = f"{sys.argv[4]}/run.ckpt"
    common = dict(batch_size=32, data=(x, y), progress=False, sharding=mesh, checkpoint=path)
    engine.run(engine.make_step(squared_error, optimizer), engine.init(jnp.zeros(5), optimizer),
               jax.random.key(0), epochs=3, **common)
    multihost_utils.sync_global_devices("checkpoint written")
    resumed = engine.run(engine.make_step(squared_error, optimizer),
                         engine.init(jnp.zeros(5), optimizer), jax.random.key(0), epochs=5,
                         resume=True, **common)
    checkpointed = {"params": np.asarray(resumed.params.addressable_data(0)).tolist(),
                    "losses": resumed.losses.tolist()}

# A trainer on the engine (its first call also runs probinf's one-device XLA check, which
# must pick a device of this process).
import flows  # noqa: E402

flow_fit = flows.fit_to_data(jax.random.key(2), flows.masked_autoregressive_flow(
    jax.random.key(3), 2), rng.normal(size=(512, 2)).astype(np.float32), batch_size=64,
    max_epochs=2, progress=False, sharding=mesh)

eye = jnp.eye(2)
ssm = smc.LinearGaussianSSM(jnp.zeros(2), eye, 0.9 * eye, 0.1 * eye, eye, 0.5 * eye,
                            jnp.asarray(rng.normal(size=(30, 2)), jnp.float32))
filtered = smc.particle_filter(jax.random.key(1), smc.Bootstrap(ssm), 1024,
                               sharding=None if single else smc.particle_sharding())


def local(array):
    """A replicated global array as NumPy (every process holds all of it)."""
    return np.asarray(array.addressable_data(0))


print("RESULT " + json.dumps({
    "devices": jax.device_count(),
    "params": local(trained.params).tolist(),
    "losses": trained.losses.tolist(),
    "log_evidence": float(local(filtered.log_evidence)),
    "flow_losses": flow_fit.train_losses.tolist(),
    "checkpointed": checkpointed,
}), flush=True)
