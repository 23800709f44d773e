"""Predictive-coding networks: value nodes, layer-wise predictions and their energies.

A network is a chain of value nodes :math:`x_0, x_1, \\dots, x_L`. Layer :math:`l`
(any equinox module) predicts node :math:`l` from node :math:`l-1`,
:math:`\\mu_l = f_l(x_{l-1}; \\theta_l)`, and the network's energy is the sum of the
prediction-error energies of the nodes (Rao & Ballard 1999; Whittington & Bogacz 2017,
"An approximation of the error backpropagation algorithm in a predictive coding network
with local Hebbian synaptic plasticity", Neural Computation):

.. math::
    E(x, \\theta) = E_0(x_0) + \\sum_{l=1}^{L} E_l(x_l, \\mu_l),\\qquad
    E_l = \\frac{1}{2\\sigma_l^2}\\lVert x_l - \\mu_l \\rVert^2,

with an optional Gaussian prior :math:`E_0 = \\lVert x_0 - m_0\\rVert^2 / (2\\sigma_0^2)`
on the first node (generative models) and, for classifiers, a categorical output energy
:math:`E_L = -\\sigma_L^{-2}\\sum_k x_{L,k} \\log \\operatorname{softmax}(\\mu_L)_k`
(the cross-entropy of the clamped label :math:`x_L`).

Everything here works on one sample (unbatched node values); the functions in
:mod:`probinf.pcn.inference` and :mod:`probinf.pcn.learning` vectorise over a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probinf.validation import check_activation

__all__ = ["PCN", "Dense", "Conv", "mlp"]

OUTPUTS = ("gaussian", "categorical")


def _identity(x):
    return x


class Dense(eqx.Module):
    """A dense prediction :math:`\\mu = \\phi(W \\operatorname{vec}(x) + b)`.

    The input node is flattened first, so a dense layer can follow a convolutional one.

    Args:
        in_features: size of the (flattened) input node.
        out_features: size of the predicted node.
        key: PRNG key for the weights (equinox's default ``Linear`` initialisation).
        activation: the nonlinearity :math:`\\phi` (identity by default).
        use_bias: whether to add the bias :math:`b`.
    """

    linear: eqx.nn.Linear
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        key: PRNGKeyArray,
        activation: Callable = _identity,
        use_bias: bool = True,
    ):
        self.linear = eqx.nn.Linear(in_features, out_features, use_bias=use_bias, key=key)
        self.activation = check_activation(activation)

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, " out"]:
        return self.activation(self.linear(jnp.ravel(x)))


class Conv(eqx.Module):
    """A convolutional prediction :math:`\\mu = \\phi(w \\ast x + b)` on ``(channels, *spatial)`` nodes.

    Args:
        num_spatial_dims: 1 for signals, 2 for images, 3 for volumes.
        in_channels: channels of the input node.
        out_channels: channels of the predicted node.
        kernel_size: size of the convolution kernel.
        key: PRNG key for the weights.
        stride: stride of the convolution.
        padding: padding, as for :class:`equinox.nn.Conv` (an int or ``"SAME"``/``"VALID"``).
        activation: the nonlinearity :math:`\\phi` (identity by default).
        transpose: use a transposed convolution (upsampling, for generative decoders).
    """

    conv: eqx.nn.Conv | eqx.nn.ConvTranspose
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        *,
        key: PRNGKeyArray,
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        activation: Callable = _identity,
        transpose: bool = False,
    ):
        cls = eqx.nn.ConvTranspose if transpose else eqx.nn.Conv
        self.conv = cls(
            num_spatial_dims, in_channels, out_channels, kernel_size,
            stride=stride, padding=padding, key=key,
        )
        self.activation = check_activation(activation)

    def __call__(self, x: Float[Array, "channels ..."]) -> Float[Array, "out_channels ..."]:
        return self.activation(self.conv(x))


def _as_shape(shape, name: str) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"`{name}` must be an int or a tuple of ints, got {shape!r}") from None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"`{name}` must be a non-empty tuple of positive ints, got {shape!r}")
    return shape


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


class PCN(eqx.Module):
    """A predictive-coding network: a chain of value nodes and the layers that predict them.

    Node 0 is the network's first node (the input of a classifier, or the top latent of a
    generative model); node :math:`L` is its last (the label, or the data). Which nodes are
    clamped is chosen when inferring or training, not here: see :func:`probinf.pcn.infer`.

    Args:
        layers: ``L`` callables (equinox modules such as :class:`Dense`, :class:`Conv` or
            :class:`equinox.nn.Sequential`); ``layers[l]`` maps the value of node ``l`` (one
            sample) to the prediction of node ``l + 1``.
        input_shape: shape of node 0 for one sample, e.g. ``(64,)`` or ``(1, 28, 28)``.
        output: ``"gaussian"`` (squared-error energy on the last node) or ``"categorical"``
            (cross-entropy of a clamped label; the last node must be 1-d).
        variances: ``L`` positive numbers :math:`\\sigma_l^2`; node ``l``'s energy is divided
            by ``variances[l - 1]`` (default: all ones).
        prior_variance: if given, node 0 gets the Gaussian prior energy
            :math:`\\lVert x_0 - m_0\\rVert^2 / (2\\sigma_0^2)` with a learnable mean ``m_0``.
        prior_mean: initial prior mean (default zeros), shape ``input_shape``.

    Attributes:
        node_shapes: the shape of every node for one sample, ``L + 1`` tuples.

    Raises:
        ValueError: a layer that cannot take the node before it (naming the layer), a
            categorical output that is not 1-d, or bad ``variances``/``prior_variance``.
    """

    layers: tuple
    prior_mean: Float[Array, "..."] | None
    variances: tuple[float, ...] = eqx.field(static=True)
    prior_variance: float | None = eqx.field(static=True)
    output: str = eqx.field(static=True)
    node_shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)

    def __init__(
        self,
        layers: Sequence[Callable],
        input_shape: int | Sequence[int],
        *,
        output: str = "gaussian",
        variances: Sequence[float] | None = None,
        prior_variance: float | None = None,
        prior_mean: Array | None = None,
    ):
        layers = tuple(layers) if isinstance(layers, (list, tuple)) else layers
        if not isinstance(layers, tuple) or not layers:
            raise ValueError("`layers` must be a non-empty list or tuple of layers")
        for index, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"`layers[{index}]` must be callable, got {type(layer).__name__}")
        if output not in OUTPUTS:
            raise ValueError(f"`output` must be one of {OUTPUTS}, got {output!r}")
        shape = _as_shape(input_shape, "input_shape")
        shapes = [shape]
        for index, layer in enumerate(layers):
            source = "`input_shape`" if index == 0 else f"`layers[{index - 1}]`"
            try:
                out = eqx.filter_eval_shape(layer, jax.ShapeDtypeStruct(shape, jnp.result_type(float)))
            except Exception as error:  # the layer's own message says what it expected
                raise ValueError(
                    f"shape mismatch: `layers[{index}]` cannot take a node of shape {shape} "
                    f"(from {source}): {type(error).__name__}: {error}"
                ) from None
            if not isinstance(out, jax.ShapeDtypeStruct) or not jnp.issubdtype(out.dtype, jnp.floating):
                raise ValueError(
                    f"`layers[{index}]` must return one floating-point array, got {out!r}"
                )
            shape = tuple(out.shape)
            shapes.append(shape)
        if output == "categorical" and len(shapes[-1]) != 1:
            raise ValueError(
                f"a categorical output needs a 1-d last node (one logit per class), but "
                f"`layers[{len(layers) - 1}]` predicts shape {shapes[-1]}"
            )
        if variances is None:
            variances = (1.0,) * len(layers)
        variances = tuple(variances)
        if len(variances) != len(layers):
            raise ValueError(
                f"`variances` must have one entry per layer ({len(layers)}), got {len(variances)}"
            )
        self.variances = tuple(
            _positive_float(v, f"variances[{i}]") for i, v in enumerate(variances)
        )
        if prior_variance is None:
            if prior_mean is not None:
                raise ValueError("`prior_mean` needs `prior_variance` (the prior's variance)")
            self.prior_mean = None
            self.prior_variance = None
        else:
            self.prior_variance = _positive_float(prior_variance, "prior_variance")
            if prior_mean is None:
                prior_mean = np.zeros(shapes[0])
            prior_mean = jax.device_put(np.asarray(prior_mean, dtype=jnp.result_type(float)))
            if prior_mean.shape != shapes[0]:
                raise ValueError(
                    f"`prior_mean` must have shape {shapes[0]} (node 0), got {prior_mean.shape}"
                )
            self.prior_mean = prior_mean
        self.layers = layers
        self.output = output
        self.node_shapes = tuple(shapes)

    @property
    def num_layers(self) -> int:
        """The number of layers :math:`L` (there are ``L + 1`` nodes)."""
        return len(self.layers)

    def forward(self, x0: Float[Array, "..."]) -> tuple[Float[Array, "..."], ...]:
        """The feed-forward activities :math:`(x_0, \\mu_1, \\mu_2(\\mu_1), \\dots)` of one sample.

        For a categorical network the last entry is the logits :math:`\\mu_L`.
        """
        values = [x0]
        for layer in self.layers:
            values.append(layer(values[-1]))
        return tuple(values)

    def predictions(self, activities: Sequence[Array]) -> tuple[Array, ...]:
        """The prediction :math:`\\mu_l = f_l(x_{l-1})` of every node ``l >= 1`` (one sample)."""
        return tuple(layer(activities[i]) for i, layer in enumerate(self.layers))

    def energies_and_errors(
        self, activities: Sequence[Array], predictions: Sequence[Array | None] | None = None
    ) -> tuple[Float[Array, " nodes"], tuple[Array, ...]]:
        """Per-node energies ``(L + 1,)`` and prediction errors of one sample.

        The error of a Gaussian node is :math:`\\varepsilon_l = x_l - \\mu_l`; that of a
        categorical output is :math:`x_L - \\operatorname{softmax}(\\mu_L)` (minus the gradient of
        the cross-entropy with respect to the logits). Node 0's entry is its prior energy and
        :math:`x_0 - m_0`, or zero without a prior.

        Args:
            activities: the ``L + 1`` node values.
            predictions: optional ``L`` precomputed predictions (``None`` entries are
                computed); inference passes those of layers whose input is clamped, which
                stay fixed while the activities relax.
        """
        x0 = activities[0]
        if self.prior_mean is None:
            energies = [jnp.zeros((), x0.dtype)]
            errors = [jnp.zeros_like(x0)]
        else:
            error = x0 - self.prior_mean
            energies = [0.5 * jnp.sum(error**2) / self.prior_variance]
            errors = [error]
        last = self.num_layers - 1
        if predictions is None:
            predictions = (None,) * self.num_layers
        for index, (layer, cached, variance) in enumerate(
            zip(self.layers, predictions, self.variances, strict=True)
        ):
            mu = layer(activities[index]) if cached is None else cached
            x = activities[index + 1]
            if index == last and self.output == "categorical":
                log_probs = jax.nn.log_softmax(mu)
                energies.append(-jnp.sum(x * log_probs) / variance)
                errors.append(x - jnp.exp(log_probs))
            else:
                error = x - mu
                energies.append(0.5 * jnp.sum(error**2) / variance)
                errors.append(error)
        return jnp.stack(energies), tuple(errors)

    def energies(self, activities: Sequence[Array]) -> Float[Array, " nodes"]:
        """The energy of every node, ``(L + 1,)``, for one sample (see :meth:`energies_and_errors`)."""
        return self.energies_and_errors(activities)[0]

    def energy(self, activities: Sequence[Array]) -> Float[Array, ""]:
        """The total energy :math:`E(x, \\theta)` of one sample."""
        return jnp.sum(self.energies(activities))

    def feedforward_loss(self, x0: Float[Array, "..."], target: Float[Array, "..."]) -> Float[Array, ""]:
        """The last node's energy at the feed-forward activities: the loss backprop minimises.

        Cross-entropy for a categorical network, half the squared error (over the last
        variance) for a Gaussian one. Every hidden energy is zero at the feed-forward
        activities, so this is also the total energy there (less node 0's prior).
        """
        mu = self.forward(x0)[-1]
        variance = self.variances[-1]
        if self.output == "categorical":
            return -jnp.sum(target * jax.nn.log_softmax(mu)) / variance
        return 0.5 * jnp.sum((target - mu) ** 2) / variance


def mlp(
    key: PRNGKeyArray,
    sizes: Sequence[int],
    *,
    activation: Callable = jax.nn.tanh,
    output: str = "gaussian",
    output_activation: Callable = _identity,
    variances: Sequence[float] | None = None,
    prior_variance: float | None = None,
) -> PCN:
    """A dense predictive-coding network with node sizes ``sizes``.

    Hidden predictions are :math:`\\phi(W x + b)`; the last prediction uses
    ``output_activation`` (identity: the logits of a categorical network, or the mean
    of a Gaussian one).

    Args:
        key: PRNG key for the weights.
        sizes: the size of every node, ``[n_0, n_1, ..., n_L]`` (at least two).
        activation: the hidden nonlinearity :math:`\\phi`.
        output: ``"gaussian"`` or ``"categorical"``.
        output_activation: the nonlinearity of the last prediction.
        variances: per-layer variances (see :class:`PCN`).
        prior_variance: Gaussian prior variance on node 0 (see :class:`PCN`).
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"`sizes` must list at least two positive ints, got {sizes!r}")
    layers = _dense_stack(key, tuple(sizes), check_activation(activation),
                          check_activation(output_activation, "output_activation"))
    return PCN(
        layers, (sizes[0],), output=output, variances=variances, prior_variance=prior_variance
    )


@eqx.filter_jit
def _dense_stack(key, sizes, activation, output_activation):
    # One compiled initialisation per architecture instead of one per weight shape.
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        Dense(
            sizes[i], sizes[i + 1], key=keys[i],
            activation=output_activation if i == len(sizes) - 2 else activation,
        )
        for i in range(len(sizes) - 1)
    ]
