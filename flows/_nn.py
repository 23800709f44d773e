"""Small neural networks used as conditioners: a dense MLP and a MADE masked MLP.

Activations are stored by name (a static string) so that every flow saves with
:func:`probinf.io.save` without naming a function.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

__all__ = ["ACTIVATIONS", "Linear", "MLP", "MaskedMLP", "check_activation", "made_degrees"]

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}


def check_activation(name: object) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return str(name)


def _uniform_init(key: PRNGKeyArray, n_in: int, n_out: int) -> tuple[Array, Array]:
    bound = 1.0 / math.sqrt(max(n_in, 1))
    key_w, key_b = jax.random.split(key)
    weight = jax.random.uniform(key_w, (n_out, n_in), minval=-bound, maxval=bound)
    bias = jax.random.uniform(key_b, (n_out,), minval=-bound, maxval=bound)
    return weight, bias


class Linear(eqx.Module):
    """Affine map ``x -> W x + b`` on an unbatched vector."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"]

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        return self.weight @ x + self.bias


def _widths(n_in: int, width: int, depth: int, n_out: int) -> list[tuple[int, int]]:
    sizes = [n_in] + [width] * depth + [n_out]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


class MLP(eqx.Module):
    """Dense network with ``depth`` hidden layers of ``width`` units.

    The output layer starts at zero, so a conditioner built from it makes its
    bijection start at the identity.
    """

    layers: tuple[Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, n_in: int, n_out: int, width: int, depth: int,
                 activation: str = "relu"):
        self.activation = check_activation(activation)
        shapes = _widths(n_in, width, depth, n_out)
        keys = jax.random.split(key, len(shapes))
        layers = []
        for index, ((a, b), k) in enumerate(zip(shapes, keys, strict=True)):
            if index == len(shapes) - 1:
                layers.append(Linear(jnp.zeros((b, a)), jnp.zeros(b)))
            else:
                layers.append(Linear(*_uniform_init(k, a, b)))
        self.layers = tuple(layers)

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


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
    activation: str = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    params_per_dim: int = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, dim: int, context_dim: int, params_per_dim: int,
                 width: int, depth: int, activation: str = "relu"):
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
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x).reshape(self.dim, self.params_per_dim)
