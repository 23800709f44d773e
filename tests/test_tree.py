"""probinf._tree.all_finite: the non-finite check shared by the training loops."""

import jax.numpy as jnp
import pytest

from probinf._tree import all_finite


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_all_finite_finds_one_bad_entry_anywhere(bad):
    tree = {"a": jnp.ones(3), "b": (jnp.zeros((2, 2)), jnp.arange(4)), "c": None}
    assert bool(all_finite(tree))
    tree["b"] = (jnp.zeros((2, 2)).at[1, 0].set(bad), jnp.arange(4))
    assert not bool(all_finite(tree))


def test_all_finite_ignores_integer_leaves_and_empty_trees():
    assert bool(all_finite({"steps": jnp.arange(3), "name": "x"}))
    assert bool(all_finite({}))
