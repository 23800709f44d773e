"""Particles sharded over 4 forced CPU devices give the single-device answers (in a subprocess)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    import jax.numpy as jnp
    import numpy as np

    import probinf
    from probinf import smc

    assert len(jax.devices()) == 4, jax.devices()
    sharding = smc.particle_sharding()

    model = smc.LinearGaussianSSM(jnp.zeros(2), jnp.eye(2), 0.9 * jnp.eye(2), 0.3 * jnp.eye(2),
                                  jnp.array([[1.0, 0.5]]), 0.5 * jnp.eye(1), jnp.zeros((12, 1)))
    _, y = model.simulate(jax.random.key(1), 12)
    model = smc.Bootstrap(model.with_observations(y))

    # Particle filter: particles split over the devices.
    single = smc.particle_filter(jax.random.key(0), model, 256, store_history=True)
    split = smc.particle_filter(jax.random.key(0), model, 256, store_history=True, sharding=sharding)
    assert len(split.particles.sharding.device_set) == 4, split.particles.sharding
    np.testing.assert_array_equal(split.history.ancestors, single.history.ancestors)
    np.testing.assert_allclose(split.particles, single.particles, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(split.log_evidence, single.log_evidence, rtol=1e-6)

    # Tempered SMC: particles split over the devices.
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2 / jnp.array([1.0, 2.0, 3.0])), 3)
    single = smc.tempered_smc(jax.random.key(0), target, 128, kernel="hmc", num_mcmc_steps=3)
    split = smc.tempered_smc(jax.random.key(0), target, 128, kernel="hmc", num_mcmc_steps=3,
                             sharding=sharding)
    assert len(split.particles.sharding.device_set) == 4
    assert int(split.num_stages) == int(single.num_stages)
    np.testing.assert_allclose(split.particles, single.particles, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(split.log_evidence, single.log_evidence, rtol=1e-5)

    # Independent runs: the batch of keys split over the devices.
    keys = jax.random.split(jax.random.key(3), 8)
    runs = jax.jit(jax.vmap(lambda k: smc.particle_filter(k, model, 64).log_evidence))
    batched = runs(smc.shard_leading_axis(keys, sharding))
    assert len(batched.sharding.device_set) == 4
    np.testing.assert_allclose(batched, runs(keys), rtol=1e-6)

    # A particle count that does not split evenly is refused.
    try:
        smc.particle_filter(jax.random.key(0), model, 10, sharding=sharding)
    except ValueError as err:
        assert "num_particles" in str(err)
    else:
        raise AssertionError("no error for 10 particles on 4 devices")
    print("SHARDING-OK")
    """
)


def test_sharded_runs_equal_single_device_runs(repo_root, tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    script = tmp_path / "sharding_check.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        pytest.fail(out.stdout + out.stderr)
    assert "SHARDING-OK" in out.stdout
