r"""Probabilistic integral circuits (PICs) and their materialisation into circuits.

A PIC extends a probabilistic circuit with *integral units* over continuous
latent variables (Gala, de Campos, Peharz, Vergari & Quaeghebeur, "Probabilistic
Integral Circuits", AISTATS 2024; Gala, de Campos, Vergari & Quaeghebeur,
"Scaling Continuous Latent Variable Models as Probabilistic Integral Circuits",
NeurIPS 2024). It is built from a region graph (`circuits.region_graph`), tree
or DAG shaped. Every region $R$ other than the root computes a function
$g_R(x_R, z_R)$ of its variables and of one continuous latent $z_R$:

* a **leaf region** holds input functions, $g_R(x_R, z) = \prod_{v \in R} p(x_v \mid z)$,
  a distribution whose parameters are functions of $z$;
* a partition of $R$ into children $c_1, \dots, c_A$ is an **integral unit** over
  fresh latents. A **CP merge** gives the children one shared latent $y$,
  $$h(x_R, z_R) = \int f(z_R, y) \prod_{a} g_{c_a}(x_{c_a}, y)\, dy,$$
  and a **Tucker merge** (binary partitions) one latent per child,
  $$h(x_R, z_R) = \iint f(z_R, y_1, y_2)\, g_{c_1}(x_{c_1}, y_1)\, g_{c_2}(x_{c_2}, y_2)\, dy_1\, dy_2;$$
* a region with several partitions mixes them: $g_R = \sum_p \omega_p h_p$ with
  $\omega$ on the simplex (a PIC sum unit);
* the root has no latent: its functions are $f(y)$ or $f(y_1, y_2)$, and the PIC
  computes $c(x)$, a positive function of $x$ alone.

With one quadrature rule $\{(z_k, w_k)\}_{k=1}^K$ (`circuits.quadrature`) for
every latent, every integral becomes a finite sum and the PIC becomes an ordinary
circuit, the **quadrature PC (QPC)**: region $R$ gets $K$ units $g_R(x_R, z_k)$, a
CP-merge partition a CP layer (Hadamard product, then sum) with weights
$W_{oj} = w_j f(z_o, z_j)$, a Tucker merge a Tucker layer (Kronecker product, then
sum) with $W_{o,(i,j)} = w_i w_j f(z_o, z_i, z_j)$, and the input units the
distributions $p(x_v \mid z_k)$. `IntegralCircuit.materialize` returns it as a
compiled `circuits.Circuit`, so every query (likelihood, marginals, conditionals,
MAP, sampling) runs on it, and gradients of any query flow back through the
weights into the functions.

Two normalisations (`normalization=`):

* `"units"` (the papers' choice): each integral unit's weights are normalised by
  their quadrature sum, $W_{oj} \propto w_j f(z_o, z_j)$, so the QPC is a normalised
  circuit ($Z = 1$); the PIC it approximates uses the conditionals
  $f(z, y) / \int f(z, y')\,dy'$;
* `"global"`: the weights are the raw $w_j f(z_o, z_j)$ and every query divides by
  $Z_K$, the QPC's partition function; as $K$ grows $Z_K \to Z = \int c(x)\,dx$, so
  the QPC converges to the PIC $p(x) = c(x) / Z$ with the functions as given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from circuits.circuit import Circuit
from circuits.functions import SHARING, FunctionGroup, NeuralFunctions
from circuits.inputs import Bernoulli, Binomial, Categorical, Gaussian, InputLayer
from circuits.kernels import BACKENDS
from circuits.learning import (
    _MaterialisedValidation,
    _NegativeLogLikelihood,
    _prepare_data,
    _result,
    _train,
)
from circuits.quadrature import QuadratureRule
from circuits.region_graph import RegionGraph
from circuits.structure import CircuitStructure
from probinf import train as engine
from probinf.validation import check_positive_int

__all__ = [
    "IntegralCircuit",
    "integral_circuit",
    "fit_integral",
    "IntegralTrainResult",
    "MERGES",
    "NORMALIZATIONS",
    "input_output_dim",
]

#: Merge kinds: ``"cp"`` (children share one latent) and ``"tucker"`` (one latent per child).
MERGES = ("cp", "tucker")
#: Normalisations of the materialised circuit (see the module docstring).
NORMALIZATIONS = ("units", "global")


# ---------------------------------------------------------------- inputs
def input_output_dim(input_layer: InputLayer) -> int:
    """Raw numbers an input function returns per latent value for ``input_layer``.

    Bernoulli and binomial: one logit; categorical: ``num_categories`` logits;
    Gaussian: location and log-scale.
    """
    if isinstance(input_layer, (Bernoulli, Binomial)):
        return 1
    if isinstance(input_layer, Categorical):
        return input_layer.num_categories
    if isinstance(input_layer, Gaussian):
        return 2
    raise TypeError(f"`input_layer` {type(input_layer).__name__} is not supported by integral "
                    "circuits (use Bernoulli, Binomial, Categorical or Gaussian)")


def _input_params(input_layer: InputLayer, raw):
    """Input-layer parameters ``(S, K, ...)`` from raw function values ``(S, K, m)``."""
    if isinstance(input_layer, (Bernoulli, Binomial)):
        return {"logits": raw[..., 0]}
    if isinstance(input_layer, Categorical):
        return {"logits": raw}
    return {"loc": raw[..., 0], "log_scale": raw[..., 1]}


def _data_output_bias(input_layer: InputLayer, data_slots: np.ndarray) -> np.ndarray:
    """Per-slot raw values matching the data's per-variable statistics, ``(S, m)``."""
    data_slots = np.asarray(data_slots, np.float64)
    if isinstance(input_layer, (Bernoulli, Binomial)):
        n = 1 if isinstance(input_layer, Bernoulli) else input_layer.total_count
        p = np.clip((data_slots.mean(0) / n + 0.01) / 1.02, 1e-3, 1 - 1e-3)
        return np.log(p / (1 - p))[:, None]
    if isinstance(input_layer, Categorical):
        c = input_layer.num_categories
        counts = np.stack([(data_slots == k).sum(0) for k in range(c)], axis=-1) + 1.0
        return np.log(counts / counts.sum(-1, keepdims=True))
    std = np.maximum(data_slots.std(0), input_layer.min_scale)
    return np.stack([data_slots.mean(0), np.log(std)], axis=-1)


# ---------------------------------------------------------------- plans
@functools.lru_cache(maxsize=64)
def _plan(region_graph: RegionGraph, num_units: int, merge: str) -> CircuitStructure:
    """The folded plan of the QPC with ``num_units`` quadrature nodes (cached per graph)."""
    return CircuitStructure(region_graph, num_units, merge)


def _expected_input_dim(merge: str, is_root: bool) -> int:
    integrated = 1 if merge == "cp" else 2
    return integrated + (0 if is_root else 1)


def _grid(nodes, dims: int):
    """All ``K^dims`` tuples of nodes, ``(K^dims, dims)``, the last coordinate fastest."""
    mesh = jnp.meshgrid(*([nodes] * dims), indexing="ij")
    return jnp.stack([m.reshape(-1) for m in mesh], axis=-1)


class IntegralCircuit(eqx.Module):
    """A probabilistic integral circuit (see the module docstring).

    Build one with :func:`integral_circuit` (neural functions) or directly from
    function groups (e.g. the analytic ones of `circuits.analytic`).

    Args:
        region_graph: the region graph (tree or DAG).
        input_layer: the input distribution family, e.g. ``Bernoulli()``.
        input_functions: a `FunctionGroup` with one function per input slot
            (``structure.num_slots``), ``input_dim=1`` and
            ``output_dim=input_output_dim(input_layer)``.
        inner_functions: one `FunctionGroup` per folded stage ``d`` with one
            function per fold (``len(structure.stages[d][0].partitions)``), returning
            ``log f``; its points are ``(z, y)`` (CP) or ``(z, y1, y2)`` (Tucker), without
            ``z`` at the root stage.
        merge: ``"cp"`` or ``"tucker"``.
        mix_logits: per stage, ``(M, P)`` logits of the mixing weights of regions with
            several partitions (``None``: uniform).
        domain: the latent domain ``(a, b)``; infinite ends are allowed (quadrature then
            integrates over a finite part of it).
        normalization: ``"units"`` or ``"global"``.

    Attributes:
        structure: the folded plan (its ``num_units`` is 1; the QPC's is ``K``). Fold
            ``f`` of stage ``d`` computes partition ``structure.stages[d][0].partitions[f]``.

    Raises:
        ValueError: naming the argument for a shape mismatch, an unknown ``merge`` or
            ``normalization``, or a Tucker merge over a non-binary partition (naming
            the region).
    """

    structure: CircuitStructure = eqx.field(static=True)
    input_layer: InputLayer = eqx.field(static=True)
    input_functions: FunctionGroup
    inner_functions: tuple
    mix_logits: tuple
    domain: tuple = eqx.field(static=True)
    normalization: str = eqx.field(static=True)

    def __init__(self, region_graph: RegionGraph, input_layer: InputLayer,
                 input_functions: FunctionGroup, inner_functions, *, merge: str = "cp",
                 mix_logits=None, domain=(-1.0, 1.0), normalization: str = "units"):
        if not isinstance(region_graph, RegionGraph):
            raise TypeError(f"`region_graph` must be a RegionGraph, got "
                            f"{type(region_graph).__name__}")
        if not region_graph.partitions:
            raise ValueError("`region_graph` has no partition: the root must be split at least once")
        if not isinstance(input_layer, InputLayer):
            raise TypeError(f"`input_layer` must be an InputLayer, got {type(input_layer).__name__}")
        output_dim = input_output_dim(input_layer)
        if merge not in MERGES:
            raise ValueError(f"`merge` must be one of {MERGES}, got {merge!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got "
                             f"{normalization!r}")
        structure = _plan(region_graph, 1, merge)
        _check_group(input_functions, "input_functions", structure.num_slots, 1, output_dim)
        inner_functions = tuple(inner_functions)
        if len(inner_functions) != len(structure.stages):
            raise ValueError(f"`inner_functions` must hold one function group per stage "
                             f"({len(structure.stages)}), got {len(inner_functions)}")
        for d, ((inner, _), group) in enumerate(zip(structure.stages, inner_functions,
                                                    strict=True)):
            is_root = d == len(structure.stages) - 1
            _check_group(group, f"inner_functions[{d}]", inner.index.shape[0],
                         _expected_input_dim(merge, is_root), 1)
        if mix_logits is None:
            mix_logits = tuple(None if m is None else jnp.zeros(m.index.shape)
                               for _, m in structure.stages)
        mix_logits = tuple(mix_logits)
        if len(mix_logits) != len(structure.stages):
            raise ValueError(f"`mix_logits` must hold one entry per stage ({len(structure.stages)}),"
                             f" got {len(mix_logits)}")
        for d, ((_, mixing), logits) in enumerate(zip(structure.stages, mix_logits, strict=True)):
            expected = None if mixing is None else mixing.index.shape
            got = None if logits is None else jnp.shape(logits)
            if expected != got:
                raise ValueError(f"`mix_logits[{d}]` must be {'None' if expected is None else expected}"
                                 f", got {'None' if got is None else got}")
        try:
            low, high = (float(v) for v in domain)
        except (TypeError, ValueError):
            raise ValueError(f"`domain` must be a pair (a, b), got {domain!r}") from None
        if not low < high or math.isnan(low) or math.isnan(high):
            raise ValueError(f"`domain` must satisfy a < b, got {domain!r}")
        self.structure = structure
        self.input_layer = input_layer
        self.input_functions = input_functions
        self.inner_functions = inner_functions
        self.mix_logits = tuple(None if m is None else jnp.asarray(m) for m in mix_logits)
        self.domain = (low, high)
        self.normalization = normalization

    # ----------------------------------------------------------- accessors
    @property
    def region_graph(self) -> RegionGraph:
        return self.structure.region_graph

    @property
    def merge(self) -> str:
        return self.structure.layer_kind

    @property
    def num_variables(self) -> int:
        return self.structure.num_variables

    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars (function weights and mixing logits)."""
        total = self.input_functions.num_parameters
        total += sum(g.num_parameters for g in self.inner_functions)
        total += sum(int(np.prod(m.shape)) for m in self.mix_logits if m is not None)
        return int(total)

    def check_rule(self, rule: QuadratureRule) -> None:
        """Raise a ValueError naming ``rule`` if it does not integrate over the latent domain.

        On a bounded domain the rule's interval must be the domain; on an unbounded
        one it must lie inside it (the QPC then ignores the rest of the domain).
        """
        if not isinstance(rule, QuadratureRule):
            raise TypeError(f"`rule` must be a QuadratureRule (see circuits.quadrature_rule), got "
                            f"{type(rule).__name__}")
        low, high = self.domain
        a, b = rule.interval
        if math.isfinite(low) and not np.isclose(a, low) or \
                math.isfinite(high) and not np.isclose(b, high):
            raise ValueError(f"`rule` integrates over {rule.interval} but the latent domain is "
                             f"{self.domain}; build the rule on the domain")
        if a < low or b > high:
            raise ValueError(f"`rule` interval {rule.interval} leaves the latent domain "
                             f"{self.domain}")

    # ------------------------------------------------------ materialisation
    def materialize(self, rule: QuadratureRule, backend: str = "auto") -> Circuit:
        """The quadrature circuit (QPC) with ``rule``'s ``K`` nodes on every latent.

        Differentiable with respect to every function parameter and jit-compatible
        (``rule`` and ``backend`` are static).

        Args:
            rule: a `QuadratureRule` on the latent domain (see :meth:`check_rule`).
            backend: the circuit's sum-layer backend (see `circuits.compile_circuit`).

        Returns:
            A `circuits.Circuit` with ``K`` units per region, normalised
            (``normalized=True``) for ``normalization="units"``, divided by its
            partition function otherwise.
        """
        self.check_rule(rule)
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
        dtype = jnp.result_type(float)
        return _materialize(self, jnp.asarray(rule.points, dtype),
                            jnp.asarray(rule.log_weights, dtype), backend)


@eqx.filter_jit
def _materialize(pic: IntegralCircuit, nodes, log_w, backend: str) -> Circuit:
    """The body of `IntegralCircuit.materialize`; nodes and log-weights ``(K,)`` are traced,
    so every rule with ``K`` nodes shares one compiled function."""
    k = nodes.shape[0]
    plan = _plan(pic.region_graph, k, pic.merge)
    integrated = 1 if pic.merge == "cp" else 2
    # log of the product of the weights of the integrated coordinates, (K^integrated,)
    log_w_integrated = _grid(log_w, integrated).sum(-1)
    sum_logits = []
    last = len(plan.stages) - 1
    for d, group in enumerate(pic.inner_functions):
        is_root = d == last
        dims = integrated + (0 if is_root else 1)
        values = group(_grid(nodes, dims))[..., 0]  # (F, K^dims)
        values = values.reshape(values.shape[0], 1 if is_root else k, k**integrated)
        sum_logits.append(values + log_w_integrated)
    mix_logits = []
    for (inner, mixing), logits in zip(plan.stages, pic.mix_logits, strict=True):
        if mixing is None:
            mix_logits.append(None)
            continue
        valid = jnp.asarray(mixing.valid)
        log_mix = jax.nn.log_softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)
        log_mix = jnp.where(valid, log_mix, 0.0)[:, None, :]
        mix_logits.append(jnp.broadcast_to(
            log_mix, (log_mix.shape[0], inner.num_outputs, log_mix.shape[2])))
    raw = pic.input_functions(nodes[:, None])  # (S, K, m)
    input_params = _input_params(pic.input_layer, raw)
    return Circuit(plan, pic.input_layer, input_params, tuple(sum_logits), tuple(mix_logits),
                   pic.normalization == "units", backend)


def _check_group(group, name: str, num_functions: int, input_dim: int, output_dim: int) -> None:
    if not isinstance(group, FunctionGroup):
        raise TypeError(f"`{name}` must be a FunctionGroup, got {type(group).__name__}")
    got = (group.num_functions, group.input_dim, group.output_dim)
    want = (num_functions, input_dim, output_dim)
    if got != want:
        raise ValueError(f"`{name}` must have (num_functions, input_dim, output_dim) = {want}, "
                         f"got {got}")


def integral_circuit(
    region_graph: RegionGraph,
    input_layer: InputLayer,
    merge: str = "cp",
    *,
    key: PRNGKeyArray,
    inner_sharing: str = "none",
    input_sharing: str = "none",
    hidden: int = 32,
    num_layers: int = 2,
    num_features: int = 32,
    sigma: float = 1.0,
    domain=(-1.0, 1.0),
    normalization: str = "units",
    data=None,
) -> IntegralCircuit:
    """A PIC whose functions are light-weight neural nets (`circuits.functions.NeuralFunctions`).

    Each stage's integral units form one function group, and all input units
    another; ``inner_sharing`` and ``input_sharing`` choose the functional sharing
    within them (``"none"``, ``"full"`` or ``"composite"``).

    Args:
        region_graph: tree- or DAG-shaped region graph.
        input_layer: e.g. ``Bernoulli()`` or ``Categorical(17)``.
        merge: ``"cp"`` or ``"tucker"`` (binary partitions only).
        key: PRNG key for the initial weights.
        inner_sharing: sharing among the integral units of one stage.
        input_sharing: sharing among the input units.
        hidden: MLP width.
        num_layers: hidden layers per MLP.
        num_features: Fourier features.
        sigma: Fourier frequency scale.
        domain: latent domain; build quadrature rules on it.
        normalization: ``"units"`` or ``"global"`` (module docstring).
        data: optional ``(N, V)`` training data; the input functions then start at the
            data's per-variable statistics.

    Raises:
        ValueError: naming the argument (see :class:`IntegralCircuit`, and bad ``data``).
    """
    for value, name in ((inner_sharing, "inner_sharing"), (input_sharing, "input_sharing")):
        if value not in SHARING:
            raise ValueError(f"`{name}` must be one of {SHARING}, got {value!r}")
    if merge not in MERGES:
        raise ValueError(f"`merge` must be one of {MERGES}, got {merge!r}")
    if not isinstance(region_graph, RegionGraph):
        raise TypeError(f"`region_graph` must be a RegionGraph, got {type(region_graph).__name__}")
    structure = _plan(region_graph, 1, merge)
    output_dim = input_output_dim(input_layer)
    bias = None
    if data is not None:
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != structure.num_variables:
            raise ValueError(f"`data` must be (num_samples, {structure.num_variables}), got shape "
                             f"{data.shape}")
        input_layer.check_values(data, np.ones(data.shape, bool), "data")
        bias = _data_output_bias(input_layer, data[:, structure.slot_variable])
    options = dict(hidden=hidden, num_layers=num_layers, num_features=num_features, sigma=sigma)
    key_input, *keys = jax.random.split(key, len(structure.stages) + 1)
    input_functions = NeuralFunctions(key_input, structure.num_slots, 1, output_dim,
                                      sharing=input_sharing, output_bias=bias, **options)
    inner = []
    for d, ((stage, _), k) in enumerate(zip(structure.stages, keys, strict=True)):
        dims = _expected_input_dim(merge, d == len(structure.stages) - 1)
        inner.append(NeuralFunctions(k, stage.index.shape[0], dims, 1, sharing=inner_sharing,
                                     **options))
    return IntegralCircuit(region_graph, input_layer, input_functions, inner, merge=merge,
                           domain=domain, normalization=normalization)


# ---------------------------------------------------------------- training
@dataclass(frozen=True)
class IntegralTrainResult:
    """What :func:`fit_integral` returns.

    Attributes:
        pic: the trained integral circuit (the best on ``valid`` when ``keep_best``).
        circuit: ``pic`` materialised with the training rule.
        train_log_likelihood: mean train log-likelihood per sample of each epoch's
            mini-batches (measured before each update).
        valid_log_likelihood: mean validation log-likelihood after each epoch.
        final_train_log_likelihood: mean train log-likelihood of ``circuit``.
        num_epochs: epochs run.
        stop_reason: ``"completed"`` or a sentence naming the epoch at which the
            log-likelihood or a parameter became non-finite (training then keeps the
            parameters before that step).
        seconds: wall-clock training time (compilation included).
    """

    pic: IntegralCircuit
    circuit: Circuit
    train_log_likelihood: np.ndarray
    valid_log_likelihood: np.ndarray
    final_train_log_likelihood: float
    num_epochs: int
    stop_reason: str
    seconds: float


def fit_integral(
    pic: IntegralCircuit,
    data,
    optimizer: optax.GradientTransformation,
    rule: QuadratureRule,
    *,
    key: PRNGKeyArray,
    num_epochs: int = 10,
    batch_size: int = 256,
    valid=None,
    keep_best: bool = True,
    backend: str = "auto",
    progress: bool | None = None,
    sharding: jax.sharding.Mesh | None = None,
) -> IntegralTrainResult:
    """Train a PIC by maximum likelihood through its materialised QPC.

    Each step materialises the QPC with ``rule`` and takes an optimizer step on the
    negative mean log-likelihood of a mini-batch; the gradient flows through the
    quadrature weights into the functions' parameters (Gala et al. 2024). Training
    runs on `probinf.train`'s compiled driver over shuffled mini-batches (an epoch is
    ``N // batch_size`` steps).

    Args:
        pic: the integral circuit.
        data: complete training data ``(N, V)``.
        optimizer: any optax optimizer, e.g. ``optax.adam(1e-2)``.
        rule: the quadrature rule used in training (on the latent domain).
        key: PRNG key to shuffle the data.
        num_epochs: passes over the data.
        batch_size: rows per step.
        valid: optional validation data, evaluated after every epoch.
        keep_best: return the parameters with the best validation log-likelihood.
        backend: sum-layer backend of the QPC.
        progress: show a progress bar (default: when on a terminal).
        sharding: a `jax.sharding.Mesh` to train data-parallel on: every batch split over
            its first axis, the PIC replicated (`probinf.train.run`); ``None``: one device.

    Returns:
        An :class:`IntegralTrainResult`.

    Raises:
        ValueError: naming the argument for bad sizes, a rule off the domain, or
            invalid data (naming the variable).
    """
    if not isinstance(pic, IntegralCircuit):
        raise TypeError(f"`pic` must be an IntegralCircuit, got {type(pic).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax GradientTransformation, got "
                        f"{type(optimizer).__name__}")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    pic.check_rule(rule)
    template = pic.materialize(rule, backend)
    x = _prepare_data(template, data, "data")
    valid_x = None if valid is None else _prepare_data(template, valid, "valid")
    batch_size = min(batch_size, x.shape[0])
    final, train_ll, valid_ll, stop_reason, seconds = _train(
        engine.make_step(_NegativeLogLikelihood(rule, backend), optimizer),
        engine.init(pic, optimizer), x, data=x, batch_size=batch_size, num_epochs=num_epochs,
        key=key, valid=valid_x, validate=_MaterialisedValidation(rule, backend),
        keep_best=keep_best, patience=None, progress=progress, desc="PIC", sharding=sharding)
    # The materialised circuit's result, plus the PIC it came from.
    base = _result(final.materialize(rule, backend), x, train_ll, valid_ll, stop_reason, seconds)
    return IntegralTrainResult(pic=final, **{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
