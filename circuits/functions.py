r"""Groups of functions that parameterise an integral circuit.

Every integral unit of a probabilistic integral circuit (PIC) carries a positive
function of continuous latent variables, and every input unit a distribution
whose parameters are functions of a latent (Gala et al., AISTATS 2024). A
*function group* evaluates $F$ such functions together at $N$ points:

$$
(z_1, \dots, z_N) \in \mathbb{R}^{N \times d} \;\mapsto\;
\big(g_f(z_n)\big)_{f, n} \in \mathbb{R}^{F \times N \times m},
$$

where $g_f$ returns $m$ numbers: $\log f$ for an integral unit ($m = 1$), or the
raw parameters of an input distribution (e.g. one Bernoulli logit).

`NeuralFunctions` is the light-weight neural parameterisation of the PIC papers:
random Fourier features (Tancik et al., NeurIPS 2020),

$$
\phi(z) = \big[\cos(2\pi B^\top z),\ \sin(2\pi B^\top z)\big], \qquad B_{ij} \sim \mathcal{N}(0, \sigma^2)
\ \text{(fixed)},
$$

followed by a small tanh MLP. *Functional sharing* (Gala et al., "Scaling
Continuous Latent Variable Models as Probabilistic Integral Circuits", NeurIPS
2024) decides which weights the $F$ functions share:

* `"none"`: every function has its own MLP;
* `"full"`: one MLP for the whole group (all $F$ functions are equal), so the cost
  of evaluating the group does not grow with $F$;
* `"composite"`: one shared trunk (the hidden layers) and a separate linear output
  head per function, initialised equal.

Analytic function groups, whose integrals have closed forms, live in
`circuits.analytic`.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probinf.validation import check_positive_int

__all__ = ["FunctionGroup", "NeuralFunctions", "SHARING"]

#: Functional-sharing modes of :class:`NeuralFunctions`.
SHARING = ("none", "full", "composite")


class FunctionGroup(eqx.Module):
    """Base class: ``F`` functions from ``R^input_dim`` to ``R^output_dim``, evaluated together.

    Subclasses implement :meth:`__call__`. The leading columns of the points are
    the latent variables in the order the integral circuit documents (for an
    integral unit: its output latent first, if any, then the integrated ones).

    Attributes:
        num_functions: ``F``.
        input_dim: ``d``, the number of latent coordinates.
        output_dim: ``m``, numbers returned per function and point.
    """

    num_functions: int = eqx.field(static=True)
    input_dim: int = eqx.field(static=True)
    output_dim: int = eqx.field(static=True)

    @abc.abstractmethod
    def __call__(self, points: Float[Array, "N d"]) -> Float[Array, "F N m"]:
        """Evaluate every function at every point."""

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        leaves = jax.tree_util.tree_leaves(eqx.filter(self, eqx.is_inexact_array))
        return int(sum(np.prod(x.shape) for x in leaves))


def _uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, minval=-bound, maxval=bound)


class NeuralFunctions(FunctionGroup):
    """Random Fourier features followed by a tanh MLP, with functional sharing.

    Each function is
    $g_f(z) = W^{\\text{out}}_f\\, h_f(z) + b^{\\text{out}}_f$ with
    $h_f = \\tanh(\\cdots\\tanh(W^{(1)}_f \\phi(z) + b^{(1)}_f)\\cdots)$ and the fixed
    Fourier features $\\phi$ of the module docstring (their frequencies are drawn
    from ``seed`` on every call, so they are constants, never trained, and a saved
    module reloads exactly).

    Args:
        key: PRNG key for the initial weights and the Fourier frequencies.
        num_functions: ``F``.
        input_dim: ``d``.
        output_dim: ``m``.
        sharing: ``"none"``, ``"full"`` or ``"composite"`` (module docstring).
        hidden: width of the hidden layers.
        num_layers: number of hidden tanh layers (at least 1).
        num_features: number of Fourier features (even).
        sigma: standard deviation of the Fourier frequencies.
        output_bias: optional initial output bias, ``(m,)`` or ``(F, m)``.

    Raises:
        ValueError: naming the argument for an unknown ``sharing`` or a bad size.
    """

    sharing: str = eqx.field(static=True)
    seed: int = eqx.field(static=True)
    sigma: float = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    hidden_layers: tuple
    output_layer: tuple

    def __init__(self, key: PRNGKeyArray, num_functions: int, input_dim: int, output_dim: int, *,
                 sharing: str = "none", hidden: int = 32, num_layers: int = 2,
                 num_features: int = 32, sigma: float = 1.0, output_bias=None):
        if sharing not in SHARING:
            raise ValueError(f"`sharing` must be one of {SHARING}, got {sharing!r}")
        self.num_functions = check_positive_int(num_functions, "num_functions")
        self.input_dim = check_positive_int(input_dim, "input_dim")
        self.output_dim = check_positive_int(output_dim, "output_dim")
        hidden = check_positive_int(hidden, "hidden")
        num_layers = check_positive_int(num_layers, "num_layers")
        num_features = check_positive_int(num_features, "num_features", minimum=2)
        if num_features % 2:
            raise ValueError(f"`num_features` must be even (cosines and sines), got {num_features}")
        if not (isinstance(sigma, (int, float)) and sigma > 0):
            raise ValueError(f"`sigma` must be a positive number, got {sigma!r}")
        self.sharing = sharing
        self.sigma = float(sigma)
        self.num_features = num_features
        key_seed, *keys = jax.random.split(key, 2 * num_layers + 3)
        self.seed = int(jax.random.randint(key_seed, (), 0, np.iinfo(np.int32).max))
        trunk_groups = self.num_functions if sharing == "none" else 1
        head_groups = 1 if sharing == "full" else self.num_functions
        layers, fan_in = [], num_features
        for layer in range(num_layers):
            weight = _uniform(keys[2 * layer], (trunk_groups, fan_in, hidden), fan_in)
            bias = _uniform(keys[2 * layer + 1], (trunk_groups, hidden), fan_in)
            layers.append((weight, bias))
            fan_in = hidden
        self.hidden_layers = tuple(layers)
        weight = _uniform(keys[-2], (1 if sharing == "composite" else head_groups, hidden,
                                     self.output_dim), hidden)
        # Composite sharing starts as full sharing: every head equal (Gala et al. 2024).
        weight = jnp.broadcast_to(weight, (head_groups, hidden, self.output_dim))
        bias = jnp.zeros((head_groups, self.output_dim))
        if output_bias is not None:
            output_bias = jnp.asarray(output_bias, dtype=bias.dtype)
            if output_bias.shape not in ((self.output_dim,), (self.num_functions, self.output_dim)):
                raise ValueError(f"`output_bias` must have shape ({self.output_dim},) or "
                                 f"({self.num_functions}, {self.output_dim}), got "
                                 f"{output_bias.shape}")
            if output_bias.ndim == 2 and head_groups == 1:
                output_bias = output_bias.mean(axis=0)
            bias = jnp.broadcast_to(output_bias, bias.shape)
        self.output_layer = (jnp.array(weight), jnp.array(bias))

    def features(self, points: Float[Array, "N d"]) -> Float[Array, "N D"]:
        """The fixed random Fourier features ``(N, num_features)`` of the points."""
        frequencies = self.sigma * jax.random.normal(
            jax.random.key(self.seed), (self.input_dim, self.num_features // 2), points.dtype)
        projection = 2.0 * jnp.pi * points @ frequencies
        return jnp.concatenate([jnp.cos(projection), jnp.sin(projection)], axis=-1)

    def __call__(self, points: Float[Array, "N d"]) -> Float[Array, "F N m"]:
        points = jnp.asarray(points)
        if points.ndim != 2 or points.shape[1] != self.input_dim:
            raise ValueError(f"`points` must be (N, {self.input_dim}), got shape {points.shape}")
        h = self.features(points)
        first_weight, first_bias = self.hidden_layers[0]
        h = jnp.tanh(jnp.einsum("nd,gdh->gnh", h, first_weight) + first_bias[:, None, :])
        for weight, bias in self.hidden_layers[1:]:
            h = jnp.tanh(jnp.einsum("gnd,gdh->gnh", h, weight) + bias[:, None, :])
        weight, bias = self.output_layer
        if h.shape[0] == weight.shape[0]:
            out = jnp.einsum("gnh,ghm->gnm", h, weight)
        else:  # one shared trunk, one head per function
            out = jnp.einsum("nh,ghm->gnm", h[0], weight)
        out = out + bias[:, None, :]
        return jnp.broadcast_to(out, (self.num_functions,) + out.shape[1:])
