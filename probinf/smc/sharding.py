"""Spreading particles over several devices with `jax.sharding`.

A particle cloud is a pytree whose leaves share a leading particle axis. Splitting
that axis over a one-dimensional device mesh lets every device propagate and weigh
its own block of particles; the few global steps (normalising weights, resampling)
become collectives that XLA inserts. Random numbers do not depend on the layout
(``jax_threefry_partitionable`` is on by default), so a sharded run gives the same
answer as a single-device run, up to the order of floating-point sums (which can, rarely,
change a resampled ancestor near a boundary of the cumulative weights; the runs are then
different draws of the same filter).

The same sharding serves independent runs: ``jax.vmap`` a sampler over a batch of
keys and place the keys with `shard_leading_axis`; the batch axis is then split.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["particle_sharding", "shard_leading_axis", "constrain_leading_axis", "check_divisible"]

AXIS = "particles"


def particle_sharding(devices: Sequence[jax.Device] | None = None) -> NamedSharding:
    """A sharding that splits an array's leading axis over ``devices`` (default: all devices).

    Raises:
        ValueError: if ``devices`` is empty.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` is empty: a sharding needs at least one device")
    return NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))


def _num_shards(sharding) -> int:
    return int(np.prod([sharding.mesh.shape[a] for a in sharding.mesh.axis_names]))


def check_divisible(n: int, sharding, name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` if ``n`` does not split evenly over the sharding."""
    if sharding is None:
        return
    if not isinstance(sharding, NamedSharding):
        raise TypeError(
            f"`sharding` must be a jax.sharding.NamedSharding (see particle_sharding), "
            f"got {type(sharding).__name__}"
        )
    shards = _num_shards(sharding)
    if n % shards:
        raise ValueError(f"`{name}` = {n} must be a multiple of the {shards} devices of `sharding`")


def constrain_leading_axis(tree, sharding):
    """Inside ``jit``: ask XLA to keep every leaf split along its leading axis."""
    if sharding is None:
        return tree
    return jax.tree.map(lambda leaf: jax.lax.with_sharding_constraint(leaf, sharding), tree)


def shard_leading_axis(tree, sharding: NamedSharding | None = None):
    """Place every leaf of ``tree`` on the devices, split along its leading axis."""
    sharding = particle_sharding() if sharding is None else sharding
    return jax.device_put(tree, sharding)
