"""Benchmark instances in the BBOB style: a test function composed with a random rotation and
a random shift, ``g(x) = f(R (x - s) + x*)`` (``x*`` the minimiser of ``f``), so that no method
can exploit separability or a centred minimiser unless the benchmark says so. The
``"separable"`` kind keeps ``R = I`` (a shift per coordinate only).

Instances are tasks: ``family.fn(x, task)`` with ``task = Instance(rotation, shift)``, so many
instances run in one compiled call of :func:`pdegen.optimise.minimise` (``task=``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._box import default_dtype
from ._functions import TEST_FUNCTIONS, test_function

KINDS = ("rotated-shifted", "separable")
"""Instance kinds: a random rotation and shift of the test function, or a shift only."""


class Instance(NamedTuple):
    """A rotation and shift of a test function (one instance, or several).

    ``rotation`` ``(d, d)`` (orthogonal) and ``shift`` ``(d,)`` (the instance's minimiser);
    a leading axis for several instances."""

    rotation: jax.Array
    shift: jax.Array


class InstanceFamily(NamedTuple):
    """The instances of one test function, dimension and kind.

    Instances of the test function ``name`` in dimension ``dim`` of one ``kind``:
    ``fn(x, instance)``, the box ``lower`` / ``upper`` and the ``minimum`` (every instance)."""

    name: str
    kind: str
    dim: int
    fn: Callable
    lower: np.ndarray
    upper: np.ndarray
    minimum: float

    @property
    def domain(self):
        return (self.lower, self.upper)


def random_rotation(key, dim: int):
    """A Haar-distributed orthogonal matrix ``(dim, dim)`` (QR of a Gaussian, signs fixed)."""
    q, r = jnp.linalg.qr(jr.normal(key, (dim, dim), dtype=default_dtype()))
    return q * jnp.sign(jnp.diag(r))[None, :]


def instance_family(name: str, dim: int, *, kind: str = "rotated-shifted") -> InstanceFamily:
    """The family of ``kind`` instances of test function ``name`` in dimension ``dim``."""
    if kind not in KINDS:
        raise ValueError(f"instance_family(kind=...): expected one of {KINDS}, got {kind!r}")
    if name not in TEST_FUNCTIONS:
        raise ValueError(
            f"instance_family(name=...): unknown {name!r}; choose from {TEST_FUNCTIONS}"
        )
    base = test_function(name, dim)
    xstar = base.minimiser

    def fn(x, instance: Instance):
        y = instance.rotation @ (x - instance.shift) + jnp.asarray(xstar, dtype=x.dtype)
        return base.fn(y)

    return InstanceFamily(name, kind, dim, fn, base.lower, base.upper, base.minimum)


def sample_instances(family: InstanceFamily, num: int, *, key) -> Instance:
    """Draw random instances of a test function.

    ``num`` instances: a Haar rotation (identity for ``"separable"``) and a shift uniform in
    the middle 80% of the box (per coordinate)."""
    k_rot, k_shift = jr.split(key)
    dim, dt = family.dim, default_dtype()
    if family.kind == "separable":
        rotation = jnp.broadcast_to(jnp.eye(dim, dtype=dt), (num, dim, dim))
    else:
        rotation = jax.vmap(lambda k: random_rotation(k, dim))(jr.split(k_rot, num))
    lower = jnp.asarray(family.lower, dtype=dt)
    upper = jnp.asarray(family.upper, dtype=dt)
    u = jr.uniform(k_shift, (num, dim), dtype=dt, minval=-0.8, maxval=0.8)
    shift = 0.5 * (lower + upper)[None, :] + 0.5 * (upper - lower)[None, :] * u
    return Instance(rotation, shift)
