"""Data parallelism with ``jax.sharding``: batch axis sharded over devices, parameters replicated.

On one host this uses every local device; on several hosts call
``jax.distributed.initialize()`` first and the same code shards over ``jax.devices()`` (all
processes), each process feeding its share of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D device mesh with axis ``"batch"`` over ``devices`` (default: ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh(devices=...) needs at least one device")
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits axis 0 over the mesh's ``"batch"`` axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that copies an array to every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(batch_size: int, mesh: Mesh, *, name: str = "batch_size") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``batch_size`` splits evenly over the mesh."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"`{name}`={batch_size} must be divisible by the number of devices ({n})")


def shard_batch(tree, mesh: Mesh):
    """Place every array leaf of ``tree`` with its axis 0 split over the mesh."""
    sharding = batch_sharding(mesh)
    for leaf in jtu.tree_leaves(tree):
        if hasattr(leaf, "shape") and leaf.ndim > 0:
            check_batch_divisible(leaf.shape[0], mesh, name="batch leading axis")
    return jtu.tree_map(
        lambda a: (
            jax.device_put(a, sharding) if eqx.is_array(a) or isinstance(a, np.ndarray) else a
        ),
        tree,
    )


def replicate(tree, mesh: Mesh):
    """Copy every array leaf of ``tree`` (e.g. model parameters, optimiser state) to all devices."""
    sharding = replicated_sharding(mesh)
    return jtu.tree_map(lambda a: jax.device_put(a, sharding) if eqx.is_array(a) else a, tree)
