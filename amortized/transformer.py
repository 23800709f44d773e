"""The Distribution Transformer: a prior mixture and a dataset in, a posterior mixture out.

Implements the architecture of

    G. Whittle, J. Ziomek, J. Rawling, M. A. Osborne (2025). *Distribution Transformers:
    Fast Approximate Bayesian Inference With On-The-Fly Prior Adaptation.* arXiv:2502.02463.

A prior :math:`p(\\theta) = \\sum_k w_k \\mathcal N(m_k, L_k L_k^\\top)` is a *set* of
components. Each component becomes one token: its coordinates

.. math::
    u_k = \\big(\\log w_k,\\; m_k,\\; \\log \\operatorname{diag} L_k,\\;
    \\operatorname{tril}_{-1} L_k\\big)

are unconstrained (log-weights, and the log-Cholesky chart of the positive-definite
cone, on which the log-Cholesky metric of Lin, 2019, is Euclidean), and a learned map
embeds them, :math:`h_k^{(0)} = E(u_k)`. Observations :math:`y_j` are embedded by
another network and self-attend in an encoder; a few learned *null* tokens join them,
so attention is defined for any number of observations and the count stays visible.
The component tokens then pass through decoder blocks — self-attention among the
components, cross-attention to the encoded observations, an MLP — with no positional
encoding, so the map is permutation-equivariant in the components and invariant in the
observations. The de-embedding :math:`D` reads the posterior coordinates as

.. math::
    u_k' = u_k + D\\big(h_k^{(L)}\\big) - D\\big(h_k^{(0)}\\big),

and the posterior is :math:`\\sum_k \\operatorname{softmax}(\\log w')_k\\,
\\mathcal N(m_k', L_k' L_k'^\\top)`.

**Identity initialisation.** Every residual branch of the decoder ends in a
zero-initialised projection, so an untrained model has :math:`h^{(L)} = h^{(0)}`
exactly and returns the prior unchanged (up to the rounding of
``log_softmax`` and ``exp(log)``); training only has to learn the *update*.

**Variable sizes.** Padding components (log-weight :math:`-\\infty`, see
:class:`~amortized.gmm.GaussianMixture`) and padded observations (``mask=False``)
are removed from attention, so one compiled model serves any number of components
and observations up to the padded sizes.

**Parametric priors.** For priors that are not mixtures (an inverse-gamma prior on a
variance, a uniform box), ``prior_param_dim`` switches on a learned prior embedding
(the paper's distribution embedding): the prior's parameter vector is mapped to
``num_components`` tokens, :math:`D(h^{(0)})` is the model's mixture approximation of
the prior, and the posterior is :math:`D(h^{(L)})`.

**Raw-observation read-out.** With ``observation_readout=True`` every component mean
is also shifted by a token-dependent linear map of an attention-weighted average of
the *raw* observations, :math:`\\Delta m_k = A(h_k) \\sum_j \\alpha_{kj} y_j`
(zero-initialised, so the identity start is kept). Conjugate posterior means have this
form, and the average keeps the data's full precision where observations pin a
parameter more tightly than the de-embedding MLP resolves (SLCP's funnel).

**Known sign symmetries.** When the likelihood depends on some coordinates of
:math:`\\theta` only through their absolute values and the prior is symmetric in them
(sbibm's SLCP: :math:`\\theta_3, \\theta_4` enter squared), the posterior is invariant
under flipping their signs and has :math:`2^m` mirrored copies of every mode.
``symmetric_axes`` builds that invariance into the model instead of leaving it to be
learned: the :math:`K` learned components are averaged over the sign group
(:func:`~amortized.gmm.sign_symmetrize`), so the output has :math:`2^m K` components and
is exactly invariant. Using a known symmetry of the posterior is the idea of
group-equivariant NPE (Dax, Wildberger, Buchholz, Green, Macke, Schölkopf, 2022,
*Group equivariant neural posterior estimation*, ICLR); here the group is finite and
the average is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from amortized.gmm import GaussianMixture, sign_patterns, sign_symmetrize
from probinf.validation import is_traced

__all__ = [
    "DistributionTransformer",
    "sequential_posterior",
    "component_coordinates",
    "mixture_from_coordinates",
]

_LOG_DIAG_BOUND = 15.0


def _num_coordinates(dim: int) -> int:
    return 1 + dim + dim * (dim + 1) // 2


def component_coordinates(mixture: GaussianMixture) -> Float[Array, "k coords"]:
    """The unconstrained token coordinates :math:`u_k` of every component, ``(K, 1 + d + d(d+1)/2)``.

    Padding components get a log-weight coordinate of 0 (they are masked anyway).
    """
    dim = mixture.dim
    rows, cols = np.tril_indices(dim, -1)
    log_weights = jnp.where(mixture.component_mask, mixture.log_weights, 0.0)
    log_diag = jnp.log(jnp.diagonal(mixture.scale_tril, axis1=-2, axis2=-1))
    off_diag = mixture.scale_tril[..., rows, cols]
    return jnp.concatenate([log_weights[..., None], mixture.means, log_diag, off_diag], axis=-1)


def mixture_from_coordinates(
    coordinates: Float[Array, "k coords"], component_mask: Bool[Array, " k"], dim: int
) -> GaussianMixture:
    """Inverse of :func:`component_coordinates`; masked components become padding."""
    rows, cols = np.tril_indices(dim, -1)
    logits = jnp.where(component_mask, coordinates[..., 0], -jnp.inf)
    means = coordinates[..., 1 : 1 + dim]
    log_diag = jnp.clip(coordinates[..., 1 + dim : 1 + 2 * dim], -_LOG_DIAG_BOUND, _LOG_DIAG_BOUND)
    off_diag = coordinates[..., 1 + 2 * dim :]
    tril = jnp.zeros(coordinates.shape[:-1] + (dim, dim), coordinates.dtype)
    tril = tril.at[..., rows, cols].set(off_diag)
    diag_index = jnp.arange(dim)
    tril = tril.at[..., diag_index, diag_index].set(jnp.exp(log_diag))
    eye = jnp.eye(dim, dtype=coordinates.dtype)
    tril = jnp.where(component_mask[..., None, None], tril, eye)
    means = jnp.where(component_mask[..., None], means, 0.0)
    return GaussianMixture(jax.nn.log_softmax(logits, axis=-1), means, tril)


def _zeroed(layer: eqx.nn.Linear) -> eqx.nn.Linear:
    """``layer`` with weight and bias set to zero (a branch that starts switched off)."""
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (jnp.zeros_like(layer.weight), jnp.zeros_like(layer.bias))
    )


def _mlp(in_size: int, hidden: int, out_size: int, *, key, zero_last: bool = False) -> eqx.nn.MLP:
    """One hidden layer of ``hidden`` GELU units; the output layer can start at zero."""
    mlp = eqx.nn.MLP(in_size, out_size, hidden, depth=1, activation=jax.nn.gelu, key=key)
    return eqx.tree_at(lambda m: m.layers[-1], mlp, _zeroed(mlp.layers[-1])) if zero_last else mlp


def _tokens(layer: Callable, x: Array) -> Array:
    return jax.vmap(layer)(x)


def _attention(d_model: int, num_heads: int, *, key, zero_output: bool) -> eqx.nn.MultiheadAttention:
    """Multi-head scaled dot-product attention (Vaswani et al., 2017) with query, key and
    value biases started at zero; ``zero_output`` starts the output map at zero (a branch
    that starts switched off)."""
    attention = eqx.nn.MultiheadAttention(num_heads, d_model, use_query_bias=True, use_key_bias=True,
                                          use_value_bias=True, key=key)
    biases = lambda a: (a.query_proj.bias, a.key_proj.bias, a.value_proj.bias)  # noqa: E731
    attention = eqx.tree_at(biases, attention, tuple(jnp.zeros_like(b) for b in biases(attention)))
    if zero_output:
        attention = eqx.tree_at(lambda a: a.output_proj.weight, attention,
                                jnp.zeros_like(attention.output_proj.weight))
    return attention


def _attend(attention: eqx.nn.MultiheadAttention, queries: Array, memory: Array, key_mask: Array) -> Array:
    """``queries`` attend to the rows of ``memory`` where ``key_mask`` holds."""
    mask = jnp.broadcast_to(key_mask[None, :], (queries.shape[0], memory.shape[0]))
    return attention(queries, memory, memory, mask)


class _EncoderBlock(eqx.Module):
    """Pre-norm self-attention + MLP over the observation tokens."""

    norm_attn: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm_mlp: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, d_model: int, num_heads: int, hidden: int, *, key):
        k1, k2 = jax.random.split(key)
        self.norm_attn = eqx.nn.LayerNorm(d_model)
        self.attn = _attention(d_model, num_heads, key=k1, zero_output=False)
        self.norm_mlp = eqx.nn.LayerNorm(d_model)
        self.mlp = _mlp(d_model, hidden, d_model, key=k2)

    def __call__(self, x: Array, valid: Array) -> Array:
        h = _tokens(self.norm_attn, x)
        x = x + _attend(self.attn, h, h, valid)
        return x + _tokens(self.mlp, _tokens(self.norm_mlp, x))


class _DecoderBlock(eqx.Module):
    """Components self-attend, cross-attend to the observations, then an MLP (all zero-started)."""

    norm_self: eqx.nn.LayerNorm
    self_attn: eqx.nn.MultiheadAttention
    norm_cross: eqx.nn.LayerNorm
    cross_attn: eqx.nn.MultiheadAttention
    norm_mlp: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, d_model: int, num_heads: int, hidden: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm_self = eqx.nn.LayerNorm(d_model)
        self.self_attn = _attention(d_model, num_heads, key=k1, zero_output=True)
        self.norm_cross = eqx.nn.LayerNorm(d_model)
        self.cross_attn = _attention(d_model, num_heads, key=k2, zero_output=True)
        self.norm_mlp = eqx.nn.LayerNorm(d_model)
        self.mlp = _mlp(d_model, hidden, d_model, key=k3, zero_last=True)

    def __call__(self, x: Array, component_mask: Array, memory: Array, memory_mask: Array) -> Array:
        h = _tokens(self.norm_self, x)
        x = x + _attend(self.self_attn, h, h, component_mask)
        h = _tokens(self.norm_cross, x)
        x = x + _attend(self.cross_attn, h, memory, memory_mask)
        return x + _tokens(self.mlp, _tokens(self.norm_mlp, x))


class _PriorEmbedding(eqx.Module):
    """Parameters of a non-mixture prior -> one token per mixture component."""

    trunk: eqx.nn.MLP
    component_weight: Float[Array, "k d d"]
    component_bias: Float[Array, "k d"]

    def __init__(self, param_dim: int, num_components: int, d_model: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.trunk = _mlp(param_dim, d_model, d_model, key=k1)
        bound = 1.0 / math.sqrt(d_model)
        self.component_weight = jax.random.uniform(
            k2, (num_components, d_model, d_model), minval=-bound, maxval=bound
        )
        self.component_bias = jax.random.normal(k3, (num_components, d_model))

    def __call__(self, params: Array) -> Array:
        trunk = self.trunk(params)
        return jnp.einsum("kij,j->ki", self.component_weight, trunk) + self.component_bias


class _ObservationReadout(eqx.Module):
    """Component-mean shifts read from the *raw* observations.

    Each component token :math:`h_k` attends over the real observations (queries from
    :math:`h_k`, keys from the encoded observations) and reads their raw average
    :math:`\\bar y_k = \\sum_j \\alpha_{kj} y_j`; a token-dependent matrix maps it to a
    shift of the component mean, :math:`\\Delta m_k = A(h_k)\\,\\bar y_k`. Conjugate
    posterior means have exactly this form (a component-specific linear map of the data
    average), and a convex combination of the observations keeps their full precision
    where a de-embedding MLP would have to reproduce it through layer norms (SLCP's
    funnel, where the observations pin :math:`\\theta_{1,2}` to within :math:`10^{-3}`).
    The query map and :math:`A` start at zero: uniform attention, no shift, so the
    untrained model is unchanged.
    """

    query: eqx.nn.Linear
    key_proj: eqx.nn.Linear
    mix: eqx.nn.Linear
    dim: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)

    def __init__(self, d_model: int, dim: int, obs_dim: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.query = _zeroed(eqx.nn.Linear(d_model, d_model, key=k1))
        self.key_proj = eqx.nn.Linear(d_model, d_model, key=k2)
        self.mix = _zeroed(eqx.nn.Linear(d_model, dim * obs_dim, key=k3))
        self.dim, self.obs_dim = dim, obs_dim

    def __call__(self, tokens: Array, memory: Array, observations: Array, mask: Array) -> Array:
        queries, keys = _tokens(self.query, tokens), _tokens(self.key_proj, memory)
        logits = queries @ keys.T / math.sqrt(queries.shape[-1])
        weights = jax.nn.softmax(jnp.where(mask[None, :], logits, -jnp.inf), axis=-1)
        average = weights @ jnp.where(mask[:, None], observations, 0.0)
        maps = _tokens(self.mix, tokens).reshape(-1, self.dim, self.obs_dim)
        return jnp.einsum("kij,kj->ki", maps, average)


class DistributionTransformer(eqx.Module):
    """Maps (prior mixture, dataset) to an approximate posterior mixture.

    See the module docstring for the architecture (Whittle et al., 2025). Calling the
    model:

    ``model(prior, observations, mask=None) -> GaussianMixture``

    * ``prior``: a :class:`~amortized.gmm.GaussianMixture` over :math:`\\theta`
      (``dim``), or for a model built with ``prior_param_dim``, the prior's parameter
      vector ``(prior_param_dim,)``.
    * ``observations``: ``(n, obs_dim)`` — a set of observation tokens (``n >= 1``).
    * ``mask``: optional ``(n,)`` booleans marking real observations (padding is ``False``).

    A leading batch axis on ``observations`` (``(batch, n, obs_dim)``) maps over the
    batch; the prior may then be batched too or shared. The result is a (batched)
    mixture with as many components as the prior (``num_components`` for parametric
    priors, times :math:`2^m` with ``m = len(symmetric_axes)``).

    Args:
        dim: dimension of the parameter :math:`\\theta`.
        obs_dim: length of one observation token.
        key: PRNG key for the initial weights.
        d_model: token width.
        num_heads: attention heads (must divide ``d_model``).
        num_encoder_layers: self-attention blocks over the observations.
        num_decoder_layers: blocks over the components (self- and cross-attention).
        mlp_ratio: hidden width of every MLP as a multiple of ``d_model``.
        num_null_tokens: learned observation tokens that are always present.
        prior_param_dim: length of a parametric prior's parameter vector (``None``:
            priors are mixtures).
        num_components: mixture size of the output for parametric priors.
        symmetric_axes: coordinates of :math:`\\theta` whose sign the posterior does not
            depend on (see the module docstring); parametric priors only, and the prior
            must be symmetric in them too. Default ``()``: no symmetry assumed.
        observation_readout: add to every component mean a learned map of an
            attention-weighted average of the raw observations (see the module
            docstring). Default ``False``.
    """

    dim: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)
    prior_param_dim: int | None = eqx.field(static=True)
    num_components: int | None = eqx.field(static=True)
    symmetric_axes: tuple[int, ...] = eqx.field(static=True)
    component_embedding: eqx.nn.MLP
    component_de_embedding: eqx.nn.MLP
    final_norm: eqx.nn.LayerNorm
    observation_embedding: eqx.nn.MLP
    null_tokens: Float[Array, "m d"]
    encoder: tuple[_EncoderBlock, ...]
    memory_norm: eqx.nn.LayerNorm
    decoder: tuple[_DecoderBlock, ...]
    prior_embedding: _PriorEmbedding | None
    observation_readout: _ObservationReadout | None

    def __init__(
        self,
        dim: int,
        obs_dim: int,
        *,
        key: PRNGKeyArray,
        d_model: int = 64,
        num_heads: int = 4,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 2,
        mlp_ratio: int = 2,
        num_null_tokens: int = 1,
        prior_param_dim: int | None = None,
        num_components: int | None = None,
        symmetric_axes: tuple[int, ...] = (),
        observation_readout: bool = False,
    ):
        for name, value in (("dim", dim), ("obs_dim", obs_dim), ("d_model", d_model),
                            ("num_heads", num_heads), ("mlp_ratio", mlp_ratio),
                            ("num_null_tokens", num_null_tokens)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        for name, value in (("num_encoder_layers", num_encoder_layers),
                            ("num_decoder_layers", num_decoder_layers)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}")
        if d_model % num_heads:
            raise ValueError(f"`num_heads` ({num_heads}) must divide `d_model` ({d_model})")
        if (prior_param_dim is None) != (num_components is None):
            raise ValueError(
                "`prior_param_dim` and `num_components` go together: give both for parametric "
                f"priors or neither for mixture priors, got {prior_param_dim!r} and {num_components!r}"
            )
        if prior_param_dim is not None:
            for name, value in (("prior_param_dim", prior_param_dim), ("num_components", num_components)):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                    raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        sign_patterns(dim, symmetric_axes, "symmetric_axes")
        if symmetric_axes and prior_param_dim is None:
            raise ValueError(
                "`symmetric_axes` needs a parametric prior (`prior_param_dim`): a mixture prior "
                "need not be symmetric, and fed back as the next prior the mixture would double "
                "in size for every axis"
            )
        self.symmetric_axes = tuple(int(a) for a in symmetric_axes)
        self.dim, self.obs_dim = int(dim), int(obs_dim)
        self.prior_param_dim = None if prior_param_dim is None else int(prior_param_dim)
        self.num_components = None if num_components is None else int(num_components)
        hidden = mlp_ratio * d_model
        coords = _num_coordinates(self.dim)
        keys = jax.random.split(key, 7)
        self.component_embedding = _mlp(coords, d_model, d_model, key=keys[0])
        self.component_de_embedding = _mlp(d_model, d_model, coords, key=keys[1])
        self.final_norm = eqx.nn.LayerNorm(d_model)
        self.observation_embedding = _mlp(self.obs_dim, d_model, d_model, key=keys[2])
        self.null_tokens = 0.02 * jax.random.normal(keys[3], (num_null_tokens, d_model))
        self.encoder = tuple(
            _EncoderBlock(d_model, num_heads, hidden, key=k)
            for k in jax.random.split(keys[4], num_encoder_layers)
        )
        self.memory_norm = eqx.nn.LayerNorm(d_model)
        self.decoder = tuple(
            _DecoderBlock(d_model, num_heads, hidden, key=k)
            for k in jax.random.split(keys[5], num_decoder_layers)
        )
        self.prior_embedding = (
            None if prior_param_dim is None
            else _PriorEmbedding(self.prior_param_dim, self.num_components, d_model, key=keys[6])
        )
        if not isinstance(observation_readout, bool):
            raise TypeError(f"`observation_readout` must be a bool, got {observation_readout!r}")
        self.observation_readout = (
            _ObservationReadout(d_model, self.dim, self.obs_dim, key=jax.random.fold_in(key, 7)) if observation_readout else None
        )

    @property
    def parametric_prior(self) -> bool:
        """Whether priors are parameter vectors (``True``) or mixtures (``False``)."""
        return self.prior_embedding is not None

    # -- the map ------------------------------------------------------------------
    def _encode_observations(self, observations: Array, mask: Array) -> tuple[Array, Array]:
        tokens = _tokens(self.observation_embedding, observations)
        tokens = jnp.concatenate([tokens, self.null_tokens.astype(tokens.dtype)], axis=0)
        valid = jnp.concatenate([mask, jnp.ones(self.null_tokens.shape[0], bool)])
        for block in self.encoder:
            tokens = block(tokens, valid)
        return _tokens(self.memory_norm, tokens), valid

    def _de_embed(self, tokens: Array, *, normed: bool = False) -> Array:
        """Token -> mixture coordinates; ``normed``: ``tokens`` already went through ``final_norm``."""
        return _tokens(self.component_de_embedding, tokens if normed else _tokens(self.final_norm, tokens))

    def forward(
        self, prior, observations: Float[Array, "n obs_dim"], mask: Bool[Array, " n"]
    ) -> tuple[GaussianMixture, GaussianMixture]:
        """Unbatched, unchecked map (for use inside ``jit``/``vmap``/training).

        Returns ``(prior_mixture, posterior)``: the prior as the model represents it
        (the prior itself for mixture priors, the learned approximation for parametric
        priors) and the posterior.
        """
        if self.prior_embedding is None:
            component_mask = prior.component_mask
            coords = component_coordinates(prior)
            start = _tokens(self.component_embedding, coords)
            prior_mixture = prior
        else:
            component_mask = jnp.ones(self.num_components, bool)
            start = self.prior_embedding(prior)
            coords = self._de_embed(start)
            prior_mixture = mixture_from_coordinates(coords, component_mask, self.dim)
        memory, memory_mask = self._encode_observations(observations, mask)
        tokens = start
        for block in self.decoder:
            tokens = block(tokens, component_mask, memory, memory_mask)
        final = _tokens(self.final_norm, tokens)
        if self.prior_embedding is None:
            # Reading the *change* of each token keeps the untrained map an exact identity.
            post_coords = coords + self._de_embed(final, normed=True) - self._de_embed(start)
        else:
            post_coords = self._de_embed(final, normed=True)
        if self.observation_readout is not None:
            shift = self.observation_readout(final, memory[: observations.shape[0]], observations, mask)
            post_coords = post_coords.at[..., 1 : 1 + self.dim].add(shift)
        posterior = mixture_from_coordinates(post_coords, component_mask, self.dim)
        if self.symmetric_axes:
            prior_mixture = sign_symmetrize(prior_mixture, self.symmetric_axes)
            posterior = sign_symmetrize(posterior, self.symmetric_axes)
        return prior_mixture, posterior

    def update(self, prior, observations: Float[Array, "n obs_dim"], mask: Bool[Array, " n"]) -> GaussianMixture:
        """The posterior alone, unbatched and unchecked (``forward(...)[1]``), for traced code."""
        return self.forward(prior, observations, mask)[1]

    # -- the checked public call --------------------------------------------------------
    def _check(self, prior, observations, mask):
        observations = jnp.asarray(observations)
        if observations.ndim not in (2, 3) or observations.shape[-1] != self.obs_dim:
            raise ValueError(
                f"`observations` must have shape (n, {self.obs_dim}) or (batch, n, {self.obs_dim}), "
                f"got {observations.shape}"
            )
        if observations.shape[-2] == 0:
            raise ValueError("`observations` is empty: at least one observation is needed")
        batched = observations.ndim == 3
        if mask is None:
            mask = jnp.ones(observations.shape[:-1], bool)
        mask = jnp.asarray(mask)
        if mask.shape != observations.shape[:-1]:
            raise ValueError(f"`mask` must have shape {observations.shape[:-1]}, got {mask.shape}")
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`mask` must be boolean, got dtype {mask.dtype}")
        # Value checks on the host (NumPy): as JAX ops they cost several eager dispatches
        # per call, a sizeable part of a millisecond posterior call on a CPU.
        if not is_traced(mask) and not np.all(np.any(np.asarray(mask), axis=-1)):
            raise ValueError("`mask` selects no observation for some dataset: datasets must be non-empty")
        if not is_traced(mask, observations) and not np.all(
                np.isfinite(np.asarray(observations)[np.asarray(mask)])):
            raise ValueError("`observations` must be finite")
        if self.prior_embedding is None:
            if not isinstance(prior, GaussianMixture):
                raise TypeError(
                    "`prior` must be a GaussianMixture for this model (built without "
                    f"prior_param_dim), got {type(prior).__name__}"
                )
            if prior.dim != self.dim:
                raise ValueError(f"`prior` must be over dim {self.dim}, got a mixture over dim {prior.dim}")
            prior_batched = prior.log_weights.ndim == 2
            if prior.log_weights.ndim not in (1, 2):
                raise ValueError(f"`prior` must have at most one batch axis, got log_weights {prior.log_weights.shape}")
        else:
            prior = jnp.asarray(prior, dtype=jnp.result_type(float))
            if prior.ndim not in (1, 2) or prior.shape[-1] != self.prior_param_dim:
                raise ValueError(
                    f"`prior` must be a parameter vector of length {self.prior_param_dim} "
                    f"(or a batch of them), got shape {prior.shape}"
                )
            prior_batched = prior.ndim == 2
        if prior_batched and not batched:
            raise ValueError("a batch of priors needs a batch of datasets: `observations` has no batch axis")
        if prior_batched:
            prior_size = jax.tree_util.tree_leaves(prior)[0].shape[0]
            if prior_size != observations.shape[0]:
                raise ValueError(
                    f"`prior` holds {prior_size} priors but `observations` holds {observations.shape[0]} datasets"
                )
        return prior, observations, mask, batched, prior_batched

    def __call__(self, prior, observations, mask=None) -> GaussianMixture:
        prior, observations, mask, batched, prior_batched = self._check(prior, observations, mask)
        return _posterior(self, prior, observations, mask, batched, prior_batched)

    def prior_approximation(self, prior_params: Float[Array, " p"]) -> GaussianMixture:
        """The model's mixture representation of a parametric prior (models with ``prior_param_dim``)."""
        if self.prior_embedding is None:
            raise ValueError("this model takes mixture priors; `prior_approximation` is for parametric priors")
        prior_params = jnp.asarray(prior_params, dtype=jnp.result_type(float))
        if prior_params.shape != (self.prior_param_dim,):
            raise ValueError(f"`prior_params` must have shape ({self.prior_param_dim},), got {prior_params.shape}")
        coords = self._de_embed(self.prior_embedding(prior_params))
        mixture = mixture_from_coordinates(coords, jnp.ones(self.num_components, bool), self.dim)
        return sign_symmetrize(mixture, self.symmetric_axes)


@eqx.filter_jit
def _posterior(model, prior, observations, mask, batched: bool, prior_batched: bool):
    def one(p, y, m):
        return model.forward(p, y, m)[1]

    if not batched:
        return one(prior, observations, mask)
    return jax.vmap(one, in_axes=(0 if prior_batched else None, 0, 0))(prior, observations, mask)


def sequential_posterior(
    model: DistributionTransformer,
    prior: GaussianMixture,
    observations: Float[Array, "T n obs_dim"],
    mask: Bool[Array, "T n"] | None = None,
) -> GaussianMixture:
    """Sequential inference: each batch's posterior becomes the prior of the next.

    With :math:`q_0` = ``prior`` and :math:`q_t = \\mathrm{DT}(q_{t-1}, y_t)`, returns all
    :math:`q_1, \\dots, q_T` as a mixture whose arrays have a leading ``T`` axis (the last
    one is the posterior given every batch). For i.i.d. data the exact answer does not
    depend on how the data are split, which makes this a check of a trained model.
    Runs under ``lax.scan``.

    Args:
        model: a mixture-prior :class:`DistributionTransformer`.
        prior: the first prior.
        observations: ``(T, n, obs_dim)``: ``T`` batches of ``n`` observations.
        mask: ``(T, n)`` booleans (default all ``True``); every batch needs one ``True``.
    """
    if model.parametric_prior:
        raise ValueError("sequential inference needs a model whose priors are mixtures (no prior_param_dim)")
    observations = jnp.asarray(observations)
    if observations.ndim != 3:
        raise ValueError(f"`observations` must have shape (T, n, {model.obs_dim}), got {observations.shape}")
    if observations.shape[0] == 0:
        raise ValueError("`observations` is empty: no batch to condition on")
    mask = jnp.ones(observations.shape[:2], bool) if mask is None else jnp.asarray(mask)
    model._check(prior, observations, mask)
    if prior.log_weights.ndim != 1:
        raise ValueError("`prior` must be a single mixture (no batch axis)")
    return _sequential(model, prior, observations, mask)


@eqx.filter_jit
def _sequential(model, prior, observations, mask):
    def step(current, batch):
        posterior = model.update(current, *batch)
        return posterior, posterior

    _, posteriors = jax.lax.scan(step, prior, (observations, mask))
    return posteriors
