"""probinf.validation: the shared checks every package uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinf.validation import (
    check_activation,
    check_finite,
    check_key,
    check_positive_int,
    is_traced,
)


def test_is_traced_sees_tracers_in_any_argument_and_inside_pytrees():
    seen = []

    def probe(x, tree):
        seen.append((is_traced(x), is_traced(tree), is_traced(1.0, tree), is_traced(None, np.ones(2))))
        return x

    jax.jit(probe)(jnp.ones(3), {"a": (jnp.zeros(2),)})
    assert seen == [(True, True, True, False)]
    jax.vmap(lambda x: probe(x, [1, 2]))(jnp.ones(3))
    assert seen[-1] == (True, False, False, False)
    assert not is_traced(jnp.ones(3), {"a": jnp.zeros(2)}, None, "text")


def test_check_activation_takes_functions_and_names_the_argument():
    assert check_activation(jax.nn.relu) is jax.nn.relu
    assert check_activation(jnp.tanh, "output_activation") is jnp.tanh
    with pytest.raises(TypeError, match="`output_activation` must be a function.*got str 'relu'"):
        check_activation("relu", "output_activation")
    with pytest.raises(TypeError, match="`activation`"):
        check_activation(None)


def test_count_key_and_finite_checks_name_the_argument():
    assert check_positive_int(np.int64(3), "num_steps") == 3
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match="`num_steps` must be a positive int"):
            check_positive_int(bad, "num_steps")
    assert check_positive_int(0, "depth", minimum=0) == 0
    with pytest.raises(TypeError, match="`rng` must be one JAX PRNG key"):
        check_key(jnp.zeros(2), "rng")
    with pytest.raises(ValueError, match=r"`data` must be finite, got nan at index \(1, 0\)"):
        check_finite(np.array([[1.0, 2.0], [np.nan, 0.0]]), "data")
