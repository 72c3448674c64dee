"""Task families for learning to learn: ``fn(x, task)`` over one box for every member, a sampler
of members (tasks), the features that condition an amortised optimiser, and the exact minimum
of a member where it is known."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._box import default_dtype
from ._instances import instance_family, sample_instances


class Family(NamedTuple):
    """A family of optimisation problems indexed by tasks.

    ``fn(x, task)`` (one point ``(d,)``, one task), the box ``lower`` / ``upper`` ``(d,)``,
    ``sample(key, n)`` (``n`` tasks, a pytree with a leading axis), ``features(task)`` (a vector
    that describes one task) and ``minimum(task)`` (the exact minimum over the box, on the host)."""

    name: str
    dim: int
    fn: Callable
    lower: np.ndarray
    upper: np.ndarray
    sample: Callable
    features: Callable
    minimum: Callable

    @property
    def domain(self):
        return (self.lower, self.upper)


class QuadraticTask(NamedTuple):
    """One member of :func:`quadratic_family`: ``f(x) = ||W x - y||^2``.

    Attributes:
        W: The matrix, shape ``(d, d)``.
        y: The target, shape ``(d,)``.
    """

    W: jax.Array
    y: jax.Array


def quadratic_family(dim: int = 10, *, half_width: float = 5.0) -> Family:
    """The quadratic family ``f(x) = ||W x - y||^2`` of Andrychowicz et al. (2016).

    The quadratic family of Andrychowicz et al. (2016): ``f(x) = ||W x - y||^2`` with ``W``
    ``(d, d)`` and ``y`` ``(d,)`` standard normal, on the box ``[-half_width, half_width]^d``;
    the minimum is that of box-constrained least squares (``scipy.optimize.lsq_linear``)."""
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"quadratic_family(dim=...): expected a positive int, got {dim!r}")
    dim = int(dim)

    def fn(x, task: QuadraticTask):
        r = task.W @ x - task.y
        return jnp.sum(r**2)

    def sample(key, n):
        kw, ky = jr.split(key)
        dt = default_dtype()
        return QuadraticTask(
            jr.normal(kw, (n, dim, dim), dtype=dt), jr.normal(ky, (n, dim), dtype=dt)
        )

    def features(task: QuadraticTask):
        return jnp.concatenate([task.W.ravel(), task.y])

    def minimum(task: QuadraticTask) -> float:
        from scipy.optimize import lsq_linear

        W, y = np.asarray(task.W, np.float64), np.asarray(task.y, np.float64)
        res = lsq_linear(W, y, bounds=(-half_width, half_width), method="bvls", tol=1e-14)
        return float(np.sum((W @ res.x - y) ** 2))

    lower = np.full(dim, -half_width)
    return Family("quadratic", dim, fn, lower, -lower, sample, features, minimum)


def stack_tasks(family: Family, tasks) -> object:
    """Stack tasks of a family into one pytree with a leading axis.

    Stacks a list of tasks of ``family`` into one pytree with a leading axis, checking that
    every member has the family's dimension (``ValueError`` naming the first that does not)."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("stack_tasks(tasks=...): expected at least one task")
    x = jax.ShapeDtypeStruct((family.dim,), default_dtype())
    reference = None
    for i, task in enumerate(tasks):
        try:
            out = jax.eval_shape(family.fn, x, task)
        except Exception as err:  # noqa: BLE001 -- re-raised with context
            raise ValueError(
                f"stack_tasks(tasks=...): member {i} does not fit the family's dimension "
                f"d={family.dim} ({err})"
            ) from err
        shapes = jax.tree.map(jnp.shape, task)
        if reference is None:
            reference = shapes
        elif shapes != reference or out.shape != ():
            raise ValueError(
                f"stack_tasks(tasks=...): members have different dimensions: member 0 has "
                f"shapes {reference}, member {i} has {shapes}"
            )
    return jax.tree.map(lambda *a: jnp.stack(a), *tasks)


def instances_family(name: str, dim: int, *, kind: str = "rotated-shifted") -> Family:
    """Random instances of a test function as a family (a multimodal family for learning to learn).

    The members are the BBOB-style instances of :func:`pdegen.optimise.instance_family`
    (``f(R (x - s) + x*)`` with a Haar rotation ``R``, identity for ``kind="separable"``, and a
    shift ``s`` in the middle 80% of the box); features: the rotation's entries and the shift
    scaled to ``[-1, 1]``; every member's minimum is the test function's."""
    inst = instance_family(name, dim, kind=kind)
    centre = 0.5 * (np.asarray(inst.lower) + np.asarray(inst.upper))
    half = 0.5 * (np.asarray(inst.upper) - np.asarray(inst.lower))

    def sample(key, n):
        return sample_instances(inst, n, key=key)

    def features(task):
        shift = (task.shift - jnp.asarray(centre, task.shift.dtype)) / jnp.asarray(
            half, task.shift.dtype
        )
        return jnp.concatenate([task.rotation.ravel(), shift])

    def minimum(task) -> float:
        return float(inst.minimum)

    label = name if kind == "rotated-shifted" else f"{name}-{kind}"
    return Family(label, int(dim), inst.fn, inst.lower, inst.upper, sample, features, minimum)


FAMILY_NAMES = ("quadratic", "rastrigin", "poisson-sources")
"""The built-in families of :func:`make_family`."""


def make_family(name: str, dim: int) -> Family:
    """A built-in family by name: ``"quadratic"``, ``"rastrigin"`` or ``"poisson-sources"``.

    ``dim`` is the design dimension (``poisson-sources``: two per source, so even)."""
    from ._pde_family import poisson_source_family

    build = {
        "quadratic": lambda: quadratic_family(dim),
        "rastrigin": lambda: instances_family("rastrigin", dim),
        "poisson-sources": lambda: poisson_source_family(dim // 2),
    }
    if name not in FAMILY_NAMES:
        raise ValueError(f"make_family(name=...): expected one of {FAMILY_NAMES}, got {name!r}")
    if name == "poisson-sources" and dim % 2:
        raise ValueError(
            f"make_family: poisson-sources needs an even dim (x, y per source), got {dim}"
        )
    return build[name]()
