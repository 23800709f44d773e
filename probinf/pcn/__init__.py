"""Predictive-coding networks (``probinf.pcn``).

Networks of value nodes with layer-wise predictions and Gaussian (or, at a classifier's
output, categorical) prediction-error energies, built from equinox layers; inference as
gradient dynamics on the activities (Euler or Heun, inside ``jax.lax.scan``); learning by
standard PC, incremental PC or backprop with any optax optimizer; supervised,
generative and associative-recall modes.

Typical use::

    net = pcn.mlp(key, [64, 128, 10], activation=jax.nn.gelu, output="categorical")
    result = pcn.train(key, net, optax.adam(1e-3), x, labels, epochs=10, steps=8)
    logits = pcn.predict(result.net, x_test)
"""

from probinf.pcn.generative import recall, reconstruct, sample
from probinf.pcn.inference import (
    InferenceResult,
    NonFiniteEnergyError,
    infer,
    predict,
)
from probinf.pcn.learning import ALGORITHMS, TrainResult, parameter_gradients, train, train_step
from probinf.pcn.network import PCN, Conv, Dense, mlp

__all__ = [
    "PCN",
    "Dense",
    "Conv",
    "mlp",
    "infer",
    "predict",
    "InferenceResult",
    "NonFiniteEnergyError",
    "train",
    "train_step",
    "TrainResult",
    "ALGORITHMS",
    "parameter_gradients",
    "sample",
    "reconstruct",
    "recall",
]
