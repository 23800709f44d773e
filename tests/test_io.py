"""probinf.save / probinf.load: what cannot be saved is named, and nothing is written."""

import jax.numpy as jnp
import pytest

import probinf


def _top_level_log_density(z):
    return -0.5 * jnp.sum(z**2)


def test_a_lambda_target_cannot_be_saved_and_the_message_says_what_and_why(tmp_path):
    path = tmp_path / "target.pkl"
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), 2)
    with pytest.raises(TypeError, match=r"`obj` cannot be saved: obj\.log_density_fn is <function "
                                        r".*<lambda>.*saved by reference.*define it with `def`"):
        probinf.save(path, target)
    assert not path.exists()  # no half-written file
    with pytest.raises(TypeError, match=r"obj\['model'\]\['fn'\] is <function .*<locals>"):
        probinf.save(path, {"model": {"fn": lambda: None}})
    # The same target with a top-level function is saved and reloaded.
    probinf.save(path, probinf.from_logdensity(_top_level_log_density, 2, init_position=jnp.ones(2)))
    loaded = probinf.load(path)
    assert float(loaded.log_density(jnp.ones(2))) == -1.0
    assert jnp.array_equal(loaded.init_position, jnp.ones(2))
