r"""One-dimensional quadrature rules for materialising integral circuits.

A rule approximates an integral over a bounded interval by a weighted sum over
$K$ nodes,

$$
\int_a^b f(z)\,dz \approx \sum_{k=1}^K w_k f(z_k).
$$

Materialising a probabilistic integral circuit (`circuits.integral`) applies one
rule to every continuous latent variable, so a nested integral becomes a nested
weighted sum: an ordinary circuit with $K$ units per region (Gala et al.,
"Probabilistic Integral Circuits", AISTATS 2024).

The four rules and the error they promise for a smooth integrand, with $h$ the
node spacing (Davis & Rabinowitz, *Methods of Numerical Integration*, 1984):

| rule | nodes | error |
|---|---|---|
| `trapezoidal` | $K \ge 2$ equispaced, both ends, $h = (b-a)/(K-1)$ | $-\frac{(b-a)h^2}{12} f''(\xi)$ |
| `midpoint` | $K \ge 1$ cell centres, $h = (b-a)/K$ | $+\frac{(b-a)h^2}{24} f''(\xi)$ |
| `simpson` | odd $K \ge 3$ equispaced, $h = (b-a)/(K-1)$ | $-\frac{(b-a)h^4}{180} f^{(4)}(\xi)$ |
| `gauss_legendre` | $K \ge 1$ roots of the Legendre polynomial | exact for degree $2K-1$; geometric in $K$ for analytic $f$ |
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["QuadratureRule", "quadrature_rule", "RULES", "CONVERGENCE_ORDER"]

#: Names accepted by :func:`quadrature_rule`.
RULES = ("trapezoidal", "midpoint", "simpson", "gauss_legendre")

#: The algebraic order ``p`` of each rule's error ``O(h^p)`` for smooth integrands;
#: ``None`` for Gauss–Legendre, whose error falls geometrically in ``K``.
CONVERGENCE_ORDER = {"trapezoidal": 2, "midpoint": 2, "simpson": 4, "gauss_legendre": None}

_MINIMUM_POINTS = {"trapezoidal": 2, "midpoint": 1, "simpson": 3, "gauss_legendre": 1}


class QuadratureRule:
    """Nodes and weights of a quadrature rule on an interval (immutable, hashable).

    Build one with :func:`quadrature_rule`. Two rules are equal when their name,
    number of nodes and interval are equal, so a rule can be a static argument of a
    jit-compiled function.

    Attributes:
        name: one of :data:`RULES`.
        interval: ``(a, b)``.
        points: ``(K,)`` float64 nodes, increasing.
        weights: ``(K,)`` float64 positive weights (they sum to ``b - a``).
    """

    __slots__ = ("name", "interval", "points", "weights")

    def __init__(self, name: str, interval: tuple[float, float], points: np.ndarray,
                 weights: np.ndarray):
        points = np.asarray(points, np.float64)
        weights = np.asarray(weights, np.float64)
        points.setflags(write=False)
        weights.setflags(write=False)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "interval", (float(interval[0]), float(interval[1])))
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "weights", weights)

    def __setattr__(self, name, value):
        raise AttributeError("QuadratureRule is immutable")

    @property
    def num_points(self) -> int:
        """``K``, the number of nodes."""
        return int(self.points.shape[0])

    @property
    def log_weights(self) -> np.ndarray:
        """``log w_k``, ``(K,)``."""
        return np.log(self.weights)

    @property
    def spacing(self) -> float:
        """The node spacing ``h`` of the equispaced rules (for Gauss–Legendre: ``(b-a)/K``)."""
        a, b = self.interval
        if self.name in ("trapezoidal", "simpson"):
            return (b - a) / (self.num_points - 1)
        return (b - a) / self.num_points

    def integrate(self, values, axis: int = -1):
        """``sum_k w_k values[..., k, ...]`` along ``axis`` (numpy or JAX arrays)."""
        shape = [1] * np.ndim(values)
        shape[axis] = self.num_points
        return (values * self.weights.reshape(shape)).sum(axis=axis)

    def _key(self):
        return (self.name, self.num_points, self.interval)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other) -> bool:
        return isinstance(other, QuadratureRule) and other._key() == self._key()

    def __repr__(self) -> str:
        return (f"QuadratureRule({self.name!r}, num_points={self.num_points}, "
                f"interval={self.interval})")


def quadrature_rule(name: str, num_points: int, interval: tuple[float, float] = (-1.0, 1.0)
                    ) -> QuadratureRule:
    """A quadrature rule with ``num_points`` nodes on ``interval``.

    Args:
        name: ``"trapezoidal"``, ``"midpoint"``, ``"simpson"`` or ``"gauss_legendre"``.
        num_points: ``K``; at least 2 for the trapezoidal rule, odd and at least 3 for
            Simpson's rule, at least 1 otherwise.
        interval: finite ``(a, b)`` with ``a < b``.

    Returns:
        The :class:`QuadratureRule`.

    Raises:
        ValueError: naming the argument, for an unknown rule, an invalid number of
            points or an interval that is not finite and increasing.
    """
    if name not in RULES:
        raise ValueError(f"`name` must be one of {RULES}, got {name!r}")
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)):
        raise ValueError(f"`num_points` must be an integer, got {num_points!r}")
    num_points = int(num_points)
    minimum = _MINIMUM_POINTS[name]
    if num_points < minimum:
        raise ValueError(f"`num_points` must be at least {minimum} for the {name} rule, got "
                         f"{num_points}")
    if name == "simpson" and num_points % 2 == 0:
        raise ValueError(f"`num_points` must be odd for Simpson's rule (an even number of "
                         f"intervals), got {num_points}")
    try:
        a, b = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"`interval` must be a pair (a, b) of numbers, got {interval!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"`interval` must be finite with a < b, got {interval!r}")
    width = b - a
    if name == "trapezoidal":
        points = np.linspace(a, b, num_points)
        weights = np.full(num_points, width / (num_points - 1))
        weights[[0, -1]] *= 0.5
    elif name == "midpoint":
        points = a + (np.arange(num_points) + 0.5) * (width / num_points)
        weights = np.full(num_points, width / num_points)
    elif name == "simpson":
        points = np.linspace(a, b, num_points)
        pattern = np.where(np.arange(num_points) % 2 == 1, 4.0, 2.0)
        pattern[[0, -1]] = 1.0
        weights = pattern * (width / (num_points - 1)) / 3.0
    else:
        nodes, base = np.polynomial.legendre.leggauss(num_points)
        points = a + (nodes + 1.0) * (width / 2.0)
        weights = base * (width / 2.0)
    return QuadratureRule(name, (a, b), points, weights)
