"""circuits: probabilistic circuits with jit-compiled folded layers.

Build a region graph, compile it with an input layer and an inner layer kind,
then query or learn it::

    import jax, circuits
    graph = circuits.random_binary_tree(jax.random.key(0), num_variables=16, depth=3)
    pc = circuits.compile_circuit(graph, circuits.Bernoulli(), num_units=8, key=jax.random.key(1))
    pc.log_prob(x); pc.log_marginal(x, observed); pc.map(x, evidence); pc.sample(key, 100)

See ``docs/circuits.md``.
"""

from circuits.circuit import Circuit, compile_circuit
from circuits.data import list_debd, load_debd
from circuits.inputs import Bernoulli, Binomial, Categorical, Gaussian, InputLayer
from circuits.kernels import fused_log_matmul_exp
from circuits.learning import (
    TrainResult,
    average_log_likelihood,
    em,
    fit_debd,
    fit_gradient,
    hclt,
    soft_evidence,
    step_size_schedule,
    train_debd,
)
from circuits.region_graph import (
    Partition,
    RegionGraph,
    chow_liu_tree,
    chow_liu_trees,
    linear_chain,
    quad_graph,
    quad_tree,
    random_binary_tree,
)
from circuits.structure import CircuitStructure

__all__ = [
    "Circuit",
    "compile_circuit",
    "CircuitStructure",
    "InputLayer",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "Binomial",
    "RegionGraph",
    "Partition",
    "random_binary_tree",
    "quad_tree",
    "quad_graph",
    "chow_liu_tree",
    "chow_liu_trees",
    "linear_chain",
    "fused_log_matmul_exp",
    "em",
    "fit_debd",
    "train_debd",
    "hclt",
    "soft_evidence",
    "step_size_schedule",
    "fit_gradient",
    "average_log_likelihood",
    "TrainResult",
    "load_debd",
    "list_debd",
]
