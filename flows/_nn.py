"""Conditioner networks: a dense MLP with a zero-started output layer, and a MADE masked MLP.

The dense network is :class:`equinox.nn.MLP`; only its output layer is set to zero, so
that every flow starts at the identity. Activations follow the rule of every package
(:func:`probinf.validation.check_activation`): a function such as ``jax.nn.relu``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probinf.validation import check_activation

__all__ = ["MaskedMLP", "activation_function", "made_degrees", "zero_output_mlp"]

# The names flows took before activations became functions (accepted with a DeprecationWarning).
_NAMED_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}


def activation_function(activation: object) -> Callable:
    """``activation`` checked by :func:`~probinf.validation.check_activation`; one of the
    names flows used to take (``"relu"``, ``"tanh"``, ...) still maps to its function, with
    a DeprecationWarning."""
    if isinstance(activation, str) and activation in _NAMED_ACTIVATIONS:
        function = _NAMED_ACTIVATIONS[activation]
        warnings.warn(f"activation={activation!r} (a name) is deprecated: pass the function, "
                      f"activation={'jnp' if function is jnp.tanh else 'jax.nn'}.{activation}",
                      DeprecationWarning, stacklevel=3)
        return function
    return check_activation(activation)


def zero_output_mlp(key: PRNGKeyArray, n_in: int, n_out: int, width: int, depth: int,
                    activation: Callable) -> eqx.nn.MLP:
    """An :class:`equinox.nn.MLP` with ``depth`` hidden layers of ``width`` units whose
    output layer is zero: a conditioner built from it makes its bijection start at the
    identity."""
    mlp = eqx.nn.MLP(n_in, n_out, width, depth, activation=activation, key=key)
    last = mlp.layers[-1]
    return eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                       (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))


def _uniform_init(key: PRNGKeyArray, n_in: int, n_out: int) -> tuple[Array, Array]:
    """``equinox.nn.Linear``'s initialisation: weight and bias uniform in ``±1/sqrt(n_in)``."""
    bound = 1.0 / math.sqrt(max(n_in, 1))
    key_w, key_b = jax.random.split(key)
    weight = jax.random.uniform(key_w, (n_out, n_in), minval=-bound, maxval=bound)
    bias = jax.random.uniform(key_b, (n_out,), minval=-bound, maxval=bound)
    return weight, bias


def made_degrees(dim: int, context_dim: int, width: int, depth: int) -> list[np.ndarray]:
    """Degrees of the input, hidden and output units of a MADE network.

    Data input ``i`` has degree ``i + 1``, context inputs degree 0 (they may feed
    every output), hidden units cycle through ``1..dim-1`` (``0..dim-1`` with a
    context, so that some units carry the context alone) and output ``j`` (the
    parameters of variable ``j``) has degree ``j + 1``. A connection ``a -> b``
    is kept when ``deg(b) >= deg(a)`` (hidden) or ``deg(b) > deg(a)`` (output).
    """
    inputs = np.concatenate([np.zeros(context_dim, np.int32), np.arange(1, dim + 1, dtype=np.int32)])
    if context_dim > 0:
        # Degree-0 units see only the context, so the first variable can depend on it too.
        hidden = (np.arange(width) % dim).astype(np.int32)
    elif dim > 1:
        hidden = (np.arange(width) % (dim - 1) + 1).astype(np.int32)
    else:
        hidden = np.zeros(width, np.int32)
    return [inputs] + [hidden] * depth + [np.arange(1, dim + 1, dtype=np.int32)]


class MaskedLinear(eqx.Module):
    """``x -> (W * M) x + b`` with a fixed boolean connectivity mask ``M``."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"]
    mask: Bool[Array, "out in"]

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return jnp.where(self.mask, self.weight, 0.0) @ x + self.bias


class MaskedMLP(eqx.Module):
    """MADE: a masked MLP whose output for variable ``i`` depends only on ``x_{<i}``
    (and on the context). Germain, Gregor, Murray & Larochelle (2015), "MADE: Masked
    Autoencoder for Distribution Estimation".

    The input is ``concat(context, x)``; the output has ``dim * params_per_dim``
    entries ordered variable-major (``out.reshape(dim, params_per_dim)``).
    """

    layers: tuple[MaskedLinear, ...]
    activation: Callable
    dim: int = eqx.field(static=True)
    params_per_dim: int = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, dim: int, context_dim: int, params_per_dim: int,
                 width: int, depth: int, activation: Callable = jax.nn.relu):
        self.activation = check_activation(activation)
        self.dim = dim
        self.params_per_dim = params_per_dim
        degrees = made_degrees(dim, context_dim, width, depth)
        keys = jax.random.split(key, len(degrees) - 1)
        layers = []
        for index, k in enumerate(keys):
            deg_in, deg_out = degrees[index], degrees[index + 1]
            is_output = index == len(keys) - 1
            if is_output:
                deg_out = np.repeat(deg_out, params_per_dim)
                mask = deg_out[:, None] > deg_in[None, :]
                weight, bias = jnp.zeros(mask.shape), jnp.zeros(mask.shape[0])
            else:
                mask = deg_out[:, None] >= deg_in[None, :]
                weight, bias = _uniform_init(k, mask.shape[1], mask.shape[0])
            layers.append(MaskedLinear(weight, bias, jnp.asarray(mask)))
        self.layers = tuple(layers)

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, "dim p"]:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x).reshape(self.dim, self.params_per_dim)
