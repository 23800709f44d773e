"""Generative use of a predictive-coding network: sampling, reconstruction, associative recall.

In a generative network node 0 is the top latent, with the Gaussian prior
:math:`x_0 \\sim \\mathcal N(m_0, \\sigma_0^2 I)`, and the last node is the data; each layer
predicts the mean of the node below it, so the energy is the negative log joint density
(up to constants) of the hierarchical Gaussian model

.. math:: x_l \\mid x_{l-1} \\sim \\mathcal N(\\mu_l(x_{l-1}), \\sigma_l^2 I).

Minimising it over the latents with the data clamped (:func:`probinf.pcn.infer` with
``y`` only) finds their joint MAP estimate; for a linear network this is the exact
posterior mean.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probinf.pcn._checks import check_key, check_node_data
from probinf.pcn.inference import _predict, infer
from probinf.pcn.network import PCN
from probinf.validation import check_positive_int, is_traced

__all__ = ["sample", "reconstruct", "recall"]


def _check_generative(net: PCN, name: str, need_prior: bool) -> None:
    if net.output != "gaussian":
        raise ValueError(f"`{name}` needs a generative network with a Gaussian last node")
    if need_prior and net.prior_mean is None:
        raise ValueError(
            f"`{name}` needs a prior on node 0: build the network with `prior_variance`"
        )


@eqx.filter_jit
def _sample(key, net, num_samples, noise):
    key_latent, key_noise = jax.random.split(key)
    latent = net.prior_mean + jnp.sqrt(net.prior_variance) * jax.random.normal(
        key_latent, (num_samples, *net.node_shapes[0]), net.prior_mean.dtype
    )
    if not noise:
        return jax.vmap(lambda z: net.forward(z)[-1])(latent)
    # Ancestral sampling: every node is drawn around its prediction.
    keys = jax.random.split(key_noise, net.num_layers)
    value = latent
    for layer, variance, k in zip(net.layers, net.variances, keys, strict=True):
        mean = jax.vmap(layer)(value)
        value = mean + jnp.sqrt(variance) * jax.random.normal(k, mean.shape, mean.dtype)
    return value


def sample(
    key: PRNGKeyArray, net: PCN, num_samples: int, *, noise: bool = False
) -> Float[Array, "num_samples ..."]:
    """Draw from a generative network, ``(num_samples, *node_shapes[-1])``.

    Node 0 is drawn from its prior and passed down the network. With ``noise=False`` each
    sample is the mean prediction of the last node given the latent (the usual way to
    display samples); with ``noise=True`` every node is drawn from
    :math:`\\mathcal N(\\mu_l, \\sigma_l^2 I)` (exact ancestral sampling).

    Args:
        key: PRNG key.
        net: a generative network with a prior on node 0.
        num_samples: the number of draws.
        noise: add each node's Gaussian noise (ancestral sampling).

    Raises:
        ValueError: a network without a prior or with a categorical output; ``num_samples < 1``.
    """
    check_key(key)
    _check_generative(net, "sample", need_prior=True)
    num_samples = check_positive_int(num_samples, "num_samples")
    return _sample(key, net, num_samples, bool(noise))


def reconstruct(
    net: PCN,
    y: Float[Array, "batch ..."],
    *,
    steps: int = 100,
    step_size: float = 0.1,
    method: str = "euler",
) -> Float[Array, "batch ..."]:
    """Encode ``y`` by inference and decode it again: the prediction from the inferred node 0.

    The data are clamped at the last node, all other nodes _relax for ``steps`` steps, and
    the inferred node 0 is passed down the network.

    Args:
        net: a generative network (Gaussian last node).
        y: ``(batch, *node_shapes[-1])`` data.
        steps: the number of inference steps ``T``.
        step_size: the activity step size :math:`\\eta`.
        method: ``"euler"`` or ``"heun"``.

    Returns:
        The reconstructions, shaped like ``y``.

    Raises:
        ValueError: as :func:`probinf.pcn.infer`, or a categorical network.
    """
    _check_generative(net, "reconstruct", need_prior=False)
    result = infer(net, None, y, steps=steps, step_size=step_size, method=method)
    return _predict(net, result.activities[0])


def recall(
    net: PCN,
    y: Float[Array, "batch ..."],
    mask: Array,
    *,
    steps: int = 100,
    step_size: float = 0.1,
    method: str = "euler",
) -> Float[Array, "batch ..."]:
    """Associative recall: complete partially observed data (Salvatori et al. 2021,
    "Associative memories via predictive coding", NeurIPS).

    The observed entries of the last node (``mask`` true) are clamped, everything else
    (the latents and the missing entries) relaxes, and the completed last node is returned.
    Entries of ``y`` where ``mask`` is false are ignored.

    Args:
        net: a generative network (Gaussian last node).
        y: ``(batch, *node_shapes[-1])`` data; values at unobserved entries are unused.
        mask: boolean like ``y`` (or like one row of it), true where observed.
        steps: the number of inference steps ``T``.
        step_size: the activity step size :math:`\\eta`.
        method: ``"euler"`` or ``"heun"``.

    Raises:
        ValueError: as :func:`probinf.pcn.infer`, a mask of the wrong shape, or a
            categorical network.
    """
    _check_generative(net, "recall", need_prior=False)
    xp = jnp if is_traced(y, mask) else np
    y, mask = xp.asarray(y), xp.asarray(mask)
    if mask.shape in (y.shape, y.shape[1:]):  # unobserved entries may hold anything, even NaN
        y = xp.where(mask.astype(bool), y, 0.0)
    _, y, mask, _ = check_node_data(net, None, y, mask)
    result = infer(net, None, y, y_mask=mask, steps=steps, step_size=step_size, method=method)
    return result.activities[-1]
